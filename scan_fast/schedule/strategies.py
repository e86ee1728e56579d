"""The baselines SCAN is compared against, with the same API as `Scan`.

- `NoPruning`: every sample, every epoch.
- `RandomPruning`: prunes as many samples per epoch as a SCAN run would (given
  per-epoch counts, or SCAN's own warm-up and cosine schedule over the
  candidate count a preparation epoch would produce), chosen uniformly.
- `InfoBatch`: each epoch, prunes each below-mean-loss sample with probability
  `prune_ratio`, rescales the gradient of the kept below-mean ones by
  1 / (1 - prune_ratio), and trains on the full data in the final epochs.
- `StaticCoreset`: the same fixed id list every epoch (e.g. an exported coreset).

Every epoch's kept ids are a pure function of the seed, the epoch and the state
at the epoch's start, so `epoch_indices(e)` may be called any number of times
(FFCV calls it twice for epoch 0) and a resumed run repeats the same ids.
"""
import math
import os
from typing import Dict, Optional

import numpy as np
import torch

from scan_fast.schedule.base import PruningSchedule

MODES = ("both", "redundant", "ill_matched")


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _fraction(name, value, high_inclusive=True):
    ok = 0.0 <= value <= 1.0 if high_inclusive else 0.0 <= value < 1.0
    if not ok:
        bound = "[0, 1]" if high_inclusive else "[0, 1)"
        raise ValueError(f"{name} must be in {bound}, got {value!r}")
    return float(value)


def _ids_array(sample_ids, num_samples):
    if torch.is_tensor(sample_ids):
        sample_ids = sample_ids.detach().cpu().numpy()
    ids = np.asarray(sample_ids).reshape(-1)
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"sample_ids must be integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64, copy=False)
    if ids.size and (ids.min() < 0 or ids.max() >= num_samples):
        bad = ids[(ids < 0) | (ids >= num_samples)][0]
        raise ValueError(f"sample id {bad} out of range [0, {num_samples})")
    return ids


def _loss_array(name, loss, size):
    if torch.is_tensor(loss):
        loss = loss.detach().float().cpu().numpy()
    loss = np.asarray(loss, dtype=np.float64).reshape(-1)
    if loss.shape[0] != size:
        raise ValueError(f"{name} has {loss.shape[0]} values for {size} sample ids")
    return loss


def cosine_rate(step: int, t_cos: int) -> float:
    """SCAN's share of candidates pruned in mutation epoch `step` (1..t_cos) of a cycle."""
    return 0.5 * (1.0 + math.cos(math.pi * (t_cos - step) / t_cos))


def _kept_after_pruning(num_samples: int, pruned: np.ndarray) -> np.ndarray:
    keep = np.ones(num_samples, dtype=bool)
    keep[pruned] = False
    return np.flatnonzero(keep)


class NoPruning(PruningSchedule):
    """The full data set every epoch."""

    def __init__(self, num_samples: int):
        self.num_samples = _positive_int("num_samples", num_samples)
        self.epoch = 0

    def epoch_indices(self, epoch: int) -> np.ndarray:
        return np.arange(self.num_samples, dtype=np.int64)

    def is_preparation(self, epoch: int) -> bool:
        return False

    def observe(self, sample_ids, loss_a, loss_b) -> None:
        return None

    def end_epoch(self, epoch: int, epoch_mean_loss: float) -> None:
        self.epoch = int(epoch) + 1

    def state_dict(self) -> dict:
        return {"num_samples": self.num_samples, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        if int(state["num_samples"]) != self.num_samples:
            raise ValueError(f"state is for {state['num_samples']} samples, this schedule has {self.num_samples}")
        self.epoch = int(state["epoch"])

    def coreset(self) -> np.ndarray:
        return np.arange(self.num_samples, dtype=np.int64)

    def stats(self) -> dict:
        return {"strategy": "none", "epoch": self.epoch}


class RandomPruning(PruningSchedule):
    """Uniform random pruning at SCAN's per-epoch counts.

    With `prune_counts` ({epoch: count}, e.g. from a SCAN run's log) the counts
    are exactly those. Without, the schedule is SCAN's: full-data warm-up until
    the epoch loss improves by less than `prune_threshold`, then cycles of one
    preparation epoch (full data; counts the candidates SCAN would take, int(B *
    rho) per kind and batch) and `t_cos` epochs pruning round-down(rate(e) *
    candidates) samples drawn uniformly from the whole data set.
    """

    def __init__(
        self,
        num_samples: int,
        prune_counts: Optional[Dict[int, int]] = None,
        rho_ill: float = 0.35,
        rho_red: float = 0.35,
        t_cos: int = 3,
        prune_threshold: float = 0.3,
        mode: str = "both",
        seed: int = 0,
    ):
        self.num_samples = _positive_int("num_samples", num_samples)
        self.t_cos = _positive_int("t_cos", t_cos)
        self.rho_ill = _fraction("rho_ill", rho_ill)
        self.rho_red = _fraction("rho_red", rho_red)
        self.prune_threshold = float(prune_threshold)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.seed = int(seed)
        self.prune_counts = None
        if prune_counts is not None:
            self.prune_counts = {}
            for epoch, count in dict(prune_counts).items():
                if not 0 <= int(count) <= self.num_samples:
                    raise ValueError(
                        f"prune_counts[{epoch}] = {count} is outside [0, num_samples={self.num_samples}]")
                self.prune_counts[int(epoch)] = int(count)
        self.epoch = 0  # the epoch `observe` and `end_epoch` refer to
        self.start_epoch: Optional[int] = None  # first preparation epoch
        self.prev_loss = math.inf
        self.candidate_count = 0  # from the last completed preparation epoch
        self._collecting = 0

    def _cycle_step(self, epoch: int) -> Optional[int]:
        if self.start_epoch is None or epoch < self.start_epoch:
            return None
        return (epoch - self.start_epoch) % (self.t_cos + 1)

    def is_preparation(self, epoch: int) -> bool:
        return self.prune_counts is None and self._cycle_step(epoch) == 0

    def prune_count(self, epoch: int) -> int:
        """How many samples epoch `epoch` prunes."""
        if self.prune_counts is not None:
            return self.prune_counts.get(int(epoch), 0)
        step = self._cycle_step(epoch)
        if not step:
            return 0
        return int(math.floor(cosine_rate(step, self.t_cos) * self.candidate_count))

    def epoch_indices(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, int(epoch)])
        pruned = rng.choice(self.num_samples, size=self.prune_count(epoch), replace=False)
        return _kept_after_pruning(self.num_samples, pruned)

    def observe(self, sample_ids, loss_a, loss_b) -> None:
        if not self.is_preparation(self.epoch):
            return
        batch = _ids_array(sample_ids, self.num_samples).shape[0]
        ill = int(batch * self.rho_ill) if self.mode in ("both", "ill_matched") else 0
        red = int(batch * self.rho_red) if self.mode in ("both", "redundant") else 0
        self._collecting += ill + red

    def end_epoch(self, epoch: int, epoch_mean_loss: float) -> None:
        epoch = int(epoch)
        if self.is_preparation(epoch):
            self.candidate_count = self._collecting
        self._collecting = 0
        if self.prune_counts is None and self.start_epoch is None:
            loss = float(epoch_mean_loss)
            if not math.isfinite(loss):
                raise ValueError(f"epoch_mean_loss of epoch {epoch} is not finite: {loss}")
            if (self.prev_loss - loss) / self.prev_loss < self.prune_threshold:
                self.start_epoch = epoch + 1
            else:
                self.prev_loss = loss
        self.epoch = epoch + 1

    def state_dict(self) -> dict:
        return {
            "num_samples": self.num_samples,
            "epoch": self.epoch,
            "start_epoch": -1 if self.start_epoch is None else self.start_epoch,
            "prev_loss": self.prev_loss,
            "candidate_count": self.candidate_count,
            "collecting": self._collecting,
        }

    def load_state_dict(self, state: dict) -> None:
        if int(state["num_samples"]) != self.num_samples:
            raise ValueError(f"state is for {state['num_samples']} samples, this schedule has {self.num_samples}")
        self.epoch = int(state["epoch"])
        self.start_epoch = None if int(state["start_epoch"]) < 0 else int(state["start_epoch"])
        self.prev_loss = float(state["prev_loss"])
        self.candidate_count = int(state["candidate_count"])
        self._collecting = int(state["collecting"])

    def coreset(self) -> np.ndarray:
        return self.epoch_indices(self.epoch)

    def stats(self) -> dict:
        return {
            "strategy": "random",
            "epoch": self.epoch,
            "start_epoch": self.start_epoch,
            "candidate_count": self.candidate_count,
        }


class InfoBatch(PruningSchedule):
    """InfoBatch (Qin et al., ICLR 2024): soft pruning of well-learned samples.

    A sample's score is its latest observed loss (mean of the two directions).
    An epoch prunes each sample scored below the mean score with probability
    `prune_ratio`; epochs from int(delta * num_epochs) on train on everything.
    `sample_weights` gives 1 / (1 - prune_ratio) for the kept below-mean samples
    (keeping the expected gradient unbiased) and 1 elsewhere. Samples never
    observed are not pruned, so the first epoch is full.
    """

    def __init__(self, num_samples: int, num_epochs: int, prune_ratio: float = 0.5, delta: float = 0.875,
                 seed: int = 0):
        self.num_samples = _positive_int("num_samples", num_samples)
        self.num_epochs = _positive_int("num_epochs", num_epochs)
        self.prune_ratio = _fraction("prune_ratio", prune_ratio, high_inclusive=False)
        self.delta = _fraction("delta", delta)
        self.seed = int(seed)
        self.scores = np.full(self.num_samples, np.inf)
        self.epoch = 0
        self._plan_epoch = -1
        self._plan_kept = None
        self._plan_upweighted = None

    def full_data_from(self) -> int:
        return int(self.delta * self.num_epochs)

    def is_preparation(self, epoch: int) -> bool:
        return False

    def _plan(self, epoch: int):
        # Computed once per epoch from the scores at its start: later observe()
        # calls in the same epoch must not change which ids it serves.
        if self._plan_epoch != epoch:
            well_learned = np.zeros(self.num_samples, dtype=bool)
            seen = np.isfinite(self.scores)
            if epoch < self.full_data_from() and seen.any():
                well_learned = seen & (self.scores < self.scores[seen].mean())
            rng = np.random.default_rng([self.seed, int(epoch)])
            pruned = well_learned & (rng.random(self.num_samples) < self.prune_ratio)
            self._plan_epoch = epoch
            self._plan_kept = np.flatnonzero(~pruned)
            self._plan_upweighted = well_learned & ~pruned
        return self._plan_kept, self._plan_upweighted

    def epoch_indices(self, epoch: int) -> np.ndarray:
        return self._plan(int(epoch))[0].copy()

    def sample_weights(self, sample_ids, epoch: int) -> np.ndarray:
        """Loss weight per sample for this epoch: 1 / (1 - prune_ratio) for kept well-learned ones."""
        ids = _ids_array(sample_ids, self.num_samples)
        upweighted = self._plan(int(epoch))[1][ids]
        return np.where(upweighted, 1.0 / (1.0 - self.prune_ratio), 1.0).astype(np.float32)

    def observe(self, sample_ids, loss_a, loss_b) -> None:
        ids = _ids_array(sample_ids, self.num_samples)
        if self._plan_epoch != self.epoch:
            self._plan(self.epoch)  # freeze this epoch's plan before its scores change
        loss = 0.5 * (_loss_array("loss_a", loss_a, ids.shape[0]) + _loss_array("loss_b", loss_b, ids.shape[0]))
        self.scores[ids] = loss

    def end_epoch(self, epoch: int, epoch_mean_loss: float) -> None:
        self.epoch = int(epoch) + 1

    def state_dict(self) -> dict:
        return {
            "num_samples": self.num_samples,
            "epoch": self.epoch,
            "scores": torch.from_numpy(self.scores.copy()),
        }

    def load_state_dict(self, state: dict) -> None:
        if int(state["num_samples"]) != self.num_samples:
            raise ValueError(f"state is for {state['num_samples']} samples, this schedule has {self.num_samples}")
        self.epoch = int(state["epoch"])
        self.scores = state["scores"].double().numpy().copy()
        self._plan_epoch = -1

    def coreset(self) -> np.ndarray:
        return np.arange(self.num_samples, dtype=np.int64)

    def stats(self) -> dict:
        seen = np.isfinite(self.scores)
        return {
            "strategy": "infobatch",
            "epoch": self.epoch,
            "mean_score": float(self.scores[seen].mean()) if seen.any() else None,
        }


class StaticCoreset(PruningSchedule):
    """Trains on one fixed list of sample ids every epoch."""

    def __init__(self, num_samples: int, keep_ids):
        self.num_samples = _positive_int("num_samples", num_samples)
        ids = np.asarray(keep_ids)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError(f"keep_ids must be a non-empty 1-d list of ids, got shape {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"keep_ids must be integers, got dtype {ids.dtype}")
        bad = np.flatnonzero((ids < 0) | (ids >= self.num_samples))
        if bad.size:
            raise ValueError(
                f"keep_ids[{bad[0]}] = {ids[bad[0]]} is outside [0, num_samples={self.num_samples})")
        unique, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"keep_ids lists sample id {unique[counts > 1][0]} more than once")
        self.keep_ids = unique.astype(np.int64)
        self.epoch = 0

    @classmethod
    def from_file(cls, path, num_samples: int) -> "StaticCoreset":
        """Reads ids from a .npy file or a text file with one id a line (# comments allowed)."""
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

    def epoch_indices(self, epoch: int) -> np.ndarray:
        return self.keep_ids.copy()

    def is_preparation(self, epoch: int) -> bool:
        return False

    def observe(self, sample_ids, loss_a, loss_b) -> None:
        return None

    def end_epoch(self, epoch: int, epoch_mean_loss: float) -> None:
        self.epoch = int(epoch) + 1

    def state_dict(self) -> dict:
        return {"num_samples": self.num_samples, "epoch": self.epoch, "keep_ids": torch.from_numpy(self.keep_ids)}

    def load_state_dict(self, state: dict) -> None:
        if int(state["num_samples"]) != self.num_samples:
            raise ValueError(f"state is for {state['num_samples']} samples, this schedule has {self.num_samples}")
        if not np.array_equal(state["keep_ids"].numpy(), self.keep_ids):
            raise ValueError("state was saved with a different coreset id list")
        self.epoch = int(state["epoch"])

    def coreset(self) -> np.ndarray:
        return self.keep_ids.copy()

    def stats(self) -> dict:
        return {"strategy": "static", "epoch": self.epoch, "kept": int(self.keep_ids.size)}
