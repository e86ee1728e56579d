"""What the loss ops share: the kernel-or-chunks dispatch, chunk sizes, input preparation, scale checks,
the `PairLoss` every loss returns, and the base of the pair-loss modules (reduction and rank checks, the
per-sample hook).

`clip_loss.py`, `siglip_loss.py` and `info_nce.py` each keep their oracle, chunked autograd
Function, public op and module; everything they do alike is defined here once.
"""
import functools
import math
from numbers import Number
from typing import Callable, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn as nn

from scan_fast.checks import check_chunk_rows, check_features, check_scalar, common_dtype, compute_dtype, has_triton

# The CPU path's only quadratic-size buffers are (chunk x M) blocks of logits.
# 16M elements (64 MiB in fp32) each: 1024 rows at M = 16k, all rows up to M = 4k.
# Measured at B = 16k on 2 cores: 256-row chunks take ~3x as long as 1024-row ones
# (every chunk re-reads and re-writes the whole (M x D) dT accumulator, and the
# GEMMs' inner dimension is the chunk); 2048 rows gain little more and cost 2x memory.
CHUNK_ELEMENTS = 1 << 24
MIN_CHUNK_ROWS = 32

# The Triton kernels handle these input dtypes and feature dims.
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_KERNEL_MAX_DIM = 2048

REDUCTIONS = ("mean", "sum", "none")


class PairLoss(NamedTuple):
    """The two per-sample loss vectors of this rank's rows, each (B,): what every loss returns.

    What a and b are, per loss:
      CLIP (`clip_loss_per_sample`, `ClipLoss`): a = image-to-text (loss_i2t, the rows of the logits),
        b = text-to-image (loss_t2i, the columns);
      SigLIP (`siglip_loss_per_sample`, `SigLipLoss`): a = the image losses (row sums of the sigmoid
        loss over the texts), b = the text losses (column sums over the images);
      MoCo v3 (`MocoLoss.per_sample_pair`, the trainer's `MoCo.forward`): a = view 1's queries against
        view 2's keys, b = view 2's queries against view 1's keys.
    SCAN and the other schedules observe (a, b) of each sample. A NamedTuple, so `a, b = ...` unpacks it.
    """
    a: torch.Tensor
    b: torch.Tensor

    def detach(self) -> "PairLoss":
        return PairLoss(self.a.detach(), self.b.detach())


def default_chunk_rows(rows: int, columns: int) -> int:
    return max(MIN_CHUNK_ROWS, min(rows, CHUNK_ELEMENTS // columns))


def use_kernels(features: torch.Tensor, dtype: torch.dtype) -> bool:
    """The Triton kernels serve CUDA tensors of the dtypes and dims they were written for."""
    return features.is_cuda and dtype in _KERNEL_DTYPES and features.shape[1] <= _KERNEL_MAX_DIM and has_triton()


def on_kernel(features: torch.Tensor, dtype: torch.dtype, chunk_rows: Optional[int]) -> bool:
    """Whether an op runs its Triton kernel: no forced chunk size and inputs the kernels serve."""
    return chunk_rows is None and use_kernels(features, dtype)


def autocast_off(method):
    """Run a Function's forward/backward outside autocast: its GEMMs must accumulate in the input dtype."""

    @functools.wraps(method)
    def wrapper(ctx, *args):
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return method(ctx, *args)

    return wrapper


def check_scale(name: str, scale: Union[torch.Tensor, Number], device: torch.device, dtype: torch.dtype,
                positive: bool = False) -> torch.Tensor:
    """A scalar as a 0-dim tensor of `dtype` (gradient kept when it is a tensor).

    A number is checked for finiteness (and sign); a tensor for shape only, on every device
    alike: reading its value would stall a CUDA step on the host, and a non-finite scale
    shows up as a non-finite loss, which the trainer checks at its log steps.
    """
    scale = check_scalar(name, scale)
    if isinstance(scale, torch.Tensor):
        if not (scale.is_floating_point()):
            scale = scale.to(torch.float32)
        return scale.reshape(()).to(device=device, dtype=dtype)
    if not math.isfinite(scale):
        raise ValueError(f"{name} must be finite, got {scale}")
    if positive and scale <= 0:
        raise ValueError(f"{name} must be > 0, got {scale}")
    return torch.tensor(scale, device=device, dtype=dtype)


def prepare_pair(image_features, text_features, chunk_rows) -> Tuple[torch.Tensor, torch.Tensor, bool]:
    """(image, text, on_kernel) of a CLIP or SigLIP op: checked (B, D) features of one shape, cast
    to the dtype their path computes in (the kernels take 16-bit inputs, the chunks fp32/fp64)."""
    check_features("image_features", image_features)
    check_features("text_features", text_features)
    check_chunk_rows(chunk_rows)
    if image_features.shape != text_features.shape:
        raise ValueError(
            f"image_features {tuple(image_features.shape)} and text_features {tuple(text_features.shape)} "
            "must have the same (batch, dim)")
    dtype = common_dtype(image_features, text_features)
    kernel = on_kernel(image_features, dtype, chunk_rows)
    if not kernel:
        dtype = compute_dtype(dtype)
    return image_features.to(dtype).contiguous(), text_features.to(dtype).contiguous(), kernel


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


class PairLossModule(nn.Module):
    """What `ClipLoss` and `SigLipLoss` share: open_clip's rank / world_size / cache_labels, `reduction`,
    `chunk_rows`, and the detached per-sample pair of the latest call (`last_per_sample`), passed to
    `on_per_sample`."""

    def __init__(self, cache_labels: bool, rank: int, world_size: int, reduction: str,
                 on_per_sample: Optional[Callable[[torch.Tensor, torch.Tensor], None]], chunk_rows: Optional[int]):
        super().__init__()
        check_reduction(reduction)
        check_rank(rank, world_size)
        self.cache_labels = cache_labels  # accepted for compatibility: no label tensor is built
        self.rank = rank
        self.world_size = world_size
        self.reduction = reduction
        self.on_per_sample = on_per_sample
        self.chunk_rows = chunk_rows
        self.last_per_sample: Optional[PairLoss] = None

    def _record(self, pair: PairLoss) -> None:
        """Keep this rank's per-sample pair of the latest call, detached, and pass it to the hook."""
        self.last_per_sample = pair.detach()
        if self.on_per_sample is not None:
            self.on_per_sample(self.last_per_sample.a, self.last_per_sample.b)
