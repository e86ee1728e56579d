"""Conversion at scale: `scan-fast data clip --webdataset ... --samples-per-part K`, JPEG passthrough
against decoding and re-encoding every image, and 1 process against 2.

Generates webdataset shards (256 px JPEGs + captions + DataComp-style json, written with
webdataset's TarWriter; 20,000 samples by default), then runs each case on them as fresh
processes, as a job would (start-up and imports are part of what a job pays):

- `re-encode`: `data clip --reencode`, every image decoded, shrunk and re-encoded (the writers'
  only path before passthrough);
- `passthrough`: `data clip`, each source JPEG stored as it is (checked by a 1/8-scale decode
  with libjpeg-turbo, which refuses what the loader's decoder refuses);
- `index`: `data index`, the shards indexed in place (tar and JPEG headers, captions tokenized; no
  image decoded, re-encoded or copied);
- `..., 2 processes`: two `--part-range` jobs started together, each over half the parts (the one
  that finishes last writes the manifest), as a job array runs them;
- `index, ..., N samples`: the index of the shards linked `--index-copies` times (100,000 samples by
  default), where the index's work, not a process's start-up, decides what a second process gains.

Every process uses `--num-workers 1`, so the ratios measure the work, not ffcv's writer
processes. `after start-up` is the time each process reports for the conversion itself (the
slower job for 2 processes); `CPU s` counts the case's processes and their writers. Rounds are
interleaved and the median is reported. The 2-process folder is checked to equal the 1-process one
(the parts' fingerprints). A provider is a name and the command of one job (PROVIDERS): another
way to turn the same shards into a data set (an index, say) is one more entry.

Also printed: the start-up of one process (`data clip --help`, and importing the writers), and the
row check's decode of a passthrough JPEG at 1/8 scale against the loader's full decode and PIL's, in
time and in broken files found (the shards' JPEGs cut short, or with 4 bytes overwritten).

    .venv/bin/python bench/bench_convert.py [--shards 40] [--per-shard 500] [--resolution 256] [--rounds 1]
                                            [--index-copies 5]
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
import tarfile
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, List, Optional

import numpy as np
import webdataset as wds
from PIL import Image

CLI = [sys.executable, "-m", "scan_fast.cli"]


@dataclass(frozen=True)
class Provider:
    """One way to turn the shards into a data set: job(shards, out, part_range, samples_per_part)
    is the command line of one process (part_range "I:J", or None for all of it)."""
    name: str
    job: Callable[[str, str, Optional[str], int], List[str]]
    parallel: bool = False  # also run as two --part-range processes


def _data_clip(*extra):
    def job(shards, out, part_range, per_part):
        argv = [*CLI, "data", "clip", "--webdataset", shards, "--out", out, "--samples-per-part", str(per_part),
                "--num-workers", "1", "--no-progress", *extra]
        return argv + (["--part-range", part_range] if part_range else [])
    return job


def _data_index(shards, out, part_range, per_part):
    """`data index`: one part per shard, so --part-range I:J splits the shards as it splits the parts."""
    argv = [*CLI, "data", "index", "--webdataset", shards, "--out", out, "--no-progress"]
    return argv + (["--part-range", part_range] if part_range else [])


PROVIDERS = [
    Provider("re-encode", _data_clip("--reencode")),
    Provider("passthrough", _data_clip(), parallel=True),
    Provider("index", _data_index, parallel=True),
]


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


def run_jobs(argvs):
    """Start the jobs at once; (seconds until every one has finished, CPU seconds of all of them
    and their writer processes, the slowest job's own conversion time)."""
    cpu = _children_cpu()
    start = time.perf_counter()
    jobs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for argv in argvs]
    inside = []
    for job in jobs:
        out, err = job.communicate()
        if job.returncode:
            raise SystemExit(f"{' '.join(job.args[:6])} ... failed: {err[-2000:]}")
        inside.append(float(re.search(r"written now in ([0-9.]+) s", out).group(1)))
    return time.perf_counter() - start, _children_cpu() - cpu, max(inside)


def start_up():
    """(seconds of `data clip --help`, seconds to import what `data clip` runs) in fresh processes:
    the fixed cost each converting process pays once, which no second process divides."""
    times = []
    for argv in ([*CLI, "data", "clip", "--help"],
                 [sys.executable, "-c", "from scan_fast.data import write_clip_from_webdataset\n"
                                        "from scan_fast.data.tokenize import CaptionTokenizer\nCaptionTokenizer()"]):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def tokenize_cost(count=2000):
    """Microseconds of CPU to tokenize one caption (open_clip's BPE, each caption new): what a loader would
    pay per sample if the index kept each caption's offset instead of its tokens (308 bytes at 77 tokens)."""
    from scan_fast.data.tokenize import CaptionTokenizer

    tokenizer = CaptionTokenizer(cache_size=1)
    captions = [f"a photo of sample {k} with {k % 9} things on a table near the window" for k in range(count)]
    start = time.process_time()
    for caption in captions:
        tokenizer(caption)
    return (time.process_time() - start) / count * 1e6


def fingerprints(folder):
    """The manifest's sample count and what identifies each part (an index's: its rows' digest)."""
    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    return manifest["num_samples"], [p.get("fingerprint") or p["files"]["rows"]["sha256"] for p in manifest["parts"]]


def decode_check(shard, count=300, seed=0):
    """The row check's 1/8-scale decode of a passthrough JPEG (libjpeg-turbo, as the loader decodes) against
    the loader's own full-size decode (ffcv's imdecode), PIL's full decode and PIL's 1/8-scale draft decode
    (the check before): ms per image, and how many of `count` broken copies each rejects (cut at a random
    byte, or 4 bytes overwritten)."""
    import numba
    from ffcv.libffcv import imdecode

    from scan_fast.data.write.images import check_jpeg_decodes, decode_image
    from scan_fast.data.write.jpeg_header import JpegHeaderError, jpeg_info
    from scan_fast.data.write.tables import BadRow

    loader_decode = numba.njit(imdecode)

    def loader(data):  # the loader's verdict: any error or warning is a failed image
        try:
            header = jpeg_info(data)
        except JpegHeaderError as err:
            raise BadRow("undecodable image", str(err)) from None
        out = np.zeros(header.height * header.width * 3, np.uint8)
        if loader_decode(np.frombuffer(data, np.uint8), out, header.height, header.width, header.height,
                         header.width, 0, 0, 1, 1, False, False) != 0:
            raise BadRow("undecodable image", "imdecode failed")

    def pil_draft(data):
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.draft("RGB", (max(1, img.size[0] // 8), max(1, img.size[1] // 8)))
                img.load()
        except Exception as err:
            raise BadRow("undecodable image", str(err)) from None

    with tarfile.open(shard) as tar:
        jpegs = [tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")][:count]
    rng = np.random.default_rng(seed)
    broken = {"cut short": [], "4 bytes overwritten": []}
    for data in jpegs:
        broken["cut short"].append(data[:int(rng.integers(len(data) // 4, len(data) - 1))])
        spoilt = bytearray(data)
        at = int(rng.integers(len(data) // 4, len(data) - 4))
        spoilt[at:at + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
        broken["4 bytes overwritten"].append(bytes(spoilt))
    loader(jpegs[0])  # compiled before it is timed
    checks = {"the loader's decode (ffcv imdecode, full size)": loader, "full decode (PIL)": decode_image,
              "1/8-scale decode (PIL draft; the row check before)": pil_draft,
              "1/8-scale decode (libjpeg-turbo; the row check)": check_jpeg_decodes}
    best = {name: float("inf") for name in checks}
    for _ in range(3):  # interleaved passes, the fastest of each: the machine's load varies
        for name, check in checks.items():
            start = time.perf_counter()
            for data in jpegs:
                check(data)
            best[name] = min(best[name], (time.perf_counter() - start) / len(jpegs) * 1e3)
    rows = []
    for name, check in checks.items():
        found = {}
        for kind, files in broken.items():
            found[kind] = 0
            for data in files:
                try:
                    check(data)
                except BadRow:
                    found[kind] += 1
        rows.append((name, best[name], found))
    return len(jpegs), rows


def _linked_copies(work, shards, copies):
    """A folder holding each shard `copies` times (hard links, or copies where links fail): an index over
    many samples without generating them; keys repeat only across shards, as in any data set."""
    folder = os.path.join(work, f"shards-x{copies}")
    if not os.path.isdir(folder):
        os.makedirs(folder)
        for copy in range(copies):
            for name in sorted(os.listdir(shards)):
                source, target = os.path.join(shards, name), os.path.join(folder, f"copy{copy}-{name}")
                try:
                    os.link(source, target)
                except OSError:
                    shutil.copyfile(source, target)
    return folder


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=40)
    parser.add_argument("--per-shard", type=int, default=500)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--index-copies", type=int, default=5,
                        help="also index the shards linked this many times, 1 and 2 processes: an index of 20,000 "
                             "samples is ~1 s of work against ~0.5 s of start-up a process")
    parser.add_argument("--workdir", help="folder for the shards and outputs (default: a temporary folder)")
    args = parser.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="bench_convert.")
    shards = os.path.join(work, "shards")
    os.makedirs(shards, exist_ok=True)
    if not os.listdir(shards):
        make_shards(shards, args.shards, args.per_shard, args.resolution)
    parts = args.shards  # K = --per-shard: one part per shard's worth of samples
    half = parts // 2
    samples = args.shards * args.per_shard
    cases = {}  # name -> (provider, part ranges, shards, samples)
    for provider in PROVIDERS:
        cases[f"{provider.name}, 1 process"] = (provider, [None], shards, samples)
        if provider.parallel:
            cases[f"{provider.name}, 2 processes (--part-range)"] = (provider, [f"0:{half}", f"{half}:{parts}"],
                                                                     shards, samples)
    if args.index_copies > 1:
        linked, index = _linked_copies(work, shards, args.index_copies), PROVIDERS[-1]
        many, big = parts * args.index_copies, samples * args.index_copies
        cases[f"index, 1 process, {big} samples"] = (index, [None], linked, big)
        cases[f"index, 2 processes (--part-range), {big} samples"] = (index, [f"0:{many // 2}", f"{many // 2}:{many}"],
                                                                      linked, big)
    times, cpus, insides = ({name: [] for name in cases} for _ in range(3))
    prints, starts = {}, []
    try:
        for _ in range(args.rounds):
            starts.append(start_up())
            for name, (provider, ranges, folder, _) in cases.items():
                out = os.path.join(work, "out")
                shutil.rmtree(out, ignore_errors=True)
                seconds, cpu, inside = run_jobs([provider.job(folder, out, r, args.per_shard) for r in ranges])
                times[name].append(seconds)
                insides[name].append(inside)
                cpus[name].append(cpu)
                prints[name] = fingerprints(out)
        checked, decode_rows = decode_check(os.path.join(shards, sorted(os.listdir(shards))[0]))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{samples} samples ({args.shards} shards x {args.per_shard}, {args.resolution} px JPEG), {parts} parts; "
          f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at the end; median of {args.rounds} "
          f"round(s)")
    print("| case | s | rounds s | samples/s | after start-up s | samples/s after start-up | CPU s |")
    print("|---|---:|---|---:|---:|---:|---:|")
    rate, rate_inside = {}, {}
    for name, values in times.items():
        median, inside, count = statistics.median(values), statistics.median(insides[name]), cases[name][3]
        rate[name], rate_inside[name] = count / median, count / inside if inside else float("nan")  # < 0.05 s
        print(f"| {name} | {median:.1f} | {', '.join(f'{v:.1f}' for v in values)} | {rate[name]:.0f} | {inside:.1f} | "
              f"{rate_inside[name]:.0f} | {statistics.median(cpus[name]):.1f} |")
    for label, num, den in (("passthrough vs re-encode, 1 process", "passthrough, 1 process", "re-encode, 1 process"),
                            ("index vs re-encode, 1 process", "index, 1 process", "re-encode, 1 process"),
                            ("index vs passthrough, 1 process", "index, 1 process", "passthrough, 1 process"),
                            ("2 processes vs 1, passthrough", "passthrough, 2 processes (--part-range)",
                             "passthrough, 1 process"),
                            ("2 processes vs 1, index", "index, 2 processes (--part-range)", "index, 1 process"),
                            (f"2 processes vs 1, index of {samples * args.index_copies} samples",
                             f"index, 2 processes (--part-range), {samples * args.index_copies} samples",
                             f"index, 1 process, {samples * args.index_copies} samples")):
        if num not in rate:
            continue
        print(f"{label}: {rate[num] / rate[den]:.2f}x ({rate_inside[num] / rate_inside[den]:.2f}x after start-up)")
    help_s, import_s = (statistics.median(column) for column in zip(*starts))
    print(f"start-up of one process: `data clip --help` {help_s:.2f} s, importing the writers and the tokenizer "
          f"{import_s:.2f} s (medians)")
    print(f"tokenizing a caption: {tokenize_cost():.0f} us of CPU; the index stores the tokens (308 bytes a sample "
          f"at 77 tokens) so that no loader pays this per sample, every epoch")
    print(f"row check of {checked} passthrough JPEGs, and of as many broken copies of each kind:")
    print("| check | ms per JPEG | " + " | ".join(f"{kind} found" for kind in decode_rows[0][2]) + " |")
    print("|---|---:|" + "---:|" * len(decode_rows[0][2]))
    for name, ms, found in decode_rows:
        print(f"| {name} | {ms:.2f} | " + " | ".join(str(n) for n in found.values()) + " |")
    pairs = [(f"{p.name}, 1 process", f"{p.name}, 2 processes (--part-range)") for p in PROVIDERS if p.parallel]
    if args.index_copies > 1:
        big = samples * args.index_copies
        pairs.append((f"index, 1 process, {big} samples", f"index, 2 processes (--part-range), {big} samples"))
    same = all(prints[one] == prints[two] for one, two in pairs)
    print(f"2-process folders equal to the 1-process ones (parts' fingerprints, rows' digests): {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
