"""Compile the Triton kernels for sm_80 / sm_90 without a GPU and report registers, spills, shared memory.

    python bench/kernels_ptxas_report.py                       # every autotune config, bf16 + fp32, sm_80 + sm_90
    python bench/kernels_ptxas_report.py --archs 90 --dtypes bf16

Triton compiles to PTX on any machine and its bundled ptxas assembles for a named GPU, so a
CPU-only box can still see what each config costs: register spills slow a kernel down, and
shared memory above the device's limit makes a config unlaunchable. The launch is specialised
like a real one with 16-aligned pointers and D, strides divisible by 16 (e.g. D = 512).
The "estimate" column is `_shared_memory_bytes`, which prunes configs at launch: it must not
be below the compiler's figure.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile for real GPUs, not the interpreter

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

_ALIGNED_INTS = ("X_stride", "Y_stride", "dX_stride", "D")
_LIMITS = {80: 166912, 90: 232448}  # max dynamic shared memory per block, A100 / H100


def _ptxas_info(ptx: str, arch: int):
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    out = subprocess.run([ptxas, "-v", f"--gpu-name={gpu}", f.name, "-o", os.devnull],
                         capture_output=True, text=True)
    os.unlink(f.name)
    regs = re.search(r"Used (\d+) registers", out.stderr)
    spills = re.search(r"(\d+) bytes spill stores", out.stderr)
    return int(regs.group(1)) if regs else None, int(spills.group(1)) if spills else None


def compile_config(fn, types, constexprs, config, arch):
    signature = {name: types.get(name, "constexpr") for name in fn.arg_names}
    aligned = [n for n, t in signature.items() if t.startswith("*") or n in _ALIGNED_INTS]
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    source = ASTSource(fn=fn, signature=signature, constexprs={**constexprs, **config.kwargs}, attrs=attrs)
    kernel = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                            options=dict(num_warps=config.num_warps, num_stages=config.num_stages))
    regs, spills = _ptxas_info(kernel.asm["ptx"], arch)
    return regs, spills, kernel.metadata.shared


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp16", "fp32"])
    args = parser.parse_args(argv)

    import scan_fast.kernels.info_nce as info_nce
    import scan_fast.kernels.prune_candidates as prune

    print("| kernel | dtype | sm | config (M, N, K[, D]) warps/stages | regs | spill B | smem B | estimate B | fits |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arch in args.archs:
        for dtype in args.dtypes:
            precision = "tf32x3" if dtype == "fp32" else "tf32"
            element = 4 if dtype == "fp32" else 2
            common = dict(X_ptr=f"*{dtype}", X_stride="i32", Y_ptr=f"*{dtype}", Y_stride="i32", scale_ptr="*fp32",
                          NX="i32", NY="i32", D="i32", SIZE_BUCKET="i32")
            kernels = [
                ("forward", info_nce._info_nce_forward_kernel.fn, info_nce._forward_configs(),
                 dict(common, lse_ptr="*fp32", target_ptr="*fp32", offset="i32"), {}),
                ("backward", info_nce._info_nce_backward_kernel.fn, info_nce._backward_configs(),
                 dict(common, grad_row_ptr="*fp32", lse_row_ptr="*fp32", grad_col_ptr="*fp32", lse_col_ptr="*fp32",
                      dX_ptr=f"*{dtype}", dX_stride="i32", dscale_ptr="*fp32", row_offset="i32", col_offset="i32"),
                 dict(HAS_ROW=True, HAS_COL=True)),
            ]
            for name, fn, configs, types, extra in kernels:
                for config in configs:
                    regs, spills, smem = compile_config(fn, types, dict(UPCAST=False, PRECISION=precision, **extra),
                                                        config, arch)
                    estimate = info_nce._shared_memory_bytes(config, element, name == "backward")
                    shape = tuple(config.kwargs.values())
                    print(f"| {name} | {dtype} | {arch} | {shape} {config.num_warps}/{config.num_stages} | {regs} | "
                          f"{spills} | {smem} | {estimate}{'' if estimate >= smem else ' (LOW)'} | "
                          f"{'yes' if smem <= _LIMITS.get(arch, 0) else 'no'} |", flush=True)
        for dtype in ("fp32", "fp64"):
            config = triton.Config({"BLOCK_I": prune.BLOCK_I_GPU, "BLOCK_J": prune.BLOCK_J_GPU},
                                   num_warps=prune.NUM_WARPS_GPU, num_stages=1)
            types = dict(loss_ptr=f"*{dtype}", ill_ptr="*u8", red_ptr="*u8", N="i32", k_ill="i32", k_red="i32")
            regs, spills, smem = compile_config(prune._direction_masks_kernel, types, {}, config, arch)
            print(f"| direction_masks | {dtype} | {arch} | ({prune.BLOCK_I_GPU}, {prune.BLOCK_J_GPU}) "
                  f"{prune.NUM_WARPS_GPU}/1 | {regs} | {spills} | {smem} | - | yes |", flush=True)


if __name__ == "__main__":
    main()
