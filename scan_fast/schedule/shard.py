"""One rank's ids of an epoch, computed without the global kept list: the order every loader reads.

Definition. The epoch's kept ids, sorted, are positions 0..K-1. A keyed bijection
of [0, K) (a Feistel network with cycle-walking, keyed by (seed, epoch); see
csrc/shard.hpp) puts them in a pseudo-random order, and rank r of W reads the
ids at order positions r, r + W, r + 2W, ...: floor(K / W) of them, so every rank
reads as many ids and none is on two ranks (the remainder, at most W - 1 ids,
changes with the epoch). With pad=True (torch's DistributedSampler(drop_last=False))
each rank reads ceil(K / W) instead, the last ones wrapping to the head of the order.

Why strided: global batch i of a global batch size G = W * b holds order positions
[i * G, (i + 1) * G) whatever W is, so a run may change its world size at the same
global batch and still see the same batches.

Cost on each rank: the kept set as a bitset (N / 8 bytes), the engine's rank
directory (N / 64 bytes), 8 bytes per id of the shard and at most 64 MiB of
scratch; nothing of size K.
`epoch_shard_reference` is the same definition written plainly in numpy over the
materialised list: the oracle for tests and the baseline of bench/bench_scale.py.
"""
from dataclasses import dataclass

import numpy as np

from scan_fast.index import SampleSet, keyed_shard
from scan_fast.keyed_hash import GOLDEN, SHARD_ORDER, mix64, mix64_int, stream_key
from scan_fast.schedule.inputs import check_int

__all__ = ["KeptSet", "epoch_shard", "epoch_shard_part", "shard_length", "order_stream", "epoch_shard_reference",
           "keyed_permutation_reference"]


@dataclass(frozen=True)
class KeptSet:
    """An epoch's kept ids as a bitset: the members of `ids`, or its non-members when members=False.

    Not a second set type: a SampleSet (the one set of ids, in C++ and Python) plus which side of it an
    epoch trains on, so a mutation epoch's kept ids (the complement of its prune set) are never written
    out as a set of their own."""
    ids: SampleSet
    members: bool = True

    @classmethod
    def everything(cls, num_samples: int) -> "KeptSet":
        """All ids: the non-members of an empty set (its zero pages are never written)."""
        return cls(SampleSet(num_samples), members=False)

    @classmethod
    def of(cls, kept_ids, num_samples: int) -> "KeptSet":
        ids = SampleSet(num_samples)
        ids.add(kept_ids)
        return cls(ids)

    @property
    def num_samples(self) -> int:
        return self.ids.num_samples

    def __len__(self) -> int:
        return len(self.ids) if self.members else self.ids.num_samples - len(self.ids)

    def to_array(self) -> np.ndarray:
        """The sorted kept ids (materialised: for tests and users who want the list)."""
        return self.ids.to_array() if self.members else self.ids.complement()


def order_stream(epoch: int) -> int:
    """Random stream of an epoch's order (its own purpose in the engine, so no other draw shares it)."""
    return epoch


def shard_length(num_kept: int, world_size: int, pad: bool = False) -> int:
    """Ids per rank: floor(K / W), or ceil(K / W) with pad=True."""
    return -(-num_kept // world_size) if pad else num_kept // world_size


def _check_shard_args(num_kept, epoch, rank, world_size, pad):
    epoch = check_int("epoch", epoch, minimum=0)
    world_size = check_int("world_size", world_size, minimum=1)
    rank = check_int("rank", rank, minimum=0)
    if rank >= world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    if num_kept == 0:
        raise ValueError(f"epoch {epoch} keeps no ids: nothing to train on")
    if num_kept < world_size and not pad:
        raise ValueError(f"epoch {epoch} keeps {num_kept} ids, fewer than world_size={world_size}")
    return epoch, rank, world_size


def epoch_shard(kept: KeptSet, epoch: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                shuffle: bool = True, pad: bool = False) -> np.ndarray:
    """The ids rank `rank` of `world_size` reads in `epoch`, in order (int64); see the module docstring."""
    num_kept = len(kept)
    epoch, rank, world_size = _check_shard_args(num_kept, epoch, rank, world_size, pad)
    seed = check_int("seed", seed, minimum=0)
    return keyed_shard(kept.ids, members=kept.members, seed=seed, stream=order_stream(epoch), start=rank,
                       step=world_size, count=shard_length(num_kept, world_size, pad), shuffle=shuffle)


def epoch_shard_part(kept: KeptSet, epoch: int, rank: int, world_size: int, seed: int, shuffle: bool,
                     first: int, count: int, pad: bool = False) -> np.ndarray:
    """Entries [first, first + count) of `epoch_shard(...)`, computed alone (a loader's chunk)."""
    num_kept = len(kept)
    epoch, rank, world_size = _check_shard_args(num_kept, epoch, rank, world_size, pad)
    total = shard_length(num_kept, world_size, pad)
    if not 0 <= first <= first + count <= total:
        raise ValueError(f"entries [{first}, {first + count}) lie outside the shard's {total}")
    start = (rank + first * world_size) % num_kept
    return keyed_shard(kept.ids, members=kept.members, seed=check_int("seed", seed, minimum=0),
                       stream=order_stream(epoch), start=start, step=world_size, count=count, shuffle=shuffle)


# -- the oracle: the same definition on the materialised list ------------------------------
_U64 = np.uint64
_ROUNDS = 6


def keyed_permutation_reference(size: int, seed: int, stream: int, positions) -> np.ndarray:
    """The engine's keyed bijection of [0, size) applied to `positions`, in numpy."""
    key = stream_key(seed, stream, SHARD_ORDER)
    round_keys = [_U64(mix64_int(key + r * GOLDEN)) for r in range(_ROUNDS)]  # hash(key, r)
    half = max(1, ((size - 1).bit_length() + 1) // 2)
    shift, half_mask = _U64(half), _U64((1 << half) - 1)

    def network(x):
        left, right = x >> shift, x & half_mask
        for k in round_keys:
            left, right = right, left ^ (mix64((right ^ k).view(np.int64)).view(_U64) & half_mask)
        return (left << shift) | right

    x = network(np.asarray(positions, dtype=_U64))
    outside = x >= _U64(size)
    while outside.any():  # cycle-walking
        x[outside] = network(x[outside])
        outside = x >= _U64(size)
    return x.astype(np.int64)


def epoch_shard_reference(kept_ids, epoch: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                          shuffle: bool = True, pad: bool = False) -> np.ndarray:
    """`epoch_shard` on a plain list of kept ids: permute every position, then slice (O(K) memory)."""
    kept = np.unique(np.asarray(kept_ids, dtype=np.int64))
    epoch, rank, world_size = _check_shard_args(kept.size, epoch, rank, world_size, pad)
    positions = np.arange(kept.size, dtype=np.int64)
    if shuffle:
        positions = keyed_permutation_reference(kept.size, seed, order_stream(epoch), positions)
    order = kept[positions]
    count = shard_length(kept.size, world_size, pad)
    return order[(rank + world_size * np.arange(count, dtype=np.int64)) % kept.size]
