"""The interface every pruning schedule shares: Scan, ScanReference and the baselines (none, random,
InfoBatch, static).

A training loop drives it epoch by epoch, and calls nothing that is not declared here:

    schedule.begin_epoch(epoch)                  # the epoch starts here (its kept set is fixed from now)
    schedule.kept_count(epoch), schedule.phase_name(epoch)  # for logs: read the begun epoch, start nothing
    ids = schedule.epoch_indices(epoch)          # the sample ids this epoch trains on (sorted list), or
    ids = schedule.epoch_shard(epoch, rank, world_size, seed)  # this rank's ids, in order, without the list
    if schedule.needs_losses(epoch):             # per batch, per-sample losses of the global batch:
        schedule.observe_batch(ids, loss_a, loss_b)  #   torch tensors on the device (no host sync), or
        schedule.observe(ids, loss_a, loss_b)        #   host arrays
    weights = schedule.sample_weights(ids)       # per-sample loss weights on ids' device, or None
    schedule.flush()                             # at log steps: device-side results reach the host
    schedule.end_epoch(epoch, epoch_loss)
    schedule.finds_candidates()                  # whether candidates() means anything (SCAN's cycle)
    schedule.candidates(kind), schedule.coreset()  # what the last preparation found; the kept ids

epoch_indices(e) / epoch_shard(e, ...) / epoch_kept_set(e) may be repeated (a data loader may ask twice)
and return the same ids; called for the next epoch before begin_epoch(e), they begin it (a loop that
only reads ids needs no other call). kept_count(e) and phase_name(e) never begin an epoch. Everything
else out of this order raises ValueError. The order is part
of the state, so a run resumed from state_dict() continues exactly. Each
strategy's state carries its full configuration, and loading a state saved with
another configuration raises ValueError naming the knobs that differ.
"""
from abc import ABC, abstractmethod
from dataclasses import asdict
from typing import Callable, NamedTuple, Optional

import numpy as np
import torch

from scan_fast.schedule.inputs import check_int, check_real
from scan_fast.schedule.stats import EpochRecord, ScheduleStats

_OUT_OF_ORDER = "epochs called out of order: "


class PendingBatch(NamedTuple):
    """One observed batch kept on the device until the next flush (the default `_device_batch`)."""
    ids: torch.Tensor
    loss_a: torch.Tensor
    loss_b: torch.Tensor


_MAX_PENDING = 1024  # device batches kept before observe_batch flushes on its own


def check_saved_config(kind: str, saved: dict, own: dict) -> None:
    """ValueError naming each knob whose saved value differs from this schedule's."""
    differing = [k for k in own if saved.get(k) != own[k]]
    if differing:
        raise ValueError(f"state_dict was saved by a {kind} with "
                         + ", ".join(f"{k}={saved.get(k)!r}" for k in differing) + "; this schedule has "
                         + ", ".join(f"{k}={own[k]!r}" for k in differing))


class PruningSchedule(ABC):
    def __init__(self, num_samples: int):
        self.num_samples = check_int("num_samples", num_samples, minimum=1)
        self._epoch = 0          # the epoch in progress, or the next one to begin
        self._in_epoch = False   # epoch self._epoch begun, end_epoch not yet
        self._records = []
        self._pending = []       # device-side batches not yet flushed to the host

    # -- the loop's calls --------------------------------------------------------------
    def begin_epoch(self, epoch: int) -> None:
        """Start `epoch` (the next one): its kept set is decided here. Repeating it for the epoch in
        progress does nothing."""
        self._enter_epoch(epoch, "begin_epoch")

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
        """One batch: its sample ids and both directions' per-sample losses, as host arrays.

        Scan returns the batch's (ILL, RED) candidate counts, (0, 0) outside preparation epochs.
        """
        if not self._in_epoch:
            raise ValueError(f"{_OUT_OF_ORDER}observe() before begin_epoch({self._epoch})")
        self.flush()  # device batches observed earlier come first
        return self._observe(sample_ids, loss_a, loss_b)

    def observe_batch(self, sample_ids: torch.Tensor, loss_a: torch.Tensor, loss_b: torch.Tensor) -> None:
        """One batch as tensors on one device: nothing is read back until `flush()`.

        The same result as `observe` on the same values, in the same batch order. Only
        type and shape are checked here; ids in range and finite losses are the caller's
        contract (the trainer checks the loss at every log step).
        """
        if not self._in_epoch:
            raise ValueError(f"{_OUT_OF_ORDER}observe_batch() before begin_epoch({self._epoch})")
        if not all(isinstance(t, torch.Tensor) and t.dim() == 1 for t in (sample_ids, loss_a, loss_b)):
            raise TypeError("observe_batch takes 1-D torch tensors (sample_ids, loss_a, loss_b)")
        if not sample_ids.shape == loss_a.shape == loss_b.shape:
            raise ValueError(f"observe_batch: sample_ids {tuple(sample_ids.shape)}, loss_a {tuple(loss_a.shape)} "
                             f"and loss_b {tuple(loss_b.shape)} must have one length")
        pending = self._device_batch(sample_ids, loss_a.detach(), loss_b.detach())
        if pending is not None:
            self._pending.append(pending)
            if len(self._pending) >= _MAX_PENDING:  # bound the device memory of a caller that never flushes
                self.flush()

    def flush(self) -> None:
        """Bring the batches `observe_batch` kept on the device into the schedule (one bulk copy)."""
        if self._pending:
            pending, self._pending = self._pending, []
            self._drain(pending)

    def needs_losses(self, epoch: int) -> bool:
        """Whether `epoch`'s per-sample losses must be observed (known once the epochs before it ended)."""
        return self.is_preparation(epoch)

    @abstractmethod
    def is_preparation(self, epoch: int) -> bool:
        """True when `epoch` collects SCAN candidates (known once the epochs before it ended)."""

    def kept_count(self, epoch: int) -> int:
        """How many ids the begun `epoch` trains on (a count of the kept set: the id list is never built)."""
        return len(self._kept_set(self._begun(epoch, "kept_count")))

    def _begun(self, epoch, caller: str) -> int:
        """`epoch` if it is the epoch in progress; else ValueError (a reader never starts an epoch)."""
        epoch = check_int("epoch", epoch, minimum=0)
        if not (self._in_epoch and epoch == self._epoch):
            raise ValueError(f"{_OUT_OF_ORDER}{caller}({epoch}) before begin_epoch({epoch})"
                             + (f" (epoch {self._epoch} is in progress)" if self._in_epoch else ""))
        return epoch

    def min_kept_count(self, epochs: int, global_batch: int) -> int:
        """The fewest ids an epoch of a run of `epochs` epochs at `global_batch` samples a step can keep,
        from the knobs alone (before any epoch; InfoBatch, whose draw is random, gives its expected
        fewest). A trainer refuses a run in which this is below one global batch: such an epoch would
        train no step."""
        return self.num_samples

    def phase_name(self, epoch: int) -> str:
        """The epoch's phase for logs: SCAN's own (warmup / preparation / mutation) where the schedule
        follows SCAN's cycle (any epoch known so far), else "pruning" or "full" (the begun epoch)."""
        return "pruning" if self.kept_count(epoch) < self.num_samples else "full"

    def sample_weights(self, sample_ids) -> Optional[torch.Tensor]:
        """Per-sample loss weights of a batch (on ids' device), or None for an unweighted mean."""
        return None

    def epoch_note(self, epoch: int) -> str:
        """What the schedule decided at the end of `epoch`, for the epoch's log line ("" when nothing to say)."""
        return ""

    def finds_candidates(self) -> bool:
        """True for the schedules that collect SCAN's candidates (reports give their precision / recall)."""
        return False

    def candidates(self, kind: Optional[str] = None) -> np.ndarray:
        """Sorted candidates of the last completed preparation (none for schedules without one)."""
        return np.zeros(0, dtype=np.int64)

    @abstractmethod
    def coreset(self) -> np.ndarray:
        """Sorted ids the schedule would keep: what `coreset export` writes."""

    def coreset_set(self) -> "KeptSet":
        """The coreset as a bitset (KeptSet): what a run keeps in its folder, N / 8 bytes."""
        from scan_fast.schedule.shard import KeptSet

        return KeptSet.of(self.coreset(), self.num_samples)

    def end_epoch(self, epoch: int, epoch_loss: float) -> None:
        """Close `epoch`; epoch_loss is its mean per-sample loss (drives the warm-up test)."""
        epoch = check_int("epoch", epoch, minimum=0)
        if not self._in_epoch or epoch != self._epoch:
            expected = f"end_epoch({self._epoch}, ...)" if self._in_epoch else f"begin_epoch({self._epoch})"
            raise ValueError(f"{_OUT_OF_ORDER}end_epoch({epoch}, ...) but the next call must be {expected}")
        epoch_loss = check_real("epoch_loss", epoch_loss)
        self.flush()
        self._records.append(self._finish_epoch(epoch, epoch_loss))
        self._epoch, self._in_epoch = epoch + 1, False

    def stats(self) -> ScheduleStats:
        """Per-epoch records (phase, candidates, pruned, kept) of the completed epochs."""
        return ScheduleStats(list(self._records))

    # -- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Plain Python values only, so torch.load(weights_only=True) can read it back."""
        self.flush()
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
        self._epoch, self._in_epoch, self._records, self._pending = epoch, in_epoch, records, []
        apply_own()

    # -- what a strategy defines ----------------------------------------------------------
    def _begin_epoch(self, epoch: int) -> None:
        """The epoch starts (begin_epoch, or the first epoch_indices / epoch_shard / epoch_kept_set)."""

    @abstractmethod
    def _keep_indices(self, epoch: int) -> np.ndarray:
        """Sorted ids trained on in `epoch`; the same on every call for one epoch."""

    def _kept_set(self, epoch: int) -> "KeptSet":
        """The ids of _keep_indices(epoch) as a bitset; strategies that hold one return it directly."""
        from scan_fast.schedule.shard import KeptSet

        return KeptSet.of(self._keep_indices(epoch), self.num_samples)

    def _observe(self, sample_ids, loss_a, loss_b):
        """One batch of per-sample losses; ignored unless the strategy needs them."""

    def _device_batch(self, sample_ids: torch.Tensor, loss_a: torch.Tensor, loss_b: torch.Tensor):
        """What to keep on the device for one batch (None: nothing). By default the batch itself,
        replayed through `_observe` at the next flush; Scan keeps only its chosen ids."""
        if not self.needs_losses(self._epoch):
            return None
        # copies: the caller may reuse its buffers for the next batch before the flush (FFCV does)
        return PendingBatch(sample_ids.clone(), loss_a.clone(), loss_b.clone())

    def _drain(self, pending: list) -> None:
        """Apply the kept batches (PendingBatch) in order: one copy of all ids and one of all losses to the host."""
        sizes = [p.ids.shape[0] for p in pending]
        ids = torch.cat([p.ids for p in pending]).cpu().numpy()
        losses_a, losses_b = torch.stack([torch.cat([p.loss_a.float() for p in pending]),
                                          torch.cat([p.loss_b.float() for p in pending])]).cpu().numpy()
        bounds = np.cumsum(sizes)[:-1]
        for batch_ids, batch_a, batch_b in zip(np.split(ids, bounds), np.split(losses_a, bounds),
                                               np.split(losses_b, bounds)):
            self._observe(batch_ids, batch_a, batch_b)

    @abstractmethod
    def _finish_epoch(self, epoch: int, epoch_loss: float) -> EpochRecord:
        """Close the epoch and say what it trained on."""

    def _state(self) -> dict:
        return {}

    def _parse_state(self, state: dict) -> Callable[[], None]:
        """Validate the strategy's part of `state`; return a function that applies it."""
        return lambda: None


# What the strategies with per-id scores and epoch plans share (infobatch.py, seta.py).
SCORE_DTYPE = np.float16  # InfoBatch's and SeTa's per-id score: 2 bytes a sample on every rank
SCORE_MAX = float(np.finfo(np.float16).max)  # larger losses are stored as this (inf marks "never seen")
PLAN_CHUNK = 1 << 22  # ids per step of an epoch plan (a multiple of 8: whole bytes of bits)


class EpochPlan(NamedTuple):
    """An epoch's ids, fixed at its start (InfoBatch, SeTa): the epoch, its kept ids (InfoBatch: a KeptSet
    over the pruned ids' bitset; SeTa: sorted int64), and for InfoBatch the upweighted ids as
    little-endian bits (N / 8 bytes)."""
    epoch: int
    kept: object
    upweighted: Optional[np.ndarray] = None


def check_state_kind(state, kind):
    """ValueError unless a state_dict was saved by the strategy `kind`."""
    if state.get("kind") != kind:
        raise ValueError(f"state_dict is for {state.get('kind')!r}, not {kind}")


def every_id(num_samples: int):
    """All ids as a KeptSet, without listing them (the coreset of schedules that keep everything)."""
    from scan_fast.schedule.shard import KeptSet

    return KeptSet.everything(num_samples)
