"""Pruning schedules: which sample ids each epoch trains on (like ffcv's traversal_order/).

base.PruningSchedule is the interface; Scan runs SCAN on the C++ index engine and
ScanReference is the same schedule on Python sets (the oracle and the baseline).
"""
from scan_fast.schedule.base import PruningSchedule
from scan_fast.schedule.config import MODES, ScanConfig
from scan_fast.schedule.rates import cosine_rate, epoch_phase, warmup_step
from scan_fast.schedule.reference import ScanReference
from scan_fast.schedule.stats import EpochRecord, ScheduleStats


def __getattr__(name):
    # Scan needs the compiled engine; import it on first use so the reference works without it.
    if name == "Scan":
        from scan_fast.schedule.scan import Scan

        return Scan
    raise AttributeError(f"module 'scan_fast.schedule' has no attribute {name!r}")


__all__ = ["PruningSchedule", "Scan", "ScanReference", "ScanConfig", "MODES", "EpochRecord",
           "ScheduleStats", "cosine_rate", "epoch_phase", "warmup_step"]
