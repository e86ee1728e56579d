"""The baselines SCAN is compared against, on the same `PruningSchedule` API.

- `NoPruning`: every sample, every epoch.
- `RandomPruning`: prunes as many samples per epoch as a SCAN run would (given
  per-epoch counts, or SCAN's own warm-up and cosine schedule applied to the
  candidate count a preparation epoch would produce), chosen uniformly.
- `InfoBatch`: each epoch prunes each below-mean-score sample with probability
  `prune_ratio`, rescales the loss of the kept below-mean ones by
  1 / (1 - prune_ratio), and trains on the full data in the final epochs.
- `StaticCoreset`: one fixed id list every epoch (e.g. an exported coreset).
- SeTa lives in seta.py.

Every epoch's kept ids are a pure function of the seed, the epoch and the state
at the epoch's start, so a resumed run repeats the same ids. Each state_dict
carries the strategy's configuration, checked on load.
"""
import math
import os
from typing import NamedTuple, Optional

import numpy as np
import torch

from scan_fast.bits import bits_contain
from scan_fast.index import SampleSet
from scan_fast.schedule.base import PruningSchedule, check_saved_config
from scan_fast.schedule.config import MODES
from scan_fast.schedule.inputs import check_batch, check_fraction, check_int, check_prune_threshold
from scan_fast.schedule.rates import (MUTATION, PREPARATION, WARMUP, EpochPhase, cosine_rate, epoch_phase,
                                      fewest_kept_in_cycles, prune_count, warmup_step)
from scan_fast.schedule.stats import EpochRecord


class EpochPlan(NamedTuple):
    """An epoch's ids, fixed at its start (InfoBatch, SeTa): the epoch, its kept ids (InfoBatch: a KeptSet
    over the pruned ids' bitset; SeTa: sorted int64), and for InfoBatch the upweighted ids as
    little-endian bits (N / 8 bytes)."""
    epoch: int
    kept: object
    upweighted: Optional[np.ndarray] = None


def _check_kind(state, kind):
    if state.get("kind") != kind:
        raise ValueError(f"state_dict is for {state.get('kind')!r}, not {kind}")


def _every_id(num_samples: int):
    """All ids as a KeptSet, without listing them (the coreset of schedules that keep everything)."""
    from scan_fast.schedule.shard import KeptSet

    return KeptSet.everything(num_samples)


class NoPruning(PruningSchedule):
    """The full data set every epoch."""

    def is_preparation(self, epoch: int) -> bool:
        return False

    def coreset(self) -> np.ndarray:
        return np.arange(self.num_samples, dtype=np.int64)

    def coreset_set(self):
        return _every_id(self.num_samples)

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
        _check_kind(state, "NoPruning")
        return lambda: None


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
        return _every_id(self.num_samples)

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
        _check_kind(state, "RandomPruning")
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


def infobatch_coins(num_samples: int, prune_ratio: float, seed: int, epoch: int, chunk: int = 1 << 22) -> np.ndarray:
    """Each id's soft-pruning coin of `epoch`: u(seed, epoch, id) < prune_ratio, from the keyed hash (purpose
    INFOBATCH_PRUNE), so the draw is a function of (seed, epoch, id) like every other choice, on any rank."""
    from fractions import Fraction

    from scan_fast.keyed_hash import INFOBATCH_PRUNE, SIGN_BIT, below_fraction, counter_hashes, stream_key

    key = stream_key(seed, epoch, INFOBATCH_PRUNE)
    limit = below_fraction(*Fraction(prune_ratio).as_integer_ratio())
    coins = np.empty(num_samples, dtype=bool)
    for lo in range(0, num_samples, chunk):  # bounded temporaries: 8 bytes a sample of one chunk
        ids = np.arange(lo, min(lo + chunk, num_samples), dtype=np.int64)
        coins[lo:lo + len(ids)] = (counter_hashes(key, ids) ^ SIGN_BIT) < limit
    return coins


def _infobatch_coin_chunk(key: int, limit: int, lo: int, hi: int) -> np.ndarray:
    """infobatch_coins(...)[lo:hi] from the stream key and limit (one chunk, without the rest)."""
    from scan_fast.keyed_hash import SIGN_BIT, counter_hashes

    return (counter_hashes(key, np.arange(lo, hi, dtype=np.int64)) ^ SIGN_BIT) < limit


SCORE_DTYPE = np.float16  # InfoBatch's per-id score: 2 bytes a sample on every rank
SCORE_MAX = float(np.finfo(np.float16).max)  # larger losses are stored as this (inf marks "never seen")
PLAN_CHUNK = 1 << 22  # ids per step of an epoch plan (a multiple of 8: whole bytes of bits)


class InfoBatch(PruningSchedule):
    """InfoBatch (Qin et al., ICLR 2024): soft pruning of well-learned samples.

    A sample's score is its latest observed loss (mean of the two directions).
    Each epoch before int(delta * num_epochs) prunes every sample scored below
    the mean score with probability `prune_ratio` (a keyed coin of (seed, epoch, id):
    `infobatch_coins`); later epochs train on all.
    `sample_weights` gives 1 / (1 - prune_ratio) to the kept below-mean samples
    (the expected gradient stays that of the full data) and 1 to the rest.
    Samples never observed are never pruned, so the first epoch is full.
    Scores are float16 (2 bytes a sample; losses above 65504 count as 65504) and the mean is taken
    over them in float64; an epoch's pruned and upweighted ids are bitsets, built a chunk at a time.
    """

    def __init__(self, num_samples, num_epochs, prune_ratio=0.5, delta=0.875, seed=0):
        super().__init__(num_samples)
        self.num_epochs = check_int("num_epochs", num_epochs, minimum=1)
        self.prune_ratio = check_fraction("prune_ratio", prune_ratio, below_one=True)
        self.delta = check_fraction("delta", delta)
        self.seed = check_int("seed", seed, minimum=0)
        self.scores = np.full(self.num_samples, np.inf, dtype=SCORE_DTYPE)
        self._plan: Optional[EpochPlan] = None  # frozen at the epoch's start
        self._device_bits = {}  # device -> the plan's bits there

    @property
    def full_data_from(self) -> int:
        return int(self.delta * self.num_epochs)

    def is_preparation(self, epoch: int) -> bool:
        return False

    def coreset(self) -> np.ndarray:
        return np.arange(self.num_samples, dtype=np.int64)

    def min_kept_count(self, epochs: int, global_batch: int) -> int:
        """The expected fewest: epoch 0 is full (no scores yet) and epochs from full_data_from on are full;
        in between at most num_samples - 1 samples score below the mean, each pruned with prune_ratio."""
        if min(epochs, self.full_data_from) < 2:
            return self.num_samples
        return math.ceil(self.num_samples - self.prune_ratio * (self.num_samples - 1))

    def coreset_set(self):
        return _every_id(self.num_samples)

    def needs_losses(self, epoch: int) -> bool:
        return True  # every observed loss updates the scores

    def sample_weights(self, sample_ids):
        """Loss weight of each sample in the epoch in progress: a tensor on the ids' device for a
        tensor (looked up in a bit-packed copy of the upweighted set there), numpy for numpy ids."""
        if self._plan is None or self._plan.epoch != self._epoch:
            raise ValueError(f"sample_weights() before begin_epoch({self._epoch})")
        upweight = 1.0 / (1.0 - self.prune_ratio)
        if isinstance(sample_ids, torch.Tensor):
            bits = self._device_bits.get(sample_ids.device)
            if bits is None:
                bits = self._device_bits[sample_ids.device] = torch.from_numpy(self._plan.upweighted).to(
                    sample_ids.device)
            up = bits_contain(bits, sample_ids.to(torch.int64))
            return torch.where(up, upweight, 1.0).to(torch.float32)
        ids = check_batch(sample_ids, np.zeros(len(sample_ids)), np.zeros(len(sample_ids)), self.num_samples)[0]
        return np.where(bits_contain(self._plan.upweighted, ids), upweight, 1.0).astype(np.float32)

    def _mean_seen_score(self) -> Optional[float]:
        """The mean of the observed scores (float64 sums over chunks), None when none is observed."""
        total, count = 0.0, 0
        for lo in range(0, self.num_samples, PLAN_CHUNK):
            chunk = self.scores[lo:lo + PLAN_CHUNK]
            seen = np.isfinite(chunk)
            total += float(chunk[seen].sum(dtype=np.float64))
            count += int(seen.sum())
        return total / count if count else None

    def _begin_epoch(self, epoch):
        from fractions import Fraction

        from scan_fast.keyed_hash import INFOBATCH_PRUNE, below_fraction, stream_key
        from scan_fast.schedule.shard import KeptSet

        pruned = SampleSet(self.num_samples)
        # the upweighted set as bits (N / 8 bytes), also what sample_weights copies to the device
        upweighted = np.zeros((self.num_samples + 7) // 8, np.uint8)
        mean = self._mean_seen_score() if epoch < self.full_data_from else None
        if mean is not None:
            key = stream_key(self.seed, epoch, INFOBATCH_PRUNE)
            limit = below_fraction(*Fraction(self.prune_ratio).as_integer_ratio())
            for lo in range(0, self.num_samples, PLAN_CHUNK):
                hi = min(lo + PLAN_CHUNK, self.num_samples)
                chunk = self.scores[lo:hi]
                well_learned = np.isfinite(chunk) & (chunk.astype(np.float64) < mean)
                coins = _infobatch_coin_chunk(key, limit, lo, hi)
                pruned.add(np.flatnonzero(well_learned & coins) + lo)
                upweighted[lo // 8:(hi + 7) // 8] = np.packbits(well_learned & ~coins, bitorder="little")
        self._plan = EpochPlan(epoch, KeptSet(pruned, members=False), upweighted)
        self._device_bits = {}

    def _keep_indices(self, epoch):
        return self._plan.kept.to_array().astype(np.int64)

    def _kept_set(self, epoch):
        return self._plan.kept

    def _observe(self, sample_ids, loss_a, loss_b):
        ids, loss_a, loss_b = check_batch(sample_ids, loss_a, loss_b, self.num_samples)
        self.scores[ids] = np.minimum(0.5 * (np.asarray(loss_a, np.float64) + loss_b), SCORE_MAX)

    def _finish_epoch(self, epoch, epoch_loss):
        kept = len(self._plan.kept)
        phase = MUTATION if epoch < self.full_data_from and kept < self.num_samples else WARMUP
        return EpochRecord(epoch, phase, 0, self.num_samples - kept, kept, epoch_loss)

    def _config(self):
        return {"num_epochs": self.num_epochs, "prune_ratio": self.prune_ratio, "delta": self.delta,
                "seed": self.seed}

    def _state(self):
        return {"kind": "InfoBatch", "config": self._config(), "scores": torch.from_numpy(self.scores.copy())}

    def _parse_state(self, state):
        _check_kind(state, "InfoBatch")
        check_saved_config("InfoBatch", state["config"], self._config())
        scores = state["scores"]
        if not torch.is_tensor(scores) or scores.shape != (self.num_samples,):
            raise ValueError(f"state_dict['scores'] must be a tensor of {self.num_samples} scores")
        scores = scores.double().clamp(max=SCORE_MAX).numpy().astype(SCORE_DTYPE)  # a float64 one of old too

        def apply():
            self.scores = scores
            self._plan = None
            if self._in_epoch:  # resumed inside an epoch: its plan comes from the saved scores
                self._begin_epoch(self._epoch)
        return apply


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
        _check_kind(state, "StaticCoreset")
        if not np.array_equal(state["keep_ids"].numpy(), self.keep_ids):
            raise ValueError("state_dict was saved with a different coreset id list")
        return lambda: None
