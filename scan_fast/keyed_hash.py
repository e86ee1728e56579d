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

# Purposes: one number per kind of keyed choice, so that no two kinds share a key. 1-7 are the
# engine's (csrc/rng.hpp, RngPurpose). SCAN_EPOCH_TIE shares 7 with SHARD_ORDER on disjoint streams: the shard order's stream is the epoch, the tie's is mutation_stream(epoch) = epoch << 32,
# and the tie is drawn only in preparation epochs (>= 2), so the two keys never coincide.
TOP_UP_ILL = 1        # scan_fast/schedule/candidates.py: the per-batch top-up (engine: kTopUpIll)
TOP_UP_RED = 2        # (engine: kTopUpRed)
SHARD_ORDER = 7       # scan_fast/schedule/shard.py: the keyed Feistel order of an epoch's kept ids
SCAN_EPOCH_TIE = 7    # scan_fast/schedule/scan_epoch.py: the partial-bin choice
SETA_KEEP = 11        # scan_fast/schedule/seta.py: SeTa's random keep
INFOBATCH_PRUNE = 12  # scan_fast/schedule/infobatch.py: InfoBatch's soft-pruning coin of each id


def below_fraction(numerator: int, denominator: int) -> int:
    """The signed-order bound b with P(hash ^ SIGN_BIT < b) = numerator / denominator (rounded down to a
    multiple of 2^-64) for a uniform 64-bit hash: a keyed coin of that probability for each counter."""
    numerator, denominator = int(numerator), int(denominator)
    if denominator <= 0 or numerator <= 0:
        return -(1 << 63)
    bound = (numerator << 64) // denominator
    return min(bound, (1 << 64) - 1) - (1 << 63)
