"""Benchmark the index engine (scan_fast.index) against plain references, op by op.

Providers, measured in the same run:
  python-set  Python set / random.sample, what the public SCAN code does (N <= 10M);
  numpy-mask  a numpy bool mask per set (np.flatnonzero, Generator.choice);
  scan_fast   SampleSet / batch_candidates (C++).
Ops: the per-batch candidate rule at B=4096 (reference: scan_fast.schedule.candidates.
batch_candidates_reference) on losses whose directions mostly agree and on independent ones
(a keyed top-up in both kinds of every batch), `Scan.observe` of one such 4096 batch in a
preparation epoch at N = 2M (reference: ScanReference, Python sets), add of one batch's candidates (2867 random ids), sample of
25% of a set holding 70% of N, complement of that sample (the mutation epoch's order), and
the byte round trip. Per-call ops run on a pool of 64 fresh batches, so no branch
predictor learns one batch. Times are wall p50 (p20, p80) over repeats and the median
process CPU time (all threads; on a shared machine wall time includes waiting for a
core); `x ref` is the wall p50 of python-set (or numpy-mask where the set does not fit)
over ours.
A last table times one mutation epoch (sample + complement) at the largest N, each
provider in a fresh process, with its peak RSS (VmHWM) and the size of the id array.

    python bench/bench_index.py                 # N = 1e7 and 1e9 (~3 min, ~8 GB peak)
    python bench/bench_index.py --sizes 1e7     # quick
    python bench/bench_index.py --candidates-only   # the per-batch rows alone (~1 min)
"""
import argparse
import json
import pickle
import random
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

from scan_fast.index import SampleSet, batch_candidates
from scan_fast.schedule import Scan, ScanReference
from scan_fast.schedule.candidates import batch_candidates_reference

B = 4096
RHO = 0.35
POOL = 64
SET_LIMIT = 10_000_000  # python-set beyond this takes minutes and tens of GB
MASK_LIMIT = 100_000_000  # numpy-mask sample/complement need 8 bytes per candidate id beyond this
CHUNK = 1 << 24


def _random_members(n, fraction, rng):
    """A bool mask and a SampleSet with each id in with probability `fraction` (chunked)."""
    mask = np.zeros(n, dtype=bool)
    ours = SampleSet(n)
    for start in range(0, n, CHUNK):
        part = rng.random(min(CHUNK, n - start)) < fraction
        mask[start:start + part.size] = part
        ours.add(np.flatnonzero(part).astype(np.int64) + start)
    return mask, ours


def _quantiles(seconds):
    if len(seconds) < 5:  # too few for deciles: report the range
        return statistics.median(seconds), min(seconds), max(seconds)
    q = statistics.quantiles(seconds, n=10)
    return statistics.median(seconds), q[1], q[7]


def _time(fn, repeats, calls=1):
    """Wall-clock quantiles, plus the median CPU time of the process (all threads)."""
    wall, cpu = [], []
    for r in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        for i in range(calls):
            fn(i)
        wall.append((time.perf_counter() - start) / calls)
        cpu.append((time.process_time() - start_cpu) / calls)
    return (*_quantiles(wall), statistics.median(cpu))


def _losses(rng, independent=False):
    """POOL batches of both directions' losses: two noisy copies of one loss (the directions
    mostly agree, so the top-up is rare), or two independent draws (a top-up in every batch)."""
    if independent:
        return rng.random((POOL, B), dtype=np.float32), rng.random((POOL, B), dtype=np.float32)
    base = np.exp(rng.standard_normal((POOL, B))).astype(np.float32)
    noise = lambda: (1 + 0.5 * rng.random((POOL, B), dtype=np.float32))  # noqa: E731
    return base * noise(), base * noise()


def _preparing(schedule_type, n):
    """A schedule of n samples inside its first preparation epoch (equal losses end warm-up)."""
    schedule = schedule_type(n, t_cos=3, seed=0)
    epoch = 0
    while not schedule.needs_losses(epoch):
        schedule.epoch_kept_set(epoch)
        schedule.end_epoch(epoch, 1.0)
        epoch += 1
    schedule.epoch_kept_set(epoch)
    return schedule


def bench_candidates(rng):
    k = int(B * RHO)
    rows = []
    for label, independent in (("candidates agree", False), ("candidates top-up", True)):
        a, b = _losses(rng, independent)
        ours = _time(lambda i: batch_candidates(a[i % POOL], b[i % POOL], k_ill=k, k_red=k, seed=0, stream=i),
                     7, 2000)
        ref = _time(lambda i: batch_candidates_reference(a[i % POOL], b[i % POOL], k_ill=k, k_red=k, seed=0,
                                                         stream=i), 5, 100)
        rows.append((label, B, "reference", ref, None))
        rows.append((label, B, "scan_fast", ours, ref))
    # Scan.observe of one 4096 batch in a preparation epoch (checks, rule, ids into two bitsets),
    # against ScanReference (Python sets, as the public code); independent losses: top-ups always.
    n = 2_000_000
    ids = [np.arange(j * B, (j + 1) * B, dtype=np.int64) for j in range(POOL)]
    for provider, schedule_type, repeats, calls in (("python-set", ScanReference, 5, 50), ("scan_fast", Scan, 7, 1000)):
        schedule = _preparing(schedule_type, n)
        timing = _time(lambda i: schedule.observe(ids[i % POOL], a[i % POOL], b[i % POOL]), repeats, calls)
        rows.append(("Scan.observe", n, provider, timing, rows[-1][3] if provider == "scan_fast" else None))
    return rows


def bench_sets(n, rng):
    rows = []
    per_batch = int(2 * B * RHO)
    batches = rng.integers(0, n, (POOL, per_batch), dtype=np.int64)
    mask, ours_set = _random_members(n, 0.7, rng)
    k = len(ours_set) // 4
    py = set(np.flatnonzero(mask).tolist()) if n <= SET_LIMIT else None

    def row(op, provider, timing, ref):
        rows.append((op, n, provider, timing, ref))

    # add: one batch of candidate ids into a set that already holds 70% of N.
    ref = None
    if py is not None:
        ref = _time(lambda i: py.update(batches[i % POOL].tolist()), 5, 200)
        row("add (2867 ids)", "python-set", ref, None)
    npm = _time(lambda i: mask.__setitem__(batches[i % POOL], True), 5, 200)
    row("add (2867 ids)", "numpy-mask", npm, None)
    row("add (2867 ids)", "scan_fast", _time(lambda i: ours_set.add(batches[i % POOL]), 7, 2000), ref or npm)

    # sample 25% of the members; then the complement of the sample (epoch order).
    repeats = 3 if n <= SET_LIMIT else 2
    ref = None
    if py is not None:
        ref = _time(lambda i: set(random.sample(list(py), k)), repeats)
        row("sample (25%)", "python-set", ref, None)
    gen = np.random.default_rng(0)

    def numpy_sample(i):
        picked = np.zeros(n, dtype=bool)
        picked[gen.choice(np.flatnonzero(mask), k, replace=False)] = True
        return picked

    npm = None
    if n <= MASK_LIMIT:
        npm = _time(numpy_sample, repeats)
        row("sample (25%)", "numpy-mask", npm, None)
    row("sample (25%)", "scan_fast", _time(lambda i: ours_set.sample(k, 1, i), repeats + 2), ref or npm)

    pruned = ours_set.sample(k, 1, 0)
    ref = None
    if py is not None:
        pruned_py = set(pruned.to_array().tolist())
        ref = _time(lambda i: [j for j in range(n) if j not in pruned_py], repeats)
        row("complement", "python-set", ref, None)
    npm = None
    if n <= MASK_LIMIT:
        pruned_mask = np.zeros(n, dtype=bool)
        pruned_mask[pruned.to_array()] = True
        npm = _time(lambda i: np.flatnonzero(~pruned_mask), repeats)
        row("complement", "numpy-mask", npm, None)
        del pruned_mask
    row("complement", "scan_fast", _time(lambda i: pruned.complement(), repeats + 2), ref or npm)

    ref = None
    if py is not None:
        ref = _time(lambda i: pickle.loads(pickle.dumps(py, protocol=5)), repeats)
        row("bytes round trip", "python-set", ref, None)
    npm = _time(lambda i: np.unpackbits(np.frombuffer(np.packbits(mask).tobytes(), np.uint8), count=n).view(bool),
                repeats)
    row("bytes round trip", "numpy-mask", npm, None)
    row("bytes round trip", "scan_fast", _time(lambda i: SampleSet.from_bytes(ours_set.to_bytes()), repeats + 2),
        ref or npm)
    return rows


def _peak_rss_mb():
    """VmHWM of this process image (ru_maxrss would carry the parent's peak across exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _mutation_epoch_child(provider, n):
    """Build a 70% candidate set, sample 25% of it, take the complement; print peak RSS."""
    rng = np.random.default_rng(0)
    before = _peak_rss_mb()
    start = time.perf_counter()
    if provider == "scan_fast":
        s = SampleSet(n)
        for lo in range(0, n, CHUNK):
            s.add(np.flatnonzero(rng.random(min(CHUNK, n - lo)) < 0.7).astype(np.int64) + lo)
        built = time.perf_counter()
        order = s.sample(len(s) // 4, 1, 0).complement()
    else:
        mask = np.zeros(n, dtype=bool)
        for lo in range(0, n, CHUNK):
            mask[lo:lo + CHUNK] = rng.random(min(CHUNK, n - lo)) < 0.7
        built = time.perf_counter()
        candidates = np.flatnonzero(mask)
        pruned = np.zeros(n, dtype=bool)
        pruned[np.random.default_rng(1).choice(candidates, len(candidates) // 4, replace=False)] = True
        del candidates
        order = np.flatnonzero(~pruned)
    seconds = time.perf_counter() - built
    peak = _peak_rss_mb()
    print(json.dumps({"build_seconds": built - start, "seconds": seconds, "peak_mb": peak, "above_start_mb": peak - before,
                      "order_mb": order.nbytes / 2**20}))


def _fmt(t):
    p50, p20, p80, cpu = (x * 1e3 for x in t)
    return f"{p50:10.3f} ({p20:.3f}, {p80:.3f}) {cpu:10.3f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1e7,1e9", help="comma-separated N values")
    parser.add_argument("--candidates-only", action="store_true",
                        help="only the per-batch rows (batch_candidates, Scan.observe): seconds, not minutes")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _mutation_epoch_child(args.child[0], int(float(args.child[1])))
        return
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    rng = np.random.default_rng(0)
    rows = bench_candidates(rng)
    for n in [] if args.candidates_only else sizes:
        rows += bench_sets(n, rng)
    print(f"{'op':<18} {'N':>13} {'provider':<11} {'wall p50 ms (p20, p80)':>30} {'cpu ms':>10} {'x ref':>8}")
    for op, n, provider, timing, ref in rows:
        ratio = f"{ref[0] / timing[0]:8.1f}" if ref is not None else ""
        print(f"{op:<18} {n:>13,} {provider:<11} {_fmt(timing):>41} {ratio}")
    if args.candidates_only:
        return

    n = max(sizes)
    print(f"\nmutation epoch at N={n:,}: sample 25% of a 70% set, complement; fresh process each")
    print(f"{'provider':<11} {'build s':>8} {'sample+complement s':>20} {'peak RSS MB':>12} {'above start MB':>15} "
          f"{'order array MB':>15}")
    for provider in ("numpy-mask", "scan_fast"):
        if provider == "numpy-mask" and n > MASK_LIMIT:
            print(f"{provider:<11} skipped: needs ~{n * 8 * 3 // 2**30} GB beyond {MASK_LIMIT:,} samples")
            continue
        out = subprocess.run([sys.executable, __file__, "--child", provider, str(n)], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{provider:<11} failed: {out.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(out.stdout)
        print(f"{provider:<11} {r['build_seconds']:8.2f} {r['seconds']:20.2f} {r['peak_mb']:12.0f} "
              f"{r['above_start_mb']:15.0f} {r['order_mb']:15.0f}")


if __name__ == "__main__":
    main()
