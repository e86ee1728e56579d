"""Scan: the SCAN schedule on the C++ index engine (bitsets of sample ids).

Per preparation batch the candidate rule picks ids that go into bitsets: on the
host by the C++ engine (`observe`), or on the losses' device by the torch/Triton op
(`observe_batch`, which sends only the chosen ids to the host, at `flush`); both
give the same ids bit for bit. A mutation epoch draws its prune set from the candidates with a
counter-based generator keyed by (seed, epoch) and trains on the complement.
Every random draw is keyed by (seed, epoch, batch) and never by global state,
so a resumed run repeats an uninterrupted one exactly.
"""
import math
from typing import NamedTuple, Optional

import numpy as np
import torch

from scan_fast.index import SampleSet
from scan_fast.schedule.base import PruningSchedule, check_saved_config
from scan_fast.schedule.candidates import batch_candidates, masks_on_device, use_kernel
from scan_fast.schedule.config import ScanConfig, check_mode
from scan_fast.schedule.inputs import check_batch, check_int, check_real
from scan_fast.schedule.rates import (MUTATION, PREPARATION, WARMUP, batch_stream, cosine_rate,
                                      epoch_phase, fewest_kept_in_cycles, mutation_stream, prune_count, warmup_step)
from scan_fast.schedule.shard import KeptSet
from scan_fast.schedule.stats import EpochRecord


class CandidateSets(NamedTuple):
    """The ill-matched and redundant candidates a preparation epoch collects."""
    ill: SampleSet
    red: SampleSet


class PrunedSet(NamedTuple):
    """A mutation epoch's prune set, kept while the epoch's ids are asked for."""
    epoch: int
    pruned: SampleSet


class Scan(PruningSchedule):
    """SCAN dataset pruning (docs/scan-method.md); see PruningSchedule for the call order.

    scan = Scan(num_samples, rho_ill=0.35, rho_red=0.35, t_cos=3, prune_threshold=0.3,
                mode="both", seed=0, abs_ill=None, abs_red=None)
    """

    def __init__(self, num_samples, rho_ill=0.35, rho_red=0.35, t_cos=3, prune_threshold=0.3,
                 mode="both", seed=0, abs_ill=None, abs_red=None):
        self.config = ScanConfig(num_samples, rho_ill, rho_red, t_cos, prune_threshold, mode, seed,
                                 abs_ill, abs_red)
        super().__init__(self.config.num_samples)
        self._prev_loss = math.inf  # L_prev of the warm-up test
        self._start = None          # first preparation epoch, once warm-up has ended
        self._ill, self._red = SampleSet(num_samples), SampleSet(num_samples)  # last completed preparation
        self._new: Optional[CandidateSets] = None  # being collected: set exactly while a preparation epoch runs
        self._batch_index = 0
        self._pruned_cache: Optional[PrunedSet] = None  # epoch_indices may be asked twice

    def min_kept_count(self, epochs: int, global_batch: int) -> int:
        return fewest_kept_in_cycles(self.num_samples, epochs, self.config.t_cos, global_batch,
                                     self.config.per_batch_candidates(global_batch))

    def is_preparation(self, epoch: int) -> bool:
        """True when `epoch` collects candidates (known once the epochs before it ended)."""
        return epoch_phase(epoch, self._start, self.config.t_cos).phase == PREPARATION

    def phase_name(self, epoch: int) -> str:
        return epoch_phase(epoch, self._start, self.config.t_cos).phase

    def finds_candidates(self) -> bool:
        return True

    def candidates(self, kind: str = None) -> np.ndarray:
        """Sorted candidates of the last completed preparation: by mode, or "ill_matched"/"redundant"."""
        return self._by_mode(check_mode("kind", kind or self.config.mode)).to_array()

    def coreset(self) -> np.ndarray:
        """Sorted ids outside the last completed preparation's candidates (all ids before one)."""
        return self._by_mode(self.config.mode).complement()

    def coreset_set(self):
        """The coreset as a bitset, without listing its ids: the non-members of the candidates."""
        from scan_fast.schedule.shard import KeptSet

        return KeptSet(self._by_mode(self.config.mode), members=False)

    def _by_mode(self, mode) -> SampleSet:
        if mode == "both":
            return self._ill | self._red
        return self._red if mode == "redundant" else self._ill

    def _pruned(self, epoch, position) -> SampleSet:
        if self._pruned_cache is None or self._pruned_cache.epoch != epoch:
            candidates = self._by_mode(self.config.mode)
            count = prune_count(cosine_rate(position, self.config.t_cos), len(candidates))
            self._pruned_cache = PrunedSet(epoch, candidates.sample(count, self.config.seed, mutation_stream(epoch)))
        return self._pruned_cache.pruned

    def _begin_epoch(self, epoch):
        if self.is_preparation(epoch):
            self._new = CandidateSets(SampleSet(self.num_samples), SampleSet(self.num_samples))
            self._batch_index = 0

    def _keep_indices(self, epoch):
        phase, position = epoch_phase(epoch, self._start, self.config.t_cos)
        if phase != MUTATION:  # all ids; the engine writes them with its threads (about 2x np.arange at 1B)
            return SampleSet(self.num_samples).complement()
        return self._pruned(epoch, position).complement()

    def _kept_set(self, epoch):
        phase, position = epoch_phase(epoch, self._start, self.config.t_cos)
        if phase != MUTATION:
            return KeptSet.everything(self.num_samples)
        return KeptSet(self._pruned(epoch, position), members=False)

    def _observe(self, sample_ids, loss_a, loss_b):
        """Collect one batch's candidates; returns (ILL, RED) counts of the batch."""
        if self._new is None:  # not a preparation epoch: no host copy of the losses
            return 0, 0
        return self._collect(*check_batch(sample_ids, loss_a, loss_b, self.num_samples))

    def _collect(self, ids, loss_a, loss_b):
        """The per-batch rule on one checked batch (check_batch's arrays) into the sets being collected."""
        k_ill, k_red = self.config.batch_counts(len(ids))
        ill, red = batch_candidates(loss_a, loss_b, k_ill=k_ill, k_red=k_red, abs_ill=self.config.abs_ill,
                                    abs_red=self.config.abs_red, seed=self.config.seed,
                                    stream=batch_stream(self._epoch, self._batch_index))
        ill_ids, red_ids = ids.compress(ill), ids.compress(red)  # faster than ids[mask]
        self._new.ill.add(ill_ids)
        self._new.red.add(red_ids)
        self._batch_index += 1
        return len(ill_ids), len(red_ids)

    def _device_batch(self, sample_ids, loss_a, loss_b):
        """The batch's chosen ids on the device: (2, B), the id where a position is an ILL (row 0)
        or RED (row 1) candidate and -1 elsewhere, so the shape does not depend on the data."""
        if self._new is None:
            return None
        k_ill, k_red = self.config.batch_counts(sample_ids.shape[0])
        ill, red = masks_on_device(loss_a, loss_b, k_ill=k_ill, k_red=k_red, abs_ill=self.config.abs_ill,
                                   abs_red=self.config.abs_red, seed=self.config.seed,
                                   stream=batch_stream(self._epoch, self._batch_index), use_kernel=use_kernel(loss_a))
        self._batch_index += 1
        ids = sample_ids.to(ill.device, torch.int64)
        return torch.stack([torch.where(ill, ids, -1), torch.where(red, ids, -1)])

    def _drain(self, pending):
        ill, red = torch.cat(pending, dim=1).cpu().numpy()  # the rows of _device_batch's (2, B) blocks
        self._new.ill.add(ill[ill >= 0])
        self._new.red.add(red[red >= 0])

    def _finish_epoch(self, epoch, epoch_loss):
        phase, position = epoch_phase(epoch, self._start, self.config.t_cos)
        n = self.num_samples
        if phase == WARMUP:
            starts, self._prev_loss = warmup_step(self._prev_loss, epoch_loss, self.config.prune_threshold)
            if starts:
                self._start = epoch + 1
            return EpochRecord(epoch, phase, 0, 0, n, epoch_loss)
        if phase == PREPARATION:
            self._ill, self._red, self._new = self._new.ill, self._new.red, None
            return EpochRecord(epoch, phase, len(self._by_mode(self.config.mode)), 0, n, epoch_loss)
        pool = len(self._by_mode(self.config.mode))
        pruned = len(self._pruned(epoch, position))
        self._pruned_cache = None
        return EpochRecord(epoch, phase, pool, pruned, n - pruned, epoch_loss)

    def _state(self):
        new_ill, new_red = (None, None) if self._new is None else (self._new.ill.to_bytes(), self._new.red.to_bytes())
        return {"kind": "Scan", "config": self.config.as_dict(), "prev_loss": self._prev_loss,
                "start": self._start, "batch_index": self._batch_index,
                "ill": self._ill.to_bytes(), "red": self._red.to_bytes(), "new_ill": new_ill, "new_red": new_red}

    def _parse_state(self, state):
        if state["kind"] != "Scan":
            raise ValueError(f"state_dict is for {state['kind']}, not Scan")
        check_saved_config("Scan", state["config"], self.config.as_dict())
        start = state["start"] if state["start"] is None else check_int("state_dict['start']", state["start"], 0)
        prev_loss = check_real("state_dict['prev_loss']", state["prev_loss"], finite=False)
        batch_index = check_int("state_dict['batch_index']", state["batch_index"], minimum=0)
        sets = {key: self._load_set(state, key) for key in ("ill", "red", "new_ill", "new_red")}
        new = None if sets["new_ill"] is None or sets["new_red"] is None else CandidateSets(sets["new_ill"],
                                                                                               sets["new_red"])
        epoch = check_int("state_dict['epoch']", state["epoch"], minimum=0)
        collecting = state["in_epoch"] is True and epoch_phase(epoch, start, self.config.t_cos).phase == PREPARATION
        if (new is not None) != collecting:
            raise ValueError("state_dict's 'new_ill'/'new_red' must be set exactly while a preparation epoch "
                             f"is in progress (epoch={epoch}, in_epoch={state['in_epoch']!r})")

        def apply():
            self._prev_loss, self._start, self._batch_index = prev_loss, start, batch_index
            self._ill, self._red, self._new, self._pruned_cache = sets["ill"], sets["red"], new, None
        return apply

    def _load_set(self, state, key):
        data = state[key]
        if data is None and key.startswith("new_"):
            return None
        try:
            loaded = SampleSet.from_bytes(bytes(data))
        except (ValueError, TypeError, RuntimeError) as err:
            raise ValueError(f"state_dict['{key}'] is not a valid SampleSet: {err}") from None
        if loaded.num_samples != self.num_samples:
            raise ValueError(f"state_dict['{key}'] holds num_samples={loaded.num_samples}, "
                             f"this Scan has num_samples={self.num_samples}")
        return loaded
