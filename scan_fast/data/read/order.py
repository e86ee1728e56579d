"""Per-epoch traversal order over the ids a pruning schedule keeps.

Each rank reads its shard of the epoch (scan_fast/schedule/shard.py): the kept
ids in an order keyed by (seed, epoch), rank r of W taking order positions r,
r + W, r + 2W, ... The shard comes from the schedule's kept bitset
(`schedule.epoch_kept_set(epoch)`), so no rank ever holds the global kept list
or a global permutation. The same functions serve the FFCV loaders
(scan_fast/data/read/loaders.py) and the plain PyTorch `ScanSampler`, so both read the
same ids in the same order.

Distributed remainder: every rank reads floor(K / W) ids (like torch's
`DistributedSampler(drop_last=True)`), so no id is on two ranks and every rank
gets the same number of ids. The at most W - 1 ids left over are the tail of the
keyed order, so which ones fall off changes every epoch.

Any object with an `epoch_indices(epoch)` method (a list per epoch) works too:
its list is validated and turned into a bitset first.
"""
from dataclasses import dataclass
from typing import Iterator, Optional

import numba
import numpy as np

from scan_fast.schedule.base import PruningSchedule
from scan_fast.schedule.shard import KeptSet, epoch_shard, epoch_shard_part, shard_length

# Ids of a shard computed at a time by the loaders (8 bytes each).
CHUNK_IDS = 1 << 18


@numba.njit(cache=True, nogil=True)
def _sorted_unique_in_range(kept, dataset_len):
    """The common case, branch-free so it vectorises: strictly increasing, inside [0, n)."""
    size = kept.shape[0]
    if size == 0:
        return True
    bad = False
    for i in range(1, size):
        bad |= kept[i] <= kept[i - 1]
    return not bad and kept[0] >= 0 and kept[size - 1] < dataset_len


@numba.njit(cache=True, nogil=True)
def _first_bad_position(kept, dataset_len):
    """Index of the first id that is out of range or not above its predecessor; -1 if none."""
    previous = -1
    for i in range(kept.shape[0]):
        value = kept[i]
        if value < 0 or value >= dataset_len or value <= previous:
            return i
        previous = value
    return -1


def validate_kept_ids(kept, dataset_len: int, epoch: Optional[int] = None) -> np.ndarray:
    """Check a kept-id list and return it sorted (int32/int64/uint32 kept as given, else int64).

    Raises ValueError naming the offending id for ids outside [0, dataset_len)
    and for ids listed twice, TypeError for non-integer input.
    """
    where = f" for epoch {epoch}" if epoch is not None else ""
    kept = np.asarray(kept)
    if kept.ndim != 1:
        raise ValueError(f"kept ids{where} must be a 1-D array, got shape {kept.shape}")
    if kept.size and not np.issubdtype(kept.dtype, np.integer):
        raise TypeError(f"kept ids{where} must be integers, got dtype {kept.dtype}")
    if kept.dtype == np.uint64 or kept.dtype.itemsize < 4:
        kept = kept.astype(np.int64)  # keep the compiled checks to a few signed/32-bit types
    kept = np.ascontiguousarray(kept)
    if kept.size and _sorted_unique_in_range(kept, dataset_len):
        return kept
    bad = _first_bad_position(kept, dataset_len)
    if bad >= 0 and 0 <= kept[bad] < dataset_len:
        # Unsorted input (allowed) or a repeated id (not allowed): sort a copy and look again.
        kept = np.sort(kept)
        bad = _first_bad_position(kept, dataset_len)
    if bad >= 0:
        value = int(kept[bad])
        if not 0 <= value < dataset_len:
            raise ValueError(
                f"kept id {value}{where} is out of range for a dataset of {dataset_len} samples")
        raise ValueError(f"kept id {value}{where} is listed more than once")
    if kept.size == 0:
        raise ValueError(f"the kept id list{where} is empty: nothing to train on")
    return kept


def epoch_order(kept, seed: int, epoch: int, shuffle: bool = True,
                rank: int = 0, world_size: int = 1, pad: bool = False) -> np.ndarray:
    """The ids rank `rank` reads in `epoch` from an explicit list of kept ids, in order (int64).

    The same order the loaders read for the same kept ids. With pad=True each rank
    reads ceil(K / W) ids instead, the last ones repeating the head of the order
    (torch's `DistributedSampler(drop_last=False)`), which puts a few ids on two ranks.
    """
    kept = validate_kept_ids(kept, np.iinfo(np.int64).max, epoch)
    return epoch_shard(KeptSet.of(kept, int(kept[-1]) + 1), epoch, rank, world_size, seed, shuffle, pad)


@dataclass
class EpochKept:
    """The epoch a KeptIdsSource holds: its kept set and, once asked for, this rank's shard of it."""
    epoch: int
    listed: Optional[np.ndarray]  # a plain object's epoch_indices list as given (None for a schedule), to see it change
    kept: KeptSet
    order: Optional[np.ndarray] = None  # this rank's ids in order (int64), computed on first use


class KeptIdsSource:
    """This rank's ids of each epoch, from a pruning schedule, with a one-entry cache.

    FFCV asks for epoch 0's order twice and `set_epoch` asks once more. The
    epoch's kept set (a schedule's bitset, or a plain object's validated
    `epoch_indices` list) is compared with the cached one, and the shard
    recomputed as soon as it changes.
    """

    def __init__(self, scan, dataset_len: int, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1, pad: bool = False):
        if scan is not None and not isinstance(scan, PruningSchedule) and not callable(
                getattr(scan, "epoch_indices", None)):
            raise TypeError(
                f"scan must be a PruningSchedule or have an epoch_indices(epoch) method, got {type(scan).__name__}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if isinstance(scan, PruningSchedule) and scan.num_samples != dataset_len:
            raise ValueError(f"the schedule is for {scan.num_samples} samples, the data set has {dataset_len}")
        self.scan = scan
        self.dataset_len = int(dataset_len)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.pad = pad
        self._cached: Optional[EpochKept] = None

    def kept(self, epoch: int) -> KeptSet:
        """The epoch's kept ids as a bitset."""
        return self._lookup(epoch).kept

    def order(self, epoch: int) -> np.ndarray:
        """This rank's ids of `epoch`, in order (int64)."""
        entry = self._lookup(epoch)
        if entry.order is None:
            entry.order = epoch_shard(entry.kept, epoch, self.rank, self.world_size, self.seed, self.shuffle,
                                      self.pad)
        return entry.order

    def length(self, epoch: int) -> int:
        """How many ids this rank reads in `epoch` (without computing them)."""
        return shard_length(len(self._lookup(epoch).kept), self.world_size, self.pad)

    def order_chunks(self, epoch: int, count: int, chunk: int = CHUNK_IDS,
                     first: Optional[int] = None) -> Iterator[np.ndarray]:
        """The first `count` ids of `order(epoch)`, computed at most `chunk` at a time as they are
        consumed: a loader holds one chunk of its shard, not the shard (8 bytes per id of the epoch).
        With `first`, chunks start at that size and double up to `chunk`."""
        kept = self._lookup(epoch).kept
        count = min(int(count), self.length(epoch))
        size, done = min(chunk, first or chunk), 0
        while done < count:
            step = min(size, count - done)
            yield epoch_shard_part(kept, epoch, self.rank, self.world_size, self.seed, self.shuffle,
                                   done, step, self.pad)
            done, size = done + step, min(chunk, 2 * size)

    def _lookup(self, epoch: int) -> EpochKept:
        cached = self._cached
        if self.scan is None:
            if cached is None or cached.epoch != epoch:
                self._cached = EpochKept(epoch, None, KeptSet.everything(self.dataset_len))
            return self._cached
        if isinstance(self.scan, PruningSchedule):
            kept = self.scan.epoch_kept_set(epoch)
            # Equal bitsets (a compare of N/8 bytes) keep the shard; a reloaded state may change an epoch's ids.
            if cached is None or cached.epoch != epoch or cached.kept != kept:
                self._cached = EpochKept(epoch, None, kept)
            return self._cached
        raw = self.scan.epoch_indices(epoch)
        if cached is None or cached.epoch != epoch or not np.array_equal(cached.listed, raw):
            kept = validate_kept_ids(raw, self.dataset_len, epoch)
            self._cached = EpochKept(epoch, np.array(raw, copy=True), KeptSet.of(kept, self.dataset_len))
        return self._cached
