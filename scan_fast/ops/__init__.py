"""Per-sample contrastive losses (the candidate rule on tensors, `prune_candidates`, lives with
the rest of the rule in scan_fast.schedule.candidates).

Each op lives in its own module: a plain materialised `<op>_reference` (the
oracle for tests and the baseline for benchmarks), a chunked CPU path, and the
public function that uses the Triton kernel for CUDA tensors. Every pair loss returns a
`PairLoss(a, b)` of this rank's rows (scan_fast/ops/base.py says what a and b are per loss).
"""
from scan_fast.ops.base import PairLoss
from scan_fast.ops.clip_loss import ClipLoss, clip_loss_per_sample, clip_loss_per_sample_reference
from scan_fast.ops.info_nce import MocoLoss, info_nce_per_sample, info_nce_per_sample_reference
from scan_fast.ops.siglip_loss import SigLipLoss, siglip_loss_per_sample, siglip_loss_per_sample_reference

__all__ = [
    "ClipLoss",
    "MocoLoss",
    "PairLoss",
    "SigLipLoss",
    "clip_loss_per_sample",
    "clip_loss_per_sample_reference",
    "info_nce_per_sample",
    "info_nce_per_sample_reference",
    "siglip_loss_per_sample",
    "siglip_loss_per_sample_reference",
]
