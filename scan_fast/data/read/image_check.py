"""Decode every stored image of a data set: what `scan-fast data check` adds to the structural checks.

A JPEG whose bytes were changed keeps the file's structure intact (pointers, sizes,
fingerprint of the tables), so only decoding it shows the damage. `check_images` takes
an opened `Dataset` (one .beton, a part folder, or anything with its interface), stages
its ids in batches through `BatchStager` (the bytes a training batch would read, from
any part layout) and decodes each staged image with ffcv's own JPEG decoder in compiled
code that releases the GIL, so `workers` threads decode batches in parallel. Raw images
are checked for their stored size. Memory: a batch's bytes and one decoded image per
worker, whatever the data set's size.
"""
from concurrent.futures import ThreadPoolExecutor
from typing import List

import numba
import numpy as np
from ffcv.fields.rgb_image import IMAGE_MODES, RGBImageField
from ffcv.libffcv import imdecode

from ..beton import DataError
from .staging import BatchStager

BATCH = 512
MAX_REPORTED = 1000  # failures listed one a line; beyond this, counted

_imdecode = numba.njit(nogil=True)(imdecode)
_JPG = IMAGE_MODES["jpg"]


@numba.njit(nogil=True)
def _failed_rows(buffer, starts, sizes, pointers, heights, widths, modes, scratch):
    """Rows of a staged batch whose image does not decode (JPEG) or has the wrong size (raw)."""
    failed = np.zeros(pointers.shape[0], np.bool_)
    for k in range(pointers.shape[0]):
        slot = np.searchsorted(starts, pointers[k])
        if slot >= starts.shape[0] or starts[slot] != pointers[k]:
            failed[k] = True
            continue
        data = buffer[pointers[k]:pointers[k] + sizes[slot]]
        height, width = np.uint32(heights[k]), np.uint32(widths[k])
        if modes[k] == _JPG:
            status = _imdecode(data, scratch, height, width, height, width, 0, 0, 1, 1, False, False)
            failed[k] = status != 0
        else:
            failed[k] = data.shape[0] != np.uint64(height) * np.uint64(width) * np.uint64(3)
    return failed


class _Worker:
    """One thread's stager and decode buffer."""

    def __init__(self, dataset, columns):
        self.stager, self.columns = BatchStager(dataset), columns
        self.scratch = np.zeros(0, np.uint8)

    def failures(self, ids: np.ndarray):
        """[(sample id, field name)] of the batch's images that do not decode."""
        metadata, (buffer, starts, sizes) = self.stager.stage(ids)
        found = []
        for name, column in self.columns:
            rows = metadata[column]
            largest = int((rows["height"].astype(np.int64) * rows["width"].astype(np.int64)).max()) * 3
            if largest > self.scratch.size:
                self.scratch = np.zeros(largest, np.uint8)
            failed = _failed_rows(buffer, starts, sizes, np.ascontiguousarray(rows["data_ptr"], np.uint64),
                                  np.ascontiguousarray(rows["height"]), np.ascontiguousarray(rows["width"]),
                                  np.ascontiguousarray(rows["mode"]), self.scratch)
            found += [(int(ids[k]), name) for k in np.flatnonzero(failed)]
        return found


def check_images(dataset, workers: int = 1, progress=None, batch_size: int = BATCH) -> List[str]:
    """One line per stored image of `dataset` that does not decode, naming its file, row and sample id
    (at most MAX_REPORTED lines, then a count). `progress(count)` is called as samples are done."""
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"--num-workers must be a positive integer, got {workers!r}")
    columns = [(name, f"f{i}") for i, (name, field) in enumerate(dataset.handlers.items())
               if isinstance(field, RGBImageField)]
    if not columns or dataset.num_samples == 0:
        return []
    for p in range(dataset.num_parts):
        dataset.part(p)  # mapped here, not raced for by the threads
    pool = [_Worker(dataset, columns) for _ in range(workers)]
    starts = range(0, dataset.num_samples, batch_size)

    def run(job):
        k, start = job
        ids = np.arange(start, min(start + batch_size, dataset.num_samples), dtype=np.int64)
        try:
            return len(ids), pool[k % workers].failures(ids), None
        except DataError as err:  # a structural fault the per-sample check reports too
            return len(ids), [], str(err)

    problems: List[str] = []
    failures = 0
    with ThreadPoolExecutor(max_workers=workers) as threads:
        # the first batch alone (numba compiles the decode then, once); after it, each worker's
        # batches run in order on it: batch k goes to worker k % workers, and at most `workers`
        # batches are in flight, so no two threads share a worker's buffers
        groups = [[0]] + [list(range(first, min(first + workers, len(starts))))
                          for first in range(1, len(starts), workers)]
        for group in groups:
            for count, found, error in threads.map(run, [(k, starts[k]) for k in group]):
                if error is not None and len(problems) < MAX_REPORTED:
                    problems.append(error)
                for sample_id, name in found:
                    failures += 1
                    if len(problems) < MAX_REPORTED:
                        problems.append(_describe(dataset, sample_id, name))
                if progress is not None:
                    progress(count)
    if failures > len(problems):
        problems.append(f"{dataset.path}: {failures} stored images in all do not decode")
    return problems


def _describe(dataset, sample_id: int, name: str) -> str:
    part = int(dataset.part_of(np.array([sample_id]))[0])
    return (f"{dataset.files[part]}: the stored {name} of sample id {sample_id} (row "
            f"{sample_id - int(dataset.offsets[part])}) does not decode: the file is damaged")
