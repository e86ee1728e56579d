"""FFCV loaders whose every epoch reads exactly the ids a pruning schedule keeps.

`clip_loader` / `moco_loader` build a `ScanLoader` (an ffcv Loader) with a
traversal order that reads this rank's shard of each epoch from the schedule
(all ids when scan is None; see scan_fast/data/order.py): the kept ids in an
order keyed by (seed, epoch), an equal-length strided share per rank under
distributed=True (remainder dropped, so no id is on two ranks), and
`len(loader)` / drop_last computed from that shard. No rank builds the global
kept list; the .beton is never rewritten and the loader never rebuilt.

Augmentation is keyed, not drawn: before each epoch the loader gives its image
decoders (seed, epoch), and every crop, flip and (MoCo) photometric choice is a
function of those and the sample id, so a seed fixes the images of every epoch.

As with any ffcv Loader, a batch's tensors live in buffers reused a few batches
later: copy (or move to the GPU) whatever must outlive the step.
"""
import os
import queue
import sys
from typing import Callable, Optional, Tuple

import torch
from ffcv.loader import Loader
from ffcv.loader.epoch_iterator import EpochIterator
from ffcv.loader.loader import ORDER_MAP
from ffcv.pipeline.compiler import Compiler

from .augment import IMAGENET_MEAN, IMAGENET_STD, KeyedMocoViews
from .order import KeptIdsSource, OrderFactory
from .pipelines import clip_pipelines, moco_pipelines
from .sampler import resolve_rank
from .schema import check_beton


class ScanLoader(Loader):
    """ffcv Loader whose length and drop_last follow each epoch's kept list.

    ffcv fixes len() from the order of the first epoch; here the order of the
    epoch about to run (or running) is used: `set_epoch(e)` selects it ahead
    of time (e.g. to size a learning-rate schedule), and `iter()` refreshes it.
    """

    # (ffcv's output tuple, epoch) -> the batch this loader yields; None yields ffcv's tuple
    batch_transform: Optional[Callable] = None

    def __init__(self, *args, start_epoch: int = 0, **kwargs):
        # ffcv's constructor asks for the first epoch's order; a resumed run's first epoch
        # is start_epoch (a schedule refuses to hand out epochs it has already passed).
        self._constructing_epoch = int(start_epoch)
        self._keyed_decoders = _keyed_decoders(kwargs.get("pipelines") or {})
        super().__init__(*args, **kwargs)
        self._constructing_epoch = None
        self.next_epoch = int(start_epoch)
        self._running = None
        self._reuse_batch_buffers()

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

    def next_traversal_order(self):
        epoch = self.next_epoch if self._constructing_epoch is None else self._constructing_epoch
        return self.traversal_order.sample_order(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.next_epoch = int(epoch)
        self.first_traversal_order = self.next_traversal_order()

    def stop(self) -> None:
        """End the epoch being read, if any (its thread would otherwise wait on a full queue)."""
        if self._running is not None:
            _stop(self._running)
            self._running = None

    def __iter__(self):
        epoch = self.next_epoch
        self.first_traversal_order = self.next_traversal_order()
        # The buffers are shared across epochs: stop an epoch left unfinished first.
        self.stop()
        if torch.cuda.is_available():
            torch.cuda.current_stream().synchronize()  # last epoch's batches are no longer read
        for decoder in self._keyed_decoders:  # before the epoch's thread starts decoding
            decoder.set_key(self.seed, epoch)
        batches = self._running = self._start_epoch(epoch)
        if self.batch_transform is None:
            return batches
        return _Transformed(batches, self.batch_transform, epoch)

    def _start_epoch(self, epoch: int) -> "_EpochReader":
        """ffcv's Loader.__iter__, reusing the order just computed, with a thread that reports failures."""
        Compiler.set_num_threads(self.num_workers)
        self.next_epoch += 1
        if self.code is None or self.recompile:
            self.generate_code()
        return _EpochReader(self, self.first_traversal_order[:len(self) * self.batch_size], epoch)

    @property
    def epoch(self) -> int:
        """The epoch the next iter() runs."""
        return self.next_epoch


class LoaderError(RuntimeError):
    """Reading an epoch failed in the loader's thread; the original error is the cause."""


class _EpochReader(EpochIterator):
    """ffcv's epoch thread, except that an error while reading ends the epoch by raising it in
    the training loop; ffcv's own thread dies and leaves the loop waiting for a batch forever."""

    def __init__(self, loader, order, epoch: int):
        self.failure, self.epoch = None, epoch  # set before the base class starts the thread
        super().__init__(loader, order)

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
            raise LoaderError(f"reading epoch {self.epoch} of {self.loader.reader.file_name} failed: "
                              f"{type(err).__name__}: {err}") from err


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


def _keyed_decoders(pipelines) -> list:
    """The decoders in `pipelines` (field -> op list or PipelineSpec) whose crops are keyed."""
    found = []
    for spec in pipelines.values():
        ops = spec if isinstance(spec, (list, tuple)) else [getattr(spec, "decoder", None)]
        found += [op for op in ops if hasattr(op, "set_key")]
    return found


class _Transformed:
    def __init__(self, batches, transform, epoch):
        self.batches, self.transform, self.epoch = batches, transform, epoch

    def __iter__(self):
        return self

    def __next__(self):
        return self.transform(next(self.batches), self.epoch)

    def close(self):
        self.batches.close()


def _check_common(batch_size, num_workers):
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers must be a positive int, got {num_workers!r}")


def build_loader(path, batch_size: int, pipelines, required_fields, scan=None, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True, distributed: bool = False,
                 rank: Optional[int] = None, world_size: Optional[int] = None, num_workers: int = 2,
                 os_cache: bool = True, batches_ahead: int = 3, start_epoch: int = 0) -> ScanLoader:
    """A ScanLoader over `path` with the given per-field pipelines (fields not named are skipped)."""
    _check_common(batch_size, num_workers)
    path = str(path)
    info = check_beton(path, required_fields)
    if distributed:
        rank, world_size = resolve_rank(rank, world_size)
    elif rank not in (None, 0) or world_size not in (None, 1):
        raise ValueError(f"rank={rank}, world_size={world_size} given without distributed=True")
    else:
        rank, world_size = 0, 1
    source = KeptIdsSource(scan, info["num_samples"], seed=seed, shuffle=shuffle, rank=rank,
                           world_size=world_size)
    key = OrderFactory(source)
    # ffcv 1.0.2 accepts custom orders only through its ORDER_MAP registry.
    ORDER_MAP[key] = key
    try:
        loader = ScanLoader(path, batch_size=batch_size, num_workers=num_workers, os_cache=os_cache,
                            order=key, distributed=distributed, seed=seed, pipelines=pipelines,
                            drop_last=drop_last, batches_ahead=batches_ahead,
                            start_epoch=start_epoch)
    finally:
        del ORDER_MAP[key]
    return loader


def _disable_other_fields(path, pipelines):
    from ffcv.reader import Reader

    return {**{name: None for name in Reader(str(path)).handlers}, **pipelines}


def clip_loader(path, batch_size: int, resolution: int = 224, scan=None, *, seed: int = 0,
                shuffle: bool = True, drop_last: bool = True, distributed: bool = False,
                rank: Optional[int] = None, world_size: Optional[int] = None, device="cpu",
                augment: bool = True, flip: bool = True, crop_scale: Tuple[float, float] = (0.9, 1.0),
                with_labels: bool = False, num_workers: int = 2, os_cache: bool = True,
                batches_ahead: int = 3, start_epoch: int = 0) -> ScanLoader:
    """Batches of (images float [B,3,R,R], tokens int32 [B,ctx], ids int64 [B][, labels])."""
    required = ("image", "tokens", "id") + (("label",) if with_labels else ())
    check_beton(path, required)
    pipes = clip_pipelines(resolution, device=device, augment=augment, flip=flip,
                           crop_scale=crop_scale, with_labels=with_labels)
    return build_loader(path, batch_size, _disable_other_fields(path, pipes), required, scan=scan,
                        seed=seed, shuffle=shuffle, drop_last=drop_last, distributed=distributed,
                        rank=rank, world_size=world_size, num_workers=num_workers,
                        os_cache=os_cache, batches_ahead=batches_ahead, start_epoch=start_epoch)


def moco_loader(path, batch_size: int, resolution: int = 224, scan=None, *, seed: int = 0,
                shuffle: bool = True, drop_last: bool = True, distributed: bool = False,
                rank: Optional[int] = None, world_size: Optional[int] = None, device="cpu",
                augment: bool = True, crop_scale: Tuple[float, float] = (0.08, 1.0),
                blur_sigma: Tuple[float, float] = (0.1, 2.0), num_workers: int = 2,
                os_cache: bool = True, batches_ahead: int = 3, start_epoch: int = 0) -> ScanLoader:
    """Batches of (view1, view2, labels, ids) with augment=True, (images, labels, ids) without."""
    required = ("image", "label", "id")
    check_beton(path, required)
    pipes = moco_pipelines(resolution, device=device, augment=augment, crop_scale=crop_scale)
    loader = build_loader(path, batch_size, _disable_other_fields(path, pipes), required, scan=scan,
                          seed=seed, shuffle=shuffle, drop_last=drop_last, distributed=distributed,
                          rank=rank, world_size=world_size, num_workers=num_workers,
                          os_cache=os_cache, batches_ahead=batches_ahead, start_epoch=start_epoch)
    if augment:
        photometric = KeyedMocoViews(seed, blur_sigma=blur_sigma)

        def two_views(batch, epoch):  # ffcv yields (view1, label, id, view2)
            view1, labels, ids, view2 = batch
            return photometric((view1, view2, labels, ids), epoch)

        loader.batch_transform = two_views
    return loader


def labelled_loader(path, batch_size: int, resolution: int = 224, *, device="cpu", mean=IMAGENET_MEAN,
                    std=IMAGENET_STD, num_workers: int = 2, os_cache: bool = True) -> ScanLoader:
    """Evaluation batches of (images float [B,3,R,R] centre-cropped and normalised, labels, ids),
    in file order with the last batch kept, from any .beton with image, label and id fields
    (`data labelled`, or a CLIP set written with labels: its tokens are not read)."""
    from ffcv.reader import Reader

    required = ("image", "label", "id")
    check_beton(path, required)
    pipes = moco_pipelines(resolution, device=device, augment=False, mean=mean, std=std)
    loader = build_loader(path, batch_size, _disable_other_fields(path, pipes), required, shuffle=False,
                          drop_last=False, num_workers=num_workers, os_cache=os_cache)
    emitted = [name for name in Reader(str(path)).handlers if name in required]  # ffcv: file order
    pick = [emitted.index(name) for name in required]
    if pick != [0, 1, 2]:
        loader.batch_transform = lambda batch, epoch: tuple(batch[i] for i in pick)
    return loader
