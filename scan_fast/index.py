"""Sets of sample ids and the per-batch SCAN candidate rule, backed by the C++ engine.

`SampleSet` stores ids in [0, num_samples) as one bit each (num_samples / 8 bytes), so
candidate sets of a billion-sample dataset cost 125 MB instead of tens of GB of Python
ints. `batch_candidates` is the engine's implementation of the candidate rule that
scan_fast.schedule.candidates defines (and calls for host arrays).
Randomness (sample, shuffled_complement, the candidate top-up) comes from a
counter-based generator keyed by (seed, stream): results are the same on every
platform and for every thread count (see csrc/rng.hpp).

This module validates arguments and raises ValueError/TypeError naming what is wrong;
the work happens in scan_fast._C with the GIL released.
"""
from __future__ import annotations

import operator
from typing import Optional, Tuple

import numpy as np

from scan_fast import _C

__all__ = ["SampleSet", "batch_candidates", "keyed_shard", "set_num_threads", "get_num_threads", "MAX_SAMPLES"]

MAX_SAMPLES: int = _C.MAX_SAMPLES  # 2**40
_U64 = 2**64
# Id dtypes the engine reads in place; other integer dtypes are converted first.
_ENGINE_ID_DTYPES = frozenset(np.dtype(t) for t in (np.int64, np.uint32, np.int32, np.uint64))
_LOSS_DTYPES = frozenset((np.dtype(np.float32), np.dtype(np.float64)))


_HEADER_BYTES = 32  # SampleSet.to_bytes(): a 32-byte header, then the bits


def set_num_threads(num_threads: int) -> None:
    """Threads used by the engine's bulk loops. Results never depend on it."""
    num_threads = _as_int(num_threads, "num_threads")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    _C.set_num_threads(num_threads)


def get_num_threads() -> int:
    return _C.get_num_threads()


def _as_int(value, name: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}") from None


def _as_u64(value, name: str) -> int:
    value = _as_int(value, name)
    if not 0 <= value < _U64:
        raise ValueError(f"{name} must be in [0, 2**64), got {value}")
    return value


def _as_num_samples(value) -> int:
    num_samples = _as_int(value, "num_samples")
    if not 1 <= num_samples <= MAX_SAMPLES:
        raise ValueError(f"num_samples must be in [1, 2**40], got {num_samples}")
    return num_samples


def _as_ids(ids, name: str = "ids") -> np.ndarray:
    """A 1-D, C-contiguous integer array of a dtype the engine reads in place."""
    if ids.__class__ is np.ndarray and ids.dtype in _ENGINE_ID_DTYPES and ids.ndim == 1 and ids.flags.c_contiguous:
        return ids  # hot path: zero-copy
    arr = np.asarray(ids)
    if arr.dtype.kind not in "iu":
        if arr.size == 0 and not isinstance(ids, np.ndarray):
            return np.empty(0, dtype=np.int64)  # [] and () carry no dtype
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype not in _ENGINE_ID_DTYPES:  # int8/16, uint8/16, non-native byte order
        target = np.uint64 if arr.dtype.kind == "u" and arr.dtype.itemsize == 8 else np.int64
        return np.ascontiguousarray(arr, dtype=target)
    return np.ascontiguousarray(arr)


class SampleSet:
    """A set of sample ids in [0, num_samples), 1 <= num_samples <= 2**40.

    Bulk methods take 1-D integer numpy arrays (int64/uint32 are read in place, other
    integer dtypes are converted). Ids are bounds-checked before the set changes.
    """

    __slots__ = ("_impl",)

    def __init__(self, num_samples: int):
        num_samples = _as_num_samples(num_samples)
        try:
            self._impl = _C.SampleSet(num_samples)
        except MemoryError:
            raise MemoryError(f"SampleSet(num_samples={num_samples}) needs {num_samples / 2**33:.1f} GiB of address "
                              "space for its bitset, which the system refused") from None

    @classmethod
    def _wrap(cls, impl) -> "SampleSet":
        out = cls.__new__(cls)
        out._impl = impl
        return out

    @property
    def num_samples(self) -> int:
        return self._impl.num_samples

    # -- membership
    def add(self, ids) -> None:
        self._impl.add(_as_ids(ids))

    def discard(self, ids) -> None:
        self._impl.discard(_as_ids(ids))

    def contains(self, ids) -> np.ndarray:
        """Bool array: which of `ids` are members."""
        return self._impl.contains(_as_ids(ids))

    def __contains__(self, sample_id) -> bool:
        sample_id = _as_int(sample_id, "sample id")
        return 0 <= sample_id < _U64 and self._impl.contains_one(sample_id)

    def __len__(self) -> int:
        return len(self._impl)

    def __iter__(self):
        return iter(self.to_array().tolist())

    def clear(self) -> None:
        self._impl.clear()

    def copy(self) -> "SampleSet":
        return SampleSet._wrap(self._impl.copy())

    __copy__ = copy

    def __deepcopy__(self, memo) -> "SampleSet":
        return self.copy()

    def __eq__(self, other) -> bool:
        if not isinstance(other, SampleSet):
            return NotImplemented
        return self._impl == other._impl

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        return f"SampleSet(num_samples={self.num_samples}, len={len(self)})"

    # -- algebra
    def _check_other(self, other, op: str) -> "SampleSet":
        if not isinstance(other, SampleSet):
            raise TypeError(f"{op} needs a SampleSet, got {type(other).__name__}")
        if other.num_samples != self.num_samples:
            raise ValueError(
                f"{op}: num_samples differ ({self.num_samples} here, {other.num_samples} in the other set)")
        return other

    def update(self, other: "SampleSet") -> "SampleSet":
        self._impl.update(self._check_other(other, "update")._impl)
        return self

    def intersection_update(self, other: "SampleSet") -> "SampleSet":
        self._impl.intersection_update(self._check_other(other, "intersection_update")._impl)
        return self

    def difference_update(self, other: "SampleSet") -> "SampleSet":
        self._impl.difference_update(self._check_other(other, "difference_update")._impl)
        return self

    def union(self, other: "SampleSet") -> "SampleSet":
        self._check_other(other, "union")
        return self.copy().update(other)

    def intersection(self, other: "SampleSet") -> "SampleSet":
        self._check_other(other, "intersection")
        return self.copy().intersection_update(other)

    def difference(self, other: "SampleSet") -> "SampleSet":
        self._check_other(other, "difference")
        return self.copy().difference_update(other)

    def __or__(self, other):
        return self.union(other) if isinstance(other, SampleSet) else NotImplemented

    def __and__(self, other):
        return self.intersection(other) if isinstance(other, SampleSet) else NotImplemented

    def __sub__(self, other):
        return self.difference(other) if isinstance(other, SampleSet) else NotImplemented

    def __ior__(self, other):
        return self.update(other) if isinstance(other, SampleSet) else NotImplemented

    def __iand__(self, other):
        return self.intersection_update(other) if isinstance(other, SampleSet) else NotImplemented

    def __isub__(self, other):
        return self.difference_update(other) if isinstance(other, SampleSet) else NotImplemented

    # -- sampling and id arrays
    def sample(self, k: int, seed: int, stream: int) -> "SampleSet":
        """Exactly k members, uniform without replacement, fixed by (set, k, seed, stream)."""
        k = _as_int(k, "k")
        seed, stream = _as_u64(seed, "seed"), _as_u64(stream, "stream")
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        size = len(self)
        if k > size:
            raise ValueError(f"k={k} exceeds the number of members ({size})")
        return SampleSet._wrap(self._impl.sample(k, seed, stream))

    def to_array(self) -> np.ndarray:
        """Sorted members: uint32 when num_samples < 2**32, else int64."""
        return self._impl.to_array()

    def complement(self) -> np.ndarray:
        """Sorted non-members, same dtype rule as to_array."""
        return self._impl.complement()

    def shuffled_complement(self, seed: int, stream: int) -> np.ndarray:
        """A uniform random permutation of complement(), fixed by (set, seed, stream)."""
        return self._impl.shuffled_complement(_as_u64(seed, "seed"), _as_u64(stream, "stream"))

    # -- bytes
    def to_bytes(self) -> bytes:
        """32-byte header (magic, format version, num_samples, payload checksum) + bitset."""
        return self._impl.to_bytes()

    def packed_bits(self) -> np.ndarray:
        """The set as little-endian packed bits (N / 8 bytes, read-only): id i is bit i & 7 of byte i >> 3
        (`scan_fast.bits.bits_contain` reads them)."""
        return np.frombuffer(self.to_bytes(), np.uint8)[_HEADER_BYTES:]

    @classmethod
    def from_packed_bits(cls, num_samples: int, bits) -> "SampleSet":
        """Inverse of packed_bits: the set of `num_samples` ids whose packed bits are `bits` (a 1-D uint8 array of
        the length packed_bits gives); ValueError for another length or a bit at or beyond num_samples."""
        num_samples = _as_num_samples(num_samples)
        bits = np.ascontiguousarray(bits)
        if bits.dtype != np.uint8 or bits.ndim != 1:
            raise TypeError(f"bits must be a 1-D uint8 array, got {bits.dtype} with shape {bits.shape}")
        return cls._wrap(_C.SampleSet.from_words(num_samples, bits))

    @classmethod
    def from_bytes(cls, data) -> "SampleSet":
        """Inverse of to_bytes; ValueError saying what is wrong for damaged or foreign bytes."""
        if isinstance(data, memoryview):
            data = data.cast("B") if data.c_contiguous else data.tobytes()
        elif not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"data must be bytes, bytearray or memoryview, got {type(data).__name__}")
        return cls._wrap(_C.SampleSet.from_bytes(data))

    def __reduce__(self):
        return (SampleSet.from_bytes, (self.to_bytes(),))


def keyed_shard(kept: SampleSet, *, members: bool, seed: int, stream: int, start: int, step: int, count: int,
                shuffle: bool = True) -> np.ndarray:
    """Ids at positions (start + j * step) mod K, j < count, of the kept ids in a keyed order (int64).

    The kept ids are the members of `kept` (members=True) or its non-members; K is
    their count. Their order is a keyed bijection of the positions [0, K) fixed by
    (seed, stream), sorted order when shuffle=False; no list of all K ids is ever
    built (the engine keeps 8 bytes per 512 samples of rank directory and at most
    64 MiB of scratch besides the 8 bytes per returned id). Definition and oracle: scan_fast.schedule.shard.
    """
    if not isinstance(kept, SampleSet):
        raise TypeError(f"kept must be a SampleSet, got {type(kept).__name__}")
    seed, stream = _as_u64(seed, "seed"), _as_u64(stream, "stream")
    start, step, count = (_as_u64(v, name) for v, name in ((start, "start"), (step, "step"), (count, "count")))
    size = len(kept) if members else kept.num_samples - len(kept)
    if count and not size:
        raise ValueError(f"no kept ids to take {count} from")
    return _C.shard_ids(kept._impl, bool(members), bool(shuffle), seed, stream, start, step, count)


def _as_loss(loss, name: str) -> np.ndarray:
    if loss.__class__ is np.ndarray and loss.dtype in _LOSS_DTYPES and loss.ndim == 1 and loss.flags.c_contiguous:
        return loss  # hot path
    arr = np.asarray(loss)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    dtype = np.float32 if arr.dtype == np.float16 or arr.dtype == np.float32 else np.float64
    return np.ascontiguousarray(arr, dtype=dtype)


def _rule(k, threshold, kind: str, batch: int):
    if (k is None) == (threshold is None):
        raise ValueError(f"give exactly one of k_{kind} and abs_{kind} (got k_{kind}={k!r}, abs_{kind}={threshold!r})")
    if k is not None:
        k = _as_int(k, f"k_{kind}")
        if not 0 <= k <= batch:
            raise ValueError(f"k_{kind} must be in [0, {batch}] (the batch size), got {k}")
        return k, None
    threshold = float(threshold)
    if threshold != threshold:
        raise ValueError(f"abs_{kind} is NaN")
    return None, threshold


def batch_candidates(
    loss_a,
    loss_b,
    *,
    k_ill: Optional[int] = None,
    k_red: Optional[int] = None,
    abs_ill: Optional[float] = None,
    abs_red: Optional[float] = None,
    seed: int = 0,
    stream: int = 0,
) -> Tuple[np.ndarray, np.ndarray]:
    """(ill_mask, red_mask): SCAN's candidates among one batch's positions.

    X_d is the k highest (ILL) / lowest (RED) losses of direction d, ties to the lower
    position, or those with loss > abs_ill / < abs_red; C_X = X_a & X_b, topped up to |X_a|
    with the smallest-hash positions of (X_a | X_b) - C_X when |C_X| < 0.9 |X_a|, the hash
    keyed by (seed, stream). Losses: 1-D float32/float64 (others converted), equal length,
    finite. Definition and oracle: scan_fast.schedule.candidates.
    """
    loss_a = _as_loss(loss_a, "loss_a")
    loss_b = _as_loss(loss_b, "loss_b")
    batch = loss_a.shape[0]
    if loss_b.shape[0] != batch:
        raise ValueError(f"loss_a and loss_b differ in length ({batch} vs {loss_b.shape[0]})")
    if loss_a.dtype != loss_b.dtype:
        loss_a, loss_b = loss_a.astype(np.float64), loss_b.astype(np.float64)
    k_ill, abs_ill = _rule(k_ill, abs_ill, "ill", batch)
    k_red, abs_red = _rule(k_red, abs_red, "red", batch)
    if seed.__class__ is not int or stream.__class__ is not int or not (0 <= seed < _U64 and 0 <= stream < _U64):
        seed, stream = _as_u64(seed, "seed"), _as_u64(stream, "stream")
    return _C.batch_candidates(loss_a, loss_b, k_ill, k_red, abs_ill, abs_red, seed, stream)
