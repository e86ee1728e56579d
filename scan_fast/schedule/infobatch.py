"""`infobatch` (Qin et al., ICLR 2024): each epoch prunes each below-mean-score sample with
probability `prune_ratio`, rescales the loss of the kept below-mean ones by 1 / (1 - prune_ratio),
and trains on the full data in the final epochs. Scores are float16 (2 bytes a sample); an epoch's
plan is a bitset built a chunk of ids at a time.
"""
import math
from typing import Optional

import numpy as np
import torch

from scan_fast.bits import bits_contain
from scan_fast.index import SampleSet
from scan_fast.schedule import base
from scan_fast.schedule.base import (SCORE_DTYPE, SCORE_MAX, EpochPlan, PruningSchedule, check_saved_config,
                                     check_state_kind, every_id)
from scan_fast.schedule.inputs import check_batch, check_fraction, check_int
from scan_fast.schedule.rates import MUTATION, WARMUP
from scan_fast.schedule.stats import EpochRecord


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
        return every_id(self.num_samples)

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
        for lo in range(0, self.num_samples, base.PLAN_CHUNK):
            chunk = self.scores[lo:lo + base.PLAN_CHUNK]
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
            for lo in range(0, self.num_samples, base.PLAN_CHUNK):
                hi = min(lo + base.PLAN_CHUNK, self.num_samples)
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
        check_state_kind(state, "InfoBatch")
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
