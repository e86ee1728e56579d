"""scan_fast.index (the C++ engine) against plain Python sets and the candidate oracle."""
import itertools
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import scan_fast
from scan_fast import _C
from scan_fast.schedule.candidates import batch_candidates_reference, direction_set
from scan_fast.index import SampleSet, batch_candidates, get_num_threads, set_num_threads

_SETTINGS = settings(max_examples=60, deadline=None)


@pytest.fixture
def threads():
    """Restores the engine's thread count after a test changes it."""
    before = get_num_threads()
    yield set_num_threads
    set_num_threads(before)


def _set_of(n, ids):
    s = SampleSet(n)
    s.add(np.asarray(ids, dtype=np.int64))
    return s


def test_version():
    assert _C.__version__ == scan_fast.__version__
    assert SampleSet is scan_fast.SampleSet


# ---------------------------------------------------------------- set semantics

@st.composite
def _two_sets(draw):
    n = draw(st.integers(1, 300))
    ids = st.lists(st.integers(0, n - 1), max_size=2 * n)
    return n, draw(ids), draw(ids), draw(ids)


@_SETTINGS
@given(_two_sets())
def test_operations_match_python_set(case):
    n, ids_a, ids_b, removed = case
    a, b = _set_of(n, ids_a), _set_of(n, ids_b)
    a.discard(np.asarray(removed, dtype=np.uint32))
    ra, rb = set(ids_a) - set(removed), set(ids_b)

    assert len(a) == len(ra)
    assert a.to_array().tolist() == sorted(ra)
    assert a.complement().tolist() == sorted(set(range(n)) - ra)
    probe = np.arange(n, dtype=np.int64)
    assert a.contains(probe).tolist() == [i in ra for i in range(n)]
    assert all((i in a) == (i in ra) for i in range(n))
    assert list(a) == sorted(ra)
    for ours, theirs in [(a | b, ra | rb), (a & b, ra & rb), (a - b, ra - rb),
                         (a.union(b), ra | rb), (a.intersection(b), ra & rb), (a.difference(b), ra - rb)]:
        assert ours.to_array().tolist() == sorted(theirs)
    for op, expect in [("__ior__", ra | rb), ("__iand__", ra & rb), ("__isub__", ra - rb),
                       ("update", ra | rb), ("intersection_update", ra & rb), ("difference_update", ra - rb)]:
        c = a.copy()
        getattr(c, op)(b)
        assert c.to_array().tolist() == sorted(expect)
    assert (a == b) == (ra == rb)
    assert a == a.copy() and a == SampleSet.from_bytes(a.to_bytes())
    c = a.copy()
    c.clear()
    assert len(c) == 0 and len(a) == len(ra)  # copies are independent


def test_operators_in_place_keep_identity():
    a, b = _set_of(10, [1, 2]), _set_of(10, [2, 3])
    alias = a
    a |= b
    a -= _set_of(10, [1])
    a &= _set_of(10, [2, 3, 4])
    assert a is alias and a.to_array().tolist() == [2, 3]
    assert "len=2" in repr(a)


def test_edge_sizes_and_id_dtypes():
    for n in (1, 63, 64, 65):
        s = SampleSet(n)
        s.add(np.array([n - 1]))
        assert s.to_array().tolist() == [n - 1] and len(s.complement()) == n - 1
    assert SampleSet(2**32 - 1).to_array().dtype == np.uint32
    big = SampleSet(2**32 + 3)  # bits are calloc'd: only touched pages cost memory
    big.add(np.array([0, 2**32 + 2], dtype=np.uint64))
    assert big.to_array().dtype == np.int64 and big.to_array().tolist() == [0, 2**32 + 2]
    assert 2**32 + 2 in big and 2**32 + 3 not in big and -1 not in big


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint32, np.uint64, np.int16, np.uint8, ">i8"])
def test_integer_dtypes_and_layouts(dtype):
    ids = np.array([7, 0, 3, 3, 9, 1], dtype=dtype)
    s = SampleSet(10)
    s.add(ids[::2])  # non-contiguous view
    assert s.to_array().tolist() == [3, 7, 9]
    assert s.contains(ids).tolist() == [True, False, True, True, True, False]
    s.discard(ids[:1])
    assert s.to_array().tolist() == [3, 9]
    s.add([4, 5])  # plain lists are fine too
    s.add([])
    assert s.to_array().tolist() == [3, 4, 5, 9]


def test_contiguous_ids_are_not_copied():
    ids = np.array([1, 2], dtype=np.int64)
    from scan_fast import index
    assert index._as_ids(ids) is ids
    assert index._as_ids(ids.astype(np.uint32)).dtype == np.uint32


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("bad, err, match", [
    (np.array([1, -3, 2]), ValueError, r"ids\[1\] = -3"),
    (np.array([1, 2, 10], dtype=np.uint32), ValueError, r"ids\[2\] = 10 is out of range for num_samples=10"),
    (np.array([2**63], dtype=np.uint64), ValueError, r"ids\[0\] = 9223372036854775808"),
    (np.array([1.0, 2.0]), TypeError, "integers, got dtype float64"),
    (np.array([True]), TypeError, "dtype bool"),
    (np.zeros((2, 2), dtype=np.int64), ValueError, r"1-D, got shape \(2, 2\)"),
    ("abc", TypeError, "integers"),
])
def test_bad_ids_raise_and_leave_set_unchanged(bad, err, match):
    s = _set_of(10, [0, 5])
    before = s.copy()
    for method in (s.add, s.discard, s.contains):
        with pytest.raises(err, match=match):
            method(bad)
        assert s == before


def test_bad_arguments():
    for n in (0, -1, 2**40 + 1):
        with pytest.raises(ValueError, match="num_samples must be in"):
            SampleSet(n)
    with pytest.raises(TypeError, match="num_samples must be an integer"):
        SampleSet(10.0)
    a, b = _set_of(10, [1]), _set_of(11, [1])
    for op in ("union", "intersection", "difference", "update", "intersection_update", "difference_update"):
        with pytest.raises(ValueError, match="num_samples differ"):
            getattr(a, op)(b)
        with pytest.raises(TypeError, match="needs a SampleSet"):
            getattr(a, op)({1})
    with pytest.raises(TypeError):
        a | {1}
    with pytest.raises(ValueError, match="num_samples differ"):
        a |= b
    assert a.to_array().tolist() == [1]
    with pytest.raises(TypeError, match="sample id"):
        1.5 in a
    with pytest.raises(ValueError, match="k=2 exceeds the number of members"):
        a.sample(2, 0, 0)
    with pytest.raises(ValueError, match="k must be >= 0"):
        a.sample(-1, 0, 0)
    with pytest.raises(ValueError, match="seed must be in"):
        a.sample(1, -1, 0)
    with pytest.raises(TypeError, match="stream must be an integer"):
        a.shuffled_complement(0, "x")
    with pytest.raises(ValueError, match="num_threads"):
        set_num_threads(0)
    assert a.to_array().tolist() == [1]


def test_bytes_round_trip_and_damage():
    s = _set_of(1000, np.arange(0, 1000, 7))
    data = s.to_bytes()
    assert SampleSet.from_bytes(data) == s
    assert SampleSet.from_bytes(bytearray(data)) == s
    assert SampleSet.from_bytes(memoryview(data)) == s
    assert pickle.loads(pickle.dumps(s)) == s
    with pytest.raises(ValueError, match="truncated"):
        SampleSet.from_bytes(data[:-1])
    with pytest.raises(ValueError, match="truncated"):
        SampleSet.from_bytes(data[:5])
    with pytest.raises(ValueError, match="trailing data"):
        SampleSet.from_bytes(data + b"\0")
    with pytest.raises(ValueError, match="bad magic"):
        SampleSet.from_bytes(b"PK\x03\x04" + data[4:])
    corrupted = bytearray(data)
    corrupted[100] ^= 0x01
    with pytest.raises(ValueError, match="checksum"):
        SampleSet.from_bytes(bytes(corrupted))
    version = bytearray(data)
    version[8] = 2
    with pytest.raises(ValueError, match="format version 2"):
        SampleSet.from_bytes(bytes(version))
    with pytest.raises(TypeError, match="bytes"):
        SampleSet.from_bytes("not bytes")


# ---------------------------------------------------------------- sampling

def test_sample_exact_subset_deterministic():
    s = _set_of(5000, np.random.default_rng(1).integers(0, 5000, 3000))
    members = set(s.to_array().tolist())
    for k in (0, 1, 17, len(s) // 2, len(s) - 1, len(s)):
        first = s.sample(k, seed=3, stream=1)
        assert len(first) == k and set(first.to_array().tolist()) <= members
        assert first == s.sample(k, seed=3, stream=1)
        if 0 < k < len(s):
            assert first != s.sample(k, seed=3, stream=2)
            assert first != s.sample(k, seed=4, stream=1)


def test_sample_is_uniform_over_subsets():
    # All 15 two-subsets of six members should come up about equally often.
    s = _set_of(50, [2, 3, 11, 30, 31, 49])
    draws = 3000
    counts = {}
    for stream in range(draws):
        key = tuple(s.sample(2, seed=9, stream=stream).to_array().tolist())
        counts[key] = counts.get(key, 0) + 1
    assert set(counts) == set(itertools.combinations([2, 3, 11, 30, 31, 49], 2))
    expected = draws / 15
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 45  # 14 degrees of freedom: p ~ 5e-5, and the seeds are fixed


def test_sample_inclusion_rate_on_a_large_set():
    n = 1 << 20
    s = _set_of(n, np.arange(0, n, 3))
    picked = s.sample(len(s) // 10, seed=1, stream=0).to_array()
    # Each eighth of the id range should hold about an eighth of the sample.
    per_part = np.bincount(picked // (n // 8), minlength=8)
    assert np.all(np.abs(per_part - len(picked) / 8) < 5 * np.sqrt(len(picked) / 8))


def test_results_do_not_depend_on_thread_count(threads):
    n = 3_000_017  # several slices per thread
    ids = np.random.default_rng(2).integers(0, n, 2_000_000)
    s = _set_of(n, ids)
    mask = np.zeros(n, dtype=bool)
    mask[ids] = True
    results = []
    for count in (1, 2, 3):
        threads(count)
        results.append((s.sample(len(s) // 3, 5, 7), s.shuffled_complement(5, 7), s.complement(), s.to_array(),
                        len(s)))
    np.testing.assert_array_equal(results[0][2], np.flatnonzero(~mask))  # numpy oracle
    np.testing.assert_array_equal(results[0][3], np.flatnonzero(mask))
    for other in results[1:]:
        assert other[0] == results[0][0]
        for i in (1, 2, 3):
            np.testing.assert_array_equal(other[i], results[0][i])
        assert other[4] == results[0][4]


def test_shuffled_complement_is_a_seeded_permutation():
    s = _set_of(200_000, np.arange(0, 200_000, 5))
    out = s.shuffled_complement(seed=1, stream=2)
    assert out.dtype == np.uint32
    np.testing.assert_array_equal(np.sort(out), s.complement())
    assert not np.array_equal(out, s.complement())
    np.testing.assert_array_equal(out, s.shuffled_complement(seed=1, stream=2))
    assert not np.array_equal(out, s.shuffled_complement(seed=1, stream=3))
    # Position of small ids spread over the whole output (not a block-local shuffle).
    where = np.flatnonzero(out < 2000)
    assert where.min() < len(out) // 10 and where.max() > len(out) * 9 // 10


def test_shuffled_complement_is_uniform_on_a_small_set():
    s = _set_of(4, [1])  # complement {0, 2, 3}: 6 orders
    counts = {}
    for stream in range(1800):
        key = tuple(s.shuffled_complement(seed=0, stream=stream).tolist())
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 6
    chi2 = sum((c - 300) ** 2 / 300 for c in counts.values())
    assert chi2 < 30  # 5 degrees of freedom


# ---------------------------------------------------------------- batch candidates

def _losses(draw, batch, ties):
    values = st.integers(0, 4) if ties else st.integers(0, 10**6)
    return np.array(draw(st.lists(values, min_size=batch, max_size=batch)), dtype=np.float64) / 3


@st.composite
def _batches(draw):
    batch = draw(st.integers(1, 200))
    ties = draw(st.booleans())
    a, b = _losses(draw, batch, ties), _losses(draw, batch, ties)
    k_ill, k_red = draw(st.integers(0, batch)), draw(st.integers(0, batch))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return a.astype(dtype), b.astype(dtype), k_ill, k_red


@_SETTINGS
@given(_batches())
def test_batch_candidates_equal_oracle_without_top_up(case):
    a, _, k_ill, k_red = case
    ill, red = batch_candidates(a, a.copy(), k_ill=k_ill, k_red=k_red, seed=1, stream=2)
    ill_ref, red_ref = batch_candidates_reference(a, a, k_ill=k_ill, k_red=k_red)
    np.testing.assert_array_equal(ill, ill_ref)
    np.testing.assert_array_equal(red, red_ref)
    assert ill.dtype == np.bool_ and ill.shape == a.shape


@_SETTINGS
@given(st.sampled_from([32, 64]).flatmap(lambda width: st.lists(
    st.floats(allow_nan=False, allow_infinity=False, width=width), min_size=1, max_size=400).map(
    lambda values: np.array(values, dtype=np.float32 if width == 32 else np.float64))), st.data())
def test_batch_candidates_any_finite_values(loss, data):
    # Extreme magnitudes, signed zeros and denormals go through the histogram selection.
    k_ill, k_red = data.draw(st.integers(0, loss.size)), data.draw(st.integers(0, loss.size))
    ill, red = batch_candidates(loss, loss, k_ill=k_ill, k_red=k_red)
    ill_ref, red_ref = batch_candidates_reference(loss, loss, k_ill=k_ill, k_red=k_red)
    np.testing.assert_array_equal(ill, ill_ref)
    np.testing.assert_array_equal(red, red_ref)


@_SETTINGS
@given(_batches(), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_batch_candidates_equal_oracle_with_top_up(case, seed, stream):
    """The keyed top-up makes the engine the oracle bit for bit, top-ups included."""
    a, b, k_ill, k_red = case
    ill, red = batch_candidates(a, b, k_ill=k_ill, k_red=k_red, seed=seed, stream=stream)
    ill_ref, red_ref = batch_candidates_reference(a, b, k_ill=k_ill, k_red=k_red, seed=seed, stream=stream)
    np.testing.assert_array_equal(ill, ill_ref)
    np.testing.assert_array_equal(red, red_ref)
    for mask, k, highest in ((ill, k_ill, True), (red, k_red, False)):
        x_a, x_b = direction_set(a.astype(np.float64), k, None, highest), direction_set(b.astype(np.float64), k, None, highest)
        common = int((x_a & x_b).sum())
        assert mask.sum() == (k if common * 10 < 9 * k else common)
        assert np.all(mask[x_a & x_b])                 # C_X contains X_a & X_b
        assert not np.any(mask & ~(x_a | x_b))         # and nothing outside X_a | X_b


def test_batch_candidates_top_up_depends_on_stream():
    rng = np.random.default_rng(5)
    a, b = rng.random(4096), rng.random(4096)
    first = batch_candidates(a, b, k_ill=1433, k_red=1433, seed=0, stream=0)
    second = batch_candidates(a, b, k_ill=1433, k_red=1433, seed=0, stream=1)
    assert not np.array_equal(first[0], second[0]) and not np.array_equal(first[1], second[1])
    assert first[0].sum() == second[0].sum() == 1433


@_SETTINGS
@given(_batches(), st.floats(-1, 1e6, allow_nan=False), st.floats(-1, 1e6, allow_nan=False))
def test_batch_candidates_thresholds(case, abs_ill, abs_red):
    a, b, _, _ = case
    ill, red = batch_candidates(a, a, abs_ill=abs_ill, abs_red=abs_red)
    ill_ref, red_ref = batch_candidates_reference(a, a, abs_ill=abs_ill, abs_red=abs_red)
    np.testing.assert_array_equal(ill, ill_ref)
    np.testing.assert_array_equal(red, red_ref)
    ill, red = batch_candidates(a, b, abs_ill=abs_ill, k_red=1, seed=3, stream=4)
    ill_ref, red_ref = batch_candidates_reference(a, b, abs_ill=abs_ill, k_red=1, seed=3, stream=4)
    np.testing.assert_array_equal(ill, ill_ref)
    np.testing.assert_array_equal(red, red_ref)
    x_a, x_b = a.astype(np.float64) > abs_ill, b.astype(np.float64) > abs_ill
    assert np.all(ill[x_a & x_b]) and not np.any(ill & ~(x_a | x_b))


def test_batch_candidates_ties_go_to_lower_positions():
    loss = np.array([1.0, 2.0, 2.0, 2.0, 0.0, 0.0, 5.0])
    ill, red = batch_candidates(loss, loss, k_ill=3, k_red=3)
    assert ill.tolist() == [False, True, True, False, False, False, True]
    assert red.tolist() == [True, False, False, False, True, True, False]
    ill, red = batch_candidates(loss, loss, k_ill=2, k_red=1)
    assert np.flatnonzero(ill).tolist() == [1, 6] and np.flatnonzero(red).tolist() == [4]


def test_batch_candidates_dtypes():
    loss = [3, 1, 2, 5]
    for value in (np.array(loss, dtype=np.int32), np.array(loss, dtype=np.float16), loss,
                  np.repeat(np.float32(loss), 2)[::2]):
        ill, red = batch_candidates(value, value, k_ill=1, k_red=1)
        assert ill.tolist() == [False, False, False, True] and red.tolist() == [False, True, False, False]
    ill, _ = batch_candidates(np.float32([1, 2]), np.float64([1, 2]), k_ill=1, k_red=0)
    assert ill.tolist() == [False, True]


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(loss_b=np.array([1.0, np.nan, np.inf, 2.0, -np.inf])), ValueError,
     r"loss_b has 3 non-finite values \(NaN or inf\), first at positions 1, 2, 4"),
    (dict(loss_a=np.ones(4)), ValueError, r"differ in length \(4 vs 5\)"),
    (dict(loss_a=np.ones((5, 1))), ValueError, "loss_a must be 1-D"),
    (dict(loss_a=np.ones(5, dtype=np.complex64)), TypeError, "real numbers"),
    (dict(abs_ill=1.0), ValueError, "exactly one of k_ill and abs_ill"),
    (dict(k_red=None), ValueError, "exactly one of k_red and abs_red"),
    (dict(k_ill=6), ValueError, r"k_ill must be in \[0, 5\]"),
    (dict(k_red=-1), ValueError, r"k_red must be in \[0, 5\]"),
    (dict(k_ill=None, abs_ill=float("nan")), ValueError, "abs_ill is NaN"),
    (dict(k_ill=1.5), TypeError, "k_ill must be an integer"),
    (dict(seed=-1), ValueError, "seed must be in"),
    (dict(stream=2**64), ValueError, "stream must be in"),
])
def test_batch_candidates_bad_input(kwargs, err, match):
    args = dict(loss_a=np.arange(5.0), loss_b=np.arange(5.0), k_ill=1, k_red=1, seed=0, stream=0)
    args.update(kwargs)
    loss_a, loss_b = args.pop("loss_a"), args.pop("loss_b")
    with pytest.raises(err, match=match):
        batch_candidates(loss_a, loss_b, **args)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 300), st.data())
def test_packed_bits_answer_membership_like_the_set(num_samples, data):
    import torch

    from scan_fast.bits import bits_contain

    members = data.draw(st.lists(st.integers(0, num_samples - 1), max_size=num_samples))
    queries = np.array(data.draw(st.lists(st.integers(0, num_samples - 1), min_size=1, max_size=64)), np.int64)
    s = SampleSet(num_samples)
    s.add(np.array(members, np.int64))
    bits = s.packed_bits()
    expected = np.isin(queries, members)
    assert len(bits) * 8 >= num_samples
    np.testing.assert_array_equal(bits_contain(bits, queries), expected)
    on_torch = bits_contain(torch.from_numpy(bits.copy()), torch.from_numpy(queries))
    assert on_torch.dtype == torch.bool
    np.testing.assert_array_equal(on_torch.numpy(), expected)
    mask = np.zeros(num_samples, bool)
    mask[members] = True
    np.testing.assert_array_equal(np.packbits(mask, bitorder="little"), bits[:len(np.packbits(mask))])


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 300), st.data())
def test_packed_bits_round_trip_and_bad_bits_are_refused(num_samples, data):
    members = data.draw(st.lists(st.integers(0, num_samples - 1), max_size=num_samples))
    s = SampleSet(num_samples)
    s.add(np.array(members, np.int64))
    assert SampleSet.from_packed_bits(num_samples, s.packed_bits()) == s
    with pytest.raises(ValueError, match=f"invalid packed bits: {len(s.packed_bits()) - 1} bytes, expected"):
        SampleSet.from_packed_bits(num_samples, s.packed_bits()[:-1])
    with pytest.raises(TypeError, match="bits must be a 1-D uint8 array"):
        SampleSet.from_packed_bits(num_samples, s.packed_bits().astype(np.int16))
    if num_samples % 64:  # the last word has room past the last id: set the byte holding id num_samples
        beyond = s.packed_bits().copy()
        beyond[num_samples // 8] = 0xFF
        with pytest.raises(ValueError, match=f"bits beyond num_samples={num_samples} are set"):
            SampleSet.from_packed_bits(num_samples, beyond)
