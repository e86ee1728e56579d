"""Benchmark the FFCV data path against the usual alternatives, all in one run.

1. throughput: images/s of the FFCV CLIP pipeline (clip_loader: keyed random-resized-
   crop decode, flip, normalise, tokens, ids) vs a torchvision Dataset + DataLoader
   doing the same decode, crop, flip and normalise, on the same generated JPEGs (shapes
   rendered at 64 px and 224 px, saved as JPEG files, then written to .beton); also
   ffcv's own (unseeded) crop and flip, to show what keying the draws costs.
2. switch: moving a loader to a new pruned list at N = 10M ids. Ours validates the
   list (the only new work) and draws the epoch's (seed, epoch) shuffle, which an
   unpruned ffcv Random order draws every epoch anyway (shown for reference).
   Alternatives: rebuilding an ffcv Loader(indices=kept) (measured at the small
   data size, first batch included) and writing a pruned copy of the .beton
   (measured at the small size, per-sample cost extrapolated to 0.65 x 10M).
3. epoch time at kept fractions 1.0, 0.65, 0.35 with one loader switching lists;
   ratio = t(f) / (f * t(1.0)), target <= 1.1.
4. parts: images/s of clip_loader over the same rows as one .beton and as a folder of 4
   parts (target >= 0.95x), and over the one file through ffcv's own Reader and OS-cache
   read path (the loader before batches were staged), interleaved in one run.
5. inplace: the same JPEGs as webdataset shards, read by clip_loader from an in-place index
   (`data index`; also with `direct_reads`, O_DIRECT), from a part folder converted from those shards, and
   by ffcv's own Loader on the converted file (its own crop decoder and flip; a pruned epoch through its
   `indices`), at 64 and 224 px, all samples and a random half; targets: index >= 0.9x the part folder and
   >= 0.9x ffcv's Loader, the part folder >= 1.0x ffcv's Loader at 64 px. Each provider runs in its own
   spawned process; epochs of the four are timed in turn, round after round. Also the bytes each
   reads per batch (read syscalls, storage reads from a cold page cache, and data file pages
   mapped) against the batch's stored bytes (target <= 2x for storage reads and pages mapped; the
   read syscalls include the whole 4 KiB blocks of a .beton's allocation table its pointer search
   reads from the page cache).

    python bench/bench_loader.py                         # ~5 min on 2 cores
    python bench/bench_loader.py --quick                 # smoke run
    python bench/bench_loader.py --csv bench_loader.csv  # also append Liger-style CSV rows
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCH = 128


def quantiles(values):
    """(p50, p20, p80) of repeated measurements."""
    values = sorted(values)
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = np.quantile(values, [0.5, 0.2, 0.8])
    return float(q[0]), float(q[1]), float(q[2])


class FixedListScan:
    """Schedule stand-in: epoch e keeps lists[e] (or a fresh random `fraction` of the ids)."""

    def __init__(self, num_samples, lists=None, fraction=1.0, seed=0):
        self.num_samples, self.lists, self.fraction, self.seed = num_samples, lists, fraction, seed

    def epoch_indices(self, epoch):
        if self.lists is not None:
            return self.lists[epoch]
        mask = np.random.default_rng([self.seed, epoch]).random(self.num_samples) < self.fraction
        return np.flatnonzero(mask)


def make_data(root: Path, num_samples: int, resolution: int):
    """Render shapes, save them as JPEG files + a caption CSV, write the .beton from those files."""
    from PIL import Image

    from scan_fast.data.embedded import ShapesGenerator
    from scan_fast.data.write.from_table import write_clip_from_table

    folder = root / f"jpeg{resolution}"
    folder.mkdir(parents=True, exist_ok=True)
    gen = ShapesGenerator(num_samples, resolution, mismatch_fraction=0.0, duplicate_fraction=0.0, seed=0)
    rows = ["filepath,caption"]
    for i in range(num_samples):
        name = f"{i:07d}.jpg"
        Image.fromarray(gen.image(i)).save(folder / name, quality=90)
        rows.append(f"{name},{gen.caption(i)}")
    table = folder / "captions.csv"
    table.write_text("\n".join(rows) + "\n")
    beton = root / f"shapes{resolution}.beton"
    write_clip_from_table(table, beton, image_mode="jpg", jpeg_quality=90, max_resolution=resolution,
                          progress=False)
    return table, beton


def torchvision_loader(table: Path, resolution: int, workers: int):
    import torch
    from PIL import Image
    from torchvision import transforms as T

    from scan_fast.data.read.augment import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    from scan_fast.data.write.tables import read_caption_table
    from scan_fast.data.tokenize import CaptionTokenizer

    rows, _ = read_caption_table(table)
    tokenizer = CaptionTokenizer()
    files = [str(table.parent / row.image) for row in rows]
    tokens = np.stack([tokenizer(row.caption)[0] for row in rows])
    transform = T.Compose([T.RandomResizedCrop(resolution, scale=(0.9, 1.0)), T.RandomHorizontalFlip(),
                           T.ToTensor(), T.Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)])

    class JpegPairs(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            with Image.open(files[i]) as img:
                return transform(img.convert("RGB")), torch.from_numpy(tokens[i]), i

    return torch.utils.data.DataLoader(JpegPairs(), batch_size=BATCH, shuffle=True, num_workers=workers,
                                       persistent_workers=True, drop_last=False)


def unkeyed_ffcv_loader(beton: Path, resolution: int, workers: int):
    """clip_loader's pipeline with ffcv's own RandomResizedCrop decoder and flip, whose draws no seed
    reaches: the price of keyed (reproducible) augmentation is the gap to clip_loader."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.ndarray import NDArrayDecoder
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.transforms import NormalizeImage, RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage

    from scan_fast.data.read.augment import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    from scan_fast.data.read.loaders import build_loader

    image = [RandomResizedCropRGBImageDecoder((resolution, resolution), scale=(0.9, 1.0)), RandomHorizontalFlip(),
             NormalizeImage(np.array(OPENAI_CLIP_MEAN) * 255, np.array(OPENAI_CLIP_STD) * 255, np.float32),
             ToTensor(), ToTorchImage()]
    pipes = {"image": image, "tokens": [NDArrayDecoder(), ToTensor()], "id": [IntDecoder(), ToTensor(), Squeeze(1)]}
    return build_loader(beton, BATCH, pipes, ("image", "tokens", "id"), drop_last=False, num_workers=workers)


def time_epoch(loader):
    start, images = time.perf_counter(), 0
    for batch in loader:  # a scan-fast Batch, or the tuple of another loader
        images += batch.ids.shape[0] if hasattr(batch, "ids") else batch[0].shape[0]
    return time.perf_counter() - start, images


def suite_throughput(data, reps, workers):
    from scan_fast.data.read.loaders import clip_loader

    rows = []
    for resolution, (table, beton) in data.items():
        providers = {"ffcv clip_loader": clip_loader(beton, BATCH, resolution, drop_last=False,
                                                     num_workers=workers),
                     "ffcv, unkeyed crop": unkeyed_ffcv_loader(beton, resolution, workers),
                     "torchvision DataLoader": torchvision_loader(table, resolution, workers)}
        for loader in providers.values():
            time_epoch(loader)  # warm-up: numba JIT for ffcv, worker start-up for torch
        rates = {name: [] for name in providers}
        for _ in range(reps):  # interleaved, so both see the same background load
            for name, loader in providers.items():
                seconds, images = time_epoch(loader)
                rates[name].append(images / seconds)
        ref = statistics.median(rates["torchvision DataLoader"])
        for name, values in rates.items():
            p50, p20, p80 = quantiles(values)
            rows.append(dict(suite="throughput", provider=name, setting=f"{resolution}px N={images}",
                             metric="images/s", unit="img/s", p50=p50, p20=p20, p80=p80, ratio=p50 / ref))
    return rows


def suite_switch(switch_n, small_beton, small_n, small_table, reps, workers):
    from ffcv.fields.basics import IntDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import Squeeze, ToTensor

    from scan_fast.data.read.order import KeptIdsSource, validate_kept_ids
    from scan_fast.data.read.loaders import clip_loader
    from scan_fast.data.write.from_table import write_clip_from_table

    rng = np.random.default_rng(0)
    lists = [np.flatnonzero(rng.random(switch_n) < f) for f in (0.65, 0.35) * (reps + 1)]
    validate_kept_ids(lists[0], switch_n)  # compile the numba check outside the timing
    source = KeptIdsSource(FixedListScan(switch_n, lists), switch_n, seed=0)
    validate_s, order_s, ffcv_random_s = [], [], []
    all_ids = np.arange(switch_n, dtype=np.uint64)
    for epoch in range(1, reps + 1):
        start = time.perf_counter()
        validate_kept_ids(lists[epoch], switch_n, epoch)
        validate_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        source.order(epoch)  # what the loader's order does at an epoch start: validate + shuffle
        order_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        np.random.default_rng(epoch).permutation(all_ids)  # ffcv's Random order, every epoch
        ffcv_random_s.append(time.perf_counter() - start)

    # A live loader switching lists (small data): set_epoch re-reads the list, nothing else.
    scan = FixedListScan(small_n, fraction=0.65)
    loader = clip_loader(small_beton, BATCH, 64, scan=scan, num_workers=workers)
    set_epoch_s = []
    for epoch in range(1, reps + 1):
        start = time.perf_counter()
        loader.set_epoch(epoch)
        set_epoch_s.append(time.perf_counter() - start)

    # Rebuilding an ffcv Loader on the new list, until its first batch (ids only, cheapest pipeline).
    kept_small = scan.epoch_indices(0)
    rebuild_s = []
    for _ in range(reps):
        start = time.perf_counter()
        rebuilt = Loader(str(small_beton), batch_size=BATCH, num_workers=workers, order=OrderOption.RANDOM,
                         indices=kept_small, seed=0,
                         pipelines={"image": None, "tokens": None, "id": [IntDecoder(), ToTensor(), Squeeze(1)]})
        next(iter(rebuilt))
        rebuild_s.append(time.perf_counter() - start)

    # Writing a pruned copy: the kept rows' JPEGs through the table writer (check, decode, encode).
    lines = small_table.read_text().splitlines()
    pruned_table = small_table.with_name("pruned.csv")
    pruned_table.write_text("\n".join([lines[0]] + [lines[1 + i] for i in kept_small]) + "\n")
    start = time.perf_counter()
    write_clip_from_table(pruned_table, small_beton.with_name("pruned.beton"), max_resolution=64,
                          progress=False, num_workers=workers)
    repack_per_sample = (time.perf_counter() - start) / len(kept_small)
    repack_10m = repack_per_sample * 0.65 * switch_n

    ours = statistics.median(validate_s)
    rows = []

    def add(provider, setting, seconds, note=""):
        p50, p20, p80 = quantiles(seconds)
        rows.append(dict(suite="switch", provider=provider, setting=setting + note, metric="switch time",
                         unit="ms", p50=p50 * 1e3, p20=p20 * 1e3, p80=p80 * 1e3, ratio=p50 / ours))

    add("ours: validate new kept list", f"N={switch_n:.0e}", validate_s)
    add("ours: validate + (seed, epoch) shuffle", f"N={switch_n:.0e}", order_s)
    add("ffcv Random shuffle, all ids (paid every epoch)", f"N={switch_n:.0e}", ffcv_random_s)
    add("ours: ScanLoader.set_epoch", f"N={small_n}", set_epoch_s)
    add("rebuild ffcv Loader(indices=kept) to 1st batch", f"N={small_n}", rebuild_s)
    add("repack: write pruned .beton copy", f"N={switch_n:.0e}", [repack_10m],
        f" (extrapolated: {repack_per_sample * 1e3:.2f} ms/sample at N={small_n})")
    return rows


def suite_fractions(data, reps, workers):
    from scan_fast.data.read.loaders import clip_loader

    rows = []
    for resolution, (_, beton) in data.items():
        n = int(np.fromfile(beton, dtype="<u8", count=2)[1])  # header: num_samples
        scan = FixedListScan(n, fraction=1.0)
        loader = clip_loader(beton, BATCH, resolution, scan=scan, drop_last=False, num_workers=workers)
        time_epoch(loader)  # warm-up (JIT)
        epoch, times = 1, {f: [] for f in (1.0, 0.65, 0.35)}
        for _ in range(reps):
            for fraction in times:
                scan.fraction = fraction
                loader.set_epoch(epoch)
                times[fraction].append(time_epoch(loader)[0])
                epoch += 1
        full = statistics.median(times[1.0])
        for fraction, values in times.items():
            p50, p20, p80 = quantiles(values)
            rows.append(dict(suite="kept fraction", provider="ffcv clip_loader",
                             setting=f"{resolution}px N={n} kept={fraction}", metric="epoch time", unit="s",
                             p50=p50, p20=p20, p80=p80, ratio=p50 / (fraction * full)))
    return rows


def _ffcv_read_path_loader(beton: Path, resolution: int, workers: int):
    """clip_loader's pipelines on ffcv's own Loader (its Reader and OS-cache memory manager) with the
    same keyed shard order: how batches were read before they were staged from mapped parts."""
    from ffcv.loader import Loader
    from ffcv.loader.loader import ORDER_MAP
    from ffcv.reader import Reader

    from ffcv_order import OrderFactory
    from scan_fast.data.read.order import KeptIdsSource
    from scan_fast.data.read.pipelines import clip_pipelines

    reader = Reader(str(beton))
    key = OrderFactory(KeptIdsSource(None, int(reader.num_samples), seed=0))
    ORDER_MAP[key] = key
    try:
        pipes = {**{n: None for n in reader.handlers}, **clip_pipelines(resolution)}
        return Loader(str(beton), batch_size=BATCH, num_workers=workers, order=key, pipelines=pipes, seed=0,
                      drop_last=False)
    finally:
        del ORDER_MAP[key]


def suite_parts(root: Path, num_samples: int, reps: int, workers: int):
    from scan_fast.data.embedded import write_shapes
    from scan_fast.data.read.loaders import clip_loader

    single, folder = root / "parts_single.beton", root / "parts_folder"
    write_shapes(single, num_samples=num_samples, resolution=64, progress=False)
    write_shapes(folder, num_samples=num_samples, resolution=64, progress=False,
                 samples_per_part=-(-num_samples // 4))
    makers = {"one file": lambda: clip_loader(single, BATCH, 64, drop_last=False, num_workers=workers),
              "4-part folder": lambda: clip_loader(folder, BATCH, 64, drop_last=False, num_workers=workers),
              "one file, ffcv's read path (before)": lambda: _ffcv_read_path_loader(single, 64, workers)}
    providers = {}
    for name, make in makers.items():  # each built and warmed up (JIT) before the next is built
        providers[name] = make()
        time_epoch(providers[name])
    rates = {name: [] for name in providers}
    for _ in range(reps):
        for name, loader in providers.items():
            seconds, images = time_epoch(loader)
            rates[name].append(images / seconds)
    ref = statistics.median(rates["one file"])
    rows = []
    for name, values in rates.items():
        p50, p20, p80 = quantiles(values)
        rows.append(dict(suite="parts", provider=name, setting=f"64px N={num_samples}", metric="images/s",
                         unit="img/s", p50=p50, p20=p20, p80=p80, ratio=p50 / ref))
    return rows


def make_shards(root: Path, num_samples: int, resolution: int, per_shard: int = 1000) -> Path:
    """The shapes of make_data as webdataset shards (<key>.jpg, <key>.txt), JPEG quality 90."""
    import io
    import tarfile

    from PIL import Image

    from scan_fast.data.embedded import ShapesGenerator

    folder = root / f"shards{resolution}"
    folder.mkdir(parents=True, exist_ok=True)
    gen = ShapesGenerator(num_samples, resolution, mismatch_fraction=0.0, duplicate_fraction=0.0, seed=0)
    for first in range(0, num_samples, per_shard):
        with tarfile.open(folder / f"{first // per_shard:05d}.tar", "w") as tar:
            for i in range(first, min(first + per_shard, num_samples)):
                buffer = io.BytesIO()
                Image.fromarray(gen.image(i)).save(buffer, "JPEG", quality=90)
                for name, payload in ((f"{i:07d}.jpg", buffer.getvalue()), (f"{i:07d}.txt", gen.caption(i).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return folder


def _ffcv_loader(beton: Path, resolution: int, workers: int, kept=None):
    """ffcv's own Loader (Reader, OS-cache memory manager, Random order) with ffcv's own random-resized-crop
    decoder and flip (what a user of ffcv alone runs), reading only `kept` (its `indices`) when given."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.ndarray import NDArrayDecoder
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import NormalizeImage, RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage

    from scan_fast.data.read.augment import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    image = [RandomResizedCropRGBImageDecoder((resolution, resolution), scale=(0.9, 1.0)), RandomHorizontalFlip(),
             NormalizeImage(np.array(OPENAI_CLIP_MEAN) * 255, np.array(OPENAI_CLIP_STD) * 255, np.float32),
             ToTensor(), ToTorchImage()]
    pipes = {"image": image, "tokens": [NDArrayDecoder(), ToTensor()], "id": [IntDecoder(), ToTensor(), Squeeze(1)]}
    return Loader(str(beton), batch_size=BATCH, num_workers=workers, order=OrderOption.RANDOM, seed=0,
                  indices=kept, pipelines=pipes, drop_last=False)


def _io_counters():
    with open("/proc/self/io") as f:
        fields = dict(line.split(": ") for line in f.read().splitlines())
    return int(fields["rchar"]), int(fields["read_bytes"])


def _evict(paths):
    """Drop the files' clean pages from the page cache, so the next reads come from storage."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def _mapped(prefixes):
    """Resident bytes of this process's mappings of files under `prefixes`."""
    total, mapping = 0, ""
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and ":" not in head[0]:
                mapping = head[5] if len(head) > 5 else ""
            elif head and head[0] == "Rss:" and mapping.startswith(tuple(prefixes)):
                total += int(head[1]) * 1024
    return total


def suite_inplace(root: Path, sizes: dict, reps: int, workers: int):
    from scan_fast.data.write.from_webdataset import write_clip_from_webdataset
    from scan_fast.data.write.index_shards import index_webdataset

    rows = []
    for resolution, n in sizes.items():
        shards = make_shards(root, n, resolution)
        index, parts, single = root / f"index{resolution}", root / f"parts{resolution}", root / f"conv{resolution}.beton"
        index_webdataset(shards, index, max_resolution=resolution, progress=False, overwrite=True)
        write_clip_from_webdataset(shards, parts, max_resolution=resolution, progress=False,
                                   samples_per_part=-(-n // 4), overwrite=True)
        write_clip_from_webdataset(shards, single, max_resolution=resolution, progress=False)
        for fraction in (1.0, 0.5):
            kept = np.flatnonzero(np.random.default_rng(1).random(n) < fraction) if fraction < 1 else None
            specs = {"in-place index": ("scan-fast", index), "in-place index, direct reads": ("scan-fast-direct", index),
                     "part folder": ("scan-fast", parts), "ffcv Loader, converted file": ("ffcv", single)}
            # Each provider lives in its own fresh (spawned) process, where it is built and warmed up (JIT), as
            # a training process would run it: numba's dispatchers are shared within a process and are not
            # safe against another loader's pipeline compiling at once (ffcv's Loader takes no lock of ours;
            # earlier runs of this suite met it as a KeyError in numba). The parent then times one epoch of
            # each in turn, round after round, so all see the same background load; then each counts its reads.
            files = {"in-place index": [shards, index], "in-place index, direct reads": [shards, index],
                     "part folder": [parts], "ffcv Loader, converted file": [single]}
            children = {name: _Child((kind, path, n, resolution, workers, kept)) for name, (kind, path) in specs.items()}
            try:
                rates = {name: [] for name in specs}
                for _ in range(reps):
                    for name, child in children.items():
                        seconds, images = child.call(_timed_epoch)
                        rates[name].append(images / seconds)
                reads = [child.call(_reads_per_batch, name, files[name], resolution, n, fraction)
                         for name, child in children.items()]
            finally:
                for child in children.values():
                    child.close()
            part_rate, ffcv_rate = (statistics.median(rates[k]) for k in ("part folder", "ffcv Loader, converted file"))
            for name, values in rates.items():
                p50, p20, p80 = quantiles(values)
                rows.append(dict(suite="inplace", provider=name, setting=f"{resolution}px N={n} kept={fraction}",
                                 metric="images/s", unit="img/s", p50=p50, p20=p20, p80=p80,
                                 ratio=p50 / part_rate, ratio2=p50 / ffcv_rate))
            rows += reads
    return rows


class _Child:
    """A loader built from `spec` (see _build) and warmed up (one epoch) in a spawned process, which then
    runs what call() sends: fn(loader, *args) there (fn a module-level function, sent by name), its
    result returned here."""

    def __init__(self, spec):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self._pipe, theirs = context.Pipe()
        self._process = context.Process(target=_serve, args=(spec, theirs), daemon=True)
        self._process.start()
        self._result()  # built and warmed up

    def _result(self):
        ok, result = self._pipe.recv()
        if not ok:
            raise RuntimeError(result)
        return result

    def call(self, fn, *args):
        self._pipe.send((fn, args))
        return self._result()

    def close(self):
        if self._process.is_alive():
            self._pipe.send(None)
        self._process.join(timeout=30)


def _build(kind, path, n, resolution, workers, kept):
    """scan-fast's clip_loader over `path` of n samples (keeping `kept` every epoch when given), or ffcv's own
    Loader."""
    if kind == "ffcv":
        return _ffcv_loader(path, resolution, workers, kept)
    from scan_fast.data.read.loaders import clip_loader

    scan = FixedListScan(n, lists=[kept] * 1000) if kept is not None else None
    return clip_loader(path, BATCH, resolution, scan=scan, drop_last=False, num_workers=workers,
                       direct_reads=kind == "scan-fast-direct")


def _serve(spec, pipe):
    try:
        loader = _build(*spec)
        time_epoch(loader)
        pipe.send((True, None))
        while True:
            message = pipe.recv()
            if message is None:
                return
            fn, args = message
            pipe.send((True, fn(loader, *args)))
    except BaseException as err:  # the parent raises it with this message
        pipe.send((False, f"{type(err).__name__}: {err}"))


def _timed_epoch(loader):
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(0)  # the same kept list every time
    return time_epoch(loader)


def _reads_per_batch(loader, name, files, resolution, n, fraction):
    """Bytes one provider reads per batch in one epoch from a cold page cache, against the stored bytes
    of the batch (the staged values, or for ffcv the kept samples' share of the file's data)."""
    paths = [str(p) for f in files for p in ([f] if Path(f).is_file() else sorted(Path(f).iterdir()))]
    _evict(paths)
    staged_before = getattr(getattr(loader, "stager", None), "bytes_read", 0)
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(0)
    mapped_before, (rchar, storage) = _mapped(paths), _io_counters()
    _, images = time_epoch(loader)
    after_rchar, after_storage = _io_counters()
    batches = -(-images // BATCH)
    stager = getattr(loader, "stager", None)
    if stager is not None:
        stored = stager.bytes_read - staged_before
    else:
        stored = Path(paths[0]).stat().st_size * images / n
    return dict(suite="reads", provider=name, setting=f"{resolution}px N={n} kept={fraction}",
                metric="KiB/batch", unit="", p50=(after_rchar - rchar) / batches / 1024,
                p20=(after_storage - storage) / batches / 1024,
                p80=(_mapped(paths) - mapped_before) / batches / 1024,
                ratio=max(after_storage - storage, _mapped(paths) - mapped_before) / max(stored, 1))


def print_table(rows):
    headers = {"throughput": "ratio vs torchvision", "parts": "ratio vs one file",
               "inplace": "ratio vs part folder, vs ffcv Loader",
               "reads": "read syscalls / storage reads / pages mapped KiB per batch; worst of the last two / stored",
               "switch": "ratio vs ours (validate)",
               "kept fraction": "t(f) / (f * t(1.0))"}
    for suite, ratio_name in headers.items():
        chosen = [r for r in rows if r["suite"] == suite]
        if not chosen:
            continue
        print(f"\n== {suite} ==")
        print(f"{'provider':<48} {'setting':<58} {'metric':<12} {'p50':>10} {'p20':>10} {'p80':>10}  {ratio_name}")
        for r in chosen:
            second = f", {r['ratio2']:.3f}" if "ratio2" in r else ""
            print(f"{r['provider']:<48} {r['setting']:<58} {r['metric'] + ' ' + r['unit']:<12} "
                  f"{r['p50']:>10.3f} {r['p20']:>10.3f} {r['p80']:>10.3f}  {r['ratio']:.3f}{second}")


def write_csv(path, rows, config):
    from liger_csv import append_rows

    append_rows(path, [("data_loader", r["provider"], r["suite"], r["metric"], r["unit"], "setting", "setting",
                        r["setting"], r["p50"], r["p20"], r["p80"], json.dumps({**config, "ratio": r["ratio"]}),
                        "cpu:" + platform.processor()) for r in rows])


SUITES = ("throughput", "switch", "fractions", "parts", "inplace")
DEFAULT_SUITES = SUITES


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n64", type=int, default=4000, help="images at 64 px")
    parser.add_argument("--n224", type=int, default=1500, help="images at 224 px")
    parser.add_argument("--switch-n", type=int, default=10_000_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition")
    parser.add_argument("--suites", default=",".join(DEFAULT_SUITES),
                        help=f"comma-separated subset of {','.join(SUITES)} (another name is an error)")
    parser.add_argument("--parts-n", type=int, default=8000, help="images at 64 px in the parts suite")
    parser.add_argument("--inplace-n", type=int, nargs=2, default=[8000, 2000], metavar=("N64", "N224"),
                        help="images at 64 and 224 px in the inplace suite")
    parser.add_argument("--workdir", help="keep the generated data here (default: a temp folder)")
    parser.add_argument("--csv", help="append rows in Liger's benchmark CSV columns")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.suites.split(",")) - set(SUITES))
    if unknown:
        parser.error(f"--suites: unknown suite(s) {unknown}; choose from {','.join(SUITES)}")
    if args.quick:
        args.n64, args.n224, args.switch_n, args.reps, args.parts_n = 600, 300, 1_000_000, 1, 600
        args.inplace_n = [600, 300]

    import torch

    torch.set_num_threads(args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        start = time.perf_counter()
        suites, rows = args.suites.split(","), []
        if set(suites) & {"throughput", "switch", "fractions"}:
            data = {64: make_data(root, args.n64, 64), 224: make_data(root, args.n224, 224)}
            print(f"data written in {time.perf_counter() - start:.1f} s to {root}", flush=True)
        if "throughput" in suites:
            rows += suite_throughput(data, args.reps, args.workers)
        if "switch" in suites:
            rows += suite_switch(args.switch_n, data[64][1], args.n64, data[64][0], args.reps, args.workers)
        if "fractions" in suites:
            rows += suite_fractions(data, args.reps, args.workers)
        if "parts" in suites:
            rows += suite_parts(root, args.parts_n, args.reps, args.workers)
        if "inplace" in suites:
            rows += suite_inplace(root, dict(zip((64, 224), args.inplace_n)), args.reps, args.workers)
    print_table(rows)
    config = dict(batch=BATCH, workers=args.workers, reps=args.reps, cpus=os.cpu_count())
    if args.csv:
        write_csv(args.csv, rows, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
