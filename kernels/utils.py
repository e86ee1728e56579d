"""Helpers shared by the Triton kernels: contiguity, autotune keys, dot precision, input checks."""
import functools
import os

import torch
import triton

from scan_fast.checks import check_features as shared_check_features
from scan_fast.checks import check_scalar
from scan_fast.checks import common_dtype  # noqa: F401 (the kernels import it from here)

# Read once, like Triton itself: the interpreter flag is fixed when kernels are decorated.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# SCAN_FAST_AUTOTUNE=0 launches one fixed config per kernel: every autotuned config is a separate
# compile, which dominates short runs over many shapes (the CUDA tests of bench/gpu_check.sh).
AUTOTUNE = os.environ.get("SCAN_FAST_AUTOTUNE", "1") != "0"

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def ensure_contiguous(fn):
    """Make every tensor argument of an autograd Function's forward/backward contiguous."""

    @functools.wraps(fn)
    def wrapper(ctx, *args, **kwargs):
        def maybe_to_contiguous(x):
            return x.contiguous() if isinstance(x, torch.Tensor) else x

        args = [maybe_to_contiguous(arg) for arg in args]
        kwargs = {k: maybe_to_contiguous(v) for k, v in kwargs.items()}
        return fn(ctx, *args, **kwargs)

    return wrapper


def size_bucket(n: int) -> int:
    """Autotune key for a batch size: its power-of-two ceiling, so nearby sizes share one tuning."""
    return triton.next_power_of_2(max(int(n), 1))


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision. fp32: TF32 only where torch would use it for a matmul too, else
    3xTF32 (about fp32 accuracy on tensor cores). 16-bit inputs ignore it: Triton's default."""
    if INTERPRET:
        return "ieee"
    if dtype != torch.float32:
        return "tf32"
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "tf32x3"


def check_features(name: str, x) -> None:
    """The ops' feature checks, plus the dtypes the kernels were written for."""
    shared_check_features(name, x)
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {x.dtype}")


def as_scale_tensor(name: str, value, device: torch.device) -> torch.Tensor:
    """A 0-dim fp32 tensor on `device` from a Python number or a one-element tensor.

    Read by the kernels through a pointer, so a CUDA scale never forces a host sync.
    """
    value = check_scalar(name, value)
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point scalar, got {value.dtype}")
        if value.device != device:
            raise ValueError(f"{name} is on {value.device} but the features are on {device}")
        return value.reshape(()).to(torch.float32).contiguous()
    return torch.tensor(value, dtype=torch.float32, device=device)
