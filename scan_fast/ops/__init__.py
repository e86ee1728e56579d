"""Per-sample contrastive losses (the candidate rule on tensors, `prune_candidates`, lives with
the rest of the rule in scan_fast.schedule.candidates).

Each op lives in its own module: a plain materialised `<op>_reference` (the
oracle for tests and the baseline for benchmarks), a chunked CPU path, and the
public function that uses the Triton kernel for CUDA tensors.
"""
from scan_fast.ops.clip_loss import ClipLoss, clip_loss_per_sample, clip_loss_per_sample_reference
from scan_fast.ops.info_nce import MocoLoss, info_nce_per_sample, info_nce_per_sample_reference
from scan_fast.ops.siglip_loss import SigLipLoss, siglip_loss_per_sample, siglip_loss_per_sample_reference

__all__ = [
    "ClipLoss",
    "MocoLoss",
    "SigLipLoss",
    "clip_loss_per_sample",
    "clip_loss_per_sample_reference",
    "info_nce_per_sample",
    "info_nce_per_sample_reference",
    "siglip_loss_per_sample",
    "siglip_loss_per_sample_reference",
]
