"""Conversion at scale: `scan-fast data clip --webdataset ... --samples-per-part K` with 1 and 2 processes.

Generates webdataset shards (JPEGs + captions + DataComp-style json, written with webdataset's
TarWriter), then converts them to a part folder (one part per shard's worth of samples):

- `1 process`: one `scan-fast data clip` over every part;
- `2 processes`: two `--part-range` jobs started together, each over half the parts (the one that
  finishes last writes the manifest), as a job array would run them.

Every process uses `--num-workers 1`, so the ratio measures the parts written in parallel, not
ffcv's writer processes; `CPU s` is the CPU time of the case's processes and their writers;
`after start-up` is the time each process reports for the conversion itself (counting, checking,
writing; the slower job for 2 processes), without the interpreter's start and imports;
`1 process, 2 workers` (one process with two ffcv writers and two checking
threads) is printed beside it for reference. Each case runs as fresh processes (the import and
compile time is part of what a job pays); rounds are interleaved and the median is reported. The
2-process folder is checked to equal the 1-process one (the same parts, byte for byte).

    .venv/bin/python bench/bench_convert.py [--shards 8] [--per-shard 500] [--resolution 256] [--rounds 3]
"""
import argparse
import io
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import webdataset as wds
from PIL import Image

CLI = [sys.executable, "-m", "scan_fast.cli"]


def make_shards(folder, shards, per_shard, resolution, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:resolution, 0:resolution]
    k = 0
    for s in range(shards):
        with wds.TarWriter(os.path.join(folder, f"shard-{s:05d}.tar")) as sink:
            for _ in range(per_shard):
                slope = rng.uniform(-3, 3, (2, 3))
                image = rng.uniform(40, 200, 3) + yy[..., None] * slope[0] + xx[..., None] * slope[1]
                image += rng.normal(0, 12, image.shape)
                buf = io.BytesIO()
                Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
                uid = f"{int(rng.integers(0, 2**63)):016x}{k:016x}"
                sink.write({"__key__": f"{k:09d}", "jpg": buf.getvalue(),
                            "txt": f"a photo of sample {k} with {int(rng.integers(1, 9))} things",
                            "json": json.dumps({"uid": uid}).encode()})
                k += 1


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def convert(shards, out, per_part, ranges, workers):
    """Start one `data clip` per part range at once; (seconds until every one has finished, CPU
    seconds of all of them and their writer processes)."""
    cpu = _children_cpu()
    start = time.perf_counter()
    jobs = []
    for part_range in ranges:
        argv = [*CLI, "data", "clip", "--webdataset", shards, "--out", out, "--samples-per-part", str(per_part),
                "--num-workers", str(workers), "--no-progress"]
        if part_range is not None:
            argv += ["--part-range", part_range]
        jobs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    inside = []
    for job in jobs:
        out, err = job.communicate()
        if job.returncode:
            raise SystemExit(f"conversion failed: {err[-2000:]}")
        inside.append(float(re.search(r"written now in ([0-9.]+) s", out).group(1)))
    return time.perf_counter() - start, _children_cpu() - cpu, max(inside)


def start_up():
    """Seconds a fresh process takes to import the writers (ffcv's import compiles numba code): the
    fixed cost each converting process pays once, which the ratio does not divide."""
    start = time.perf_counter()
    code = "from scan_fast.data import write_clip_from_table, write_clip_from_webdataset"  # as `data clip`
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def fingerprints(folder):
    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    return manifest["num_samples"], [p["fingerprint"] for p in manifest["parts"]]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--per-shard", type=int, default=500)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", help="folder for the shards and outputs (default: a temporary folder)")
    args = parser.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="bench_convert.")
    shards = os.path.join(work, "shards")
    os.makedirs(shards, exist_ok=True)
    make_shards(shards, args.shards, args.per_shard, args.resolution)
    parts = args.shards  # K = --per-shard: one part per shard's worth of samples
    half = parts // 2
    cases = {
        "1 process": ([None], 1),
        "2 processes (--part-range)": ([f"0:{half}", f"{half}:{parts}"], 1),
        "1 process, 2 workers": ([None], 2),
    }
    times = {name: [] for name in cases}
    cpus = {name: [] for name in cases}
    insides = {name: [] for name in cases}
    prints = {}
    imports = []
    try:
        for _ in range(args.rounds):
            imports.append(start_up())
            for name, (ranges, workers) in cases.items():
                out = os.path.join(work, "out")
                shutil.rmtree(out, ignore_errors=True)
                seconds, cpu, inside = convert(shards, out, args.per_shard, ranges, workers)
                times[name].append(seconds)
                insides[name].append(inside)
                cpus[name].append(cpu)
                prints[name] = fingerprints(out)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    same = prints["1 process"] == prints["2 processes (--part-range)"]
    samples = args.shards * args.per_shard
    base = statistics.median(times["1 process"])
    base_inside = statistics.median(insides["1 process"])
    print(f"{samples} samples ({args.shards} shards x {args.per_shard}, {args.resolution} px JPEG), "
          f"{parts} parts; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at the end; "
          f"median of {args.rounds} rounds")
    print("| case | s (median) | rounds s | speed-up | after start-up s | speed-up after start-up | CPU s |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for name, values in times.items():
        median, inside = statistics.median(values), statistics.median(insides[name])
        print(f"| {name} | {median:.1f} | {', '.join(f'{v:.1f}' for v in values)} | {base / median:.2f}x | "
              f"{inside:.1f} | {base_inside / inside:.2f}x | {statistics.median(cpus[name]):.1f} |")
    print(f"start-up of one process (import of the writers): {statistics.median(imports):.1f} s median "
          f"({', '.join(f'{v:.1f}' for v in imports)})")
    print(f"2-process folder equal to the 1-process one (parts' fingerprints): {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
