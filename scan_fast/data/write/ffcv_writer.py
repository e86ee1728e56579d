"""The one piece of ffcv's private writer code we need: DatasetWriter's write loop, replaced.

ffcv 1.0.2's public DatasetWriter.from_indexed_dataset runs the private `_write_common` and
`finalize`, which we override here because no public argument changes what they do:
- `_write_common` waits for a count of written samples that a dead worker never reaches, so a
  row that raises hangs the write for ever; here a dead worker ends it with a ValueError naming
  the row. Its workers also outlive a parent killed by SIGKILL (holding the shared metadata
  segment), and its progress bar is always drawn, into log files too.
- `finalize` stores the allocation table in the order the workers finished; here it is sorted by
  pointer, the order in which the loaders look stored values up (beton.py).
The writer takes schema.py's field descriptions; the workers encode each value through them (an
image field also takes a source JPEG to store as it is, schema.StoredJpeg), and the file's field
table is that of the ffcv fields they describe.
The overrides use DatasetWriter's prepare() and the attributes it sets (metadata_sm,
metadata_start, data_region_start, header), as of ffcv 1.0.2 (requirements.txt pins it).
"""
import ctypes
import os
import queue
import signal
import sys
from multiprocessing import Process, Queue, Value
from typing import Callable

import numpy as np
from ffcv.memory_allocator import MemoryAllocator
from ffcv.writer import DatasetWriter
from tqdm import tqdm

from ..beton_layout import ALLOC_TABLE


class CheckedDatasetWriter(DatasetWriter):
    """ffcv's DatasetWriter, except that a worker that dies ends the write with its error."""

    def __init__(self, fname, fields, page_size, num_workers, progress: bool):
        self.errors: Queue = Queue()  # a failing row's message, from the worker to this process
        self.specs = fields  # schema.py's descriptions: they encode the values
        super().__init__(fname, {name: spec.ffcv_field for name, spec in fields.items()}, page_size=page_size,
                         num_workers=num_workers)
        self.progress = progress

    def write(self, num_rows: int, make_sample: Callable[[int], tuple], describe: Callable[[int], str],
              chunksize: int) -> None:
        """Samples make_sample(0..num_rows-1) in field order; a sample that raises ends the write
        with "row i (describe(i)): its error"."""
        self.from_indexed_dataset(_Rows(num_rows, make_sample, describe, self.errors), chunksize=chunksize)

    def _write_common(self, num_samples, queue_content, work_fn, extra_worker_args):
        self.num_samples = num_samples
        self.prepare()
        work: Queue = Queue()
        for todo in queue_content:
            work.put(todo)
        for _ in range(self.num_workers):
            work.put(None)
        allocations_queue: Queue = Queue()
        done = Value(ctypes.c_uint64, 0)
        allocator = MemoryAllocator(self.fname, self.data_region_start, self.page_size)
        args = (work, self.metadata_sm, self.metadata_type, self.specs, allocator, done,
                allocations_queue, *extra_worker_args)
        workers = [Process(target=_worker, args=(os.getpid(), work_fn, *args)) for _ in range(self.num_workers)]
        allocations, finished = [], 0
        try:
            for w in workers:
                w.start()
            # disable=None: bars on a terminal only, so a log file does not fill with redrawn bars
            with tqdm(total=num_samples, desc="writing", disable=None if self.progress else True) as bar:
                while finished < len(workers):
                    try:
                        allocations.extend(allocations_queue.get(timeout=0.1))
                        finished += 1
                    except queue.Empty:
                        failed = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
                        if failed:
                            raise ValueError(self._worker_error(failed[0]))
                    bar.update(done.value - bar.n)
            for w in workers:
                w.join()
            self.finalize(allocations)
        finally:
            for w in workers:
                if w.is_alive():
                    w.terminate()
                    w.join()
            # Work the dead workers never took stays in the queue's pipe; without this the
            # interpreter would wait forever at exit for the queue's feeder thread to flush it.
            work.cancel_join_thread()
            self.metadata_sm.close()
            self.metadata_sm.unlink()

    def finalize(self, allocations) -> None:
        """ffcv's finalize, with the allocation table sorted by pointer: the order the loaders look
        stored values up in (beton.py), so a loader never has to sort it."""
        table = np.array([tuple(a) for a in allocations], dtype=ALLOC_TABLE)
        table.sort(order="ptr", kind="stable")
        with open(self.fname, "r+b") as fp:
            fp.seek(self.metadata_start)
            fp.write(self.metadata_sm.buf)
            fp.seek(0, os.SEEK_END)
            self.header["alloc_table_ptr"] = fp.tell()
            fp.write(table.tobytes())
            fp.seek(0)
            fp.write(self.header.tobytes())

    def _worker_error(self, exitcode) -> str:
        try:
            return self.errors.get(timeout=1.0)
        except queue.Empty:
            return f"a writer process exited with code {exitcode} (its traceback is above)"


def _worker(parent_pid: int, work_fn, *args):
    """A writer process that ends with its parent: one killed by SIGKILL can run no clean-up, and
    its workers would otherwise wait forever on a pipe, holding the shared metadata segment."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's clean-up handler
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the line above
        os._exit(1)
    work_fn(*args)


class _Rows:
    """Indexable view handed to ffcv's workers: sample i = make_sample(i), errors reported by row."""

    def __init__(self, n: int, make_sample: Callable[[int], tuple], describe: Callable[[int], str],
                 errors: Queue):
        self.n, self.make_sample, self.describe, self.errors = n, make_sample, describe, errors

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        try:
            return self.make_sample(i)
        except Exception as err:
            message = str(err)
            if len(message) > 2000:  # keep the report readable (and small enough for the pipe)
                message = message[:2000] + f"... ({len(message)} characters)"
            self.errors.put(f"row {i} ({self.describe(i)}): {message}")
            raise
