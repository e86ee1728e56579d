"""scan-fast: dynamic bootstrapping dataset pruning (SCAN) for CLIP, SigLIP and MoCo v3.

Public names are imported lazily so that `import scan_fast` stays cheap and
works on machines without a GPU or Triton.
"""
from .lazy_exports import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    # index engine (C++ extension scan_fast._C)
    "SampleSet": ".index",
    # schedule
    "Scan": ".schedule",
    "ScanReference": ".schedule",
    # ops
    "clip_loss_per_sample": ".ops",
    "info_nce_per_sample": ".ops",
    "prune_candidates": ".schedule.candidates",
    "siglip_loss_per_sample": ".ops",
    "ClipLoss": ".ops",
    "MocoLoss": ".ops",
    "PairLoss": ".ops",
    "SigLipLoss": ".ops",
    # data
    "clip_loader": ".data",
    "moco_loader": ".data",
    "ScanSampler": ".data",
}

__all__ = ["__version__", *_EXPORTS]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
