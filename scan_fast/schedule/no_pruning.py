"""`none`: every sample, every epoch (the baseline every strategy is compared with)."""
import numpy as np

from scan_fast.schedule.base import PruningSchedule, check_state_kind, every_id
from scan_fast.schedule.rates import WARMUP
from scan_fast.schedule.stats import EpochRecord


class NoPruning(PruningSchedule):
    """The full data set every epoch."""

    def is_preparation(self, epoch: int) -> bool:
        return False

    def coreset(self) -> np.ndarray:
        return np.arange(self.num_samples, dtype=np.int64)

    def coreset_set(self):
        return every_id(self.num_samples)

    def _keep_indices(self, epoch):
        return np.arange(self.num_samples, dtype=np.int64)

    def _kept_set(self, epoch):
        from scan_fast.schedule.shard import KeptSet  # needs the compiled engine

        return KeptSet.everything(self.num_samples)

    def _finish_epoch(self, epoch, epoch_loss):
        return EpochRecord(epoch, WARMUP, 0, 0, self.num_samples, epoch_loss)

    def _state(self):
        return {"kind": "NoPruning"}

    def _parse_state(self, state):
        check_state_kind(state, "NoPruning")
        return lambda: None
