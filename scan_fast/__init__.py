"""scan-fast: dynamic bootstrapping dataset pruning (SCAN) for CLIP, SigLIP and MoCo v3.

Public names are imported lazily so that `import scan_fast` stays cheap and
works on machines without a GPU or Triton.
"""
from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    # index engine (C++ extension scan_fast._C)
    "SampleSet": "scan_fast.index",
    # schedule
    "Scan": "scan_fast.schedule",
    "ScanReference": "scan_fast.schedule",
    # ops
    "clip_loss_per_sample": "scan_fast.ops",
    "info_nce_per_sample": "scan_fast.ops",
    "prune_candidates": "scan_fast.schedule.candidates",
    "siglip_loss_per_sample": "scan_fast.ops",
    "ClipLoss": "scan_fast.ops",
    "MocoLoss": "scan_fast.ops",
    "PairLoss": "scan_fast.ops",
    "SigLipLoss": "scan_fast.ops",
    # data
    "clip_loader": "scan_fast.data",
    "moco_loader": "scan_fast.data",
    "ScanSampler": "scan_fast.data",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'scan_fast' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
