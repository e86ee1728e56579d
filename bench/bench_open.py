"""What opening a loader costs per sample of the data set: time to the first batch and memory.

For each variant and size a fresh process opens `clip_loader` over N tiny CLIP samples (8 x 8 raw
images, 8 tokens: the data is small, so what grows is the loader's own cost) and reads one batch
(64), five times; it reports the median of the seconds from the call to the first batch, and
the memory it added: private memory (anonymous pages: what each rank pays for itself) and the
pages of the data files it mapped (page cache, shared by the ranks of a node and reclaimable;
a kernel that caches files in large folios maps a whole folio, up to 2 MiB, for each row or
value touched, so this is bounded by the batch, not by N). Total RSS is not used: the shared
libraries a first batch pages in (CUDA's, LLVM's) move it by tens of MB from run to run. The
slope between two sizes is the cost per sample, which the README's Scale section multiplies
out to 10^9.

Variants:
- "ours, one file": a .beton laid out as our writers write it (allocation table sorted by pointer);
- "ffcv layout, one file": the same rows with the allocation table in the order ffcv's own
  DatasetWriter leaves it (each of its two workers' allocations in turn, so unsorted); its first
  open builds the sorted table once and caches it beside the file (timed apart), the reported
  open is the second;
- "part folder": the same rows as parts of 10^6 samples (--part-size) with a manifest;
- "in-place index": an index of webdataset shards (`data index`) of 10^6 samples a shard, whose
  images are 8 x 8 JPEGs read from the shard files (a shard here is 1024 JPEGs that its rows share);
- "ffcv Reader + OS cache (before)": the loader path before this data layer: ffcv's Loader with
  its Reader and OS-cache memory manager, a full-table integrity check and the epoch's whole
  order, on the "ours" file (measured at smaller sizes: ~1 KB a sample).

The tiny samples are written directly with numpy (header, field table, metadata, data and
allocation table as ffcv lays them out), since ffcv's writer would take hours at 10^7; that a
file written by ffcv's own DatasetWriter opens is tested in tests/test_data_parts.py.

    python bench/bench_open.py                               # 10^6 and 10^7 (needs ~8 GB of disk)
    python bench/bench_open.py --sizes 1e5 4e5 --old-sizes 1e5 2e5 --quick   # smoke run
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RES, CONTEXT, BATCH, PART = 8, 8, 64, 1_000_000


# ------------------------------------------------------------------ a tiny-sample generator

def write_tiny_beton(path, num_samples: int, first_id: int = 0, ffcv_layout: bool = False,
                     chunk: int = 1 << 20) -> None:
    """N CLIP samples (raw RES x RES image, CONTEXT int32 tokens, id = row) as a .beton, vectorised."""
    from scan_fast.data.beton_layout import ALLOC_TABLE, HEADER, VERSION, field_table, sample_dtype
    from scan_fast.data.schema import clip_fields

    fields = clip_fields(CONTEXT, image_mode="raw")
    descriptors = field_table([(name, spec.type_id, spec.arguments()) for name, spec in fields.items()])
    meta_type = sample_dtype([spec.type_id for spec in fields.values()])
    image_bytes, token_bytes = RES * RES * 3, CONTEXT * 4
    sample_bytes = image_bytes + token_bytes
    meta_start = HEADER.itemsize + descriptors.nbytes
    data_start = meta_start + num_samples * meta_type.itemsize
    table_ptr = data_start + num_samples * sample_bytes
    header = np.zeros(1, HEADER)
    header["version"], header["num_fields"], header["page_size"] = VERSION, len(fields), 1 << 21
    header["num_samples"], header["alloc_table_ptr"] = num_samples, table_ptr
    rng = np.random.default_rng(num_samples)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(descriptors.tobytes())
        for start in range(0, num_samples, chunk):
            rows = np.arange(start, min(start + chunk, num_samples), dtype=np.int64)
            meta = np.zeros(len(rows), meta_type)
            ptr = data_start + rows * sample_bytes
            meta["f0"]["mode"], meta["f0"]["width"], meta["f0"]["height"] = 1, RES, RES
            meta["f0"]["data_ptr"] = ptr
            meta["f1"] = ptr + image_bytes
            meta["f2"] = rows + first_id * 0  # the id field is the row in the file
            f.write(meta.tobytes())
        for start in range(0, num_samples, chunk):
            count = min(chunk, num_samples - start)
            images = rng.integers(0, 256, (count, image_bytes), dtype=np.uint8)
            tokens = rng.integers(1, 1000, (count, CONTEXT), dtype=np.int32).view(np.uint8)
            f.write(np.concatenate([images, tokens], axis=1).tobytes())
        # allocation table: (sample, ptr, size) per stored value; ours sorted by pointer, ffcv's
        # concatenated per worker (worker w wrote every other chunk of 100 samples)
        order = np.arange(num_samples, dtype=np.int64)
        if ffcv_layout:
            chunk_of = order // 100
            order = np.concatenate([order[chunk_of % 2 == 0], order[chunk_of % 2 == 1]])
        for start in range(0, num_samples, chunk):
            rows = order[start:start + chunk]
            table = np.zeros((len(rows), 2), ALLOC_TABLE)
            table["sample_id"] = rows[:, None]
            table["ptr"][:, 0] = data_start + rows * sample_bytes
            table["ptr"][:, 1] = table["ptr"][:, 0] + image_bytes
            table["size"][:, 0], table["size"][:, 1] = image_bytes, token_bytes
            f.write(table.reshape(-1).tobytes())


def write_tiny_index(folder: Path, n: int) -> None:
    """An in-place index of N tiny samples, vectorised: parts of PART rows over shard files of 1024
    8 x 8 JPEGs, tokens as CONTEXT int32, the part records and the manifest as `data index` writes them."""
    import io
    import json as json_

    from PIL import Image

    from scan_fast.data.write.index_shards import part_record_path, part_stem, write_index_manifest
    from scan_fast.data.index_format import ROW_DTYPE, file_entry, shard_fingerprint

    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(np.arange(RES * RES * 3, dtype=np.uint8).reshape(RES, RES, 3)).save(buffer, "JPEG")
    jpeg = buffer.getvalue()
    starts = range(0, n, PART)
    for p, start in enumerate(starts):
        count = min(PART, n - start)
        shard = folder / f"shard-{p:05d}.tar"
        shard.write_bytes(jpeg * 1024)
        rows = np.zeros(count, ROW_DTYPE)
        rows["offset"] = (np.arange(count) % 1024) * len(jpeg)
        rows["size"], rows["height"], rows["width"], rows["side"] = len(jpeg), RES, RES, -1
        stem = part_stem(folder, p)
        np.save(f"{stem}.rows.npy", rows)
        tokens = np.zeros((count, CONTEXT), np.int32)
        tokens[:, :3] = (49406, 320, 49407)
        np.save(f"{stem}.tokens.npy", tokens)
        size = shard.stat().st_size
        record = {"file": stem.name, "shard": str(shard.resolve()), "shard_bytes": size,
                  "shard_fingerprint": shard_fingerprint(str(shard), size), "num_samples": count, "converted": 0,
                  "image_bounds": [RES, RES], "files": {role: file_entry(f"{stem}.{role}.npy")
                                                         for role in ("rows", "tokens")},
                  "source_ids": {}, "skipped": 0, "captions_truncated": 0, "rows_read": count}
        part_record_path(folder, p).write_text(json_.dumps(record))
    write_index_manifest(folder, len(starts), {"context_length": CONTEXT, "max_resolution": None})


def make_variant(variant: str, n: int, root: Path) -> Path:
    from scan_fast.data.beton import BetonFile
    from scan_fast.data.beton_records import save_record

    root.mkdir(parents=True, exist_ok=True)
    if variant == "in-place index":
        folder = root / f"index{n}-{PART}"
        if not (folder / "manifest.json").exists():
            write_tiny_index(folder, n)
        return folder
    if variant == "part folder":
        folder = root / f"parts{n}-{PART}"
        if not (folder / "manifest.json").exists():
            from scan_fast.data.write.parts import part_path, write_manifest

            folder.mkdir(exist_ok=True)
            parts = range(0, n, PART)
            for i, start in enumerate(parts):
                path = part_path(folder, i)
                write_tiny_beton(path, min(PART, n - start))
                save_record(path, BetonFile(path).describe())
            write_manifest(folder, len(parts))
        return folder
    layout = "ffcv" if variant.startswith("ffcv layout") else "ours"
    path = root / f"{layout}{n}.beton"
    if not path.exists():
        write_tiny_beton(path, n, ffcv_layout=layout == "ffcv")
        if layout == "ours":
            save_record(path, BetonFile(path).describe())  # what our writers keep beside a file
    return path


# ------------------------------------------------------------------ one measurement, in a fresh process

def _memory(data_path=None):
    """{"anon": private bytes, "data": resident bytes of mappings of files under `data_path`}."""
    anon, data, mapping = 0, 0, ""
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and ":" not in head[0]:
                mapping = head[5] if len(head) > 5 else ""
            elif head and head[0] == "Anonymous:":
                anon += int(head[1]) * 1024
            elif head and head[0] == "Rss:" and data_path and mapping.startswith(data_path):
                data += int(head[1]) * 1024
    return {"anon": anon, "data": data}


def _old_open(path):
    """The path before this data layer: the full integrity check (the whole allocation table read and
    counted), ffcv's Loader (Reader copies of both tables, per-sample dicts) and the whole order."""
    from ffcv.loader import Loader
    from ffcv.loader.loader import ORDER_MAP
    from ffcv.reader import Reader
    from ffcv.types import ALLOC_TABLE_TYPE

    from ffcv_order import OrderFactory
    from scan_fast.data.read.order import KeptIdsSource
    from scan_fast.data.read.pipelines import clip_pipelines

    reader = Reader(str(path))
    table = np.fromfile(str(path), dtype=ALLOC_TABLE_TYPE, offset=int(reader.header["alloc_table_ptr"]))
    assert (np.bincount(table["sample_id"].astype(np.int64), minlength=reader.num_samples) == 2).all()
    source = KeptIdsSource(None, int(reader.num_samples), seed=0)
    key = OrderFactory(source)
    ORDER_MAP[key] = key
    pipes = {**{n: None for n in Reader(str(path)).handlers}, **clip_pipelines(RES, augment=False)}
    loader = Loader(str(path), batch_size=BATCH, num_workers=1, order=key, pipelines=pipes, seed=0)
    del ORDER_MAP[key]
    return loader


def measure(variant: str, path: str) -> dict:
    import torch  # noqa: F401 - imported before the baseline, as a trainer has it

    from scan_fast.data.read.loaders import clip_loader

    data_path = str(Path(path).resolve())
    before = _memory(data_path)
    start = time.perf_counter()
    if variant.startswith("ffcv Reader"):
        loader = _old_open(path)
    else:
        loader = clip_loader(path, BATCH, RES, augment=False, num_workers=1)
    batch = next(iter(loader))
    seconds = time.perf_counter() - start
    after = _memory(data_path)
    assert len(batch.ids if hasattr(batch, "ids") else batch[2]) == BATCH  # a Batch, or ffcv's tuple
    return {"seconds": seconds, "anon": after["anon"] - before["anon"], "data": after["data"] - before["data"]}


def run_measure(variant: str, path: Path, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        # one malloc arena: per-thread arenas otherwise move private memory by ~20 MiB from run to run
        out = subprocess.run([sys.executable, __file__, "--measure", variant, str(path)], capture_output=True,
                             text=True, check=False, env={**os.environ, "MALLOC_ARENA_MAX": "1"})
        if out.returncode:
            raise RuntimeError(f"{variant} on {path} failed:\n{out.stderr[-3000:]}")
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {key: float(np.median([r[key] for r in runs])) for key in runs[0]}


def main(argv=None) -> int:
    global PART
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs=2, type=float, default=[1e6, 1e7], metavar="N",
                        help="the two data set sizes of the new path (default 1e6 1e7)")
    parser.add_argument("--old-sizes", nargs=2, type=float, default=[1e6, 2.5e6], metavar="N",
                        help="the two sizes of the path before (default 1e6 2.5e6: ~1 KB a sample)")
    parser.add_argument("--workdir", help="keep the generated data here (default: a temp folder, removed)")
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per measurement (median)")
    parser.add_argument("--variants", nargs="+", help="only these variants (names as in the table)")
    parser.add_argument("--quick", action="store_true", help="skip the path before")
    parser.add_argument("--part-size", type=float, default=PART,
                        help="samples per part (part folder) and per shard (index), default 1e6: at a fixed N, "
                             "two part sizes tell what each part opened costs from what each sample costs")
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    PART = int(args.part_size)
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return 0
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench_open_"))
    variants = ["ours, one file", "ffcv layout, one file", "part folder", "in-place index"]
    plan = [(v, [int(s) for s in args.sizes]) for v in variants]
    if not args.quick:
        plan.append(("ffcv Reader + OS cache (before)", [int(s) for s in args.old_sizes]))
    if args.variants:
        plan = [(v, sizes) for v, sizes in plan if v in args.variants]
    print(f"bench_open: {platform.node()}, {os.cpu_count()} cores; first batch of {BATCH}, "
          f"{RES}x{RES} raw images, {CONTEXT} tokens; fresh process each")
    print("| variant | N | time to first batch s | private MiB | data files mapped MiB |")
    print("|---|---:|---:|---:|---:|")
    slopes = {}
    try:
        for variant, sizes in plan:
            results = []
            for n in sizes:
                if variant.startswith("ffcv Reader"):
                    path = make_variant("ours, one file", n, root)
                else:
                    path = make_variant(variant, n, root)
                if variant.startswith("ffcv layout"):
                    first = run_measure(variant, path, 1)  # builds and caches the sorted table
                    print(f"| {variant}: first open (builds the sorted table) | {n:,} | {first['seconds']:.2f} | "
                          f"{first['anon'] / 2**20:.1f} | {first['data'] / 2**20:.1f} |")
                result = run_measure(variant, path, args.repeats)
                results.append(result)
                print(f"| {variant} | {n:,} | {result['seconds']:.2f} | {result['anon'] / 2**20:.1f} | "
                      f"{result['data'] / 2**20:.1f} |", flush=True)
            dn = sizes[1] - sizes[0]
            slopes[variant] = {k: (results[1][k] - results[0][k]) / dn for k in ("seconds", "anon", "data")}
        print()
        print("| variant | us per sample | private bytes per sample | mapped data bytes per sample | "
              "at 10^9: s, private GiB |")
        print("|---|---:|---:|---:|---:|")
        for variant, s in slopes.items():
            print(f"| {variant} | {s['seconds'] * 1e6:.4f} | {s['anon']:.3f} | {s['data']:.3f} | "
                  f"{s['seconds'] * 1e9:.0f}, {max(s['anon'], 0) * 1e9 / 2**30:.2f} |")
        old = slopes.get("ffcv Reader + OS cache (before)")
        if old:
            new = slopes["ours, one file"]
            print(f"\nper-sample slope, before / now: time {old['seconds'] / max(new['seconds'], 1e-12):.0f}x, "
                  f"private memory {old['anon'] / max(new['anon'], 1e-3):.0f}x")
        target = all(s["anon"] <= 1.0 and s["seconds"] <= 0.05e-6 for v, s in slopes.items() if "before" not in v)
        print(f"target (every new variant <= 1 private byte and <= 0.05 us a sample): "
              f"{'met' if target else 'NOT met'}")
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
