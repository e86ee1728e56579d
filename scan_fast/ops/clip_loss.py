"""Per-sample CLIP losses in both directions, with memory linear in the batch.

    logits = logit_scale * I @ T^T                       I, T: (B, D)
    loss_i2t[i] = logsumexp_j logits[i, j] - logits[i, i]    (rows)
    loss_t2i[j] = logsumexp_i logits[i, j] - logits[j, j]    (columns)

CUDA tensors go to the Triton kernel; everything else to a chunked torch path
that never holds more than a (chunk x B) block of logits. Both return a `PairLoss`:
a = loss_i2t, b = loss_t2i.
"""
import math
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

from scan_fast.checks import common_dtype, compute_dtype, first_order_only
from scan_fast.ops.base import PairLoss, PairLossModule, autocast_off, check_scale, default_chunk_rows, prepare_pair
from scan_fast.ops.distributed import gather_features
from scan_fast.ops.info_nce import row_cross_entropy


def clip_loss_per_sample_reference(image_features: torch.Tensor, text_features: torch.Tensor,
                                   logit_scale) -> PairLoss:
    """Materialised B x B logits and F.cross_entropy in fp32 (fp64 for fp64): the oracle."""
    dtype = compute_dtype(common_dtype(image_features, text_features))
    logits = logit_scale * image_features.to(dtype) @ text_features.to(dtype).T
    targets = torch.arange(logits.shape[0], device=logits.device)
    return PairLoss(F.cross_entropy(logits, targets, reduction="none"),
                    F.cross_entropy(logits.T, targets, reduction="none"))


# A chunk takes the one-exp path when every row and column sum of exp(logits - chunk max)
# is at least exp(-40): the terms fp32 flushes (< exp(-87)) then change no sum by more
# than B * exp(-47), and the backward's rescaling factors stay below exp(50).
_MIN_SUM = math.exp(-40.0)


class ClipLossChunked(torch.autograd.Function):
    """Both directions of the per-sample CLIP loss, (chunk x B) logits at a time.

    forward: per row chunk S = s * I[rows] @ T^T with maximum m, E = exp(S - m)
    gives the row sums (rows lie inside one chunk) and the column sums, merged
    across chunks relative to the running maximum of m; the diagonal comes from
    a row-wise dot product. Saves I, T, the two LSE vectors, each row's shift m
    and one m per chunk.
    backward (upstream g_r, g_c, any values), recomputing each chunk:
        dS = g_r[:, None] * softmax_rows + g_c[None, :] * softmax_cols - diag(g_r + g_c)
           = E * (a[:, None] + exp(m - M) * b[None, :]) - diag(g_r + g_c),
             a = g_r * exp(m - lse_row),  b = g_c * exp(M - lse_col),  M = max m
        dI = s * dS @ T,  dT = s * dS^T @ I,  ds = sum(I * (dS @ T))
    That is one exp per logit in each pass, two reused (chunk x B) buffers and
    one small op per chunk. A chunk whose logits span too wide a range for a
    shared shift (see _MIN_SUM) uses separate row and column exps instead.
    """

    @staticmethod
    @autocast_off
    def forward(ctx, image, text, scale, chunk_rows):
        batch, chunk_rows = image.shape[0], min(chunk_rows, image.shape[0])
        scaled_image = image * scale
        diagonal = (scaled_image * text).sum(1)
        logits_buffer = image.new_empty(chunk_rows, batch)
        # row i's lse = log(row_sum[i]) + row_shift[i]
        row_sum, row_shift = image.new_empty(batch), image.new_empty(batch)
        # one-exp chunks: column sums relative to col_shift, the largest chunk max so far
        col_sum, col_shift = image.new_zeros(batch), -math.inf
        wide_col_max = wide_col_sum = None  # the same for the chunks on the two-exp path
        chunk_shifts = []
        for start in range(0, batch, chunk_rows):
            rows = slice(start, min(batch, start + chunk_rows))
            logits = torch.mm(scaled_image[rows], text.T, out=logits_buffer[: rows.stop - start])
            shift = logits.max().item()
            exp_logits = logits.sub_(shift).exp_()
            torch.sum(exp_logits, 1, out=row_sum[rows])
            chunk_col_sum = exp_logits.sum(0)
            if min(row_sum[rows].min().item(), chunk_col_sum.min().item()) >= _MIN_SUM:
                chunk_shifts.append(shift)
                row_shift[rows] = shift
                if shift > col_shift:
                    col_sum.mul_(math.exp(col_shift - shift))
                    col_shift = shift
                col_sum.add_(chunk_col_sum, alpha=math.exp(shift - col_shift))
                continue
            # logits too spread out for one shared shift: exact per-row and per-column maxima
            chunk_shifts.append(None)
            logits = torch.mm(scaled_image[rows], text.T, out=logits)
            row_shift[rows] = torch.logsumexp(logits, dim=1)
            row_sum[rows] = 1.0
            chunk_col_max = logits.amax(dim=0)
            chunk_col_sum = logits.sub_(chunk_col_max).exp_().sum(0)
            if wide_col_max is None:
                wide_col_max, wide_col_sum = chunk_col_max, chunk_col_sum
            else:
                new_max = torch.maximum(wide_col_max, chunk_col_max)
                wide_col_sum.mul_((wide_col_max - new_max).exp_()).add_(
                    chunk_col_sum.mul_((chunk_col_max - new_max).exp_()))
                wide_col_max = new_max
        row_lse = row_sum.log_().add_(row_shift)
        col_lse = col_sum.log_().add_(col_shift)
        if wide_col_max is not None:
            col_lse = torch.logaddexp(col_lse, wide_col_sum.log_().add_(wide_col_max))
        ctx.save_for_backward(image, text, scale, row_lse, col_lse, row_shift)
        ctx.chunk_rows, ctx.chunk_shifts = chunk_rows, chunk_shifts
        ctx.set_materialize_grads(False)
        return row_lse - diagonal, col_lse - diagonal

    @staticmethod
    @first_order_only("clip_loss_per_sample")
    @autocast_off
    def backward(ctx, grad_i2t, grad_t2i):
        image, text, scale, row_lse, col_lse, row_shift = ctx.saved_tensors
        chunk_rows, chunk_shifts = ctx.chunk_rows, ctx.chunk_shifts
        need_image, need_text, need_scale = ctx.needs_input_grad[:3]
        if grad_i2t is None and grad_t2i is None:
            return None, None, None, None
        grad_i2t = torch.zeros_like(row_lse) if grad_i2t is None else grad_i2t
        grad_t2i = torch.zeros_like(col_lse) if grad_t2i is None else grad_t2i
        batch = image.shape[0]
        scaled_image = image * scale
        diagonal_grad = grad_i2t + grad_t2i
        # a and b of the docstring; M from the one-exp chunks keeps b below exp(40) * g_c
        col_shift = max((shift for shift in chunk_shifts if shift is not None), default=0.0)
        row_weight = (row_shift - row_lse).exp_().mul_(grad_i2t)
        col_weight = (col_shift - col_lse).exp_().mul_(grad_t2i)
        logits_buffer, weight_buffer = image.new_empty(chunk_rows, batch), image.new_empty(chunk_rows, batch)
        grad_logits_text = torch.empty_like(image)  # dS @ T
        grad_text = torch.zeros_like(text) if need_text else None
        for chunk, start in enumerate(range(0, batch, chunk_rows)):
            rows = slice(start, min(batch, start + chunk_rows))
            size = rows.stop - start
            logits = torch.mm(scaled_image[rows], text.T, out=logits_buffer[:size])
            shift = chunk_shifts[chunk]
            if shift is not None:
                weights = torch.add(row_weight[rows, None], col_weight, alpha=math.exp(shift - col_shift),
                                    out=weight_buffer[:size])
                grad_logits = logits.sub_(shift).exp_().mul_(weights)
            else:
                grad_logits = torch.sub(logits, col_lse, out=weight_buffer[:size]).exp_().mul_(grad_t2i)
                grad_logits.add_(logits.sub_(row_lse[rows, None]).exp_().mul_(grad_i2t[rows, None]))
            grad_logits.diagonal(offset=start).sub_(diagonal_grad[rows])
            if need_image or need_scale:
                torch.mm(grad_logits, text, out=grad_logits_text[rows])
            if need_text:
                grad_text.addmm_(grad_logits.T, scaled_image[rows])
        grad_scale = (image * grad_logits_text).sum() if need_scale else None
        grad_image = grad_logits_text.mul_(scale) if need_image else None
        return grad_image, grad_text, grad_scale, None


def _prepare(image_features, text_features, logit_scale, chunk_rows):
    image, text, kernel = prepare_pair(image_features, text_features, chunk_rows)
    scale = check_scale("logit_scale", logit_scale, image.device, compute_dtype(image.dtype))
    return image, text, scale, kernel


def _clip_loss(image, text, scale, on_kernel, chunk_rows) -> PairLoss:
    if on_kernel:
        from scan_fast.kernels.clip_loss import ClipLossFunction

        loss_i2t, loss_t2i = ClipLossFunction.apply(image, text, scale)
    else:
        chunk_rows = chunk_rows or default_chunk_rows(image.shape[0], image.shape[0])
        loss_i2t, loss_t2i = ClipLossChunked.apply(image, text, scale, chunk_rows)
    return PairLoss(loss_i2t, loss_t2i)


def clip_loss_per_sample(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale,
                         chunk_rows: Optional[int] = None) -> PairLoss:
    """PairLoss(loss_i2t, loss_t2i), each (B,): per-sample CE of the rows and the columns of scale * I @ T^T.

    Features are (B, D), already normalised; logit_scale is a number or a scalar
    tensor (its gradient is returned). Gradients flow for any upstream weights on
    either vector. Outputs are fp32 (fp64 for fp64 inputs). `chunk_rows` forces the
    chunked torch path with that chunk size (default: Triton on CUDA, 16 MiB blocks of logits otherwise).
    """
    return _clip_loss(*_prepare(image_features, text_features, logit_scale, chunk_rows), chunk_rows)


class ClipLoss(PairLossModule):
    """Drop-in for `open_clip.loss.ClipLoss` that also yields per-sample losses.

    Same constructor, forward signature, scalar and `{"contrastive_loss": ...}`
    dict; `reduction` ("mean" as open_clip, "sum", or "none" for this rank's
    per-sample (loss_i2t + loss_t2i) / 2). The returned dict holds only the loss,
    so `sum(losses.values())` in open_clip_train's loop is unchanged; the
    detached per-sample losses of this rank's rows from the latest call are in
    `last_per_sample` as a PairLoss(loss_i2t, loss_t2i), and passed to
    `on_per_sample(loss_i2t, loss_t2i)`; `per_sample(...)` returns them with gradients.

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
        super().__init__(cache_labels, rank, world_size, reduction, on_per_sample, chunk_rows)
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.use_horovod = use_horovod

    def _per_sample_all(self, image_features, text_features, logit_scale) -> Tuple[PairLoss, slice]:
        """The per-sample losses the scalar averages over (the gathered batch's without local_loss on
        several ranks) and which of their entries are this rank's rows."""
        image, text, scale, on_kernel = _prepare(image_features, text_features, logit_scale, self.chunk_rows)
        batch = image.shape[0]
        if self.world_size == 1:
            return _clip_loss(image, text, scale, on_kernel, self.chunk_rows), slice(0, batch)
        all_image, all_text = gather_features(
            image, text, local_loss=self.local_loss, gather_with_grad=self.gather_with_grad,
            rank=self.rank, world_size=self.world_size, use_horovod=self.use_horovod)
        if self.local_loss:
            # local rows against gathered columns: one row cross-entropy per direction
            offset = self.rank * batch
            loss_i2t = row_cross_entropy(image, all_text, scale, offset, on_kernel, self.chunk_rows)
            loss_t2i = row_cross_entropy(text, all_image, scale, offset, on_kernel, self.chunk_rows)
            return PairLoss(loss_i2t, loss_t2i), slice(0, batch)
        return (_clip_loss(all_image, all_text, scale, on_kernel, self.chunk_rows),
                slice(self.rank * batch, (self.rank + 1) * batch))

    def per_sample(self, image_features, text_features, logit_scale, logit_bias=None) -> PairLoss:
        """PairLoss(loss_i2t, loss_t2i) of this rank's rows, each (B,), against the whole (gathered) batch.

        logit_bias is accepted so that CLIP and SigLIP losses are called alike; a scalar bias shifts every
        logit of a row alike, which cross-entropy ignores.
        """
        pair, local = self._per_sample_all(image_features, text_features, logit_scale)
        return PairLoss(pair.a[local], pair.b[local])

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict=False):
        pair, local = self._per_sample_all(image_features, text_features, logit_scale)
        mine = PairLoss(pair.a[local], pair.b[local])
        self._record(mine)
        if self.reduction == "none":
            total = (mine.a + mine.b) / 2
        elif self.reduction == "sum":
            total = (pair.a.sum() + pair.b.sum()) / 2
        else:
            total = (pair.a.mean() + pair.b.mean()) / 2
        if logit_bias is not None:
            # a scalar bias shifts every logit of a row alike, which cross-entropy ignores;
            # keep it in the graph (zero gradient) as open_clip does
            if not isinstance(logit_bias, torch.Tensor) or logit_bias.numel() != 1:
                raise ValueError(f"logit_bias must be a scalar tensor, got {logit_bias!r:.80}")
            total = total + 0.0 * logit_bias.reshape(()).to(total.dtype)
        return {"contrastive_loss": total} if output_dict else total
