"""Benchmark one SCAN cycle: Scan (C++ index engine) against ScanReference (Python sets).

A cycle is one preparation epoch (observe() on every batch of `--batch-size` ids with
random per-sample losses) and the t_cos = 3 mutation epochs. Each epoch is handed out
the way the loaders take it: Scan gives its kept set as a bitset (epoch_kept_set(); each
rank then computes its own shard from it, measured by bench/bench_scale.py),
ScanReference its sorted id list (epoch_indices()).
Batch ids are consecutive slices of arange(N) (`--order arange`, default) or of a
random permutation made by the engine (`--order permutation`; the permutation itself
is held before the baseline is read, so it is not counted). Losses come from a pool
of 64 pre-drawn random batches, so drawing them is not timed.

Each provider x N runs in a fresh subprocess that reports its seconds and its peak RSS
(getrusage ru_maxrss) minus the RSS it had before building the schedule (the
interpreter, numpy/torch and the loss pool). Each epoch's hand-out is held until the
epoch ends, as a data loader holds it. `ids MiB` is the largest hand-out: the id list's
bytes, or the bitset's N/8 (an upper bound: a full-data epoch's set is never written).

    python bench/bench_mutation.py                      # 1M, 10M, 100M (+ 1B with enough memory)
    python bench/bench_mutation.py --sizes 1e6,1e7 --csv bench_mutation.csv
    python bench/bench_mutation.py --sizes 1e8 --providers scan --profile
"""
import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import time

T_COS = 3
PREPARATION_EPOCH = 2  # warm-up ends after epoch 1: equal epoch losses are no drop
LOSS_POOL = 64
REFERENCE_MAX = 10_000_000
GIB = 2**30


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def run_cycle(provider: str, num_samples: int, batch_size: int, order: str, seed: int) -> dict:
    """Time one cycle in this process; returns seconds and memory above the pre-schedule RSS."""
    import numpy as np

    from scan_fast.index import SampleSet
    from scan_fast.schedule import Scan, ScanReference

    schedule_type = {"scan": Scan, "reference": ScanReference}[provider]
    rng = np.random.default_rng(seed)
    pool = [(rng.random(batch_size, dtype=np.float32), rng.random(batch_size, dtype=np.float32))
            for _ in range(LOSS_POOL)]
    permutation = SampleSet(num_samples).shuffled_complement(seed, 0) if order == "permutation" else None
    baseline = _peak_rss_bytes()

    schedule = schedule_type(num_samples, t_cos=T_COS, seed=seed)
    hand_out = schedule.epoch_kept_set if provider == "scan" else schedule.epoch_indices

    def size_of(kept):
        return kept.nbytes if isinstance(kept, np.ndarray) else -(-kept.num_samples // 8)

    largest_ids = 0
    for epoch in range(PREPARATION_EPOCH):  # warm-up, not timed
        largest_ids = max(largest_ids, size_of(hand_out(epoch)))
        schedule.end_epoch(epoch, 1.0)

    start = time.perf_counter()
    epoch_ids = hand_out(PREPARATION_EPOCH)  # held for the epoch, as a data loader would
    largest_ids = max(largest_ids, size_of(epoch_ids))
    for number, first in enumerate(range(0, num_samples, batch_size)):
        last = min(first + batch_size, num_samples)
        ids = permutation[first:last] if permutation is not None else np.arange(first, last, dtype=np.int64)
        loss_a, loss_b = pool[number % LOSS_POOL]
        schedule.observe(ids, loss_a[:last - first], loss_b[:last - first])
    schedule.end_epoch(PREPARATION_EPOCH, 1.0)
    del epoch_ids
    prepared = time.perf_counter()
    kept = []
    for epoch in range(PREPARATION_EPOCH + 1, PREPARATION_EPOCH + 1 + T_COS):
        epoch_ids = hand_out(epoch)
        largest_ids, kept = max(largest_ids, size_of(epoch_ids)), kept + [len(epoch_ids)]
        schedule.end_epoch(epoch, 1.0)
        del epoch_ids  # the loader lets go of an epoch's ids before asking for the next
    done = time.perf_counter()
    return {"provider": provider, "num_samples": num_samples, "prepare_s": prepared - start,
            "mutate_s": done - prepared, "total_s": done - start,
            "peak_mb": (_peak_rss_bytes() - baseline) / 2**20, "ids_mb": largest_ids / 2**20,
            "candidates": schedule.stats().records[-1].candidates, "kept": kept}


def _run_worker(provider, num_samples, args) -> dict:
    """run_cycle in a fresh interpreter, so each measurement starts from the same RSS."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", provider, str(num_samples),
               "--batch-size", str(args.batch_size), "--order", args.order, "--seed", str(args.seed)]
    if args.profile:
        command.append("--profile")
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{provider} at N={num_samples} failed:\n{done.stderr[-3000:]}")
    if args.profile:
        print(done.stderr, file=sys.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _format_table(rows) -> str:
    header = ["N", "provider", "prepare s", "mutate s", "total s", "peak MiB", "ids MiB", "time ratio", "mem ratio"]
    by_size = {}
    for row in rows:
        by_size.setdefault(row["num_samples"], {})[row["provider"]] = row
    lines = []
    for row in rows:
        reference = by_size[row["num_samples"]].get("reference")
        ratios = ["", ""]
        if reference is not None and row["provider"] == "scan":
            ratios = [f"{reference['total_s'] / row['total_s']:.0f}x",
                      f"{reference['peak_mb'] / max(row['peak_mb'], 1e-9):.1f}x"]
        lines.append([f"{row['num_samples']:,}", row["provider"], f"{row['prepare_s']:.3f}", f"{row['mutate_s']:.3f}",
                      f"{row['total_s']:.3f}", f"{row['peak_mb']:.0f}", f"{row['ids_mb']:.0f}", *ratios])
    widths = [max(len(x) for x in column) for column in zip(header, *lines)]
    out = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


def _append_csv(path, rows, args) -> None:
    """Rows in Liger's benchmark CSV columns (one measurement each, so p50 = p20 = p80)."""
    columns = ["kernel_name", "kernel_provider", "kernel_operation_mode", "metric_name", "metric_unit", "x_name",
               "x_value", "y_value_50", "y_value_20", "y_value_80", "extra_benchmark_config_str", "gpu_name",
               "timestamp"]
    config = json.dumps({"batch_size": args.batch_size, "t_cos": T_COS, "order": args.order})
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    device = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    new = not os.path.exists(path)
    with open(path, "a", newline="") as file:
        writer = csv.writer(file)
        if new:
            writer.writerow(columns)
        for row in rows:
            for metric, unit, value in (("time", "s", row["total_s"]), ("memory", "MiB", row["peak_mb"])):
                writer.writerow(["scan_cycle", row["provider"], "full", metric, unit, "N", row["num_samples"],
                                 value, value, value, config, device, stamp])


def _default_sizes():
    import psutil

    sizes = [10**6, 10**7, 10**8]
    if psutil.virtual_memory().available > 12 * GIB:  # 1B: bitsets (125 MB each), with room to spare
        sizes.append(10**9)
    return sizes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", help="comma-separated N, e.g. 1e6,1e7 (default 1e6,1e7,1e8 and 1e9 if RAM allows)")
    parser.add_argument("--providers", default="reference,scan")
    parser.add_argument("--reference-max", type=float, default=REFERENCE_MAX, help="largest N for the reference")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--order", choices=["arange", "permutation"], default="arange")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per provider x N")
    parser.add_argument("--csv", help="append the results to this CSV file")
    parser.add_argument("--profile", action="store_true", help="print each worker's cProfile top functions")
    parser.add_argument("--worker", nargs=2, metavar=("PROVIDER", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        provider, num_samples = args.worker[0], int(args.worker[1])
        if args.profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            result = profiler.runcall(run_cycle, provider, num_samples, args.batch_size, args.order, args.seed)
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(12)
        else:
            result = run_cycle(provider, num_samples, args.batch_size, args.order, args.seed)
        print(json.dumps(result))
        return 0

    sizes = [int(float(x)) for x in args.sizes.split(",")] if args.sizes else _default_sizes()
    providers = args.providers.split(",")
    rows = []
    for num_samples in sizes:
        for provider in providers:
            if provider == "reference" and num_samples > args.reference_max:
                continue
            rows.append(_run_worker(provider, num_samples, args))
            print(f"  done: {provider} N={num_samples:,} in {rows[-1]['total_s']:.2f} s", file=sys.stderr)
    print(f"SCAN cycle: 1 preparation epoch (batches of {args.batch_size}, ids = {args.order} slices) "
          f"+ {T_COS} mutation epochs; peak MiB = peak RSS above the pre-schedule baseline")
    print(_format_table(rows))
    if args.csv:
        _append_csv(args.csv, rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
