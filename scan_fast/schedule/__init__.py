"""Pruning schedules: which sample ids each epoch trains on (like ffcv's traversal_order/).

base.PruningSchedule is the interface; Scan runs SCAN on the C++ index engine and
ScanReference is the same schedule on Python sets (the oracle and the baseline).

Names are imported on first use: the schedules need torch, and a module such as
scan_fast.schedule.inputs (the command line's checks) is imported without them.
"""
from ..lazy_exports import lazy_exports

_EXPORTS = {
    "PruningSchedule": ".base",
    "MODES": ".config",
    "ScanConfig": ".config",
    "cosine_rate": ".rates",
    "epoch_phase": ".rates",
    "warmup_step": ".rates",
    "ScanReference": ".reference",
    "EpochRecord": ".stats",
    "ScheduleStats": ".stats",
    "Scan": ".scan",  # needs the compiled engine (scan_fast._C)
}

__all__ = ["PruningSchedule", "Scan", "ScanReference", "ScanConfig", "MODES", "EpochRecord",
           "ScheduleStats", "cosine_rate", "epoch_phase", "warmup_step"]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
