"""Reading a batch's bytes with pread: where each stored value lies, and one gathered read of them all.

A data set's parts (a .beton, or a shard of the in-place index) say where each value of some rows
lies as (file descriptor, offset, size) triples (`Located`); the stager (read/staging.py) then reads them
all into its buffer with one call of the engine's `read_regions` (GIL released). Nothing is mapped:
a random row costs its own bytes, not the page-cache folio around it (up to 2 MiB), which matters on
network storage and for the page cache a run leaves to others. Per-sample tables are read the same
way, a row at a time (`read_rows`).
"""
import errno
import os
from typing import Callable, NamedTuple

import numpy as np

from scan_fast import _C


class DataError(ValueError):
    """A data set file or folder that cannot be read as one; the message names it."""


class Located(NamedTuple):
    """Where the values of some rows of a part lie: their metadata rows in the data set's metadata type
    (pointers not yet rebased), and per row and pointer field the file descriptor, offset and size."""
    metadata: np.ndarray  # (n,)
    fds: np.ndarray       # (n, F) int32
    offsets: np.ndarray   # (n, F) uint64
    sizes: np.ndarray     # (n, F) uint64
    table_bytes: int = 0  # bytes of per-sample tables read to find them (metadata or index rows)


def open_for_reads(path: str, direct: bool = False) -> int:
    """A read-only descriptor for random preads: no read-ahead around them. direct: opened with O_DIRECT, so
    that a read costs its own 512-byte blocks from storage instead of whole 4 KiB pages (read_regions aligns
    them) and fills no page cache; where the file system refuses direct I/O (tmpfs, some network file
    systems) the descriptor reads through the page cache."""
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
    if direct and hasattr(os, "O_DIRECT"):
        try:
            return os.open(path, flags | os.O_DIRECT)
        except OSError as err:
            if err.errno != errno.EINVAL:
                raise
    fd = os.open(path, flags)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    return fd


def read_regions(fds: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, out: np.ndarray,
                 out_offsets: np.ndarray, cut_short: Callable[[int], str]) -> None:
    """Read region k (fds[k], offsets[k], sizes[k]) into out[out_offsets[k]:], every k; a DataError
    with cut_short(k) for the first region its file does not hold whole."""
    k = _C.read_regions(np.ascontiguousarray(fds, np.int32).reshape(-1),
                        np.ascontiguousarray(offsets, np.uint64).reshape(-1),
                        np.ascontiguousarray(sizes, np.uint64).reshape(-1), out,
                        np.ascontiguousarray(out_offsets, np.uint64).reshape(-1))
    if k >= 0:
        raise DataError(cut_short(int(k)))


def read_rows(fd: int, table_offset: int, dtype: np.dtype, rows: np.ndarray, path: str) -> np.ndarray:
    """Rows `rows` of a table of fixed-size records that starts at byte `table_offset` of file `path`."""
    rows = np.asarray(rows, np.int64)
    n, itemsize = len(rows), dtype.itemsize
    out = np.empty(n, dtype)
    read_regions(np.full(n, fd, np.int32), table_offset + rows.astype(np.uint64) * np.uint64(itemsize),
                 np.full(n, itemsize, np.uint64), out.view(np.uint8).reshape(-1),
                 np.arange(n, dtype=np.uint64) * np.uint64(itemsize),
                 lambda k: f"{path} is cut short: it ends before row {int(rows[k])} of its table")
    return out
