"""ScanReference: SCAN written plainly on Python sets, like the authors' public code.

It is the oracle for `Scan` (same schedule, same counts and the same candidates; its own
prune draws) and the baseline of bench/bench_mutation.py. Candidate sets are sets of int
ids, the prune set is random.sample over them, the per-batch rule is the numpy oracle
scan_fast.schedule.candidates.batch_candidates_reference.
"""
import math
import random

import numpy as np

from scan_fast.schedule.base import PruningSchedule, check_saved_config
from scan_fast.schedule.candidates import batch_candidates_reference
from scan_fast.schedule.config import ScanConfig, check_mode
from scan_fast.schedule.inputs import check_batch, check_int, check_real
from scan_fast.schedule.rates import (MUTATION, PREPARATION, WARMUP, batch_stream, cosine_rate,
                                      epoch_phase, fewest_kept_in_cycles, prune_count, warmup_step)
from scan_fast.schedule.stats import EpochRecord


class ScanReference(PruningSchedule):
    def __init__(self, num_samples, rho_ill=0.35, rho_red=0.35, t_cos=3, prune_threshold=0.3,
                 mode="both", seed=0, abs_ill=None, abs_red=None):
        self.config = ScanConfig(num_samples, rho_ill, rho_red, t_cos, prune_threshold, mode, seed,
                                 abs_ill, abs_red)
        super().__init__(self.config.num_samples)
        self._prev_loss = math.inf  # L_prev of the warm-up test
        self._start = None          # first preparation epoch, once warm-up has ended
        self._ill, self._red = set(), set()          # candidates of the last completed preparation
        self._new_ill, self._new_red = set(), set()  # candidates being collected
        self._batch_index = 0

    def min_kept_count(self, epochs: int, global_batch: int) -> int:
        return fewest_kept_in_cycles(self.num_samples, epochs, self.config.t_cos, global_batch,
                                     self.config.per_batch_candidates(global_batch))

    def is_preparation(self, epoch: int) -> bool:
        return epoch_phase(epoch, self._start, self.config.t_cos).phase == PREPARATION

    def phase_name(self, epoch: int) -> str:
        return epoch_phase(epoch, self._start, self.config.t_cos).phase

    def candidates(self, kind: str = None) -> np.ndarray:
        """Sorted candidates of the last completed preparation: by mode, or "ill_matched"/"redundant"."""
        kind = check_mode("kind", kind or self.config.mode)
        return np.array(sorted(self._by_mode(self._ill, self._red, kind)), dtype=np.int64)

    def coreset(self) -> np.ndarray:
        dropped = self._by_mode(self._ill, self._red, self.config.mode)
        return np.array([i for i in range(self.num_samples) if i not in dropped], dtype=np.int64)

    @staticmethod
    def _by_mode(ill, red, mode):
        if mode == "both":
            return ill | red
        return red if mode == "redundant" else ill

    def _pruned(self, epoch, position):
        candidates = sorted(self._by_mode(self._ill, self._red, self.config.mode))
        count = prune_count(cosine_rate(position, self.config.t_cos), len(candidates))
        return set(random.Random(f"{self.config.seed}:{epoch}").sample(candidates, count))

    def _begin_epoch(self, epoch):
        if self.is_preparation(epoch):
            self._new_ill, self._new_red, self._batch_index = set(), set(), 0

    def _keep_indices(self, epoch):
        phase, position = epoch_phase(epoch, self._start, self.config.t_cos)
        if phase != MUTATION:
            return np.arange(self.num_samples, dtype=np.int64)
        pruned = self._pruned(epoch, position)
        return np.array([i for i in range(self.num_samples) if i not in pruned], dtype=np.int64)

    def _observe(self, sample_ids, loss_a, loss_b):
        """Collect one batch's candidates; returns (ILL, RED) counts of the batch."""
        if not self.is_preparation(self._epoch):
            return 0, 0
        ids, loss_a, loss_b = check_batch(sample_ids, loss_a, loss_b, self.num_samples)
        k_ill, k_red = self.config.batch_counts(len(ids))
        ill, red = batch_candidates_reference(loss_a, loss_b, k_ill=k_ill, k_red=k_red,
                                              abs_ill=self.config.abs_ill, abs_red=self.config.abs_red,
                                              seed=self.config.seed,
                                              stream=batch_stream(self._epoch, self._batch_index))
        self._new_ill.update(ids[ill].tolist())
        self._new_red.update(ids[red].tolist())
        self._batch_index += 1
        return int(ill.sum()), int(red.sum())

    def _finish_epoch(self, epoch, epoch_loss):
        phase, position = epoch_phase(epoch, self._start, self.config.t_cos)
        n = self.num_samples
        if phase == WARMUP:
            starts, self._prev_loss = warmup_step(self._prev_loss, epoch_loss, self.config.prune_threshold)
            if starts:
                self._start = epoch + 1
            return EpochRecord(epoch, phase, 0, 0, n, epoch_loss)
        if phase == PREPARATION:
            self._ill, self._red = self._new_ill, self._new_red
            self._new_ill, self._new_red = set(), set()
            found = len(self._by_mode(self._ill, self._red, self.config.mode))
            return EpochRecord(epoch, phase, found, 0, n, epoch_loss)
        pool = len(self._by_mode(self._ill, self._red, self.config.mode))
        pruned = prune_count(cosine_rate(position, self.config.t_cos), pool)
        return EpochRecord(epoch, phase, pool, pruned, n - pruned, epoch_loss)

    def _state(self):
        return {"kind": "ScanReference", "config": self.config.as_dict(), "prev_loss": self._prev_loss,
                "start": self._start, "batch_index": self._batch_index,
                "ill": sorted(self._ill), "red": sorted(self._red),
                "new_ill": sorted(self._new_ill), "new_red": sorted(self._new_red)}

    def _parse_state(self, state):
        if state["kind"] != "ScanReference":
            raise ValueError(f"state_dict is for {state['kind']}, not ScanReference")
        check_saved_config("ScanReference", state["config"], self.config.as_dict())
        sets = {}
        for key in ("ill", "red", "new_ill", "new_red"):
            sets[key] = {check_int(f"state_dict['{key}'] id", i, 0, self.num_samples - 1) for i in state[key]}
        prev_loss = check_real("state_dict['prev_loss']", state["prev_loss"], finite=False)
        start = state["start"] if state["start"] is None else check_int("state_dict['start']", state["start"], 0)
        batch_index = check_int("state_dict['batch_index']", state["batch_index"], minimum=0)

        def apply():
            self._prev_loss, self._start, self._batch_index = prev_loss, start, batch_index
            self._ill, self._red, self._new_ill, self._new_red = (sets[k] for k in ("ill", "red", "new_ill", "new_red"))
        return apply
