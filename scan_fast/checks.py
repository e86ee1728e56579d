"""Input checks shared by the ops, the kernels and the schedules: one set of messages naming the argument,
the first-order-only guard of the backwards, and the one probe for Triton.

Imports nothing of scan_fast, so every layer (kernels, ops, schedule) can depend on it and
dependencies still point one way.
"""
import functools
import numbers

import torch


@functools.lru_cache(maxsize=None)
def has_triton() -> bool:
    """Whether Triton imports: the kernels serve CUDA tensors only then (a CPU install may lack it)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def check_batch_tensor(name: str, tensor, ndim: int, layout: str) -> torch.Tensor:
    """A floating-point tensor of `ndim` dims (`layout` names them, e.g. "(batch, dim)") with at least one
    row, or a TypeError/ValueError naming `name`."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {tensor.dtype}")
    if tensor.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(tensor.shape)})")
    return tensor


def check_features(name: str, features) -> torch.Tensor:
    """A 2-D, non-empty, floating-point (batch, dim) tensor, or a TypeError/ValueError naming `name`."""
    check_batch_tensor(name, features, 2, "(batch, dim)")
    if features.shape[1] == 0:
        raise ValueError(f"{name} has feature dim 0 (shape {tuple(features.shape)})")
    return features


def check_scalar(name: str, value):
    """A one-element tensor (returned as is) or a real number (returned as a float), or a
    TypeError/ValueError naming `name`: the one check of a loss's scale and bias arguments,
    before the ops and the kernels turn them into tensors. A tensor's value is not read (that
    would stall a CUDA step on the host)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(value.shape)}")
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"{name} must be a float or a scalar tensor, got {type(value).__name__}")


def check_chunk_rows(chunk_rows):
    """None (the op picks) or a positive int, or a TypeError/ValueError naming `chunk_rows`."""
    if chunk_rows is None:
        return None
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int):
        raise TypeError(f"chunk_rows must be a positive int or None, got {chunk_rows!r}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    return chunk_rows


def first_order_only(op: str):
    """Decorates an autograd Function's backward that is not differentiable itself.

    With create_graph=True (grad mode is on inside backward) it raises naming `op`,
    instead of an error from deep inside the backward or a gradient with no graph.
    """
    def decorate(backward):
        @functools.wraps(backward)
        def wrapper(ctx, *grads):
            if torch.is_grad_enabled():
                raise RuntimeError(f"{op}: double backward (create_graph=True) is not supported; "
                                   "its gradient is computed by a backward that is not differentiable")
            return backward(ctx, *grads)
        return wrapper
    return decorate


def common_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The promoted dtype of the inputs (mixed inputs are cast up, not rejected; bf16 with fp16 gives fp32)."""
    dtype = tensors[0].dtype
    for tensor in tensors[1:]:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16/bf16 accumulate in fp32; fp32 and fp64 stay as they are."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32
