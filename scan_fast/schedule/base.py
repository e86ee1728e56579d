"""The interface every pruning schedule shares (Scan; later random, InfoBatch, static, none).

A training loop drives it epoch by epoch:

    ids = schedule.epoch_indices(epoch)        # the sample ids this epoch trains on (sorted list), or
    ids = schedule.epoch_shard(epoch, rank, world_size, seed)  # this rank's ids, in order, without the list
    schedule.observe(sample_ids, loss_a, loss_b)  # per batch, per-sample losses
    schedule.end_epoch(epoch, epoch_loss)

epoch_indices(e) / epoch_shard(e, ...) may be repeated (a data loader may ask twice) and returns the
same ids; everything else out of this order raises ValueError. The order is part
of the state, so a run resumed from state_dict() continues exactly.
"""
from abc import ABC, abstractmethod
from dataclasses import asdict
from typing import Callable

import numpy as np

from scan_fast.schedule.inputs import check_int, check_real
from scan_fast.schedule.stats import EpochRecord, ScheduleStats

_OUT_OF_ORDER = "epochs called out of order: "


class PruningSchedule(ABC):
    def __init__(self, num_samples: int):
        self.num_samples = check_int("num_samples", num_samples, minimum=1)
        self._epoch = 0          # the epoch in progress, or the next one to begin
        self._in_epoch = False   # epoch_indices(self._epoch) called, end_epoch not yet
        self._records = []

    # -- the loop's calls --------------------------------------------------------------
    def epoch_indices(self, epoch: int) -> np.ndarray:
        """Sorted ids this epoch trains on; the first call for an epoch begins it."""
        return self._keep_indices(self._enter_epoch(epoch, "epoch_indices"))

    def epoch_shard(self, epoch: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                    shuffle: bool = True) -> np.ndarray:
        """The ids rank `rank` of `world_size` reads in `epoch`, in order, as a 1-D int64 array.

        The kept ids in an order keyed by (seed, epoch); rank r reads order positions
        r, r + W, r + 2W, ... (floor(K / W) ids, the same count on every rank, none on two
        ranks). Computed from the kept bitset, never from the global list or a global
        permutation (scan_fast/schedule/shard.py). Begins the epoch like epoch_indices.
        """
        from scan_fast.schedule.shard import epoch_shard  # needs the compiled engine: imported on use

        epoch = self._enter_epoch(epoch, "epoch_shard")
        return epoch_shard(self._kept_set(epoch), epoch, rank, world_size, seed, shuffle)

    def epoch_kept_set(self, epoch: int) -> "KeptSet":
        """The ids this epoch trains on as a bitset (KeptSet); begins the epoch like epoch_indices."""
        return self._kept_set(self._enter_epoch(epoch, "epoch_kept_set"))

    def _enter_epoch(self, epoch, caller: str) -> int:
        epoch = check_int("epoch", epoch, minimum=0)
        if self._in_epoch and epoch != self._epoch:
            raise ValueError(f"{_OUT_OF_ORDER}{caller}({epoch}) while epoch {self._epoch} "
                             f"is in progress; call end_epoch({self._epoch}, loss) first")
        if not self._in_epoch:
            if epoch != self._epoch:
                raise ValueError(f"{_OUT_OF_ORDER}{caller}({epoch}) but the next epoch is {self._epoch}")
            self._begin_epoch(epoch)
            self._in_epoch = True
        return epoch

    def observe(self, sample_ids, loss_a, loss_b):
        """One batch: its sample ids and both directions' per-sample losses (numpy or torch, any device).

        Scan returns the batch's (ILL, RED) candidate counts, (0, 0) outside preparation epochs.
        """
        if not self._in_epoch:
            raise ValueError(f"{_OUT_OF_ORDER}observe() before epoch_indices({self._epoch})")
        return self._observe(sample_ids, loss_a, loss_b)

    def end_epoch(self, epoch: int, epoch_loss: float) -> None:
        """Close `epoch`; epoch_loss is its mean per-sample loss (drives the warm-up test)."""
        epoch = check_int("epoch", epoch, minimum=0)
        if not self._in_epoch or epoch != self._epoch:
            expected = f"end_epoch({self._epoch}, ...)" if self._in_epoch else f"epoch_indices({self._epoch})"
            raise ValueError(f"{_OUT_OF_ORDER}end_epoch({epoch}, ...) but the next call must be {expected}")
        epoch_loss = check_real("epoch_loss", epoch_loss)
        self._records.append(self._finish_epoch(epoch, epoch_loss))
        self._epoch, self._in_epoch = epoch + 1, False

    def stats(self) -> ScheduleStats:
        """Per-epoch records (phase, candidates, pruned, kept) of the completed epochs."""
        return ScheduleStats(list(self._records))

    # -- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Plain Python values only, so torch.load(weights_only=True) can read it back."""
        return {"num_samples": self.num_samples, "epoch": self._epoch, "in_epoch": self._in_epoch,
                "records": [asdict(r) for r in self._records], **self._state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state_dict(); on any error (ValueError) this schedule is left unchanged."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from state_dict(), got {type(state).__name__}")
        try:
            if state["num_samples"] != self.num_samples:
                raise ValueError(f"state_dict is for num_samples={state['num_samples']!r}, "
                                 f"this schedule has num_samples={self.num_samples}")
            epoch = check_int("state_dict['epoch']", state["epoch"], minimum=0)
            in_epoch = state["in_epoch"]
            if not isinstance(in_epoch, bool):
                raise ValueError(f"state_dict['in_epoch'] must be a bool, got {in_epoch!r}")
            records = [EpochRecord(**r) for r in state["records"]]
            apply_own = self._parse_state(state)
        except KeyError as err:
            raise ValueError(f"state_dict is missing the key {err}") from None
        except TypeError as err:
            raise ValueError(f"state_dict is malformed: {err}") from None
        self._epoch, self._in_epoch, self._records = epoch, in_epoch, records
        apply_own()

    # -- what a strategy defines ----------------------------------------------------------
    def _begin_epoch(self, epoch: int) -> None:
        """First epoch_indices(epoch) call of an epoch."""

    @abstractmethod
    def _keep_indices(self, epoch: int) -> np.ndarray:
        """Sorted ids trained on in `epoch`; the same on every call for one epoch."""

    def _kept_set(self, epoch: int) -> "KeptSet":
        """The ids of _keep_indices(epoch) as a bitset; strategies that hold one return it directly."""
        from scan_fast.schedule.shard import KeptSet

        return KeptSet.of(self._keep_indices(epoch), self.num_samples)

    def _observe(self, sample_ids, loss_a, loss_b):
        """One batch of per-sample losses; ignored unless the strategy needs them."""

    @abstractmethod
    def _finish_epoch(self, epoch: int, epoch_loss: float) -> EpochRecord:
        """Close the epoch and say what it trained on."""

    def _state(self) -> dict:
        return {}

    def _parse_state(self, state: dict) -> Callable[[], None]:
        """Validate the strategy's part of `state`; return a function that applies it."""
        return lambda: None
