"""Augmentation randomness as a pure function of (seed, epoch, sample id, view, draw).

FFCV's random crop and flip draw from numba's per-thread generators, which no
seed reaches and no checkpoint saves, so two runs with one seed (or a run and
its resumed copy) see different crops. Here every random number an
augmentation uses is computed, not drawn:

    key(seed, epoch, id, view) = mix(mix(mix(mix(seed ^ SALT) + epoch) + id) + view)
    uniform(key, draw)         = top 53 bits of mix(key + draw * GOLDEN) / 2^53

with `mix` the splitmix64 finaliser and the constants of `scan_fast.keyed_hash` (the same
construction as the C++ engine's `csrc/rng.hpp`), compiled here by numba. A sample's augmentation then depends on nothing but the run's
seed, the epoch and the sample itself: not on the batch it lands in, the rank
or thread that reads it, or whether the run was resumed.

Draw numbers in use: 0-39 crop attempts, 40 flip (decoders.py), 64-72 the
photometric ops (augment.py).
"""
import numba
import numpy as np

from scan_fast import keyed_hash

_GOLDEN = np.uint64(keyed_hash.GOLDEN)
_SALT = np.uint64(keyed_hash.SALT)
_M1 = np.uint64(keyed_hash.M1)
_M2 = np.uint64(keyed_hash.M2)
_INV_2_53 = 1.0 / 9007199254740992.0

CROP_DRAWS = 0        # 4 per attempt, 10 attempts
FLIP_DRAW = 40
PHOTOMETRIC_DRAWS = 64


@numba.njit(inline="always")
def mix64(z):
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@numba.njit
def sample_key(seed, epoch, sample_id, view):
    """The key of one sample's augmentation in one epoch and view (all arguments non-negative ints)."""
    key = mix64(np.uint64(seed) ^ _SALT)
    key = mix64(key + np.uint64(epoch))
    key = mix64(key + np.uint64(sample_id))
    return mix64(key + np.uint64(view))


@numba.njit
def keyed_uniform(key, draw):
    """Uniform float64 in [0, 1) number `draw` of the stream `key`."""
    bits = mix64(key + np.uint64(draw) * _GOLDEN) >> np.uint64(11)
    return float(bits) * _INV_2_53


@numba.njit
def _fill_uniforms(seed, epoch, ids, view, first_draw, out):
    for row in range(ids.shape[0]):
        key = sample_key(seed, epoch, ids[row], view)
        for col in range(out.shape[1]):
            out[row, col] = keyed_uniform(key, first_draw + col)


def keyed_uniforms(seed: int, epoch: int, ids, view: int, first_draw: int, num_draws: int) -> np.ndarray:
    """(len(ids), num_draws) float64 uniforms: row r holds draws first_draw.. of sample ids[r]."""
    ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    if ids.size and ids.min() < 0:
        raise ValueError(f"sample ids must be >= 0, got {int(ids.min())}")
    for name, value in (("seed", seed), ("epoch", epoch), ("view", view), ("first_draw", first_draw)):
        if int(value) < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    out = np.empty((ids.size, int(num_draws)), np.float64)
    _fill_uniforms(np.uint64(seed), np.uint64(epoch), ids, np.uint64(view), np.uint64(first_draw), out)
    return out
