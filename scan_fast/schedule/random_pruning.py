"""`random`: prunes as many samples per epoch as a SCAN run would (given per-epoch counts, or SCAN's
own warm-up and cosine schedule applied to the candidate count a preparation epoch would produce),
chosen uniformly.
"""
import math

import numpy as np

from scan_fast.index import SampleSet
from scan_fast.schedule.base import PruningSchedule, check_saved_config, check_state_kind, every_id
from scan_fast.schedule.config import MODES
from scan_fast.schedule.inputs import check_batch, check_fraction, check_int, check_prune_threshold
from scan_fast.schedule.rates import (MUTATION, PREPARATION, WARMUP, EpochPhase, cosine_rate, epoch_phase,
                                      fewest_kept_in_cycles, prune_count, warmup_step)
from scan_fast.schedule.stats import EpochRecord


class RandomPruning(PruningSchedule):
    """Uniform random pruning at SCAN's per-epoch counts.

    With `prune_counts` ({epoch: count}, e.g. read off a SCAN run's records) the
    counts are exactly those. Without, the schedule is SCAN's: full-data warm-up
    until the epoch loss improves by less than `prune_threshold`, then cycles of
    one preparation epoch (full data; counts the int(B * rho) candidates per
    kind and batch that SCAN would take) and `t_cos` mutation epochs that prune
    round-down(rate(e) * candidates) samples drawn uniformly from all samples.
    """

    def __init__(self, num_samples, prune_counts=None, rho_ill=0.35, rho_red=0.35, t_cos=3,
                 prune_threshold=0.3, mode="both", seed=0):
        super().__init__(num_samples)
        self.rho_ill = check_fraction("rho_ill", rho_ill)
        self.rho_red = check_fraction("rho_red", rho_red)
        self.t_cos = check_int("t_cos", t_cos, minimum=1)
        self.prune_threshold = check_prune_threshold("prune_threshold", prune_threshold)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.seed = check_int("seed", seed, minimum=0)
        self.prune_counts = None
        if prune_counts is not None:
            self.prune_counts = {}
            for epoch, count in dict(prune_counts).items():
                count = check_int(f"prune_counts[{epoch}]", count, minimum=0)
                if count > self.num_samples:
                    raise ValueError(f"prune_counts[{epoch}] = {count} is more than num_samples={self.num_samples}")
                self.prune_counts[check_int("prune_counts epoch", epoch, minimum=0)] = count
        self._prev_loss = math.inf
        self._start = None        # first preparation epoch, once warm-up has ended
        self._candidates = 0      # count of the last completed preparation epoch
        self._collecting = 0
        self._drawn = None        # (epoch, its KeptSet): drawn once per epoch

    def _phase(self, epoch):
        if self.prune_counts is not None:
            return EpochPhase(MUTATION, 0) if self.prune_counts.get(epoch, 0) else EpochPhase(WARMUP, 0)
        return epoch_phase(epoch, self._start, self.t_cos)

    def is_preparation(self, epoch: int) -> bool:
        return self._phase(epoch).phase == PREPARATION

    def prune_count(self, epoch: int) -> int:
        """How many samples epoch `epoch` prunes (known once the previous epoch has ended)."""
        if self.prune_counts is not None:
            return self.prune_counts.get(epoch, 0)
        phase, position = self._phase(epoch)
        return prune_count(cosine_rate(position, self.t_cos), self._candidates) if phase == MUTATION else 0

    def coreset(self) -> np.ndarray:
        return np.arange(self.num_samples, dtype=np.int64)

    def min_kept_count(self, epochs: int, global_batch: int) -> int:
        if self.prune_counts is not None:
            return self.num_samples - max([c for e, c in self.prune_counts.items() if e < epochs], default=0)
        return fewest_kept_in_cycles(self.num_samples, epochs, self.t_cos, global_batch, self._per_batch(global_batch))

    def coreset_set(self):
        return every_id(self.num_samples)

    def _begin_epoch(self, epoch):
        self._collecting = 0
        self._drawn = None

    def _keep_indices(self, epoch):
        return self._kept_set(epoch).to_array().astype(np.int64)

    def _kept_set(self, epoch):
        """All ids but the epoch's draw, as the complement of a bitset of the drawn ids (N / 8 bytes)."""
        from scan_fast.schedule.shard import KeptSet

        if self._drawn is None or self._drawn[0] != epoch:
            pruned = SampleSet(self.num_samples)
            count = self.prune_count(epoch)
            if count:
                pruned.add(random_prune_draw(self.num_samples, count, self.seed, epoch))
            self._drawn = (epoch, KeptSet(pruned, members=False))
        return self._drawn[1]

    def phase_name(self, epoch: int) -> str:
        if self.prune_counts is not None:  # given counts: no cycle of its own
            return super().phase_name(epoch)
        return self._phase(epoch).phase

    def _observe(self, sample_ids, loss_a, loss_b):
        if self.is_preparation(self._epoch):
            self._count(len(check_batch(sample_ids, loss_a, loss_b, self.num_samples)[0]))

    def _device_batch(self, sample_ids, loss_a, loss_b):
        if self.is_preparation(self._epoch):
            self._count(sample_ids.shape[0])  # only the batch size matters: nothing to read back
        return None

    def _count(self, batch):
        self._collecting += self._per_batch(batch)

    def _per_batch(self, batch):
        ill = int(batch * self.rho_ill) if self.mode in ("both", "ill_matched") else 0
        red = int(batch * self.rho_red) if self.mode in ("both", "redundant") else 0
        return ill + red

    def _finish_epoch(self, epoch, epoch_loss):
        phase, _ = self._phase(epoch)
        pruned = self.prune_count(epoch)
        if phase == WARMUP and self.prune_counts is None:
            starts, self._prev_loss = warmup_step(self._prev_loss, epoch_loss, self.prune_threshold)
            if starts:
                self._start = epoch + 1
        if phase == PREPARATION:
            self._candidates = self._collecting
        return EpochRecord(epoch, phase, self._candidates if phase != WARMUP else 0, pruned,
                           self.num_samples - pruned, epoch_loss)

    def _config(self):
        counts = None if self.prune_counts is None else sorted([e, c] for e, c in self.prune_counts.items())
        return {"rho_ill": self.rho_ill, "rho_red": self.rho_red, "t_cos": self.t_cos,
                "prune_threshold": self.prune_threshold, "mode": self.mode, "seed": self.seed, "prune_counts": counts}

    def _state(self):
        return {"kind": "RandomPruning", "config": self._config(), "prev_loss": self._prev_loss,
                "start": self._start, "candidates": self._candidates, "collecting": self._collecting}

    def _parse_state(self, state):
        check_state_kind(state, "RandomPruning")
        check_saved_config("RandomPruning", state["config"], self._config())
        values = (float(state["prev_loss"]), state["start"], check_int("candidates", state["candidates"], minimum=0),
                  check_int("collecting", state["collecting"], minimum=0))

        def apply():
            self._prev_loss, self._start, self._candidates, self._collecting = values
            self._drawn = None
        return apply


def random_prune_draw(num_samples: int, count: int, seed: int, epoch: int) -> np.ndarray:
    """The ids `random` prunes in `epoch`: numpy's `default_rng([seed, epoch]).choice(N, count,
    replace=False)`, the draw every published `random` number was made with (not keyed per id like
    the other choices). numpy holds O(count) ids for a small share and an arange of N (8 N bytes) for
    a larger one while it draws; the kept set is then the complement of a bitset (`_kept_set`)."""
    return np.random.default_rng([seed, epoch]).choice(num_samples, count, replace=False)
