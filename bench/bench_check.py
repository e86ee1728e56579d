"""Benchmark the image half of `scan-fast data check`: every stored JPEG of a part folder decoded,
serial and with worker threads, in samples/s, measured side by side in one run.

    python bench/bench_check.py                      # 4000 shapes samples at 128 px, parts of 1000
    python bench/bench_check.py --samples 20000 --resolution 224 --workers 1,2,4
"""
import argparse
import sys
import tempfile
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--resolution", type=int, default=128, help="stored image side (JPEG)")
    parser.add_argument("--samples-per-part", type=int, default=1000)
    parser.add_argument("--workers", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per count")
    args = parser.parse_args(argv)

    from scan_fast.data import write_shapes
    from scan_fast.data.dataset import open_dataset
    from scan_fast.data.read.image_check import check_images

    with tempfile.TemporaryDirectory(prefix="bench_check.") as scratch:
        folder = f"{scratch}/parts"
        write_shapes(folder, num_samples=args.samples, resolution=args.resolution, context_length=16,
                     progress=False, samples_per_part=args.samples_per_part)
        dataset = open_dataset(folder, progress=False)
        check_images(dataset, workers=1, batch_size=16)  # compile, map the parts: untimed
        rates = {}
        for workers in (int(w) for w in args.workers.split(",")):
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                problems = check_images(dataset, workers=workers)
                best = min(best, time.perf_counter() - start)
                assert problems == [], problems
            rates[workers] = args.samples / best
        dataset.close()
    serial = rates.get(1)
    print(f"data check decode, {args.samples} JPEGs of {args.resolution} px in parts of {args.samples_per_part} "
          f"(best of {args.repeats})")
    for workers, rate in rates.items():
        ratio = f"  {rate / serial:.2f}x serial" if serial and workers != 1 else ""
        print(f"  {workers} worker(s): {rate:,.0f} samples/s{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
