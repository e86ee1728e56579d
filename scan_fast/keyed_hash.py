"""The counter-based hash behind every keyed random choice, for Python ints, numpy and torch.

    mix64(z)             = splitmix64's finaliser (Stafford's "variant 13"), a bijection on 64-bit words
    key(seed, stream, p) = mix64(mix64(mix64(seed ^ SALT) + stream) + p)
    hash(key, c)         = mix64(key + c * GOLDEN)                        (c = 0, 1, 2, ...)

The C++ engine computes the same values (`csrc/rng.hpp`, `CounterRng`), so a choice made by
ranking hashes is bit-identical in the engine, in numpy and in torch on any device. Array
versions work on int64 arrays (numpy) or tensors (torch) holding the 64-bit words in two's
complement: multiplication wraps in both, and the right shifts are made logical by a mask.
Imports nothing of scan_fast.
"""
MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
SALT = 0x5CA11DE5EED5EED
M1 = 0xBF58476D1CE4E5B9
M2 = 0x94D049BB133111EB


def _signed(word: int) -> int:
    """The int64 with the same 64 bits as the unsigned `word`."""
    return word - (1 << 64) if word >= 1 << 63 else word


def mix64_int(z: int) -> int:
    """mix64 of one unsigned 64-bit Python int."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * M1) & MASK64
    z = ((z ^ (z >> 27)) * M2) & MASK64
    return z ^ (z >> 31)


def stream_key(seed: int, stream: int, purpose: int) -> int:
    """The unsigned 64-bit key of one (seed, stream, purpose) stream."""
    return mix64_int(mix64_int(mix64_int(seed ^ SALT) + stream) + purpose)


def _shr(z, bits: int):
    """Logical right shift of int64 words (numpy and torch shift arithmetically)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def mix64(z):
    """mix64 of every element of an int64 numpy array or torch tensor (bit patterns as int64)."""
    z = (z ^ _shr(z, 30)) * _signed(M1)
    z = (z ^ _shr(z, 27)) * _signed(M2)
    return z ^ _shr(z, 31)


def counter_hashes(key: int, counters):
    """hash(key, c) for an int64 array or tensor of counters c >= 0, as int64 bit patterns.

    To order the hashes as unsigned words, compare `hashes ^ SIGN_BIT` as signed values.
    """
    return mix64(counters * _signed(GOLDEN) + _signed(key))


SIGN_BIT = -(1 << 63)  # int64 with only the top bit set: x ^ SIGN_BIT orders as unsigned x
