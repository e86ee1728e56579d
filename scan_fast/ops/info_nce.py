"""Per-sample InfoNCE (MoCo v3's contrastive loss) and the row cross-entropy it rests on.

    logits = scale * q @ k^T            q: (B, D), k: (M, D)
    loss[i] = logsumexp(logits[i]) - logits[i, i + offset]

MoCo v3 uses scale = 1 / T, keys gathered from all ranks (no gradient through
them), offset = rank * B, and multiplies the loss by 2 * T. The distributed CLIP
loss reuses the same row cross-entropy (local rows against gathered columns,
with gradients for both sides).
"""
import math
from numbers import Number
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from scan_fast.checks import check_chunk_rows, check_features, common_dtype, compute_dtype, first_order_only
from scan_fast.ops.base import PairLoss, autocast_off, check_reduction, default_chunk_rows, on_kernel
from scan_fast.ops.distributed import concat_all_gather, is_distributed

# ----------------------------------------------------------------------------- reference


def row_cross_entropy_reference(q: torch.Tensor, k: torch.Tensor, scale, offset: int = 0) -> torch.Tensor:
    """Materialised (B x M) logits and F.cross_entropy: the oracle of the row op."""
    dtype = compute_dtype(common_dtype(q, k))
    logits = scale * q.to(dtype) @ k.to(dtype).T
    targets = torch.arange(q.shape[0], device=q.device) + offset
    return F.cross_entropy(logits, targets, reduction="none")


def info_nce_per_sample_reference(q: torch.Tensor, k: torch.Tensor, temperature: float,
                                  offset: int = 0) -> torch.Tensor:
    """MoCo v3's contrastive_loss without the mean: CE(q @ k^T / T, i + offset) * 2T, k detached."""
    return row_cross_entropy_reference(q, k.detach(), 1.0 / temperature, offset) * (2 * temperature)


# ----------------------------------------------------------------------------- chunked CPU path


class RowCrossEntropyChunked(torch.autograd.Function):
    """Row cross-entropy of scale * q @ k^T against targets i + offset, (chunk x M) at a time.

    forward saves q, k and the row log-sum-exp (B,); backward recomputes each
    chunk of logits: dlogits = g[:, None] * (softmax - onehot), then
    dq = scale * dlogits @ k, dk = scale * dlogits^T @ q, dscale = sum(q * (dlogits @ k)).
    Memory O(chunk * M + (B + M) * D).
    """

    @staticmethod
    @autocast_off
    def forward(ctx, q, k, scale, offset, chunk_rows):
        batch, chunk_rows = q.shape[0], min(chunk_rows, q.shape[0])
        scaled_q = q * scale
        target_logits = (scaled_q * k[offset:offset + batch]).sum(1)
        logits_buffer = q.new_empty(chunk_rows, k.shape[0])
        row_lse = q.new_empty(batch)
        for start in range(0, batch, chunk_rows):
            rows = slice(start, min(batch, start + chunk_rows))
            logits = torch.mm(scaled_q[rows], k.T, out=logits_buffer[: rows.stop - start])
            torch.logsumexp(logits, dim=1, out=row_lse[rows])
        ctx.save_for_backward(q, k, scale, row_lse)
        ctx.offset, ctx.chunk_rows = offset, chunk_rows
        return row_lse - target_logits

    @staticmethod
    @first_order_only("info_nce_per_sample")
    @autocast_off
    def backward(ctx, grad_loss):
        q, k, scale, row_lse = ctx.saved_tensors
        offset, chunk_rows = ctx.offset, ctx.chunk_rows
        need_q, need_k, need_scale = ctx.needs_input_grad[:3]
        batch = q.shape[0]
        scaled_q = q * scale
        logits_buffer = q.new_empty(chunk_rows, k.shape[0])
        grad_logits_k = torch.empty_like(q)  # dlogits @ k
        grad_k = torch.zeros_like(k) if need_k else None
        for start in range(0, batch, chunk_rows):
            rows = slice(start, min(batch, start + chunk_rows))
            logits = torch.mm(scaled_q[rows], k.T, out=logits_buffer[: rows.stop - start])
            # g * (softmax - onehot), in place in the logits buffer
            grad_logits = logits.sub_(row_lse[rows, None]).exp_().mul_(grad_loss[rows, None])
            grad_logits.diagonal(offset=start + offset).sub_(grad_loss[rows])
            if need_q or need_scale:
                torch.mm(grad_logits, k, out=grad_logits_k[rows])
            if need_k:
                grad_k.addmm_(grad_logits.T, scaled_q[rows])
        grad_scale = (q * grad_logits_k).sum() if need_scale else None
        grad_q = grad_logits_k.mul_(scale) if need_q else None
        return grad_q, grad_k, grad_scale, None, None


def row_cross_entropy(q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, offset: int,
                      on_kernel: bool, chunk_rows: Optional[int] = None) -> torch.Tensor:
    """Per-row CE of scale * q @ k^T with targets i + offset; inputs already checked and cast."""
    if on_kernel:
        from scan_fast.kernels.info_nce import InfoNCEFunction

        return InfoNCEFunction.apply(q, k, scale, offset)
    chunk_rows = chunk_rows or default_chunk_rows(q.shape[0], k.shape[0])
    return RowCrossEntropyChunked.apply(q, k, scale, offset, chunk_rows)


def check_temperature(temperature) -> float:
    if isinstance(temperature, torch.Tensor) and temperature.numel() == 1:
        temperature = float(temperature.detach().reshape(()).item())
    if not isinstance(temperature, Number) or isinstance(temperature, bool):
        raise TypeError(f"temperature must be a positive number, got {temperature!r}")
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    return float(temperature)


def check_offset(offset, batch: int, keys: int) -> int:
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise TypeError(f"offset must be an int, got {type(offset).__name__}")
    if offset < 0 or offset + batch > keys:
        raise ValueError(f"offset={offset} puts targets outside the {keys} keys for a batch of {batch}")
    return offset


# ----------------------------------------------------------------------------- public op


def info_nce_per_sample(q: torch.Tensor, k: torch.Tensor, temperature: float, offset: Optional[int] = None,
                        chunk_rows: Optional[int] = None) -> torch.Tensor:
    """Per-sample MoCo v3 loss: CE(q @ k^T / T, targets i + offset) * 2T, no gradient through k.

    q: (B, D) queries of this rank; k: (M, D) keys, usually gathered from all ranks.
    offset defaults to rank * B under torch.distributed, else 0. Returns (B,) in
    fp32 (fp64 for fp64 inputs).
    """
    check_features("q", q)
    check_features("k", k)
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"q and k feature dims differ: q {tuple(q.shape)}, k {tuple(k.shape)}")
    temperature = check_temperature(temperature)
    check_chunk_rows(chunk_rows)
    if offset is None:
        import torch.distributed as dist

        offset = dist.get_rank() * q.shape[0] if is_distributed() else 0
    offset = check_offset(offset, q.shape[0], k.shape[0])
    dtype = common_dtype(q, k)
    kernel = on_kernel(q, dtype, chunk_rows)
    q = q.to(dtype if kernel else compute_dtype(dtype)).contiguous()
    k = k.detach().to(q.dtype).contiguous()
    scale = torch.tensor(1.0 / temperature, dtype=compute_dtype(dtype), device=q.device)
    return row_cross_entropy(q, k, scale, offset, kernel, chunk_rows) * (2 * temperature)


class MocoLoss(nn.Module):
    """Drop-in for MoCo v3's `MoCo.contrastive_loss(q, k)`: normalise, gather keys, mean loss.

    The builder calls it twice per step (`loss(q1, k2) + loss(q2, k1)`). The
    per-sample losses of the latest call are kept in `last_per_sample` and those
    of the call before in `previous_per_sample` (both detached, this rank's rows),
    so after the builder's forward `per_sample_pair` holds their PairLoss (a: the first call's,
    view 1's queries against view 2's keys; b: the second call's).
    `on_per_sample(loss)` is called with each detached vector as it is computed.
    """

    def __init__(self, T: float = 1.0, gather: bool = True, on_per_sample=None, reduction: str = "mean"):
        super().__init__()
        check_reduction(reduction)
        self.T = check_temperature(T)
        self.gather = gather
        self.on_per_sample = on_per_sample
        self.reduction = reduction
        self.last_per_sample: Optional[torch.Tensor] = None
        self.previous_per_sample: Optional[torch.Tensor] = None

    @property
    def per_sample_pair(self) -> PairLoss:
        """PairLoss(the call before the latest's, the latest's); None for a call not made yet."""
        return PairLoss(self.previous_per_sample, self.last_per_sample)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        check_features("q", q)
        check_features("k", k)
        q = F.normalize(q, dim=1)
        k = F.normalize(k, dim=1)
        if self.gather:
            k = concat_all_gather(k)
        per_sample = info_nce_per_sample(q, k, self.T)
        self.previous_per_sample, self.last_per_sample = self.last_per_sample, per_sample.detach()
        if self.on_per_sample is not None:
            self.on_per_sample(self.last_per_sample)
        if self.reduction == "none":
            return per_sample
        return per_sample.mean() if self.reduction == "mean" else per_sample.sum()
