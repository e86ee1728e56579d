"""Compile every Triton kernel for sm_80 / sm_90 without a GPU and report registers, spills, shared memory.

    python bench/kernels_ptxas_report.py                       # every kernel and config, bf16 + fp32, sm_80 + sm_90
    python bench/kernels_ptxas_report.py --archs 90 --dtypes bf16
    python bench/kernels_ptxas_report.py --archs 90 --check    # exit 1 on a failed check (tests/test_kernels_ptxas.py)

Triton compiles to PTX on any machine and its bundled ptxas assembles for a named GPU, so a
CPU-only box can still see what each config costs: register spills slow a kernel down, and
shared memory above the device's limit makes a config unlaunchable. The kernels are found,
not listed: every `@triton.jit` function named `*_kernel` in a module of `scan_fast.kernels`
must have a launch signature in `SIGNATURES` below, or the report fails; every other jit
function must be called by one (it is compiled inside it). Autotuned kernels are compiled
with each config of their autotuner (what a GPU launch would try). The launch is specialised
like a real one with 16-aligned pointers and D, strides divisible by 16 (e.g. D = 512).
The "estimate" column is `kernels/tiles.py::shared_memory_bytes`, which prunes configs at launch.

Checks (`--check`): every config compiles; the estimate is never below the compiler's shared
memory (else pruning would launch a config that does not fit); a kernel that is not pruned
fits the device's limit; the default config of each kernel (the first one the pruning keeps on
that device, which SCAN_FAST_AUTOTUNE=0 runs) does not spill for 16-bit features (AMP training)
or for the candidate kernel. Spills of fp32 defaults are WARNING lines (fp32 dots run as 3xTF32,
three products a tile), and spills of the other autotune configs are reported in the table: the
autotuner times them against the rest.
"""
import argparse
import importlib
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile for real GPUs, not the interpreter

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

_ALIGNED_INTS = ("X_stride", "Y_stride", "dX_stride", "D")
_LIMITS = {80: 166912, 90: 232448}  # max dynamic shared memory per block, A100 / H100
_FEATURES = dict(X_ptr="*{dtype}", X_stride="i32", Y_ptr="*{dtype}", Y_stride="i32", NX="i32", NY="i32", D="i32",
                 SIZE_BUCKET="i32")
_SWEEP_CONSTEXPRS = dict(UPCAST=False, PRECISION="{precision}")

# Launch signature of every kernel: argument types (non-constexpr arguments), constexpr values,
# and for kernels without an autotuner the launch config. "{dtype}" is the feature dtype of the
# run, "{loss}" the loss dtype of the candidate kernel, "{precision}" the dot precision.
SIGNATURES = {
    "info_nce._info_nce_forward_kernel": dict(
        types=dict(_FEATURES, scale_ptr="*fp32", lse_ptr="*fp32", target_ptr="*fp32", offset="i32"),
        constexprs=_SWEEP_CONSTEXPRS),
    "info_nce._info_nce_backward_kernel": dict(
        types=dict(_FEATURES, scale_ptr="*fp32", grad_row_ptr="*fp32", lse_row_ptr="*fp32", grad_col_ptr="*fp32",
                   lse_col_ptr="*fp32", dX_ptr="*{dtype}", dX_stride="i32", dscale_ptr="*fp32", row_offset="i32",
                   col_offset="i32"),
        constexprs=dict(_SWEEP_CONSTEXPRS, HAS_ROW=True, HAS_COL=True)),
    "siglip_loss._siglip_loss_forward_kernel": dict(
        types=dict(_FEATURES, scale_ptr="*fp32", bias_ptr="*fp32", row_loss_ptr="*fp32", col_loss_ptr="*fp32",
                   offset="i32"),
        constexprs=_SWEEP_CONSTEXPRS),
    "siglip_loss._siglip_loss_backward_kernel": dict(
        types=dict(_FEATURES, scale_ptr="*fp32", bias_ptr="*fp32", grad_row_ptr="*fp32", grad_col_ptr="*fp32",
                   dX_ptr="*{dtype}", dX_stride="i32", dscale_ptr="*fp32", dbias_ptr="*fp32", offset="i32"),
        constexprs=_SWEEP_CONSTEXPRS),
    "prune_candidates._direction_masks_kernel": dict(
        types=dict(loss_ptr="*{loss}", ill_ptr="*u8", red_ptr="*u8", N="i32", k_ill="i32", k_red="i32"),
        constexprs={}, loss_dtypes=("fp32", "fp64"),
        config=lambda module: triton.Config({"BLOCK_I": module.BLOCK_I_GPU, "BLOCK_J": module.BLOCK_J_GPU},
                                            num_warps=module.NUM_WARPS_GPU, num_stages=1)),
}


def discover_kernels(package_name="scan_fast.kernels"):
    """{"module._name_kernel": (module, JITFunction or Autotuner)} of every kernel in the package,
    and the names of jit helpers that no kernel or helper calls (never compiled: an error)."""
    package = importlib.import_module(package_name)
    kernels, helpers = {}, {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for name, value in vars(module).items():
            fn = value.fn if isinstance(value, Autotuner) else value
            if not isinstance(fn, JITFunction) or fn.__module__ != module.__name__:
                continue  # not jit, or imported from another module (counted there)
            if name.endswith("_kernel"):
                kernels[f"{info.name}.{name}"] = (module, value)
            else:
                helpers[f"{info.name}.{name}"] = fn
    sources = [(value.fn if isinstance(value, Autotuner) else value).src for _, value in kernels.values()]
    sources += [fn.src for fn in helpers.values()]
    uncalled = [name for name, fn in helpers.items()
                if not any(re.search(rf"\b{fn.__name__}\(", src) for src in sources if src is not fn.src)]
    return kernels, uncalled


def _ptxas_info(ptx: str, arch: int):
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    out = subprocess.run([ptxas, "-v", f"--gpu-name={gpu}", f.name, "-o", os.devnull],
                         capture_output=True, text=True)
    os.unlink(f.name)
    if out.returncode != 0:
        raise RuntimeError(f"ptxas failed for sm_{arch}:\n{out.stderr[-2000:]}")
    regs = re.search(r"Used (\d+) registers", out.stderr)
    spills = re.search(r"(\d+) bytes spill stores", out.stderr)
    return int(regs.group(1)) if regs else None, int(spills.group(1)) if spills else None


def compile_config(fn, types, constexprs, config, arch):
    untyped = [p.name for p in fn.params if not p.is_constexpr and p.name not in types]
    if untyped:
        raise KeyError(f"{fn.__name__}: no type for argument(s) {untyped} in SIGNATURES")
    signature = {name: types.get(name, "constexpr") for name in fn.arg_names}
    aligned = [n for n, t in signature.items() if t.startswith("*") or n in _ALIGNED_INTS]
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    source = ASTSource(fn=fn, signature=signature, constexprs={**constexprs, **config.kwargs}, attrs=attrs)
    kernel = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                            options=dict(num_warps=config.num_warps, num_stages=config.num_stages))
    regs, spills = _ptxas_info(kernel.asm["ptx"], arch)
    return regs, spills, kernel.metadata.shared


def _fill(mapping, **values):
    return {k: v.format(**values) if isinstance(v, str) else v for k, v in mapping.items()}


def report(archs, dtypes, package="scan_fast.kernels", out=sys.stdout, defaults_only=False):
    """Compile every kernel's configs (or only the one each launches by default); print a markdown
    table; return (failed checks, warnings)."""
    from scan_fast.kernels.tiles import shared_memory_bytes

    kernels, uncalled = discover_kernels(package)
    failures, warnings = [f"jit helper {name} is called by no kernel, so it is never compiled" for name in uncalled], []
    failures += [f"kernel {name} has no launch signature in SIGNATURES ({__file__})"
                 for name in kernels if name not in SIGNATURES]
    failures += [f"SIGNATURES names {name}, which is not a kernel of scan_fast.kernels"
                 for name in SIGNATURES if name not in kernels]
    print("| kernel | dtype | sm | config (block sizes) warps/stages | regs | spill B | smem B | estimate B | fits |"
          " default |", file=out)
    print("|---|---|---|---|---|---|---|---|---|---|", file=out)
    for arch in archs:
        limit = _LIMITS[arch]
        for name, (module, kernel) in sorted(kernels.items()):
            spec = SIGNATURES.get(name)
            if spec is None:
                continue
            autotuned = isinstance(kernel, Autotuner)
            fn = kernel.fn if autotuned else kernel
            configs = kernel.configs if autotuned else [spec["config"](module)]
            runs = [(d, dict(dtype=d, loss=d, precision="tf32x3" if d == "fp32" else "tf32")) for d in dtypes]
            if "loss_dtypes" in spec:  # the candidate kernel reads losses, not features
                runs = [(d, dict(dtype=d, loss=d, precision="")) for d in spec["loss_dtypes"]]
            for dtype, values in runs:
                element = {"fp32": 4, "fp64": 8}.get(dtype, 2)
                fitting, default_seen = 0, False
                for config in configs:
                    where = f"{name} {dtype} sm_{arch} {config.kwargs} {config.num_warps}/{config.num_stages}"
                    if defaults_only and autotuned and (default_seen or shared_memory_bytes(
                            config, element, "backward" in name) > limit):
                        continue  # not the config SCAN_FAST_AUTOTUNE=0 launches
                    try:
                        regs, spills, smem = compile_config(fn, _fill(spec["types"], **values),
                                                            _fill(spec["constexprs"], **values), config, arch)
                    except Exception as error:  # noqa: BLE001 - every failure is reported, then fails the check
                        failures.append(f"{where}: does not compile: {type(error).__name__}: {str(error)[:500]}")
                        continue
                    estimate = shared_memory_bytes(config, element, "backward" in name) if autotuned else None
                    fits = smem <= limit
                    fitting += fits
                    # the config SCAN_FAST_AUTOTUNE=0 launches: the first one the pruning keeps
                    default = not default_seen and (estimate is None or estimate <= limit)
                    default_seen |= default
                    if estimate is not None and estimate < smem:
                        failures.append(f"{where}: shared memory {smem} B above the pruning estimate {estimate} B")
                    if not autotuned and not fits:
                        failures.append(f"{where}: shared memory {smem} B above the sm_{arch} limit {limit} B")
                    if default and spills:
                        message = f"{where}: the default (SCAN_FAST_AUTOTUNE=0) config spills {spills} B"
                        (warnings if dtype == "fp32" and autotuned else failures).append(message)
                    shape = tuple(config.kwargs.values())
                    low = "" if estimate is None or estimate >= smem else " (LOW)"
                    print(f"| {name.split('.')[-1].strip('_')} | {dtype} | {arch} | {shape} "
                          f"{config.num_warps}/{config.num_stages} | {regs} | {spills} | {smem} | "
                          f"{'-' if estimate is None else estimate}{low} | {'yes' if fits else 'no'} | "
                          f"{'yes' if default else ''} |",
                          file=out, flush=True)
                if configs and not fitting and not defaults_only:
                    failures.append(f"{name} {dtype} sm_{arch}: no config fits {limit} B of shared memory")
    return failures, warnings


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", type=int, nargs="+", default=[80, 90], choices=sorted(_LIMITS))
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--check", action="store_true", help="exit 1 when a check fails (listed at the end)")
    parser.add_argument("--configs", choices=["all", "default"], default="all",
                        help="every autotune config, or only the one each kernel launches by default")
    parser.add_argument("--package", default="scan_fast.kernels", help=argparse.SUPPRESS)  # the check's own test
    args = parser.parse_args(argv)
    failures, warnings = report(args.archs, args.dtypes, args.package, defaults_only=args.configs == "default")
    for warning in warnings:
        print(f"WARNING: {warning}")
    for failure in failures:
        print(f"FAILED: {failure}")
    if args.check and failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
