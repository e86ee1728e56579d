"""Per-epoch traversal order over the ids a pruning schedule keeps.

`scan.epoch_indices(epoch)` gives the sorted kept ids of an epoch; this module
turns them into the order one rank reads: a permutation seeded by
(seed, epoch), then an equal-length strided shard per rank. The same functions
serve the FFCV order (`KeptIdsOrder`) and the plain PyTorch `ScanSampler`, so
both read the same ids in the same order.

Distributed remainder: the permuted list is cut to a multiple of world_size
(like torch's `DistributedSampler(drop_last=True)`), so no id is on two ranks
and every rank gets the same number of ids. Which ids fall off changes every
epoch with the permutation.
"""
from typing import Optional, Sequence

import numba
import numpy as np
from ffcv.traversal_order.base import TraversalOrder


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


def shard_length(num_kept: int, world_size: int) -> int:
    """Ids per rank: the remainder of num_kept / world_size is dropped."""
    return num_kept // world_size


def epoch_order(kept: np.ndarray, seed: int, epoch: int, shuffle: bool = True,
                rank: int = 0, world_size: int = 1, pad: bool = False) -> np.ndarray:
    """The ids rank `rank` reads in `epoch`, in order.

    `kept` must already be validated. With pad=True the list is instead
    lengthened to a multiple of world_size by repeating its head (torch's
    `DistributedSampler(drop_last=False)`), which puts a few ids on two ranks.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    order = np.random.default_rng([seed, epoch]).permutation(kept) if shuffle else kept
    if world_size == 1:
        return order
    if pad:
        total = -(-order.size // world_size) * world_size
        order = np.concatenate([order, np.resize(order, total - order.size)])
    else:
        total = shard_length(order.size, world_size) * world_size
        if total == 0:
            raise ValueError(
                f"epoch {epoch} keeps {order.size} ids, fewer than world_size={world_size}")
    return order[rank:total:world_size]


def all_ids(dataset_len: int) -> np.ndarray:
    return np.arange(dataset_len, dtype=np.int64)


class KeptIdsSource:
    """Per-epoch kept ids with validation and a one-entry cache.

    FFCV asks for epoch 0's order twice and `set_epoch` asks once more; the
    permutation is reused while the schedule returns the same list for the
    same epoch, and recomputed as soon as the list changes.
    """

    def __init__(self, scan, dataset_len: int, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1, pad: bool = False):
        if scan is not None and not callable(getattr(scan, "epoch_indices", None)):
            raise TypeError(
                f"scan must have an epoch_indices(epoch) method, got {type(scan).__name__}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.scan = scan
        self.dataset_len = int(dataset_len)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.pad = pad
        self._cached = None  # (epoch, kept, order)

    def kept(self, epoch: int) -> np.ndarray:
        if self.scan is None:
            return all_ids(self.dataset_len)
        raw = self.scan.epoch_indices(epoch)
        cached = self._cached
        if cached is not None and cached[0] == epoch and np.array_equal(cached[1], raw):
            return cached[1]
        return validate_kept_ids(raw, self.dataset_len, epoch)

    def order(self, epoch: int) -> np.ndarray:
        kept = self.kept(epoch)
        cached = self._cached
        if cached is not None and cached[0] == epoch and cached[1] is kept:
            return cached[2]
        order = epoch_order(kept, self.seed, epoch, self.shuffle, self.rank, self.world_size, self.pad)
        self._cached = (epoch, kept, order)
        return order


class KeptIdsOrder(TraversalOrder):
    """FFCV traversal order reading `source.order(epoch)` at the start of every epoch."""

    def __init__(self, loader, source: KeptIdsSource):
        super().__init__(loader)
        if source.dataset_len != loader.reader.num_samples:
            raise ValueError(
                f"dataset_len={source.dataset_len} but {loader.fname} holds "
                f"{loader.reader.num_samples} samples")
        self.source = source
        self._last = (None, None)

    def sample_order(self, epoch: int) -> Sequence[int]:
        order = self.source.order(epoch)
        if self._last[0] is not order:
            # FFCV's own orders hand out uint64 ids; the JIT-compiled readers are typed on that.
            self._last = (order, order.astype(np.uint64))
        return self._last[1]


class OrderFactory:
    """A hashable stand-in registered in ffcv's ORDER_MAP for one Loader.

    ffcv 1.0.2 only accepts orders by key and builds them as `ORDER_MAP[key](loader)`,
    so each loader registers its own factory while it is constructed.
    """

    def __init__(self, source: KeptIdsSource):
        self.source = source

    def __call__(self, loader) -> KeptIdsOrder:
        return KeptIdsOrder(loader, self.source)
