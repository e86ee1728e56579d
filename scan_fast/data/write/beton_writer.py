"""A .beton written in this process, without importing ffcv: what a conversion that stores JPEGs as
they are uses, since its rows need no encoding to spread over writer processes.

The file is the one ffcv's DatasetWriter writes with one worker process (tests compare the bytes):
header, field table, one metadata row per sample, then the data in pages of `page_size` bytes that
no sample crosses (ffcv's MemoryAllocator: a sample that does not fit in what is left of a page is
started again on a fresh one), then the allocation table, sorted by pointer (ffcv_writer.finalize).
The fields are schema.py's descriptions; an image that needs encoding (a PNG among JPEGs) is
encoded by ffcv's RGBImageField, imported only then.
"""
import os
from typing import Callable, Dict, List, Tuple

import numpy as np
from tqdm import tqdm

from ..beton_layout import ALLOC_TABLE, HEADER, VERSION, field_table, sample_dtype


class _Pages:
    """ffcv's MemoryAllocator for a single writer: malloc(size) -> (pointer, writable bytes)."""

    def __init__(self, fp, data_start: int, page_size: int):
        self.fp, self.page_size = fp, page_size
        self.offset = -(-data_start // page_size) * page_size  # the first page starts on a page boundary
        self.page, self.used = -1, 0
        self.buffer = np.zeros(page_size, np.uint8)
        self.allocations: List[Tuple[int, int, int]] = []
        self.sample = -1

    def malloc(self, size: int):
        if size > self.page_size:
            raise ValueError(f"tried to store {size} bytes in pages of {self.page_size}")
        if size > (self.page_size - self.used if self.page >= 0 else 0):
            self.flush()
            self.page, self.used = self.page + 1, 0
            self.buffer.fill(0)
            if self.allocations and self.allocations[-1][0] == self.sample:
                # This sample began on the page just written: drop its regions and start it again here.
                while self.allocations and self.allocations[-1][0] == self.sample:
                    self.allocations.pop()
                raise MemoryError("the sample does not fit in what is left of the page")
        start = self.used
        self.used += size
        ptr = self.offset + self.page * self.page_size + start
        self.allocations.append((self.sample, ptr, size))
        return ptr, self.buffer[start:self.used]

    def flush(self) -> None:
        if self.page < 0:
            return
        if self.page == 0:  # the metadata's room (written at the end) and the padding to the first page
            self.fp.write(bytes(self.offset - self.fp.tell()))
        self.fp.write(self.buffer.tobytes())


def write_beton(path, fields: Dict[str, object], num_rows: int, make_sample: Callable[[int], tuple],
                describe: Callable[[int], str], page_size: int, progress: bool) -> None:
    """Samples make_sample(0..num_rows-1), in field order, to the .beton `path`; a sample that raises
    ends the write with "row i (describe(i)): its error" (as CheckedDatasetWriter does)."""
    specs = list(fields.values())
    header = np.zeros(1, HEADER)[0]
    header["version"], header["num_fields"] = VERSION, len(specs)
    header["page_size"], header["num_samples"] = page_size, num_rows
    table = field_table([(name, spec.type_id, spec.arguments()) for name, spec in fields.items()])
    metadata = np.zeros(num_rows, sample_dtype([spec.type_id for spec in specs]))
    metadata_start = HEADER.itemsize + table.nbytes
    columns = [metadata[f"f{i}"] for i in range(len(specs))]
    with open(path, "wb") as fp:
        fp.write(header.tobytes())
        fp.write(table.tobytes())
        pages = _Pages(fp, metadata_start + metadata.nbytes, page_size)
        for i in tqdm(range(num_rows), desc="writing", disable=None if progress else True):
            try:
                sample = make_sample(i)
            except Exception as err:
                message = str(err)
                if len(message) > 2000:
                    message = message[:2000] + f"... ({len(message)} characters)"
                raise ValueError(f"row {i} ({describe(i)}): {message}") from None
            pages.sample = i
            for attempt in range(2):
                try:
                    for spec, column, value in zip(specs, columns, sample):
                        spec.encode(column[i:i + 1], value, pages.malloc)
                    break
                except MemoryError:
                    if attempt:
                        raise
        pages.flush()
        allocations = np.array(pages.allocations, dtype=ALLOC_TABLE)
        allocations.sort(order="ptr", kind="stable")
        fp.seek(metadata_start)
        fp.write(metadata.tobytes())
        fp.seek(0, os.SEEK_END)
        header["alloc_table_ptr"] = fp.tell()
        fp.write(allocations.tobytes())
        fp.seek(0)
        fp.write(header.tobytes())
