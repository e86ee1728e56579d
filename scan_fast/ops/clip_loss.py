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
    DEFAULT_CHUNK_ROWS,
    autocast_off,
    check_features,
    check_scale,
    common_dtype,
    compute_dtype,
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


class ClipLossChunked(torch.autograd.Function):
    """Both directions of the per-sample CLIP loss, (chunk x B) logits at a time.

    forward: for each row chunk, the row log-sum-exp directly and the column
    log-sum-exp by an online (running max) merge across chunks; the diagonal
    from a row-wise dot product. Saves I, T and the two LSE vectors.
    backward (upstream g_r, g_c, any values):
        dlogits = g_r[:, None] * softmax_rows + g_c[None, :] * softmax_cols - diag(g_r + g_c)
        dI = s * dlogits @ T,  dT = s * dlogits^T @ I,  ds = sum(I * (dlogits @ T))
    recomputing each chunk of logits from the saved LSEs.
    """

    @staticmethod
    @autocast_off
    def forward(ctx, image, text, scale, chunk_rows=DEFAULT_CHUNK_ROWS):
        batch = image.shape[0]
        diagonal = scale * (image * text).sum(1)
        row_lse = torch.empty(batch, dtype=image.dtype, device=image.device)
        col_max = torch.full((batch,), float("-inf"), dtype=image.dtype, device=image.device)
        col_sum = torch.zeros(batch, dtype=image.dtype, device=image.device)
        for start in range(0, batch, chunk_rows):
            rows = slice(start, start + chunk_rows)
            logits = torch.mm(image[rows] * scale, text.T)
            row_max = logits.amax(dim=1, keepdim=True)
            chunk_col_max = logits.amax(dim=0)
            new_col_max = torch.maximum(col_max, chunk_col_max)
            # exp(logits - row_max) once; column sums reuse it via a per-row weight
            # exp(row_max - chunk_max), safe while no column sits ~80 below the chunk max.
            chunk_max = row_max.max()
            if bool((chunk_col_max > chunk_max - _SAFE_EXP_RANGE).all()):
                exp_logits = logits.sub_(row_max).exp_()
                row_lse[rows] = exp_logits.sum(1).log_().add_(row_max.squeeze(1))
                weights = (row_max.squeeze(1) - chunk_max).exp_()
                chunk_col_sum = torch.mv(exp_logits.T, weights)
                col_sum.mul_((col_max - new_col_max).exp_()).add_(
                    chunk_col_sum.mul_((chunk_max - new_col_max).exp_()))
            else:
                row_lse[rows] = torch.logsumexp(logits, dim=1)
                col_sum.mul_((col_max - new_col_max).exp_()).add_(
                    logits.sub_(new_col_max).exp_().sum(0))
            col_max = new_col_max
        col_lse = col_sum.log_().add_(col_max)
        ctx.save_for_backward(image, text, scale, row_lse, col_lse)
        ctx.chunk_rows = chunk_rows
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
        grad_image = torch.empty_like(image) if need_image else None
        grad_text = torch.zeros_like(text) if need_text else None
        grad_scale = torch.zeros((), dtype=image.dtype, device=image.device)
        for start in range(0, image.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            image_rows = image[rows]
            logits = torch.mm(image_rows * scale, text.T)
            grad_logits = None
            if grad_t2i is not None:
                grad_logits = torch.sub(logits, col_lse).exp_().mul_(grad_t2i)
            if grad_i2t is not None:
                row_part = logits.sub_(row_lse[rows, None]).exp_().mul_(grad_i2t[rows, None])
                grad_logits = row_part if grad_logits is None else grad_logits.add_(row_part)
            diagonal_grad = grad_logits.diagonal(offset=start)
            if grad_i2t is not None:
                diagonal_grad.sub_(grad_i2t[rows])
            if grad_t2i is not None:
                diagonal_grad.sub_(grad_t2i[rows])
            grad_logits_text = torch.mm(grad_logits, text)
            if need_image:
                grad_image[rows] = grad_logits_text * scale
            if need_text:
                grad_text.addmm_(grad_logits.T, image_rows)
            if need_scale:
                grad_scale += (image_rows * grad_logits_text).sum()
        if need_text:
            grad_text.mul_(scale)
        return grad_image, grad_text, grad_scale if need_scale else None, None


# Largest spread (in logits) between a column's chunk maximum and the chunk's
# maximum for which the one-exp column sum stays clear of fp32 underflow.
_SAFE_EXP_RANGE = 60.0


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
    return ClipLossChunked.apply(image, text, scale, chunk_rows or DEFAULT_CHUNK_ROWS)


def clip_loss_per_sample(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale,
                         chunk_rows: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(loss_i2t, loss_t2i), each (B,): per-sample CE of the rows and the columns of scale * I @ T^T.

    Features are (B, D), already normalised; logit_scale is a number or a scalar
    tensor (its gradient is returned). Gradients flow for any upstream weights on
    either vector. Outputs are fp32 (fp64 for fp64 inputs). `chunk_rows` forces the
    chunked torch path with that chunk size (default: Triton on CUDA, 256 rows otherwise).
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
