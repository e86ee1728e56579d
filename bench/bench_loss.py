"""Forward + backward time and peak extra memory of the per-sample CLIP or SigLIP loss.

Providers: the materialised reference (scan_fast.ops: a naive per-sample PyTorch
version), open_clip's ClipLoss / SigLipLoss and scan_fast.ClipLoss / SigLipLoss
(--loss clip / siglip), plus the GEMM floor (the four B x B x D products any exact
forward + backward needs, in 1024-row blocks). Each provider x shape runs in a fresh process. CPU:
repeated wall-clock timings, peak RSS over the pre-call RSS. CUDA:
triton.testing.do_bench quantiles, max_memory_allocated over the inputs.

    python bench/bench_loss.py                                    # CPU, B in 1k/4k/16k, D in 512/1024
    python bench/bench_loss.py --sizes 1024 4096 16384 --dims 512
    python bench/bench_loss.py --loss siglip --sizes 1024 4096 16384 --dims 512
    python bench/bench_loss.py --device cuda --dtype bfloat16 --json out.json --csv out.csv
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

PROVIDERS = ("reference", "open_clip", "scan_fast", "gemm_floor")
BASELINE = "open_clip"
CPU_SIZES = (1024, 4096, 16384)
CUDA_SIZES = CPU_SIZES + (32768, 65536)
DIMS = (512, 1024)
LOSSES = ("clip", "siglip")


def setup(provider, batch, dim, dtype, device, loss_name="clip"):
    """A closure running one forward (+ backward) pass of `provider`, with inputs built once."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator(device=device).manual_seed(0)
    image = F.normalize(torch.randn(batch, dim, device=device, generator=generator), dim=1).to(dtype)
    text = F.normalize(torch.randn(batch, dim, device=device, generator=generator), dim=1).to(dtype)
    image.requires_grad_()
    text.requires_grad_()
    logit_scale = torch.tensor(100.0, device=device).log().requires_grad_()
    inputs = [image, text, logit_scale]

    if loss_name == "siglip" and provider != "gemm_floor":
        return _setup_siglip(provider, image, text, device)
    if provider == "reference":
        from scan_fast.ops import clip_loss_per_sample_reference

        def loss():
            loss_i2t, loss_t2i = clip_loss_per_sample_reference(image, text, logit_scale.exp())
            return (loss_i2t.mean() + loss_t2i.mean()) / 2
    elif provider == "open_clip":
        from open_clip.loss import ClipLoss

        loss_fn = ClipLoss()

        def loss():
            return loss_fn(image, text, logit_scale.exp())
    elif provider == "scan_fast":
        from scan_fast.ops import ClipLoss

        loss_fn = ClipLoss()

        def loss():
            return loss_fn(image, text, logit_scale.exp())
    elif provider == "gemm_floor":
        rows = 1024  # blocks of the product into one reused buffer: FLOPs, not B x B memory traffic
        block = torch.empty(min(rows, batch), batch, device=device, dtype=dtype)

        def loss():
            for _ in range(4):
                for start in range(0, batch, rows):
                    stop = min(batch, start + rows)
                    torch.mm(image.detach()[start:stop], text.detach().T, out=block[: stop - start])
            return None
    else:
        raise ValueError(f"unknown provider {provider!r}; choose from {PROVIDERS}")

    return _modes(loss, inputs)


def _setup_siglip(provider, image, text, device):
    """The SigLIP providers at open_clip's initial logit_scale = exp(log 10), logit_bias = -10."""
    import torch

    logit_scale = torch.tensor(10.0, device=device).log().requires_grad_()
    logit_bias = torch.tensor([-10.0], device=device, requires_grad=True)
    if provider == "reference":
        from scan_fast.ops import siglip_loss_per_sample_reference

        def loss():
            return siglip_loss_per_sample_reference(image, text, logit_scale.exp(), logit_bias)[0].mean()
    elif provider in ("open_clip", "scan_fast"):
        if provider == "open_clip":
            from open_clip.loss import SigLipLoss
        else:
            from scan_fast.ops import SigLipLoss
        loss_fn = SigLipLoss()

        def loss():
            return loss_fn(image, text, logit_scale.exp(), logit_bias)
    else:
        raise ValueError(f"unknown provider {provider!r}; choose from {PROVIDERS}")
    return _modes(loss, [image, text, logit_scale, logit_bias])


def _modes(loss, inputs):
    import torch

    def forward():
        with torch.no_grad():
            loss()

    def full():
        value = loss()
        if value is not None:
            value.backward()
        for tensor in inputs:
            tensor.grad = None

    return {"forward": forward, "full": full}


def _rss_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss():
    """Make VmHWM restart from the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def measure_cpu(fn, repeats, max_seconds):
    import numpy as np

    base = _rss_kib("VmRSS")
    if not _reset_peak_rss():
        base = _rss_kib("VmHWM")  # the peak so far stands in for the baseline
    start = time.perf_counter()
    fn()  # the first call also pays for page faults: peak memory comes from it
    times = [time.perf_counter() - start]
    peak_mb = max(0, _rss_kib("VmHWM") - base) / 1024
    deadline = time.perf_counter() + max_seconds
    measured = []
    while len(measured) < repeats and (not measured or time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        measured.append(time.perf_counter() - start)
    q50, q20, q80 = np.quantile(np.array(measured or times) * 1e3, [0.5, 0.2, 0.8])
    return q50, q20, q80, peak_mb


def measure_cuda(fn):
    import torch
    import triton

    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    q50, q20, q80 = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
    return q50, q20, q80, peak_mb


def worker(provider, mode, batch, dim, dtype_name, device, repeats, max_seconds, loss_name):
    """Runs in a fresh process; prints one JSON line."""
    import torch

    dtype = getattr(torch, dtype_name)
    fns = setup(provider, batch, dim, dtype, device, loss_name)
    if device == "cuda":
        result = measure_cuda(fns[mode])
    else:
        result = measure_cpu(fns[mode], repeats, max_seconds)
    gpu_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(json.dumps(dict(zip(("p50_ms", "p20_ms", "p80_ms", "peak_mb"), result),
                          gpu_name=gpu_name, threads=torch.get_num_threads())))


def run_case(args, provider, mode, batch, dim):
    command = [sys.executable, __file__, "--worker", provider, mode, str(batch), str(dim), args.dtype, args.device,
               str(args.repeats), str(args.max_seconds), args.loss]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["exit %d" % done.returncode])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ratio(value, baseline):
    return f"{value / baseline:.2f}x" if baseline else "-"


def print_table(rows):
    header = ("provider", "mode", "B", "D", "dtype", "p50 ms", "p20 ms", "p80 ms", "peak MB",
              f"time/{BASELINE}", f"mem/{BASELINE}")
    lines = [header]
    baselines = {(r["mode"], r["B"], r["D"]): r for r in rows if r["provider"] == BASELINE and "error" not in r}
    for r in rows:
        base = baselines.get((r["mode"], r["B"], r["D"]))
        if "error" in r:
            lines.append((r["provider"], r["mode"], r["B"], r["D"], r["dtype"], "error: " + r["error"][:60],
                          "", "", "", "", ""))
            continue
        floor = r["provider"] == "gemm_floor"
        lines.append((
            r["provider"], r["mode"], r["B"], r["D"], r["dtype"], f"{r['p50_ms']:.1f}", f"{r['p20_ms']:.1f}",
            f"{r['p80_ms']:.1f}", "-" if floor else f"{r['peak_mb']:.0f}",
            _ratio(r["p50_ms"], base["p50_ms"]) if base else "-",
            "-" if floor or not base else _ratio(r["peak_mb"], base["peak_mb"]),
        ))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for index, line in enumerate(lines):
        print("  ".join(str(cell).rjust(width) for cell, width in zip(line, widths)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


def write_csv(path, rows, args):
    from liger_csv import append_rows

    lines = []
    for r in rows:
        if "error" in r:
            continue
        extra = json.dumps({"D": r["D"], "dtype": r["dtype"], "device": args.device, "threads": r["threads"]})
        for metric, unit, values in (("speed", "ms", (r["p50_ms"], r["p20_ms"], r["p80_ms"])),
                                     ("memory", "MB", (r["peak_mb"],) * 3)):
            lines.append((f"{args.loss}_loss_per_sample", r["provider"], r["mode"], metric, unit, "B", "batch size",
                          r["B"], *values, extra, r["gpu_name"]))
    append_rows(path, lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loss", choices=LOSSES, default="clip",
                        help="clip: ClipLoss providers; siglip: SigLipLoss providers (sigmoid loss with a bias)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", help="batch sizes (default: 1k 4k 16k; +32k 64k on cuda)")
    parser.add_argument("--dims", type=int, nargs="+", default=list(DIMS))
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    parser.add_argument("--modes", nargs="+", choices=("full", "forward"), default=["full"])
    parser.add_argument("--repeats", type=int, default=3, help="timed CPU runs after the first (memory) run")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="stop repeating a CPU case after this")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per provider x shape process")
    parser.add_argument("--csv", help="append rows in Liger's benchmark CSV columns")
    parser.add_argument("--json", help="write all rows as a JSON list")
    args = parser.parse_args()
    sizes = args.sizes or list(CUDA_SIZES if args.device == "cuda" else CPU_SIZES)

    rows = []
    for dim in args.dims:
        for batch in sizes:
            for mode in args.modes:
                for provider in args.providers:
                    result = run_case(args, provider, mode, batch, dim)
                    rows.append(dict(provider=provider, mode=mode, B=batch, D=dim, dtype=args.dtype, **result))
                    print(f"# {provider} {mode} B={batch} D={dim}: "
                          + (result.get("error") or f"{result['p50_ms']:.1f} ms, {result['peak_mb']:.0f} MB"),
                          file=sys.stderr, flush=True)
    print_table(rows)
    if args.csv:
        write_csv(args.csv, rows, args)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        provider, mode, batch, dim, dtype_name, device, repeats, max_seconds, loss_name = sys.argv[2:11]
        worker(provider, mode, int(batch), int(dim), dtype_name, device, int(repeats), float(max_seconds), loss_name)
    else:
        main()
