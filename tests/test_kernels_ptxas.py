"""Every Triton kernel compiles for sm_90 on a CPU-only machine (its default config), spills nothing in it
and never needs more shared memory than its pruning estimate (bench/kernels_ptxas_report.py --check).

The interpreter tests check values; this is the only check of what a real GPU compile does
(register spills, shared memory, ops the backend rejects). It runs in a subprocess because the
kernels are compiled for the GPU there, while this session imported them for the interpreter.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPORT = Path(__file__).resolve().parents[1] / "bench" / "kernels_ptxas_report.py"


def _ptxas_available() -> bool:
    try:
        import triton
    except ImportError:
        return False
    return os.access(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas"), os.X_OK)


requires_ptxas = pytest.mark.skipif(not _ptxas_available(), reason="needs triton with its bundled ptxas")


def _report(*args, pythonpath=None):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, str(REPORT), *args], capture_output=True, text=True, env=env, timeout=900)


@requires_ptxas
def test_every_kernel_compiles_for_sm90():
    # the default configs (what SCAN_FAST_AUTOTUNE=0 launches); `make bench` compiles every config
    done = _report("--archs", "90", "--dtypes", "bf16", "fp32", "--configs", "default", "--check")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "| 90 |" in line]
    compiled = {row.split("|")[1].strip() for row in rows}
    # the kernels found in scan_fast.kernels, each with at least one compiled config
    assert compiled >= {"info_nce_forward_kernel", "info_nce_backward_kernel", "siglip_loss_forward_kernel",
                        "siglip_loss_backward_kernel", "direction_masks_kernel"}, compiled


@requires_ptxas
def test_a_kernel_without_a_signature_fails_the_check(tmp_path):
    # A package holding a kernel the report's SIGNATURES do not know, and a jit helper nothing calls.
    package = tmp_path / "new_kernels"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "extra.py").write_text(
        "import triton\n\n\n@triton.jit\ndef _helper(x):\n    return x\n\n\n"
        "@triton.jit\ndef _extra_kernel(x_ptr):\n    pass\n")
    done = _report("--archs", "90", "--dtypes", "bf16", "--check", "--package", "new_kernels",
                   pythonpath=str(tmp_path))
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "kernel extra._extra_kernel has no launch signature" in done.stdout
    assert "jit helper extra._helper is called by no kernel" in done.stdout
