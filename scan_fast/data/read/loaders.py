"""FFCV loaders whose every epoch reads exactly the ids a pruning schedule keeps.

`clip_loader` / `moco_loader` build a `ScanLoader` (an ffcv Loader) over a .beton
file or a part folder (dataset.py) that reads this rank's shard of each epoch
from the schedule (all ids when scan is None; see scan_fast/data/read/order.py): the
kept ids in an order keyed by (seed, epoch), an equal-length strided share per
rank under distributed=True (remainder dropped, so no id is on two ranks), and
`len(loader)` / drop_last computed from that shard. No rank builds the global
kept list or the epoch's order (the shard is computed a chunk at a time); the
data is never rewritten and the loader never rebuilt.

Opening costs O(1) per sample: the files are memory-mapped (beton.py), and each
batch's rows and stored bytes are gathered from their parts into one small
staging buffer that ffcv's compiled pipelines read (staging.py).

Augmentation is keyed, not drawn: before each epoch the loader gives its image
decoders (seed, epoch), and every crop, flip and (MoCo) photometric choice is a
function of those and the sample id, so a seed fixes the images of every epoch.

Every loader yields `Batch`es (batch.py): the sample ids and the inputs read with them,
each under its name (images, tokens, view2, labels), whatever order ffcv produced them in.
As with any ffcv Loader, a batch's tensors live in buffers reused a few batches
later: copy (or move to the GPU) whatever must outlive the step.
"""
import atexit
import os
import queue
import sys
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from queue import Queue
from threading import Event, Thread
from typing import Callable, Iterator, Optional, Tuple

import numpy as np
import torch
from ffcv.loader import Loader
from ffcv.loader.epoch_iterator import EpochIterator
from ffcv.pipeline import PipelineSpec
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.graph import Graph

from .augment import IMAGENET_MEAN, IMAGENET_STD, KeyedMocoViews
from .batch import OUTPUT_FIELDS, Batch
from .loader_reuse import reused_or_built
from ..beton import DataError
from ..dataset import Dataset, open_dataset
from .order import CHUNK_IDS, KeptIdsSource
from .pipelines import clip_pipelines, moco_pipelines
from .sampler import resolve_rank
from .staging import BatchStager, StagedMemory


class ScanLoader(Loader):
    """An ffcv Loader over a `Dataset` (one .beton or a part folder) whose every epoch reads this
    rank's shard of the kept ids, staged batch by batch (staging.py).

    Built without ffcv's Reader and memory managers (their per-sample copies and dicts) and
    without a list of the epoch: the shard is computed a chunk at a time as batches are read.
    ffcv's pipelines, graph, compiled code and epoch thread are used as they are. len() and
    drop_last follow the epoch about to run: `set_epoch(e)` selects it ahead of time (e.g. to
    size a learning-rate schedule), and `iter()` starts it.
    """

    # (Batch, epoch) -> the Batch this loader yields (MoCo's photometric views); None: the batch as read
    batch_transform: Optional[Callable[[Batch, int], Batch]] = None

    def __init__(self, dataset: Dataset, source: KeptIdsSource, batch_size: int, pipelines, *, seed: int = 0,
                 num_workers: int = 2, drop_last: bool = True, distributed: bool = False,
                 batches_ahead: int = 3, start_epoch: int = 0):
        self.dataset, self.source = dataset, source
        self.fname = dataset.path
        self.batch_size, self.batches_ahead, self.seed = int(batch_size), int(batches_ahead), int(seed)
        self.num_workers, self.drop_last, self.distributed = int(num_workers), drop_last, distributed
        self.code, self.recompile = None, False
        Compiler.set_num_threads(self.num_workers)
        self.stager = BatchStager(dataset)
        self.memory_manager = StagedMemory()
        self.reader = _StagedReader(dataset, self.stager.declare_metadata())
        self.pipeline_specs, self.field_name_to_f_ix = {}, {}
        for f_ix, name in enumerate(dataset.handlers):
            self.field_name_to_f_ix[name] = f_ix
        for name, spec in pipelines.items():
            if spec is None:
                continue  # a field not read
            if not isinstance(spec, PipelineSpec):
                spec = PipelineSpec(name, decoder=None, transforms=spec)
            self.pipeline_specs[name] = spec
        # ffcv emits stored fields in file order, then extra outputs (as its own Loader does)
        stored = [n for n in dataset.handlers if n in self.pipeline_specs]
        extra = [n for n in self.pipeline_specs if n not in dataset.handlers]
        self.pipeline_specs = {n: self.pipeline_specs[n] for n in stored + extra}
        unknown = [n for n in self.pipeline_specs if n not in OUTPUT_FIELDS]
        if unknown or "id" not in self.pipeline_specs:
            raise ValueError(f"pipelines {list(self.pipeline_specs)}: a loader reads the id field and names its "
                             f"outputs after Batch's fields ({', '.join(OUTPUT_FIELDS)})")
        self._keyed_decoders = _decoders_with(pipelines, "set_key")
        self.batch_ids = np.zeros(self.batch_size, np.uint64)  # global ids of the batch being decoded
        self.decode_failed = np.zeros(self.batch_size, np.uint8)  # 1: that position's image did not decode
        for decoder in _decoders_with(pipelines, "set_id_source"):
            decoder.set_id_source(self.batch_ids)
        for decoder in _decoders_with(pipelines, "set_failure_sink"):
            decoder.set_failure_sink(self.decode_failed)
        with COMPILING:
            self.graph = Graph(self.pipeline_specs, dataset.handlers, self.field_name_to_f_ix,
                               self.reader.metadata, self.memory_manager.compile_reader())
            self._positions = np.arange(self.batch_size, dtype=np.uint64)
            self.next_epoch = self._len_epoch = int(start_epoch)
            self._running = None
            self._reuse_batch_buffers()
            self.generate_code()
        self._compiled = False  # the pipelines compile on their first batch, in the epoch thread
        len(self)  # the first epoch's kept ids are checked now, not in the loader's thread

    def _reuse_batch_buffers(self):
        """Allocate the batch buffers once, not at every epoch start as ffcv does.

        Fresh buffers cost page faults over hundreds of MB per epoch at 224 px (0.6 s on
        2 cores), a fixed cost that would keep short, heavily pruned epochs from
        getting proportionally faster.
        """
        allocate, cache = self.graph.allocate_memory, {}

        def allocate_once(batch_size, batches_ahead):
            key = (batch_size, batches_ahead)
            if key not in cache:
                cache[key] = allocate(batch_size, batches_ahead)
            return cache[key]

        self.graph.allocate_memory = allocate_once

    def __len__(self) -> int:
        """Batches of the epoch about to run (after set_epoch) or running (after iter)."""
        count = self.source.length(self._len_epoch)
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.next_epoch = self._len_epoch = int(epoch)

    def stop(self) -> None:
        """End the epoch being read, if any (its thread would otherwise wait on a full queue)."""
        if self._running is not None:
            _stop(self._running)
            self._running = None

    def batches(self, epoch: int) -> Iterator[np.ndarray]:
        """The id arrays of the epoch's batches on this rank, computed a chunk of the shard at a time
        (the first chunks small, so the first batch waits for little)."""
        size, count = self.batch_size, self.source.length(epoch)
        if self.drop_last:
            count -= count % size
        return _batches_of(self.source.order_chunks(epoch, count, max(size, CHUNK_IDS // size * size),
                                                    first=4 * size), size)

    def __iter__(self):
        epoch = self.next_epoch
        self.stop()  # the buffers are shared across epochs: stop an epoch left unfinished first
        if torch.cuda.is_available():
            torch.cuda.current_stream().synchronize()  # last epoch's batches are no longer read
        for decoder in self._keyed_decoders:  # before the epoch's thread starts decoding
            decoder.set_key(self.seed, epoch)
        Compiler.set_num_threads(self.num_workers)
        batches = self.batches(epoch)
        self._len_epoch, self.next_epoch = epoch, epoch + 1
        reader = self._running = _EpochReader(self, batches, epoch)
        _RUNNING.add(self)
        return _Batches(reader, tuple(self.pipeline_specs), self.batch_transform, epoch)

    def repoint(self, source: KeptIdsSource, seed: int, start_epoch: int) -> None:
        """Read `source`'s ids under `seed` from `start_epoch` on, with the pipelines as compiled: what a
        new loader of the same file and arguments would read (loader_reuse.py)."""
        self.stop()
        self.source, self.seed = source, int(seed)
        self.next_epoch = self._len_epoch = int(start_epoch)
        self.__dict__.pop("batch_transform", None)  # a caller's (MoCo's views) is set again by that caller
        len(self)  # the first epoch's kept ids are checked now, as at construction

    @property
    def epoch(self) -> int:
        """The epoch the next iter() runs."""
        return self.next_epoch

    def close(self) -> None:
        self.stop()
        self.dataset.close()


def _batches_of(chunks: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    for ids in chunks:
        for first in range(0, len(ids), size):
            yield ids[first:first + size]


# Held while a loader's pipelines are built and while they run their first batch (when numba compiles
# them, in the epoch thread): two loaders compiling at once in one process (a trainer's train and eval
# loaders, a benchmark's) could fail inside numba's typing with a KeyError.
COMPILING = threading.RLock()

# Loaders with an epoch thread, stopped at interpreter exit: the thread may be inside the engine's
# parallel shard computation, whose worker threads must not outlive the process's clean-up.
_RUNNING: "weakref.WeakSet[ScanLoader]" = weakref.WeakSet()


@atexit.register
def _stop_running_loaders() -> None:
    for loader in list(_RUNNING):
        loader.stop()


class _StagedReader:
    """What ffcv's graph and epoch thread read from a Reader: the fields and a metadata table
    (here the one-row table of the set-up; batches bring their own)."""

    def __init__(self, dataset: Dataset, metadata: np.ndarray):
        self.handlers, self.metadata = dataset.handlers, metadata
        self.num_samples, self.file_name = dataset.num_samples, dataset.path


class LoaderError(RuntimeError):
    """Reading an epoch failed in the loader's thread; the original error is the cause."""


class _EpochReader(EpochIterator):
    """ffcv's epoch thread over staged batches (staging.py), except that an error while reading
    ends the epoch by raising it in the training loop; ffcv's own thread dies and leaves the
    loop waiting for a batch forever."""

    def __init__(self, loader: ScanLoader, batches: Iterator[np.ndarray], epoch: int):
        # EpochIterator.__init__ without its list of every batch of the epoch
        Thread.__init__(self, daemon=True)
        self.failure, self.epoch = None, epoch
        self.loader, self.order, self.metadata = loader, None, None
        self._stager_thread = ThreadPoolExecutor(1, thread_name_prefix="scan-fast-staging")
        batches = _staged_ahead(loader.stager, batches, self._stager_thread)
        self.current_batch_slot, self.iter_ixes, self.closed = 0, batches, False
        self.output_queue, self.terminate_event = Queue(loader.batches_ahead), Event()
        self.memory_context = loader.memory_manager.schedule_epoch(None)
        self.memory_context.__enter__()
        self.storage_state = None
        if torch.cuda.is_available():
            self.current_stream = torch.cuda.current_stream()
        self.cuda_streams = [(torch.cuda.Stream() if torch.cuda.is_available() else None)
                             for _ in range(loader.batches_ahead + 2)]
        self.memory_allocations = loader.graph.allocate_memory(loader.batch_size, loader.batches_ahead + 2)
        self.start()

    def run_pipeline(self, b_ix, staged, batch_slot, cuda_event):
        loader = self.loader
        batch_ids, staging = staged
        self.metadata, self.storage_state = staging.result()
        loader.batch_ids[:len(batch_ids)] = batch_ids
        loader.decode_failed[:] = 0
        if loader._compiled:
            result = super().run_pipeline(b_ix, loader._positions[:len(batch_ids)], batch_slot, cuda_event)
        else:
            with COMPILING:  # numba's typing is not safe against another thread compiling at once
                result = super().run_pipeline(b_ix, loader._positions[:len(batch_ids)], batch_slot, cuda_event)
            loader._compiled = True
        if loader.decode_failed.any():
            raise undecodable_image(loader.dataset, batch_ids, np.flatnonzero(loader.decode_failed))
        return result

    def run(self):
        try:
            super().run()
        except BaseException as err:  # noqa: BLE001 - handed to the reader, raised there
            self.failure = err
            while not self.terminate_event.is_set():
                try:
                    self.output_queue.put(None, timeout=0.5)  # ends the epoch for __next__
                    return
                except queue.Full:
                    pass

    def __next__(self):
        try:
            return super().__next__()
        except StopIteration:
            if self.failure is None:
                raise
            err = self.failure
            raise LoaderError(f"reading epoch {self.epoch} of {self.loader.fname} failed: "
                              f"{type(err).__name__}: {err}") from err


def _staged_ahead(stager: BatchStager, batches: Iterator[np.ndarray], pool: ThreadPoolExecutor):
    """(ids, future of stager.stage(ids)) per batch, the next batch's staging started before the current
    one is handed out: its reads (GIL released) overlap the current batch's decoding. The stager keeps
    two buffers in turn, so a batch's staged bytes stay valid while it decodes."""
    pending = None
    try:
        for ids in batches:
            staging = pool.submit(stager.stage, ids)
            if pending is not None:
                yield pending
            pending = (ids, staging)
        if pending is not None:
            yield pending
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _is_numba_finalizer_key_error(unraisable) -> bool:
    if unraisable.exc_type is not KeyError or unraisable.exc_traceback is None:
        return False
    tb = unraisable.exc_traceback
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return code.co_name == "finalizer" and code.co_filename.endswith(os.path.join("numba", "core", "dispatcher.py"))


def _quiet_numba_finalizer_errors() -> None:
    """Drop one known-harmless message: when ffcv's per-loader compiled pipelines are garbage
    collected, numba's dispatcher finalizer (which only releases compiled code) can raise
    KeyError, printed as "Exception ignored in: <finalize object ...>". Anything else
    unraisable still reaches the previous hook."""
    previous = sys.unraisablehook
    if getattr(previous, "_scan_fast_quiet", False):
        return

    def hook(unraisable):
        if not _is_numba_finalizer_key_error(unraisable):
            previous(unraisable)

    hook._scan_fast_quiet = True
    sys.unraisablehook = hook


_quiet_numba_finalizer_errors()


def _stop(epoch_iterator):
    """End an ffcv epoch thread, draining its queue so a blocked final put can return."""
    epoch_iterator.close()
    while epoch_iterator.is_alive():
        try:
            epoch_iterator.output_queue.get(timeout=0.1)
        except queue.Empty:
            pass
    batches = epoch_iterator.iter_ixes
    if hasattr(batches, "close"):
        batches.close()  # ends the staging thread of an epoch left unfinished


def _decoders_with(pipelines, method: str) -> list:
    """The decoders in `pipelines` (field -> op list or PipelineSpec) that have `method`."""
    found = []
    for spec in pipelines.values():
        ops = spec if isinstance(spec, (list, tuple)) else [getattr(spec, "decoder", None)]
        found += [op for op in ops if hasattr(op, method)]
    return found


def undecodable_image(dataset: Dataset, batch_ids: np.ndarray, positions: np.ndarray) -> DataError:
    """The one-line error for images of a batch that did not decode: the first sample id, its file and row."""
    sample_id = int(batch_ids[positions[0]])
    part = int(dataset.part_of(np.array([sample_id]))[0])
    more = f" (and {len(positions) - 1} more in this batch)" if len(positions) > 1 else ""
    return DataError(f"the stored image of sample id {sample_id} (row {sample_id - int(dataset.offsets[part])} of "
                     f"{dataset.files[part]}) does not decode: the file is damaged{more}; find every damaged "
                     f"image with `scan-fast data check {dataset.path}` and write the data again")


class _Batches:
    """An epoch's ffcv outputs (in the order of the loader's pipelines, `names`) as `Batch`es, through
    the loader's batch_transform when it has one."""

    def __init__(self, outputs, names, transform, epoch):
        self.outputs, self.names, self.transform, self.epoch = outputs, names, transform, epoch

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        batch = Batch.from_outputs(self.names, next(self.outputs))
        return batch if self.transform is None else self.transform(batch, self.epoch)

    def close(self):
        self.outputs.close()


def _check_common(batch_size, num_workers):
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers must be a positive int, got {num_workers!r}")


def build_loader(path, batch_size: int, pipelines, required_fields, scan=None, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True, distributed: bool = False,
                 rank: Optional[int] = None, world_size: Optional[int] = None, num_workers: int = 2,
                 batches_ahead: int = 3, start_epoch: int = 0, reuse_key=None,
                 direct_reads: bool = False) -> ScanLoader:
    """A ScanLoader over `path` (a .beton or a part folder, or an open `Dataset`) with the given
    per-field pipelines (stored fields not named are not read); direct_reads: an index's shards read with
    O_DIRECT (dataset.open_dataset). reuse_key: what the pipelines are made
    of, for a caller that can say it; inside `reuse_compiled_loaders()` a loader built with the same path,
    key and arguments is the one built before, re-pointed at scan, seed and start_epoch (loader_reuse.py)."""
    _check_common(batch_size, num_workers)
    if distributed:
        rank, world_size = resolve_rank(rank, world_size)
    elif rank not in (None, 0) or world_size not in (None, 1):
        raise ValueError(f"rank={rank}, world_size={world_size} given without distributed=True")
    else:
        rank, world_size = 0, 1

    def source_of(dataset: Dataset) -> KeptIdsSource:
        return KeptIdsSource(scan, dataset.num_samples, seed=seed, shuffle=shuffle, rank=rank, world_size=world_size)

    def build() -> ScanLoader:
        dataset = path if isinstance(path, Dataset) else open_dataset(path, direct_reads=direct_reads)
        dataset.require(required_fields)
        return ScanLoader(dataset, source_of(dataset), batch_size, {**{name: None for name in dataset.handlers},
                                                                    **pipelines},
                          seed=seed, num_workers=num_workers, drop_last=drop_last, distributed=distributed,
                          batches_ahead=batches_ahead, start_epoch=start_epoch)

    key = None if reuse_key is None or isinstance(path, Dataset) else (
        os.path.abspath(os.fspath(path)), batch_size, tuple(required_fields), drop_last, distributed, num_workers,
        batches_ahead, direct_reads, reuse_key)
    return reused_or_built(key, build, lambda loader: loader.repoint(source_of(loader.dataset), seed, start_epoch))


def clip_loader(path, batch_size: int, resolution: int = 224, scan=None, *, seed: int = 0,
                shuffle: bool = True, drop_last: bool = True, distributed: bool = False,
                rank: Optional[int] = None, world_size: Optional[int] = None, device="cpu",
                augment: bool = True, flip: bool = True, crop_scale: Tuple[float, float] = (0.9, 1.0),
                with_labels: bool = False, num_workers: int = 2,
                batches_ahead: int = 3, start_epoch: int = 0, direct_reads: bool = False) -> ScanLoader:
    """Batches of images (float [B,3,R,R]), tokens (int32 [B,ctx]) and ids (int64 [B]), and labels
    with with_labels, from a .beton or a part folder."""
    required = ("image", "tokens", "id") + (("label",) if with_labels else ())
    pipes = clip_pipelines(resolution, device=device, augment=augment, flip=flip,
                           crop_scale=crop_scale, with_labels=with_labels)
    return build_loader(path, batch_size, pipes, required, scan=scan,
                        seed=seed, shuffle=shuffle, drop_last=drop_last, distributed=distributed,
                        rank=rank, world_size=world_size, num_workers=num_workers,
                        batches_ahead=batches_ahead, start_epoch=start_epoch, direct_reads=direct_reads,
                        reuse_key=("clip", resolution, str(device), augment, flip, tuple(crop_scale), with_labels))


def moco_loader(path, batch_size: int, resolution: int = 224, scan=None, *, seed: int = 0,
                shuffle: bool = True, drop_last: bool = True, distributed: bool = False,
                rank: Optional[int] = None, world_size: Optional[int] = None, device="cpu",
                augment: bool = True, crop_scale: Tuple[float, float] = (0.08, 1.0),
                blur_sigma: Tuple[float, float] = (0.1, 2.0), num_workers: int = 2,
                batches_ahead: int = 3, start_epoch: int = 0, direct_reads: bool = False) -> ScanLoader:
    """Batches of images (view 1), view2 and ids with augment=True (both views float, photometrically
    augmented; labels are not read, so an in-place index trains MoCo too), of images, labels and ids
    without."""
    required = ("image", "id") if augment else ("image", "label", "id")
    pipes = moco_pipelines(resolution, device=device, augment=augment, crop_scale=crop_scale)
    loader = build_loader(path, batch_size, pipes, required, scan=scan,
                          seed=seed, shuffle=shuffle, drop_last=drop_last, distributed=distributed,
                          rank=rank, world_size=world_size, num_workers=num_workers,
                          batches_ahead=batches_ahead, start_epoch=start_epoch, direct_reads=direct_reads,
                          reuse_key=("moco", resolution, str(device), augment, tuple(crop_scale)))
    if augment:
        loader.batch_transform = KeyedMocoViews(seed, blur_sigma=blur_sigma)
    return loader


def labelled_loader(path, batch_size: int, resolution: int = 224, *, device="cpu", mean=IMAGENET_MEAN,
                    std=IMAGENET_STD, num_workers: int = 2) -> ScanLoader:
    """Evaluation batches of images (float [B,3,R,R], centre-cropped and normalised), labels and ids,
    in file order with the last batch kept, from any .beton or part folder with image, label and id
    fields (`data labelled`, or a CLIP set written with labels: its tokens are not read)."""
    required = ("image", "label", "id")
    pipes = moco_pipelines(resolution, device=device, augment=False, mean=mean, std=std)
    return build_loader(path, batch_size, pipes, required, shuffle=False, drop_last=False, num_workers=num_workers,
                        reuse_key=("labelled", resolution, str(device), *map(float, mean), *map(float, std)))
