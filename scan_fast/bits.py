"""Sets of sample ids as packed bits (N / 8 bytes, little-endian: id i is bit i & 7 of byte i >> 3), the form
in which a schedule copies a set to the device once an epoch and looks a batch's ids up in it in every step.
`SampleSet.packed_bits()` and np.packbits(mask, bitorder="little") write it. Imports nothing of the package.
"""


def bits_contain(bits, ids):
    """Membership of int64 `ids` in packed `bits`, as a bool array of their library (numpy, or torch with
    `bits` on the ids' device); no host read for tensors."""
    return ((bits[ids >> 3] >> (ids & 7)) & 1) != 0
