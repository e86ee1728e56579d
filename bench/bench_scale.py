"""Benchmark one rank's view of a pruned epoch at scale: shards from the kept bitset vs the full-list path.

Cases, each in a fresh process (peak MiB = peak RSS above the RSS when the case starts;
the peak is reset through /proc/self/clear_refs, so untimed set-up does not count):

- `list`:  one rank of W as the loaders read before shards: `epoch_indices()` (the sorted
           kept list), a (seed, epoch) numpy permutation of it, the rank's strided slice and
           its uint64 copy for FFCV.
- `shard`: the same rank's ids from `epoch_shard(epoch, rank, W)` (no global list or permutation).
  Both on the first mutation epoch of a Scan (a quarter of the candidates pruned), after an
  untimed preparation epoch over random losses; both include drawing the epoch's prune set.
- `cycle`: a whole SCAN cycle as one rank of W sees it, through shards: the preparation epoch
           (the rank holds its shard of all ids while the schedule observes every rank's
           batches: consecutive slices of arange(N), W x b ids each, with random losses), then
           the t_cos = 3 mutation epochs (the rank's shard each). The peak covers everything
           from creating the schedule: bitsets, rank directory, shards, batch scratch.

- `infobatch`, `seta`, `random`: the baselines as one rank of W holds them over two epochs: the
           schedule created, epoch 0 read by shards while it observes every id's loss (batches of 2^20
           ids, random losses; `random` observes nothing), then the pruned epoch 1's shard (InfoBatch:
           half its below-mean ids; SeTa: ratio 0.3 and its cluster window; random: a quarter of N).
           The peak covers everything from creating the schedule (its per-id scores included).

- `scan-epoch-end`: the end of a ScanEpoch preparation epoch that finds a wrong-pair mode (20% of the losses
           log-normal around 6, the rest around 1), as one rank holding every id's code (W = 1: the largest
           block): the cut, the block's ILL and RED sets, the candidates. The peak counts from after the
           epoch's observations (the codes, one byte an id, are already held) to the end.

    python bench/bench_scale.py                         # N = 1e9, W = 64 (needs about 9 GB free for `list`)
    python bench/bench_scale.py --sizes 1e8 --cases infobatch,seta,random
    python bench/bench_scale.py --sizes 1e8 --world-size 64
    python bench/bench_scale.py --sizes 1e7,1e8 --cases scan-epoch-end
"""
import argparse
import json
import os
import subprocess
import sys
import time

T_COS = 3
PREPARATION_EPOCH = 2
LOSS_POOL = 16
MIB = 2**20


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _start_peak() -> int:
    """Reset the peak RSS to the current RSS (Linux >= 4.0) and return it in bytes."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    return _rss_kib("VmRSS") * 1024


def _peak_above(baseline: int) -> float:
    return (_rss_kib("VmHWM") * 1024 - baseline) / MIB


def _loss_pool(batch, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    return [(rng.random(batch, dtype=np.float32), rng.random(batch, dtype=np.float32)) for _ in range(LOSS_POOL)]


def _observe_epoch(scan, num_samples, batch, pool):
    """The preparation epoch's batches: consecutive slices of arange(N) with random losses; then its end."""
    import numpy as np

    for number, first in enumerate(range(0, num_samples, batch)):
        last = min(first + batch, num_samples)
        loss_a, loss_b = pool[number % LOSS_POOL]
        scan.observe(np.arange(first, last, dtype=np.int64), loss_a[:last - first], loss_b[:last - first])
    scan.end_epoch(PREPARATION_EPOCH, 1.0)


def _warm_up(scan, world_size, seed):
    """Epochs 0-1 read by shards and ended with equal losses (no drop): epoch 2 prepares."""
    for epoch in range(PREPARATION_EPOCH):
        scan.epoch_shard(epoch, 0, world_size, seed)
        scan.end_epoch(epoch, 1.0)


def _infobatch(num_samples, seed):
    from scan_fast.schedule.infobatch import InfoBatch

    return InfoBatch(num_samples, num_epochs=8, prune_ratio=0.5, seed=seed)


def _seta(num_samples, seed):
    from scan_fast.schedule.seta import SeTa

    return SeTa(num_samples, num_epochs=8, ratio=0.3, seed=seed)


def _random(num_samples, seed):
    from scan_fast.schedule.random_pruning import RandomPruning

    return RandomPruning(num_samples, prune_counts={1: num_samples // 4}, seed=seed)


BASELINES = {"infobatch": _infobatch, "seta": _seta, "random": _random}


def _wrong_pair_pool(batch, seed):
    """Batches of losses with a wrong-pair mode: 20% log-normal around 6, the rest around 1."""
    import numpy as np

    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(LOSS_POOL):
        centre = np.where(rng.random(batch) < 0.2, np.log(6.0), 0.0)
        pool.append(tuple(np.exp(centre + 0.3 * rng.standard_normal(batch)).astype(np.float32) for _ in range(2)))
    return pool


def _observe_all(schedule, num_samples, batch, pool):
    """Every id's loss once (as each rank observes the gathered losses of all ranks), a batch at a time."""
    import numpy as np

    for number, first in enumerate(range(0, num_samples, batch)):
        last = min(first + batch, num_samples)
        loss_a, loss_b = pool[number % LOSS_POOL]
        schedule.observe(np.arange(first, last, dtype=np.int64), loss_a[:last - first], loss_b[:last - first])


def full_list_shard(scan, epoch, seed, rank, world_size):
    """The loaders' path before shards (one rank of W): the kept list, a permutation, a strided slice, uint64."""
    import numpy as np

    kept = scan.epoch_indices(epoch)
    order = np.random.default_rng([seed, epoch]).permutation(kept)
    total = len(order) // world_size * world_size
    return order[rank:total:world_size].astype(np.uint64)


def run_case(case, num_samples, world_size, local_batch, seed) -> dict:
    from scan_fast.schedule import Scan

    epoch = PREPARATION_EPOCH + 1
    if case in ("list", "shard"):
        pool = _loss_pool(2**20, seed)
        scan = Scan(num_samples, seed=seed)
        _warm_up(scan, world_size, seed)
        scan.epoch_kept_set(PREPARATION_EPOCH)
        _observe_epoch(scan, num_samples, 2**20, pool)  # untimed
        del pool
        baseline = _start_peak()
        start = time.perf_counter()
        if case == "list":
            ids = full_list_shard(scan, epoch, seed, 0, world_size)
        else:
            ids = scan.epoch_shard(epoch, 0, world_size, seed)
        seconds = time.perf_counter() - start
        return {"case": case, "num_samples": num_samples, "world_size": world_size, "seconds": seconds,
                "peak_mb": _peak_above(baseline), "ids_mb": ids.nbytes / MIB, "ids": len(ids),
                "kept": len(scan.epoch_kept_set(epoch))}
    if case in BASELINES:
        pool = _loss_pool(2**20, seed)
        baseline = _start_peak()
        start = time.perf_counter()
        schedule = BASELINES[case](num_samples, seed)
        schedule.epoch_shard(0, 0, world_size, seed)
        if case != "random":
            _observe_all(schedule, num_samples, 2**20, pool)
        schedule.end_epoch(0, 1.0)
        ids = schedule.epoch_shard(1, 0, world_size, seed)
        kept = len(schedule.epoch_kept_set(1))
        return {"case": case, "num_samples": num_samples, "world_size": world_size,
                "seconds": time.perf_counter() - start, "peak_mb": _peak_above(baseline), "ids_mb": ids.nbytes / MIB,
                "kept": kept}
    if case == "scan-epoch-end":
        from scan_fast.schedule.scan_epoch import ScanEpoch

        pool = _wrong_pair_pool(2**20, seed)
        schedule = ScanEpoch(num_samples, seed=seed)
        _warm_up(schedule, 1, seed)
        schedule.epoch_kept_set(PREPARATION_EPOCH)
        _observe_all(schedule, num_samples, 2**20, pool)  # untimed: the epoch's codes
        del pool
        baseline = _start_peak()
        start = time.perf_counter()
        schedule.end_epoch(PREPARATION_EPOCH, 1.0)
        seconds = time.perf_counter() - start
        assert not schedule.paper_cycle(), "the losses were meant to show a wrong-pair mode"
        ill = schedule.candidates("ill_matched")
        return {"case": case, "num_samples": num_samples, "world_size": 1, "seconds": seconds,
                "peak_mb": _peak_above(baseline), "ids_mb": ill.nbytes / MIB, "ill": len(ill)}
    if case == "cycle":
        batch = local_batch * world_size
        pool = _loss_pool(batch, seed)
        baseline = _start_peak()
        start = time.perf_counter()
        scan = Scan(num_samples, seed=seed)
        _warm_up(scan, world_size, seed)
        held = scan.epoch_shard(PREPARATION_EPOCH, 0, world_size, seed)  # the rank's ids, held for the epoch
        _observe_epoch(scan, num_samples, batch, pool)
        largest = held.nbytes
        del held
        prepared = time.perf_counter()
        kept = []
        for e in range(PREPARATION_EPOCH + 1, PREPARATION_EPOCH + 1 + T_COS):
            ids = scan.epoch_shard(e, 0, world_size, seed)
            largest = max(largest, ids.nbytes)
            kept.append(len(scan.epoch_kept_set(e)))
            scan.end_epoch(e, 1.0)
            del ids
        done = time.perf_counter()
        return {"case": case, "num_samples": num_samples, "world_size": world_size, "seconds": done - start,
                "prepare_s": prepared - start, "mutate_s": done - prepared, "peak_mb": _peak_above(baseline),
                "ids_mb": largest / MIB, "kept": kept}
    raise ValueError(f"unknown case {case!r}")


def _run_worker(case, num_samples, args) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--worker", case, str(num_samples),
               "--world-size", str(args.world_size), "--local-batch", str(args.local_batch), "--seed", str(args.seed)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{case} at N={num_samples} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _format_table(rows) -> str:
    header = ["N", "W", "case", "s", "peak MiB", "ids MiB", "time ratio", "mem ratio"]
    lists = {row["num_samples"]: row for row in rows if row["case"] == "list"}
    lines = []
    for row in rows:
        ratios = ["", ""]
        reference = lists.get(row["num_samples"])
        if reference is not None and row["case"] == "shard":
            ratios = [f"{reference['seconds'] / row['seconds']:.1f}x",
                      f"{reference['peak_mb'] / max(row['peak_mb'], 1e-9):.1f}x"]
        lines.append([f"{row['num_samples']:,}", str(row["world_size"]), row["case"], f"{row['seconds']:.2f}",
                      f"{row['peak_mb']:.0f}", f"{row['ids_mb']:.0f}", *ratios])
    widths = [max(len(x) for x in column) for column in zip(header, *lines)]
    out = ["  ".join(h.rjust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1e9", help="comma-separated N (default 1e9)")
    parser.add_argument("--cases", default="list,shard,cycle",
                        help="comma-separated: list, shard, cycle, infobatch, seta, random, scan-epoch-end")
    parser.add_argument("--world-size", type=int, default=64, help="W: the rank measured is rank 0 of W")
    parser.add_argument("--local-batch", type=int, default=64, help="b: ids per rank and step (cycle case)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per case")
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_case(args.worker[0], int(args.worker[1]), args.world_size, args.local_batch, args.seed)))
        return 0
    rows = []
    for num_samples in (int(float(x)) for x in args.sizes.split(",")):
        for case in args.cases.split(","):
            rows.append(_run_worker(case, num_samples, args))
            print(f"  done: {case} N={num_samples:,}: {json.dumps(rows[-1])}", file=sys.stderr)
    print(f"One rank (0 of W) of a pruned epoch; peak MiB = peak RSS above the RSS at the case's start; "
          f"cycle = preparation (global batch {args.local_batch} x W) + {T_COS} mutation epochs through shards")
    print(_format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
