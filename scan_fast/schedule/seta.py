"""SeTa (Zhou, Gao and Wang, "Scale Efficient Training for Large Datasets", CVPR 2025) on the
`PruningSchedule` API, at O(N / 8) bytes per rank besides its float16 scores.

The oracle (`seta_keep_reference`, `kmeans_1d`) is the public code's steps written out plainly,
per sample; the schedule computes the same ids a chunk of ids at a time: the keyed random keep by
a radix select over the ids' hashes, the 1-D k-means on the histogram of the float16 scores.
"""
from typing import Optional

import numpy as np
import torch

from scan_fast.index import SampleSet
from scan_fast.schedule import base
from scan_fast.schedule.base import SCORE_MAX, EpochPlan, PruningSchedule, check_saved_config, check_state_kind
from scan_fast.schedule.inputs import check_batch, check_fraction, check_int
from scan_fast.schedule.rates import MUTATION, WARMUP
from scan_fast.schedule.stats import EpochRecord


KMEANS_ITERATIONS = 50


def seta_window(epoch: int, groups: int, window: float):
    """(first cluster, clusters kept) of SeTa's sliding window at `epoch` (its iteration count).

    Python's round(groups x window) clusters (at least 1); the window starts at
    epoch mod (groups - size + 1), easy to hard, then wraps; epoch 0 keeps every cluster.
    """
    size = max(round(groups * window), 1)
    if epoch == 0:
        return 0, groups
    return epoch % (groups - size + 1), size


def kmeans_1d(values, groups: int, iterations: int = KMEANS_ITERATIONS):
    """Cluster labels 0..groups-1 of 1-D values, ordered by centre (0: lowest); numpy or torch (float64).

    Lloyd's algorithm from the (i + 0.5) / groups quantiles (the sorted values at those ranks),
    a fixed number of rounds; an empty cluster keeps its centre. Deterministic: no random init.
    """
    lib = torch if isinstance(values, torch.Tensor) else np
    x = values.double() if lib is torch else np.asarray(values, np.float64)
    n = x.shape[0]
    ranks = [min(int((i + 0.5) * n / groups), n - 1) for i in range(groups)]
    ordered = lib.sort(x).values if lib is torch else np.sort(x)
    centres = ordered[ranks] if lib is np else ordered[torch.tensor(ranks, device=x.device)]
    for _ in range(iterations):
        labels = (x[:, None] - centres[None, :]).abs().argmin(1) if lib is torch else \
            np.abs(x[:, None] - centres[None, :]).argmin(1)
        if lib is torch:
            sums = torch.zeros(groups, dtype=x.dtype, device=x.device).index_add_(0, labels, x)
            counts = torch.bincount(labels, minlength=groups).to(x.dtype)
            centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
        else:
            sums = np.bincount(labels, weights=x, minlength=groups)
            counts = np.bincount(labels, minlength=groups).astype(np.float64)
            centres = np.where(counts > 0, sums / np.maximum(counts, 1), centres)
    labels = (x[:, None] - centres[None, :]).abs().argmin(1) if lib is torch else \
        np.abs(x[:, None] - centres[None, :]).argmin(1)
    order = lib.argsort(centres)  # centres stay sorted in 1-D; ranked anyway
    rank_of = lib.empty_like(order)
    rank_of[order] = lib.arange(groups, device=x.device) if lib is torch else np.arange(groups)
    return rank_of[labels]


def seta_keep_reference(scores: np.ndarray, epoch: int, *, num_epochs: int, ratio: float, groups: int,
                        window: float, delta: float, seed: int) -> np.ndarray:
    """The oracle of one epoch's kept mask (numpy): scores are the last losses, NaN where never observed."""
    from scan_fast.keyed_hash import SETA_KEEP, SIGN_BIT, counter_hashes, stream_key

    n = scores.shape[0]
    hashes = counter_hashes(stream_key(seed, epoch, SETA_KEEP), np.arange(n, dtype=np.int64)) ^ SIGN_BIT
    keep_count = int(n * min(1.0, max(0.1, 1.0 - ratio)))
    kept = np.zeros(n, bool)
    kept[np.argsort(hashes, kind="stable")[:keep_count]] = True
    if epoch >= int(num_epochs * delta):
        return kept  # annealing: the random keep alone
    seen = kept & ~np.isnan(scores)
    if seen.sum() <= groups:
        return kept
    labels = kmeans_1d(scores[seen], groups)
    first, size = seta_window(epoch, groups, window)
    inside = np.zeros(n, bool)
    inside[np.flatnonzero(seen)] = (labels >= first) & (labels < first + size)
    return inside | (kept & np.isnan(scores))


SCORE_BINS = 1 << 16  # one histogram bin per float16 bit pattern


def _score_bins(scores: torch.Tensor) -> torch.Tensor:
    """The histogram bin of each float16 score: its bit pattern as 0..65535."""
    return scores.contiguous().view(torch.int16).to(torch.int64) & 0xFFFF


def _bin_values() -> np.ndarray:
    """The float16 value of each bin, as float64."""
    return np.arange(SCORE_BINS, dtype=np.uint16).view(np.float16).astype(np.float64)


def kmeans_histogram(counts: np.ndarray, groups: int, iterations: int = KMEANS_ITERATIONS) -> np.ndarray:
    """kmeans_1d over values given as a histogram of float16 bit patterns (counts[b] samples of the value
    of bin b): the same start (the sorted values at ranks (i + 0.5) n / groups), Lloyd rounds and
    ranking, with sums taken as count x value. Returns each bin's cluster rank (-1: empty bin)."""
    values, counts = _bin_values(), np.asarray(counts, np.int64)
    used = np.flatnonzero(counts > 0)
    x, weight = values[used], counts[used].astype(np.float64)
    order = np.argsort(x, kind="stable")
    cumulative = np.cumsum(counts[used][order])
    n = int(cumulative[-1])
    ranks = [min(int((i + 0.5) * n / groups), n - 1) for i in range(groups)]
    centres = x[order][np.searchsorted(cumulative, ranks, side="right")]
    for _ in range(iterations):
        labels = np.abs(x[:, None] - centres[None, :]).argmin(1)
        sums = np.bincount(labels, weights=weight * x, minlength=groups)
        sizes = np.bincount(labels, weights=weight, minlength=groups)
        centres = np.where(sizes > 0, sums / np.maximum(sizes, 1), centres)
    labels = np.abs(x[:, None] - centres[None, :]).argmin(1)
    rank_of = np.empty(groups, np.int64)
    rank_of[np.argsort(centres)] = np.arange(groups)
    out = np.full(SCORE_BINS, -1, np.int64)
    out[used] = rank_of[labels]
    return out


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _hash_chunks(key: int, n: int, device):
    from scan_fast.keyed_hash import counter_hashes

    for lo in range(0, n, base.PLAN_CHUNK):
        yield lo, counter_hashes(key, torch.arange(lo, min(lo + base.PLAN_CHUNK, n), dtype=torch.int64,
                                                   device=device))


def _hash_rank_select(key: int, n: int, rank: int, device) -> int:
    """The rank-th smallest (1-based) of the ids' hashes as unsigned words, as an int64 bit pattern:
    four passes over the hashes, a chunk at a time, each fixing 16 more bits by a histogram."""
    prefix, mask, remaining = 0, 0, rank
    for shift in (48, 32, 16, 0):
        counts = torch.zeros(1 << 16, dtype=torch.int64, device=device)
        for _, hashes in _hash_chunks(key, n, device):
            match = hashes[(hashes & _signed64(mask)) == _signed64(prefix)] if mask else hashes
            counts += torch.bincount((match >> shift) & 0xFFFF, minlength=1 << 16)
        cumulative = torch.cumsum(counts, 0)
        digit = int(torch.searchsorted(cumulative, torch.tensor([remaining], device=device)).item())
        remaining -= int(cumulative[digit - 1]) if digit else 0
        prefix |= digit << shift
        mask |= 0xFFFF << shift
    return _signed64(prefix)


def _keep_chunks(key: int, n: int, cut, device):
    """(first id, keep mask) of each chunk: hash ^ SIGN_BIT <= cut (everything when cut is None)."""
    from scan_fast.keyed_hash import SIGN_BIT

    for lo, hashes in _hash_chunks(key, n, device):
        yield lo, (torch.ones_like(hashes, dtype=torch.bool) if cut is None else (hashes ^ SIGN_BIT) <= cut)


def _saved_kept_set(plan: torch.Tensor, num_samples: int):
    """A saved SeTa plan: the engine's bytes of the kept set, or (older states) the kept ids."""
    from scan_fast.schedule.shard import KeptSet

    if plan.dtype == torch.uint8:
        kept = SampleSet.from_bytes(plan.numpy().tobytes())
        if kept.num_samples != num_samples:
            raise ValueError(f"state_dict['plan'] is a set of {kept.num_samples} ids, not {num_samples}")
        return KeptSet(kept)
    return KeptSet.of(plan.numpy().astype(np.int64), num_samples)


class SeTa(PruningSchedule):
    """SeTa (Zhou, Gao and Wang, "Scale Efficient Training for Large Datasets", CVPR 2025).

    Each epoch before int(delta x num_epochs): keep a keyed random int(n x keep) of all samples
    (keep = clamp(1 - ratio, 0.1, 1)); cluster their last losses into `groups` clusters by 1-D
    k-means (ordered easy to hard); keep the clusters of a window of round(groups x window)
    that slides one cluster an epoch from easy to hard and wraps (`seta_window`; epoch 0 keeps
    all). Later epochs anneal: the random keep alone. Samples never observed stay in. No loss
    reweighting. The scores (the mean of both directions' last losses) live on the losses' device.
    """

    def __init__(self, num_samples, num_epochs, ratio=0.0, groups=5, window=0.6, delta=0.875, seed=0):
        super().__init__(num_samples)
        self.num_epochs = check_int("num_epochs", num_epochs, minimum=1)
        self.ratio = check_fraction("ratio", ratio, below_one=True)
        self.groups = check_int("groups", groups, minimum=1)
        self.window = check_fraction("window", window)
        if round(self.groups * self.window) < 1:
            raise ValueError(f"window {window} keeps no cluster of {groups}")
        self.delta = check_fraction("delta", delta)
        self.seed = check_int("seed", seed, minimum=0)
        # last loss, float16 (2 bytes a sample; above 65504 stored as 65504); NaN: never observed
        self.scores = torch.full((self.num_samples,), float("nan"), dtype=torch.float16)
        self._plan: Optional[EpochPlan] = None  # frozen at the epoch's start

    def is_preparation(self, epoch: int) -> bool:
        return False

    def needs_losses(self, epoch: int) -> bool:
        return True

    def coreset(self) -> np.ndarray:
        return np.arange(self.num_samples, dtype=np.int64)

    def kept_mask(self, epoch: int) -> torch.Tensor:
        """The kept mask of `epoch` from the current scores, on the scores' device (an N-byte tensor:
        for tests and small sets; an epoch itself keeps the bitset of `_kept_ids`)."""
        mask = torch.zeros(self.num_samples, dtype=torch.bool, device=self.scores.device)
        for lo, ids in self._kept_chunks(epoch):
            mask[ids] = True
        return mask

    def _kept_chunks(self, epoch: int):
        """(first id of the chunk, the chunk's kept ids on the scores' device), a chunk at a time.

        The keyed random keep is every id whose hash is at most the keep_count-th smallest (found by
        a radix select over chunks; the hashes of distinct ids are distinct, the hash being a
        bijection of the id). The k-means runs on the histogram of the kept, observed float16 scores
        (65536 bins, one per float16 value), so no per-sample copy of the scores is made."""
        from scan_fast.keyed_hash import SETA_KEEP, SIGN_BIT, stream_key

        n, device = self.num_samples, self.scores.device
        key = stream_key(self.seed, epoch, SETA_KEEP)
        keep_count = int(n * min(1.0, max(0.1, 1.0 - self.ratio)))
        cut = None if keep_count >= n else _hash_rank_select(key, n, keep_count, device) ^ SIGN_BIT
        inside = None
        if epoch < int(self.num_epochs * self.delta):
            counts = torch.zeros(SCORE_BINS, dtype=torch.int64, device=device)
            for lo, keep in _keep_chunks(key, n, cut, device):
                chunk = self.scores[lo:lo + keep.shape[0]]
                bins = _score_bins(chunk[keep & ~torch.isnan(chunk)])
                counts += torch.bincount(bins, minlength=SCORE_BINS)
            if int(counts.sum()) > self.groups:
                labels = kmeans_histogram(counts.cpu().numpy(), self.groups)
                first, size = seta_window(epoch, self.groups, self.window)
                inside = torch.from_numpy((labels >= first) & (labels < first + size)).to(device)
        for lo, keep in _keep_chunks(key, n, cut, device):
            if inside is not None:  # kept: in the window, or never observed
                chunk = self.scores[lo:lo + keep.shape[0]]
                unseen = torch.isnan(chunk)
                keep = keep & (unseen | inside[_score_bins(torch.where(unseen, 0.0, chunk).to(chunk.dtype))])
            yield lo, torch.nonzero(keep).flatten() + lo

    def _kept_ids(self, epoch: int):
        """The epoch's kept ids as a bitset (KeptSet), N / 8 bytes on the host."""
        from scan_fast.schedule.shard import KeptSet

        kept = SampleSet(self.num_samples)
        for _, ids in self._kept_chunks(epoch):
            kept.add(ids.cpu().numpy())
        return KeptSet(kept)

    def _begin_epoch(self, epoch):
        self._plan = EpochPlan(epoch, self._kept_ids(epoch))

    def _keep_indices(self, epoch):
        return self._plan.kept.to_array().astype(np.int64)

    def _kept_set(self, epoch):
        return self._plan.kept

    def _record(self, ids: torch.Tensor, loss_a: torch.Tensor, loss_b: torch.Tensor) -> None:
        if self.scores.device != loss_a.device:
            self.scores = self.scores.to(loss_a.device)
        score = ((loss_a.float() + loss_b.float()) * 0.5).clamp(max=SCORE_MAX).to(torch.float16)
        self.scores.index_put_((ids.to(loss_a.device, torch.int64),), score)

    def _observe(self, sample_ids, loss_a, loss_b):
        ids, loss_a, loss_b = check_batch(sample_ids, loss_a, loss_b, self.num_samples)
        device = self.scores.device
        self._record(torch.from_numpy(ids).to(device), torch.from_numpy(np.asarray(loss_a, np.float32)).to(device),
                     torch.from_numpy(np.asarray(loss_b, np.float32)).to(device))

    def _device_batch(self, sample_ids, loss_a, loss_b):
        self._record(sample_ids, loss_a, loss_b)  # on the device, no host read
        return None

    def _finish_epoch(self, epoch, epoch_loss):
        kept = len(self._plan.kept)
        phase = MUTATION if kept < self.num_samples else WARMUP
        return EpochRecord(epoch, phase, 0, self.num_samples - kept, kept, epoch_loss)

    def _config(self):
        return {"num_epochs": self.num_epochs, "ratio": self.ratio, "groups": self.groups, "window": self.window,
                "delta": self.delta, "seed": self.seed}

    def _state(self):
        plan = None  # inside an epoch: its kept set, as the engine's bytes (N / 8 and a header)
        if self._plan is not None and self._in_epoch:
            plan = torch.frombuffer(bytearray(self._plan.kept.ids.to_bytes()), dtype=torch.uint8)
        return {"kind": "SeTa", "config": self._config(), "scores": self.scores.cpu().clone(), "plan": plan}

    def _parse_state(self, state):
        check_state_kind(state, "SeTa")
        check_saved_config("SeTa", state["config"], self._config())
        scores, plan = state["scores"], state.get("plan")
        if not torch.is_tensor(scores) or scores.shape != (self.num_samples,):
            raise ValueError(f"state_dict['scores'] must be a tensor of {self.num_samples} scores")
        if plan is not None and not torch.is_tensor(plan):
            raise ValueError("state_dict['plan'] must be a tensor of the kept set")
        kept = None if plan is None else _saved_kept_set(plan, self.num_samples)

        def apply():
            self.scores = scores.float().clamp(max=SCORE_MAX).to(torch.float16)
            # inside an epoch its kept ids are the saved ones (the scores have moved on since its start)
            self._plan = None if kept is None else EpochPlan(self._epoch, kept)
            if self._in_epoch and self._plan is None:
                self._begin_epoch(self._epoch)
        return apply
