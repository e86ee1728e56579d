"""The engine's pread reads (scan_fast/data/regions.py, csrc/regions.cpp) against plain Python reads."""
import os

import numpy as np
import pytest
from ffcv.types import ALLOC_TABLE_TYPE
from hypothesis import given, settings
from hypothesis import strategies as st

from scan_fast import _C
from scan_fast.data.beton import find_pointers
from scan_fast.data.regions import DataError, read_regions, read_rows


@settings(max_examples=40, deadline=None)
@given(data=st.binary(min_size=1, max_size=4000), seed=st.integers(0, 2**32 - 1), count=st.integers(0, 30))
def test_read_regions_equals_slicing(tmp_path_factory, data, seed, count):
    path = tmp_path_factory.mktemp("regions") / "f.bin"
    path.write_bytes(data)
    rng = np.random.default_rng(seed)
    offsets = rng.integers(0, len(data), count).astype(np.uint64)
    sizes = np.minimum(rng.integers(0, 50, count), len(data) - offsets).astype(np.uint64)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.uint64) if count else np.zeros(0, np.uint64)
    out = np.zeros(int(sizes.sum()) + 1, np.uint8)
    fd = os.open(path, os.O_RDONLY)
    try:
        _assert_reads(fd, data, offsets, sizes, out, starts)
        if count:  # a region past the end of the file: named, not read as garbage
            _assert_past_the_end_is_named(fd, len(data), 1, out)
    finally:
        os.close(fd)


def _assert_reads(fd, data, offsets, sizes, out, starts):
    read_regions(np.full(len(offsets), fd, np.int32), offsets, sizes, out, starts, str)
    for k in range(len(offsets)):
        assert out[int(starts[k]):][:int(sizes[k])].tobytes() == data[int(offsets[k]):][:int(sizes[k])]


def _assert_past_the_end_is_named(fd, offset, size, out):
    with pytest.raises(DataError, match="^region 0 cut$"):
        read_regions(np.array([fd], np.int32), np.array([offset], np.uint64), np.array([size], np.uint64),
                     out, np.zeros(1, np.uint64), lambda k: f"region {k} cut")


def test_read_rows_reads_the_rows_asked_for(tmp_path):
    table = np.arange(100, dtype=np.int64) * 3
    path = tmp_path / "t.bin"
    path.write_bytes(b"head" + table.tobytes())
    fd = os.open(path, os.O_RDONLY)
    try:
        rows = np.array([5, 0, 99, 5])
        np.testing.assert_array_equal(read_rows(fd, 4, np.dtype(np.int64), rows, str(path)), table[rows])
    finally:
        os.close(fd)


@settings(max_examples=60, deadline=None)
@given(gaps=st.lists(st.integers(1, 5000), min_size=1, max_size=1000), seed=st.integers(0, 2**32 - 1))
def test_pread_pointer_search_equals_the_mapped_one(tmp_path_factory, gaps, seed):
    """The pread interpolation search finds what find_pointers (numba, over the mapped table) finds, absent
    pointers included, in tables of any spacing."""
    table = np.zeros(len(gaps), ALLOC_TABLE_TYPE)
    table["ptr"] = np.cumsum(gaps).astype(np.uint64)
    table["size"] = np.asarray(gaps, np.uint64)
    table["sample_id"] = np.arange(len(gaps))
    path = tmp_path_factory.mktemp("table") / "t.bin"
    path.write_bytes(b"x" * 40 + table.tobytes())
    rng = np.random.default_rng(seed)
    queries = np.concatenate([rng.choice(table["ptr"], 20), rng.integers(0, int(table["ptr"][-1]) + 10, 20)])
    queries = queries.astype(np.uint64)
    fd = os.open(path, os.O_RDONLY)
    try:
        found, sizes = _C.find_sorted_pointers(fd, 40, len(table), queries)
    finally:
        os.close(fd)
    expected = find_pointers(table["ptr"], queries)
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_array_equal(sizes, np.where(expected >= 0, table["size"][np.maximum(expected, 0)], 0))


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 20000), seed=st.integers(0, 2**32 - 1), count=st.integers(1, 30))
def test_direct_reads_equal_buffered_reads(tmp_path_factory, size, seed, count):
    """A descriptor opened with O_DIRECT (whole 512-byte blocks through an aligned buffer) reads what a
    buffered one reads, at any offset and size, up to the file's end and past it (named)."""
    import fcntl

    from scan_fast.data.regions import open_for_reads

    path = tmp_path_factory.mktemp("direct") / "f.bin"
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    fd = open_for_reads(str(path), direct=True)
    try:
        if not os.O_DIRECT & fcntl.fcntl(fd, fcntl.F_GETFL):
            pytest.skip("this file system refuses O_DIRECT")
        rng = np.random.default_rng(seed + 1)
        offsets = rng.integers(0, size, count).astype(np.uint64)
        sizes = np.minimum(rng.integers(0, 3000, count), size - offsets).astype(np.uint64)
        sizes[0] = size - offsets[0]  # one region up to the last byte of the file
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.uint64)
        out = np.zeros(int(sizes.sum()) + 1, np.uint8)
        _assert_reads(fd, data, offsets, sizes, out, starts)
        _assert_past_the_end_is_named(fd, size - 1, 2, out)
    finally:
        os.close(fd)
