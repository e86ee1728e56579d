"""GPU benchmark of the per-sample CLIP loss kernel against the materialised reference and open_clip.

    python bench/bench_kernels_gpu.py --out-dir results/          # on a CUDA machine
    python bench/bench_kernels_gpu.py --smoke                     # tiny shapes, CPU + Triton interpreter

For each (B, D, dtype) and provider (reference = scan_fast.ops' materialised oracle,
open_clip = open_clip.loss.ClipLoss, scan_fast = the Triton ClipLossFunction), times the mean
loss forward, backward and forward + backward with triton.testing.do_bench (p50/p20/p80 ms),
measures the peak extra memory of forward + backward, and prints one table with the ratios
against open_clip measured in the same run and against the 8 B^2 D FLOP floor at the GPU's
dense peak. Writes results.json and results.md into --out-dir when given.
"""
import argparse
import gc
import json
import os
import sys
import time
from datetime import datetime, timezone

import torch
import torch.nn.functional as F

# Dense tensor-core peaks (TFLOP/s) for the 8 B^2 D floor; --peak-tflops overrides.
_PEAK_TFLOPS = {  # name substring -> {dtype: peak}
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp32": 378.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 494.0},
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 494.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0},
}
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_QUANTILES = [0.5, 0.2, 0.8]
_MODES = ("forward", "backward", "full")


def peak_tflops(gpu_name: str, dtype: str, override):
    if override:
        return override
    for key, peaks in _PEAK_TFLOPS.items():  # "H100 PCIe" is listed before "H100"
        if key in gpu_name:
            return peaks[dtype]
    return None


def setup(provider: str, batch: int, dim: int, dtype: torch.dtype, device: str):
    """(inputs, loss_fn): normalised features and a scale that all require grad, and the mean loss.

    Seeded per shape, so every provider sees the same features (their losses are compared).
    """
    torch.manual_seed(batch * 7919 + dim)
    image = F.normalize(torch.randn(batch, dim, device=device), dim=1).to(dtype).requires_grad_()
    text = F.normalize(torch.randn(batch, dim, device=device), dim=1).to(dtype).requires_grad_()
    scale = torch.tensor(1 / 0.07, device=device, requires_grad=True)
    if provider == "reference":
        from scan_fast.ops.clip_loss import clip_loss_per_sample_reference

        def loss_fn():
            loss_i2t, loss_t2i = clip_loss_per_sample_reference(image, text, scale)
            return (loss_i2t.mean() + loss_t2i.mean()) / 2
    elif provider == "open_clip":
        from open_clip.loss import ClipLoss

        open_clip_loss = ClipLoss()

        def loss_fn():
            return open_clip_loss(image, text, scale)
    elif provider == "scan_fast":
        from scan_fast.kernels.clip_loss import ClipLossFunction

        def loss_fn():
            loss_i2t, loss_t2i = ClipLossFunction.apply(image, text, scale)
            return (loss_i2t.mean() + loss_t2i.mean()) / 2
    else:
        raise ValueError(f"unknown provider {provider!r}")
    return (image, text, scale), loss_fn


def time_ms(fn, device: str):
    """(p50, p20, p80) in ms: do_bench on CUDA, a plain timed loop otherwise (smoke runs)."""
    if device == "cuda":
        import triton.testing

        return tuple(triton.testing.do_bench(fn, quantiles=_QUANTILES, warmup=10, rep=60))
    fn()
    samples = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    return samples[1], samples[0], samples[-1]


def measure(provider: str, batch: int, dim: int, dtype_name: str, device: str):
    """Rows for the three modes of one provider and shape, plus its scalar loss (for a sanity diff)."""
    inputs, loss_fn = setup(provider, batch, dim, _DTYPES[dtype_name], device)
    rows = []
    loss_value = float(loss_fn().detach())
    torch.autograd.grad(loss_fn(), inputs)  # warm-up: autotuning allocates its own flush buffer
    # Peak extra memory of forward + backward, above the inputs themselves.
    peak_mb = None
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        torch.autograd.grad(loss_fn(), inputs)
        torch.cuda.synchronize()
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    loss = loss_fn()
    fns = {
        "forward": loss_fn,
        "backward": lambda: torch.autograd.grad(loss, inputs, retain_graph=True),
        "full": lambda: torch.autograd.grad(loss_fn(), inputs),
    }
    for mode in _MODES:
        p50, p20, p80 = time_ms(fns[mode], device)
        rows.append(dict(provider=provider, mode=mode, B=batch, D=dim, dtype=dtype_name,
                         p50_ms=p50, p20_ms=p20, p80_ms=p80, peak_mb=peak_mb if mode == "full" else None))
    del loss, fns, inputs
    return rows, loss_value


def run(args, save=None):
    """All shapes and providers; `save(result)` after each shape keeps partial results on a timeout."""
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_kernels_gpu.py needs a CUDA GPU (use --smoke for a CPU check of the script)")
    gpu_name = torch.cuda.get_device_name() if device == "cuda" else "cpu (Triton interpreter)"
    rows, notes = [], []
    for dtype_name in args.dtypes:
        peak = peak_tflops(gpu_name, dtype_name, args.peak_tflops)
        for dim in args.dims:
            for batch in args.batch_sizes:
                losses = {}
                for provider in args.providers:
                    try:
                        new_rows, losses[provider] = measure(provider, batch, dim, dtype_name, device)
                    except torch.cuda.OutOfMemoryError:
                        new_rows = [dict(provider=provider, mode=m, B=batch, D=dim, dtype=dtype_name, oom=True)
                                    for m in _MODES]
                    except ImportError as error:  # e.g. open_clip not installed on this machine
                        notes.append(f"{provider} skipped: {error}")
                        continue
                    finally:
                        gc.collect()
                        if device == "cuda":
                            torch.cuda.empty_cache()
                    rows.extend(new_rows)
                if "open_clip" in losses and "scan_fast" in losses:
                    notes.append(f"B={batch} D={dim} {dtype_name}: |scan_fast - open_clip| mean loss = "
                                 f"{abs(losses['scan_fast'] - losses['open_clip']):.3g}")
                floor_ms = 8 * batch**2 * dim / (peak * 1e12) * 1e3 if peak else None
                _add_ratios(rows, batch, dim, dtype_name, floor_ms)
                result = dict(gpu_name=gpu_name, torch=torch.__version__, triton=_triton_version(),
                              timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              autotune=os.environ.get("SCAN_FAST_AUTOTUNE", "1"), rows=rows,
                              notes=sorted(set(notes)))
                if save is not None:
                    save(result)
    return result


def _add_ratios(rows, batch, dim, dtype_name, floor_ms):
    shape_rows = [r for r in rows if (r["B"], r["D"], r["dtype"]) == (batch, dim, dtype_name)]
    baseline = {r["mode"]: r for r in shape_rows if r["provider"] == "open_clip" and not r.get("oom")}
    for row in shape_rows:
        if row.get("oom"):
            continue
        base = baseline.get(row["mode"])
        row["time_vs_open_clip"] = row["p50_ms"] / base["p50_ms"] if base else None
        if row["peak_mb"] is not None and base and base.get("peak_mb"):
            row["mem_vs_open_clip"] = row["peak_mb"] / base["peak_mb"]
        if row["mode"] == "full" and floor_ms:
            row["floor_ms"] = floor_ms
            row["x_floor"] = row["p50_ms"] / floor_ms


def _triton_version():
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def markdown(result) -> str:
    lines = [f"GPU: {result['gpu_name']} | torch {result['torch']} | triton {result['triton']} | "
             f"{result['timestamp']} | autotune={result['autotune']}", "",
             "| provider | mode | B | D | dtype | p50 ms | p20 ms | p80 ms | peak MB | x open_clip time "
             "| x open_clip mem | x 8B^2D floor |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r.get("oom"):
            lines.append(f"| {r['provider']} | {r['mode']} | {r['B']} | {r['D']} | {r['dtype']} | OOM |"
                         " | | | | | |")
            continue
        lines.append(
            f"| {r['provider']} | {r['mode']} | {r['B']} | {r['D']} | {r['dtype']} | {r['p50_ms']:.3f} | "
            f"{r['p20_ms']:.3f} | {r['p80_ms']:.3f} | {_fmt(r['peak_mb'], '.0f')} | "
            f"{_fmt(r.get('time_vs_open_clip'), '.2f')} | {_fmt(r.get('mem_vs_open_clip'), '.3f')} | "
            f"{_fmt(r.get('x_floor'), '.2f')} |")
    lines += [""] + [f"- {note}" for note in result["notes"]]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4096, 16384, 32768, 65536])
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--dtypes", nargs="+", choices=sorted(_DTYPES), default=["bf16"])
    parser.add_argument("--providers", nargs="+", default=["reference", "open_clip", "scan_fast"],
                        choices=["reference", "open_clip", "scan_fast"])
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense peak for the FLOP floor")
    parser.add_argument("--out-dir", default=None, help="write results.json and results.md here")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU in the Triton interpreter")
    args = parser.parse_args(argv)
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before scan_fast.kernels is imported
        args.batch_sizes, args.dims, args.dtypes = [64, 130], [32], ["fp32"]
    return args


def save_to(out_dir):
    def save(result):
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            json.dump(result, f, indent=1)
        with open(os.path.join(out_dir, "results.md"), "w") as f:
            f.write(markdown(result))
    return save


def main(argv=None):
    args = parse_args(argv)
    result = run(args, save=save_to(args.out_dir) if args.out_dir else None)
    print(markdown(result))


if __name__ == "__main__":
    main()
