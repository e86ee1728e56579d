"""A batch's stored bytes, gathered from its parts into one small region ffcv's pipelines read.

ffcv's compiled pipelines index one metadata table by sample and read stored
values through one memory reader. Instead of a table and a file of the whole data
set (ffcv: private copies of both tables and per-sample dicts in every process),
each batch is *staged*: every part the batch reads says where its rows' values lie
(`locate`: a .beton's metadata rows and pointer index, or an in-place index's rows
in the user's tar shards), the values (JPEG bytes, token arrays) are read with
pread into one contiguous buffer in one call (regions.py), the rows' pointers are
rebased onto that buffer, and the `id` column gets the global ids. The pipelines
then run on batch positions 0..B-1 with ffcv's own OS-cache reader over the buffer
(state: bytes, sorted pointers, sizes), so its decoders and compiled read path are
unchanged. Only the kept rows' bytes are read; nothing is mapped.
"""
from typing import List, Tuple

import numba
import numpy as np
from ffcv.fields import IntField
from ffcv.memory_managers.base import MemoryContext, MemoryManager
from ffcv.pipeline.compiler import Compiler

from ..beton import pointer_subfield
from ..dataset import Dataset
from ..regions import DataError, read_regions


# A staged batch stays valid until STAGING_BUFFERS - 1 more batches are staged.
STAGING_BUFFERS = 2


class BatchStager:
    """Stages batches of global ids of `dataset` (see the module docstring)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        names = list(dataset.handlers)
        self.pointer_fields: List[Tuple[str, str]] = [
            (f"f{i}", pointer_subfield(h)) for i, h in enumerate(dataset.handlers.values())
            if pointer_subfield(h) is not None]
        self.field_names = [name for name, h in dataset.handlers.items() if pointer_subfield(h) is not None]
        self.bytes_read = 0  # bytes requested from the files so far: rows and values (the pruned never are)
        self.id_column = (f"f{names.index('id')}" if "id" in names
                          and isinstance(dataset.handlers["id"], IntField) else None)
        # Two buffers in turn: the loader stages batch b + 1 into one while batch b decodes from the other.
        self.buffers = [np.zeros(1 << 16, np.uint8) for _ in range(STAGING_BUFFERS)]
        self._turn = 0

    def declare_metadata(self) -> np.ndarray:
        """A one-row table for the pipelines' set-up: its image sizes are the data set's largest, which
        is what ffcv's decoders size their buffers by (they take the maximum over the table)."""
        row = np.zeros(1, self.dataset.metadata_type)
        largest = self.dataset.image_bounds()  # one pass over the parts' records, not one per field
        for i, name in enumerate(self.dataset.handlers):
            bounds = largest.get(name)
            if bounds is not None:
                row[f"f{i}"]["height"], row[f"f{i}"]["width"] = bounds
        return row

    def stage(self, ids: np.ndarray):
        """(metadata of the batch's rows, ffcv OS-cache memory state over the staging buffer)."""
        dataset, n, fields = self.dataset, len(ids), self.pointer_fields
        ids = np.asarray(ids, dtype=np.int64)
        if n and (ids.min() < 0 or ids.max() >= dataset.num_samples):
            bad = ids[(ids < 0) | (ids >= dataset.num_samples)][0]
            raise DataError(f"sample id {int(bad)} is outside {dataset.path} ({dataset.num_samples} samples)")
        metadata = np.empty(n, dataset.metadata_type)
        fds = np.empty((n, len(fields)), np.int32)
        offsets = np.empty((n, len(fields)), np.uint64)
        sizes = np.empty((n, len(fields)), np.uint64)
        part_of = dataset.part_of(ids)
        for p, sel in _runs(part_of):
            located = dataset.part(p).locate(ids[sel] - dataset.offsets[p], fields)
            metadata[sel], fds[sel], offsets[sel], sizes[sel] = located[:4]
            self.bytes_read += located.table_bytes
        # Row-major layout (sample by sample); every value gets at least one byte so that
        # pointers are strictly increasing and the reader's search finds each one.
        spans = np.maximum(sizes.reshape(-1), np.uint64(1))
        starts = np.zeros(spans.size, np.uint64)
        if spans.size:
            np.cumsum(spans[:-1], out=starts[1:])
        total = int(starts[-1] + spans[-1]) if spans.size else 0
        buffer = self.buffers[self._turn]
        if total > buffer.size:
            buffer = self.buffers[self._turn] = np.zeros(max(total, 2 * buffer.size), np.uint8)
        self._turn = (self._turn + 1) % len(self.buffers)

        def cut_short(k):
            row, field = divmod(k, max(1, len(fields)))
            part = dataset.part(int(part_of[row]))
            name = self.field_names[field]
            return (f"{part.path}: sample {int(ids[row])}'s {name} ({int(sizes.reshape(-1)[k])} bytes at byte "
                    f"{int(offsets.reshape(-1)[k])}) is past the end of its file: the file was cut short")

        read_regions(fds, offsets, sizes, buffer, starts, cut_short)
        self.bytes_read += int(sizes.sum())
        destination = starts.reshape(n, len(fields))
        for k, (column, sub) in enumerate(fields):
            if sub:
                metadata[column][sub] = destination[:, k]
            else:
                metadata[column] = destination[:, k]
        if self.id_column is not None:
            metadata[self.id_column] = ids
        return metadata, (buffer, starts, sizes.reshape(-1))


def _runs(part_of: np.ndarray):
    """(part, positions of the batch in that part) for each part the batch reads."""
    if len(part_of) == 0:
        return []
    if part_of[0] == part_of[-1] and (part_of == part_of[0]).all():
        return [(int(part_of[0]), slice(None))]
    order = np.argsort(part_of, kind="stable")
    bounds = np.flatnonzero(np.diff(part_of[order])) + 1
    return [(int(part_of[order[a]]), order[a:b]) for a, b in zip(np.r_[0, bounds], np.r_[bounds, len(order)])]


class _StagedContext(MemoryContext):
    state = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


class StagedMemory(MemoryManager):
    """ffcv's memory-manager interface over staged batches: the state is set per batch by the epoch
    reader; the compiled read is ffcv's OS-cache one (a search over the batch's sorted pointers)."""

    def __init__(self):  # no reader and no per-sample tables
        self.context = _StagedContext()

    def schedule_epoch(self, batches):
        return self.context

    @property
    def state_type(self):
        return numba.types.Tuple([numba.uint8[::1], numba.uint64[::1], numba.uint64[::1]])

    def compile_reader(self):
        def read(address, mem_state):
            size = mem_state[2][np.searchsorted(mem_state[1], address)]
            return mem_state[0][address:address + size]

        return Compiler.compile(read, numba.uint8[::1](numba.uint64, self.state_type))
