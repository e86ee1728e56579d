"""`static`: one fixed id list every epoch (e.g. an exported coreset)."""
import os

import numpy as np
import torch

from scan_fast.schedule.base import PruningSchedule, check_state_kind
from scan_fast.schedule.rates import MUTATION
from scan_fast.schedule.stats import EpochRecord


class StaticCoreset(PruningSchedule):
    """Trains on one fixed list of sample ids every epoch."""

    def __init__(self, num_samples, keep_ids):
        super().__init__(num_samples)
        ids = np.asarray(keep_ids)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError(f"keep_ids must be a non-empty 1-d list of ids, got shape {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"keep_ids must be integers, got dtype {ids.dtype}")
        bad = np.flatnonzero((ids < 0) | (ids >= self.num_samples))
        if bad.size:
            raise ValueError(f"keep_ids[{bad[0]}] = {ids[bad[0]]} is outside [0, num_samples={self.num_samples})")
        unique, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"keep_ids lists sample id {unique[counts > 1][0]} more than once")
        self.keep_ids = unique.astype(np.int64)

    @classmethod
    def from_file(cls, path, num_samples) -> "StaticCoreset":
        """Ids from a .npy file or a text file with one id a line (# starts a comment)."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"coreset file not found: {path}")
        if path.endswith(".npy"):
            return cls(num_samples, np.load(path, allow_pickle=False))
        ids = []
        with open(path) as f:
            for row, line in enumerate(f, start=1):
                text = line.split("#", 1)[0].strip()
                if not text:
                    continue
                try:
                    ids.append(int(text))
                except ValueError:
                    raise ValueError(f"{path}, line {row}: expected one integer sample id, got {text!r}") from None
        if not ids:
            raise ValueError(f"coreset file {path} lists no sample ids")
        return cls(num_samples, np.asarray(ids, dtype=np.int64))

    def is_preparation(self, epoch: int) -> bool:
        return False

    def coreset(self) -> np.ndarray:
        return self.keep_ids.copy()

    def min_kept_count(self, epochs: int, global_batch: int) -> int:
        return len(self.keep_ids)

    def _keep_indices(self, epoch):
        return self.keep_ids.copy()

    def _finish_epoch(self, epoch, epoch_loss):
        kept = len(self.keep_ids)
        return EpochRecord(epoch, MUTATION, 0, self.num_samples - kept, kept, epoch_loss)

    def _state(self):
        return {"kind": "StaticCoreset", "keep_ids": torch.from_numpy(self.keep_ids)}

    def _parse_state(self, state):
        check_state_kind(state, "StaticCoreset")
        if not np.array_equal(state["keep_ids"].numpy(), self.keep_ids):
            raise ValueError("state_dict was saved with a different coreset id list")
        return lambda: None
