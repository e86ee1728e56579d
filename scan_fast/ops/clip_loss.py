"""Per-sample CLIP losses in both directions, with memory linear in the batch.

    logits = logit_scale * I @ T^T                       I, T: (B, D)
    loss_i2t[i] = logsumexp_j logits[i, j] - logits[i, i]    (rows)
    loss_t2i[j] = logsumexp_i logits[i, j] - logits[j, j]    (columns)

CUDA tensors go to the Triton kernel; everything else to a chunked torch path
that never holds more than a (chunk x B) block of logits.
"""
from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from scan_fast.ops.distributed import gather_features
from scan_fast.ops.info_nce import (
    autocast_off,
    check_features,
    check_scale,
    common_dtype,
    compute_dtype,
    default_chunk_rows,
    row_cross_entropy,
    use_kernels,
)

_REDUCTIONS = ("mean", "sum", "none")


def clip_loss_per_sample_reference(image_features: torch.Tensor, text_features: torch.Tensor,
                                   logit_scale) -> Tuple[torch.Tensor, torch.Tensor]:
    """Materialised B x B logits and F.cross_entropy in fp32 (fp64 for fp64): the oracle."""
    dtype = compute_dtype(common_dtype(image_features, text_features))
    logits = logit_scale * image_features.to(dtype) @ text_features.to(dtype).T
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets, reduction="none"),
            F.cross_entropy(logits.T, targets, reduction="none"))


# A chunk takes the one-exp path when every row and column sum of exp(logits - chunk max)
# is at least exp(-40): the terms fp32 flushes (< exp(-87)) then change no sum by more
# than B * exp(-47), and the backward's rescaling factors stay below exp(50).
_MIN_LOG_SUM = -40.0


class ClipLossChunked(torch.autograd.Function):
    """Both directions of the per-sample CLIP loss, (chunk x B) logits at a time.

    forward: per row chunk S = s * I[rows] @ T^T with maximum m, E = exp(S - m)
    gives the row log-sum-exps (rows lie inside one chunk) and, through an online
    running-max merge across chunks, the column ones; the diagonal comes from a
    row-wise dot product. Saves I, T, the two LSE vectors and one m per chunk.
    backward (upstream g_r, g_c, any values), recomputing each chunk:
        dS = g_r[:, None] * softmax_rows + g_c[None, :] * softmax_cols - diag(g_r + g_c)
           = E * (a[:, None] + b[None, :]) - diag(g_r + g_c),
             a = g_r * exp(m - lse_row), b = g_c * exp(m - lse_col)
        dI = s * dS @ T,  dT = s * dS^T @ I,  ds = sum(I * (dS @ T))
    One exp per logit in each pass. A chunk whose logits span too wide a range
    for that (see _MIN_LOG_SUM) is done with separate row and column exps instead.
    """

    @staticmethod
    @autocast_off
    def forward(ctx, image, text, scale, chunk_rows):
        batch = image.shape[0]
        scaled_image = image * scale
        diagonal = (scaled_image * text).sum(1)
        row_lse = torch.empty(batch, dtype=image.dtype, device=image.device)
        col_max = torch.full((batch,), float("-inf"), dtype=image.dtype, device=image.device)
        col_sum = torch.zeros(batch, dtype=image.dtype, device=image.device)
        chunk_maxima = []  # per chunk: its max logit, or None where the two-exp path ran
        for start in range(0, batch, chunk_rows):
            rows = slice(start, start + chunk_rows)
            logits = torch.mm(scaled_image[rows], text.T)
            chunk_max = logits.max()
            exp_logits = logits.sub_(chunk_max).exp_()
            row_sum, chunk_col_sum = exp_logits.sum(1), exp_logits.sum(0)
            min_sum = torch.minimum(row_sum.min(), chunk_col_sum.min())
            if bool(min_sum.log() >= _MIN_LOG_SUM):
                chunk_maxima.append(chunk_max)
                row_lse[rows] = row_sum.log_().add_(chunk_max)
                chunk_col_max = chunk_max.expand(batch)
            else:  # logits too spread out for one shared shift: exact per-row and per-column maxima
                chunk_maxima.append(None)
                logits = torch.mm(scaled_image[rows], text.T)
                row_lse[rows] = torch.logsumexp(logits, dim=1)
                chunk_col_max = logits.amax(dim=0)
                chunk_col_sum = logits.sub_(chunk_col_max).exp_().sum(0)
            new_col_max = torch.maximum(col_max, chunk_col_max)
            col_sum.mul_((col_max - new_col_max).exp_()).add_(chunk_col_sum.mul_((chunk_col_max - new_col_max).exp_()))
            col_max = new_col_max
        col_lse = col_sum.log_().add_(col_max)
        ctx.save_for_backward(image, text, scale, row_lse, col_lse)
        ctx.chunk_rows, ctx.chunk_maxima = chunk_rows, chunk_maxima
        ctx.set_materialize_grads(False)
        return row_lse - diagonal, col_lse - diagonal

    @staticmethod
    @autocast_off
    def backward(ctx, grad_i2t, grad_t2i):
        image, text, scale, row_lse, col_lse = ctx.saved_tensors
        chunk_rows = ctx.chunk_rows
        need_image, need_text, need_scale = ctx.needs_input_grad[:3]
        if grad_i2t is None and grad_t2i is None:
            return None, None, None, None
        zeros = torch.zeros_like(row_lse)
        grad_i2t = zeros if grad_i2t is None else grad_i2t
        grad_t2i = zeros if grad_t2i is None else grad_t2i
        scaled_image = image * scale
        grad_image = torch.empty_like(image) if need_image else None
        grad_text = torch.zeros_like(text) if need_text else None
        grad_scale = torch.zeros((), dtype=image.dtype, device=image.device)
        for chunk, start in enumerate(range(0, image.shape[0], chunk_rows)):
            rows = slice(start, start + chunk_rows)
            logits = torch.mm(scaled_image[rows], text.T)
            chunk_max = ctx.chunk_maxima[chunk]
            if chunk_max is not None:
                row_weight = (chunk_max - row_lse[rows]).exp_().mul_(grad_i2t[rows])
                col_weight = (chunk_max - col_lse).exp_().mul_(grad_t2i)
                grad_logits = logits.sub_(chunk_max).exp_().mul_(row_weight[:, None] + col_weight)
            else:
                grad_logits = torch.sub(logits, col_lse).exp_().mul_(grad_t2i)
                grad_logits.add_(logits.sub_(row_lse[rows, None]).exp_().mul_(grad_i2t[rows, None]))
            grad_logits.diagonal(offset=start).sub_(grad_i2t[rows] + grad_t2i[rows])
            grad_logits_text = torch.mm(grad_logits, text)
            if need_image:
                grad_image[rows] = grad_logits_text * scale
            if need_text:
                grad_text.addmm_(grad_logits.T, scaled_image[rows])
            if need_scale:
                grad_scale += (image[rows] * grad_logits_text).sum()
        return grad_image, grad_text, grad_scale if need_scale else None, None


def _prepare(image_features, text_features, logit_scale, chunk_rows):
    check_features("image_features", image_features)
    check_features("text_features", text_features)
    if image_features.shape != text_features.shape:
        raise ValueError(
            f"image_features {tuple(image_features.shape)} and text_features {tuple(text_features.shape)} "
            "must have the same (batch, dim)")
    dtype = common_dtype(image_features, text_features)
    on_kernel = chunk_rows is None and use_kernels(image_features, dtype)
    scale = check_scale("logit_scale", logit_scale, image_features.device, compute_dtype(dtype))
    if not on_kernel:
        dtype = compute_dtype(dtype)
    return image_features.to(dtype).contiguous(), text_features.to(dtype).contiguous(), scale, on_kernel


def _clip_loss(image, text, scale, on_kernel, chunk_rows):
    if on_kernel:
        from scan_fast.kernels.clip_loss import ClipLossFunction

        return ClipLossFunction.apply(image, text, scale)
    chunk_rows = chunk_rows or default_chunk_rows(image.shape[0], image.shape[0])
    return ClipLossChunked.apply(image, text, scale, chunk_rows)


def clip_loss_per_sample(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale,
                         chunk_rows: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(loss_i2t, loss_t2i), each (B,): per-sample CE of the rows and the columns of scale * I @ T^T.

    Features are (B, D), already normalised; logit_scale is a number or a scalar
    tensor (its gradient is returned). Gradients flow for any upstream weights on
    either vector. Outputs are fp32 (fp64 for fp64 inputs). `chunk_rows` forces the
    chunked torch path with that chunk size (default: Triton on CUDA, 16 MiB blocks of logits otherwise).
    """
    return _clip_loss(*_prepare(image_features, text_features, logit_scale, chunk_rows), chunk_rows)


class ClipLoss(nn.Module):
    """Drop-in for `open_clip.loss.ClipLoss` that also yields per-sample losses.

    Same constructor, forward signature, scalar and `{"contrastive_loss": ...}`
    dict; `reduction` ("mean" as open_clip, "sum", or "none" for this rank's
    per-sample (loss_i2t + loss_t2i) / 2). The returned dict holds only the loss,
    so `sum(losses.values())` in open_clip_train's loop is unchanged; the
    detached per-sample losses of this rank's rows from the latest call are in
    `last_per_sample` as (loss_i2t, loss_t2i), and passed to `on_per_sample`.

    With world_size > 1 features are gathered as open_clip does. local_loss:
    local rows against all columns (targets offset by rank), never a B x (world*B)
    block; otherwise the global loss over the gathered batch, as open_clip computes it.
    """

    def __init__(
        self,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        cache_labels: bool = False,
        rank: int = 0,
        world_size: int = 1,
        use_horovod: bool = False,
        reduction: str = "mean",
        on_per_sample: Optional[Callable[[torch.Tensor, torch.Tensor], None]] = None,
        chunk_rows: Optional[int] = None,
    ):
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.cache_labels = cache_labels  # accepted for compatibility: no label tensor is built
        self.rank = rank
        self.world_size = world_size
        self.use_horovod = use_horovod
        self.reduction = reduction
        self.on_per_sample = on_per_sample
        self.chunk_rows = chunk_rows
        self.last_per_sample: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def per_sample(self, image_features, text_features, logit_scale):
        """(loss_i2t, loss_t2i, local_slice): the per-sample losses the scalar averages over,
        and which of their entries are this rank's rows."""
        image, text, scale, on_kernel = _prepare(image_features, text_features, logit_scale, self.chunk_rows)
        batch = image.shape[0]
        if self.world_size == 1:
            loss_i2t, loss_t2i = _clip_loss(image, text, scale, on_kernel, self.chunk_rows)
            return loss_i2t, loss_t2i, slice(0, batch)
        all_image, all_text = gather_features(
            image, text, local_loss=self.local_loss, gather_with_grad=self.gather_with_grad,
            rank=self.rank, world_size=self.world_size, use_horovod=self.use_horovod)
        if self.local_loss:
            # local rows against gathered columns: one row cross-entropy per direction
            offset = self.rank * batch
            loss_i2t = row_cross_entropy(image, all_text, scale, offset, on_kernel, self.chunk_rows)
            loss_t2i = row_cross_entropy(text, all_image, scale, offset, on_kernel, self.chunk_rows)
            return loss_i2t, loss_t2i, slice(0, batch)
        loss_i2t, loss_t2i = _clip_loss(all_image, all_text, scale, on_kernel, self.chunk_rows)
        return loss_i2t, loss_t2i, slice(self.rank * batch, (self.rank + 1) * batch)

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict=False):
        loss_i2t, loss_t2i, local = self.per_sample(image_features, text_features, logit_scale)
        self.last_per_sample = (loss_i2t[local].detach(), loss_t2i[local].detach())
        if self.on_per_sample is not None:
            self.on_per_sample(*self.last_per_sample)
        if self.reduction == "none":
            total = (loss_i2t[local] + loss_t2i[local]) / 2
        elif self.reduction == "sum":
            total = (loss_i2t.sum() + loss_t2i.sum()) / 2
        else:
            total = (loss_i2t.mean() + loss_t2i.mean()) / 2
        if logit_bias is not None:
            # a scalar bias shifts every logit of a row alike, which cross-entropy ignores;
            # keep it in the graph (zero gradient) as open_clip does
            if not isinstance(logit_bias, torch.Tensor) or logit_bias.numel() != 1:
                raise ValueError(f"logit_bias must be a scalar tensor, got {logit_bias!r:.80}")
            total = total + 0.0 * logit_bias.reshape(()).to(total.dtype)
        return {"contrastive_loss": total} if output_dict else total
