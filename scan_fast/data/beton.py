"""One .beton file, opened at a cost that does not grow with its samples.

ffcv's `Reader` copies the metadata and allocation tables into every process
(np.fromfile) and its `MemoryManager` builds a Python dict and set per sample;
at 10^9 samples that is about 1 KB a sample on every rank. `BetonFile` instead

- reads the header and field table (O(1)) and checks what is O(1) to check:
  the header, the field table, that the metadata and allocation tables lie in
  the file, and that the allocation table has one entry per variable-size field
  of every sample (a table cut short fails here);
- memory-maps the metadata and allocation tables (`metadata`, `table`), so the
  ranks of a node share them through the page cache and nothing is copied;
- finds a stored value's size through the *pointer index*: the allocation
  table sorted by pointer. Our writers write the table in that order; for a
  file written otherwise (ffcv's own DatasetWriter) the sorted copy is built
  once, chunk by chunk with memory that does not grow with the file, and
  cached beside it (`<file>.ptrs.npy`).

`describe()` is the one O(N) pass over a file (chunked): whether its table is
sorted by pointer, the largest stored image of each image field (what the
decoders size their buffers by) and a fingerprint. Writers record it (in a
part folder's manifest, or beside a single file as `<file>.index.json`), so a
loader never repeats it. `check_all()` is the full per-sample check, for
`scan-fast data check` and write time.
"""
import functools
import hashlib
import mmap
import os
from typing import Iterator, Optional, Tuple

import numpy as np

from scan_fast import _C

from .beton_layout import (ALLOC_TABLE, CUSTOM, FIELD_DESC, HEADER, METADATA, RGB_IMAGE, VERSION, pointer_of,
                           sample_dtype)
from .regions import DataError, Located, open_for_reads, read_rows

# Rows handled at a time by the chunked passes (24 bytes each in the allocation table).
CHUNK_ROWS = 1 << 21
INDEX_SUFFIX = ".index.json"
SORTED_TABLE_SUFFIX = ".ptrs.npy"
_FINGERPRINT_BYTES = 4096


def pointer_subfield(field) -> Optional[str]:
    """Where an ffcv field's metadata keeps the address of its stored bytes (beton_layout.POINTER)."""
    from ffcv.types import TYPE_ID_HANDLER

    for type_id, handler in TYPE_ID_HANDLER.items():  # TorchTensorField is an NDArrayField: exact type
        if handler is not None and type(field) is handler:
            return pointer_of(type_id)
    return None


class BetonFile:
    """A memory-mapped .beton: header, fields, metadata and allocation tables (see the module docstring).

    `record` is what `describe()` returned for this file when it was written (from a manifest or the
    index file beside it); when given, the file must still match it (size and fingerprint).
    """

    def __init__(self, path, record: Optional[dict] = None):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise DataError(f"no .beton file at {self.path}")
        self.size = os.path.getsize(self.path)
        self._read_header()
        if record is not None:
            self._match(record)
        self.record = record
        self._mmap = None
        self._sorted_table = None
        self._fd = None
        self._description = None

    @property
    def handlers(self) -> dict:
        """ffcv's field objects by name (what the loaders build their decoders from), made on first use:
        opening, checking and writing a file need only its layout (beton_layout.py), not ffcv."""
        if self._handlers is None:
            from ffcv.types import get_handlers

            descriptors = np.frombuffer(self.descriptor_bytes, dtype=FIELD_DESC)
            try:
                handlers = get_handlers(descriptors)
            except (KeyError, ValueError, TypeError) as err:
                raise DataError(f"{self.path} has a field ffcv cannot read: {err}") from None
            self._handlers = dict(zip(self.field_names, handlers))
        return self._handlers

    # -- O(1) opening ---------------------------------------------------------------------------
    def _read_header(self):
        path, size = self.path, self.size
        if size < HEADER.itemsize:
            raise DataError(f"{path} is not a .beton: {size} bytes, shorter than the header")
        with open(path, "rb") as f:
            head = f.read(HEADER.itemsize)
            header = np.frombuffer(head, dtype=HEADER, count=1)[0]
            if int(header["version"]) != VERSION:
                raise DataError(f"{path} is not a .beton (format version {int(header['version'])}, "
                                f"expected {VERSION})")
            num_fields, num_samples = int(header["num_fields"]), int(header["num_samples"])
            page_size, table_ptr = int(header["page_size"]), int(header["alloc_table_ptr"])
            if not 0 < num_fields <= 64 or page_size <= 0 or page_size & (page_size - 1):
                raise DataError(f"{path} is not a .beton (implausible header: {num_fields} fields, "
                                f"page size {page_size})")
            descriptors_end = HEADER.itemsize + num_fields * FIELD_DESC.itemsize
            if descriptors_end > size:
                raise DataError(f"{path} is truncated: {size} bytes, field table ends at {descriptors_end}")
            self.descriptor_bytes = f.read(num_fields * FIELD_DESC.itemsize)
            self.header_bytes = head
        descriptors = np.frombuffer(self.descriptor_bytes, dtype=FIELD_DESC)
        self.field_names = [bytes(d["name"]).rstrip(b"\0").decode("ascii", "replace") for d in descriptors]
        type_ids = [int(t) for t in descriptors["type_id"]]
        custom = [n for n, t in zip(self.field_names, type_ids) if t == CUSTOM]
        if custom:
            raise DataError(f"{path} has custom fields {custom}, which scan-fast cannot read")
        unknown = [t for t in type_ids if t not in METADATA]
        if unknown:
            raise DataError(f"{path} has a field ffcv cannot read: unknown type id {unknown[0]}")
        self.field_types = dict(zip(self.field_names, type_ids))
        self._handlers = None
        self.metadata_type = sample_dtype(type_ids)
        self.num_samples, self.page_size, self.table_ptr = num_samples, page_size, table_ptr
        self.metadata_offset = descriptors_end
        metadata_end = descriptors_end + num_samples * self.metadata_type.itemsize
        if table_ptr == 0 or table_ptr > size or (size - table_ptr) % ALLOC_TABLE.itemsize:
            raise DataError(f"{path} is truncated or unfinished: allocation table at byte {table_ptr}, "
                            f"file has {size} bytes")
        if metadata_end > table_ptr:
            raise DataError(f"{path} is truncated or corrupt: its {num_samples} samples' metadata ends at byte "
                            f"{metadata_end}, past the allocation table at {table_ptr}")
        self.num_allocations = (size - table_ptr) // ALLOC_TABLE.itemsize
        self.per_sample = sum(pointer_of(t) is not None for t in type_ids)
        # Each sample holds one allocation per variable-size field, so a table cut short or a
        # sample written only in part shows up as a count that is off.
        if self.num_allocations != self.per_sample * num_samples:
            raise DataError(f"{path} is truncated or corrupt: {self.num_allocations} data regions for "
                            f"{num_samples} samples of {self.per_sample} variable-size field(s)")

    def fingerprint(self) -> str:
        """A digest of what identifies the file at O(1) cost: its size, header, field table and the
        first and last bytes of its allocation table."""
        digest = hashlib.sha256()
        digest.update(str(self.size).encode())
        digest.update(self.header_bytes)
        digest.update(self.descriptor_bytes)
        with open(self.path, "rb") as f:
            f.seek(self.table_ptr)
            digest.update(f.read(_FINGERPRINT_BYTES))
            f.seek(max(self.table_ptr, self.size - _FINGERPRINT_BYTES))
            digest.update(f.read(_FINGERPRINT_BYTES))
        return digest.hexdigest()[:32]

    def fields_digest(self) -> str:
        """Identifies the field table: files with equal digests hold the same fields."""
        return hashlib.sha256(self.descriptor_bytes).hexdigest()[:32]

    def _match(self, record: dict):
        if int(record["bytes"]) != self.size:
            raise DataError(f"{self.path} has {self.size} bytes, its record says {record['bytes']}: "
                            f"the file was cut, replaced or rewritten")
        if int(record["num_samples"]) != self.num_samples or record["fingerprint"] != self.fingerprint():
            raise DataError(f"{self.path} does not match its record (fingerprint or sample count differ): "
                            f"the file was replaced or rewritten")

    # -- mapped tables ----------------------------------------------------------------------------
    def _map(self):
        if self._mmap is None:
            with open(self.path, "rb") as f:
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            # reads are random (a batch's samples, a search's probes): no read-ahead around them
            self._mmap.madvise(mmap.MADV_RANDOM)
        return self._mmap

    @property
    def data(self) -> np.ndarray:
        """The whole file as read-only bytes (mapped, not read)."""
        return np.frombuffer(self._map(), dtype=np.uint8)

    @property
    def metadata(self) -> np.ndarray:
        """The metadata table (mapped): one record per sample, field i as "f{i}"."""
        return np.frombuffer(self._map(), dtype=self.metadata_type, count=self.num_samples,
                             offset=self.metadata_offset)

    @property
    def table(self) -> np.ndarray:
        """The allocation table (mapped) in file order: (sample_id, ptr, size) per stored value."""
        return np.frombuffer(self._map(), dtype=ALLOC_TABLE, count=self.num_allocations,
                             offset=self.table_ptr)

    def pointer_index(self) -> np.ndarray:
        """The allocation table sorted by pointer: the file's own table when it is written so,
        else a sorted copy built once and cached beside the file (or in the user cache)."""
        if self._sorted_table is None:
            record = self.record if self.record is not None else self.describe()
            if record["ptr_sorted"]:
                self._sorted_table = self.table
            else:
                from .beton_records import sorted_table_file  # builds the table once when the file has none

                self._sorted_table = np.load(sorted_table_file(self), mmap_mode="r")
        return self._sorted_table

    def file_descriptor(self) -> int:
        """The file opened for preads (opened on first use, closed by close())."""
        if self._fd is None:
            self._fd = open_for_reads(self.path)
        return self._fd

    def locate(self, rows: np.ndarray, fields) -> Located:
        """Where the values of `rows` lie in this file: their metadata rows (read with pread) and, per
        field of `fields` ((metadata column, pointer sub-field) pairs), pointer and size, looked up in
        the pointer index."""
        fd = self.file_descriptor()
        metadata = read_rows(fd, self.metadata_offset, self.metadata_type, rows, self.path)
        n = len(rows)
        offsets = np.empty((n, len(fields)), np.uint64)
        sizes = np.empty((n, len(fields)), np.uint64)
        for k, (column, sub) in enumerate(fields):
            ptrs = np.ascontiguousarray(metadata[column][sub] if sub else metadata[column], dtype=np.uint64)
            found, sizes[:, k] = self._find_values(ptrs)
            if (found < 0).any():
                bad = int(np.flatnonzero(found < 0)[0])
                raise DataError(f"{self.path} is corrupt: sample {int(rows[bad])} points at byte {int(ptrs[bad])}, "
                                f"which holds no stored value (scan-fast data check {self.path})")
            offsets[:, k] = ptrs
        return Located(metadata, np.full((n, len(fields)), fd, np.int32), offsets, sizes, metadata.nbytes)

    def _find_values(self, ptrs: np.ndarray):
        """(index in the pointer index, size) of each stored value at `ptrs`: in a file whose own table is
        sorted by pointer (our writers'), searched with pread (only the probed records are read: a mapped
        table would page in whole folios around each probe); otherwise in the cached sorted copy."""
        if (self.record if self.record is not None else self.describe())["ptr_sorted"]:
            return _C.find_sorted_pointers(self.file_descriptor(), self.table_ptr, self.num_allocations, ptrs)
        index = self.pointer_index()
        found = find_pointers(index["ptr"], ptrs)
        return found, np.where(found >= 0, index["size"][np.maximum(found, 0)], 0).astype(np.uint64)

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._sorted_table = None
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:  # views still alive: the mapping goes with them
                pass
            self._mmap = None

    # -- the O(N) passes, chunked -------------------------------------------------------------------
    def chunks(self, array: np.ndarray, rows: int = CHUNK_ROWS) -> Iterator[Tuple[int, np.ndarray]]:
        for start in range(0, len(array), rows):
            yield start, array[start:start + rows]

    def describe(self) -> dict:
        """What a loader needs to know that takes a pass over the file: see the module docstring. The
        pass is made once per opening (a write checks the file, then records this)."""
        if self._description is None:
            self._description = self._describe()
        return dict(self._description)

    def _describe(self) -> dict:
        table, previous_end, ptr_sorted = self.table, 0, True
        for _, part in self.chunks(table):
            ptr = part["ptr"]
            if ptr_sorted:
                ptr_sorted = bool(ptr[0] >= previous_end and np.all(ptr[1:] >= ptr[:-1] + part["size"][:-1]))
                previous_end = int(ptr[-1]) + int(part["size"][-1])
        bounds = {}
        for i, (name, type_id) in enumerate(self.field_types.items()):
            if type_id == RGB_IMAGE:
                height = width = 0
                for _, part in self.chunks(self.metadata[f"f{i}"]):
                    if len(part):
                        height, width = max(height, int(part["height"].max())), max(width, int(part["width"].max()))
                bounds[name] = [height, width]
        return {"file": os.path.basename(self.path), "bytes": self.size, "num_samples": self.num_samples,
                "fingerprint": self.fingerprint(), "fields_digest": self.fields_digest(),
                "ptr_sorted": ptr_sorted, "image_bounds": bounds}

    def check_all(self, progress=None) -> None:
        """The full per-sample check (chunked): every stored value lies in the data region without
        overlapping another, and each sample's metadata points at allocations of that sample; an
        `id` field holds the row. Raises DataError naming the first bad sample."""
        data_start = self.metadata_offset + self.num_samples * self.metadata_type.itemsize
        index = self.pointer_index()
        previous_end = data_start
        for start, part in self.chunks(index):
            ptr, size = part["ptr"].astype(np.int64), part["size"].astype(np.int64)
            ends = ptr + size
            bad = np.flatnonzero((ptr < np.concatenate(([previous_end], ends[:-1]))) | (ends > self.table_ptr)
                                 | (part["sample_id"] >= np.uint64(self.num_samples)))
            if bad.size:
                k = int(bad[0])
                raise DataError(f"{self.path} is corrupt: the data region at byte {int(ptr[k])} "
                                f"({int(size[k])} bytes, sample {int(part['sample_id'][k])}) overlaps another, "
                                f"lies outside the data region or names a sample past {self.num_samples}")
            if len(ends):
                previous_end = int(ends[-1])
        names = list(self.field_types)
        for start, rows in self.chunks(self.metadata):
            sample = np.arange(start, start + len(rows), dtype=np.uint64)
            for i, name in enumerate(names):
                sub = pointer_of(self.field_types[name])
                column = rows[f"f{i}"]
                if sub is None:
                    if name == "id":
                        bad = np.flatnonzero(column.astype(np.int64) != sample.astype(np.int64))
                        if bad.size:
                            k = int(bad[0])
                            raise DataError(f"{self.path}: sample {start + k} has id {int(column[k])}, "
                                            f"not its row (ids must be 0 .. N-1 in file order)")
                    continue
                ptrs = np.ascontiguousarray(column[sub] if sub else column, dtype=np.uint64)
                found = self._find_values(ptrs)[0]
                owner = np.where(found >= 0, index["sample_id"][np.maximum(found, 0)], np.uint64(2 ** 63))
                bad = np.flatnonzero((found < 0) | (owner != sample))
                if bad.size:
                    k = int(bad[0])
                    raise DataError(f"{self.path} is corrupt: sample {start + k}'s {name} points at byte "
                                    f"{int(ptrs[k])}, which is not a data region of that sample")
            if progress is not None:
                progress(len(rows))


def find_pointers(sorted_ptrs, queries):
    """Index in `sorted_ptrs` (ascending, unique, any stride) of each query; -1 where absent.

    Compiled by numba on first use (importing numba costs a second, which opening, checking and
    writing our files never pay: their tables are searched by the engine, `_C.find_sorted_pointers`),
    because numpy's searchsorted would copy a strided table first. Interpolation steps alternate with
    halvings: pointers grow almost linearly along a written table, so a value is usually found in one
    to three probes (each a page of a mapped table touched) instead of log2(N), and never in more
    than twice log2(N)."""
    return _compiled_find_pointers()(sorted_ptrs, queries)


@functools.lru_cache(maxsize=None)
def _compiled_find_pointers():
    import numba

    return numba.njit(nogil=True, cache=True)(_find_pointers)


def _find_pointers(sorted_ptrs, queries):
    out = np.empty(queries.shape[0], np.int64)
    n = sorted_ptrs.shape[0]
    for q in range(queries.shape[0]):
        value, lo, hi, found, step = queries[q], 0, n, -1, 0
        while lo < hi:
            first, last = sorted_ptrs[lo], sorted_ptrs[hi - 1]
            if value < first or value > last:
                break
            if step % 2 == 0 and last > first:
                mid = lo + np.int64((float(value - first) / float(last - first)) * float(hi - 1 - lo))
                mid = min(max(mid, lo), hi - 1)
            else:
                mid = (lo + hi) >> 1
            probe = sorted_ptrs[mid]
            if probe == value:
                found = mid
                break
            if probe < value:
                lo = mid + 1
            else:
                hi = mid
            step += 1
        out[q] = found
    return out
