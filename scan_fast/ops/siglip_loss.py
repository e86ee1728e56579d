"""Per-sample SigLIP (sigmoid) losses in both directions, with memory linear in the batch.

    z_ij = s * x_i . y_j + b         t_ij = +1 if j = i + offset else -1
    row_loss[i] = sum_j softplus(-t_ij z_ij)    (= sum_j -log sigmoid(t_ij z_ij))
    col_loss[j] = sum_i softplus(-t_ij z_ij)

With x = image and y = text features of one batch (offset 0) the rows are the
image losses and the columns the text losses; open_clip's SigLipLoss is
sum(row_loss) / B = sum(col_loss) / B. CUDA tensors go to the Triton kernel;
everything else to a chunked torch path that never holds more than a (chunk x M)
block of logits. Both return a `PairLoss`: a = the image losses (rows), b = the text
losses (columns).
"""
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

from scan_fast.checks import common_dtype, compute_dtype, first_order_only
from scan_fast.ops.base import PairLoss, PairLossModule, autocast_off, check_scale, default_chunk_rows, prepare_pair
from scan_fast.ops.distributed import all_gather_with_grad, all_reduce_with_grad

_DIST_IMPLS = ("bidir", "shift", "reduce", "gather")


def siglip_loss_per_sample_reference(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale,
                                     logit_bias) -> PairLoss:
    """Materialised B x B logits and labels, as open_clip builds them, in fp32 (fp64 for fp64): the oracle."""
    dtype = compute_dtype(common_dtype(image_features, text_features))
    logits = logit_scale * image_features.to(dtype) @ text_features.to(dtype).T + logit_bias
    labels = 2 * torch.eye(logits.shape[0], device=logits.device, dtype=dtype) - 1
    losses = -F.logsigmoid(labels * logits)
    return PairLoss(losses.sum(1), losses.sum(0))


class SigmoidLossChunked(torch.autograd.Function):
    """Row and column sums of the sigmoid loss of z = s * X @ Y^T + b, (chunk x M) logits at a time.

    forward: per row chunk, v = -t * z (z with its target entries negated) and
    softplus(v) gives the chunk's row sums and adds to the column sums. Saves X, Y, s, b.
    backward (upstream g_r, g_c, any values), recomputing each chunk:
        dz = (g_r[:, None] + g_c[None, :]) * sigmoid(v) * (-t)
        dX = s * dz @ Y,  dY = s * dz^T @ X,  ds = sum(X * (dz @ Y)),  db = sum(dz)
    Memory O(chunk * M + (N + M) * D).
    """

    @staticmethod
    @autocast_off
    def forward(ctx, x, y, scale, bias, offset, chunk_rows):
        rows_total, chunk_rows = x.shape[0], min(chunk_rows, x.shape[0])
        scaled_x = x * scale
        logits_buffer = x.new_empty(chunk_rows, y.shape[0])
        row_loss, col_loss = x.new_empty(rows_total), x.new_zeros(y.shape[0])
        for start in range(0, rows_total, chunk_rows):
            rows = slice(start, min(rows_total, start + chunk_rows))
            logits = torch.addmm(bias, scaled_x[rows], y.T, out=logits_buffer[: rows.stop - start])
            logits.diagonal(offset=start + offset).neg_()
            losses = F.softplus(logits)
            torch.sum(losses, 1, out=row_loss[rows])
            col_loss.add_(losses.sum(0))
        ctx.save_for_backward(x, y, scale, bias)
        ctx.offset, ctx.chunk_rows = offset, chunk_rows
        ctx.set_materialize_grads(False)
        return row_loss, col_loss

    @staticmethod
    @first_order_only("siglip_loss_per_sample")
    @autocast_off
    def backward(ctx, grad_row, grad_col):
        x, y, scale, bias = ctx.saved_tensors
        offset, chunk_rows = ctx.offset, ctx.chunk_rows
        need_x, need_y, need_scale, need_bias = ctx.needs_input_grad[:4]
        if grad_row is None and grad_col is None:
            return None, None, None, None, None, None
        rows_total = x.shape[0]
        grad_row = x.new_zeros(rows_total) if grad_row is None else grad_row
        grad_col = x.new_zeros(y.shape[0]) if grad_col is None else grad_col
        scaled_x = x * scale
        logits_buffer, weight_buffer = x.new_empty(chunk_rows, y.shape[0]), x.new_empty(chunk_rows, y.shape[0])
        grad_logits_y = torch.empty_like(x)  # dz @ Y
        grad_y = torch.zeros_like(y) if need_y else None
        grad_bias = x.new_zeros(())
        for start in range(0, rows_total, chunk_rows):
            rows = slice(start, min(rows_total, start + chunk_rows))
            size = rows.stop - start
            logits = torch.addmm(bias, scaled_x[rows], y.T, out=logits_buffer[:size])
            logits.diagonal(offset=start + offset).neg_()
            weights = torch.add(grad_row[rows, None], grad_col, out=weight_buffer[:size])
            grad_logits = logits.sigmoid_().mul_(weights)  # dz, in place, before the targets' sign flip
            grad_logits.diagonal(offset=start + offset).neg_()
            if need_bias:
                grad_bias += grad_logits.sum()
            if need_x or need_scale:
                torch.mm(grad_logits, y, out=grad_logits_y[rows])
            if need_y:
                grad_y.addmm_(grad_logits.T, scaled_x[rows])
        grad_scale = (x * grad_logits_y).sum() if need_scale else None
        grad_x = grad_logits_y.mul_(scale) if need_x else None
        return grad_x, grad_y, grad_scale, (grad_bias if need_bias else None), None, None


def _prepare(image_features, text_features, logit_scale, logit_bias, chunk_rows):
    """(image, text, scale, bias, on_kernel): checked inputs, cast to the dtype their path computes in.

    The kernels read scale and bias through pointers (no host sync), so on CUDA they pass as given;
    the CPU path checks their values.
    """
    image, text, kernel = prepare_pair(image_features, text_features, chunk_rows)
    if not kernel:
        logit_scale = check_scale("logit_scale", logit_scale, image.device, image.dtype)
        logit_bias = check_scale("logit_bias", logit_bias, image.device, image.dtype)
    return image, text, logit_scale, logit_bias, kernel


def _sigmoid_loss(x, y, scale, bias, offset, on_kernel, chunk_rows) -> Tuple[torch.Tensor, torch.Tensor]:
    """(row sums (N,), column sums (M,)) of z = scale * x @ y^T + bias with targets at j = i + offset."""
    if on_kernel:
        from scan_fast.kernels.siglip_loss import SigLipLossFunction

        return SigLipLossFunction.apply(x, y, scale, bias, offset)
    chunk_rows = chunk_rows or default_chunk_rows(x.shape[0], y.shape[0])
    return SigmoidLossChunked.apply(x, y, scale, bias, offset, chunk_rows)


def siglip_loss_per_sample(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale, logit_bias,
                           chunk_rows: Optional[int] = None) -> PairLoss:
    """PairLoss(image_loss, text_loss), each (B,): the row and column sums of -log sigmoid(t * (s * I @ T^T + b)).

    t is +1 on the diagonal (matching pairs) and -1 elsewhere, as in SigLIP and
    open_clip's SigLipLoss, whose loss is image_loss.sum() / B (= text_loss.sum() / B).
    Features are (B, D), already normalised; logit_scale (s, already exponentiated as
    open_clip's models return it) and logit_bias (b) are numbers or one-element
    tensors (their gradients are returned). Gradients flow for any upstream weights on
    either vector. Outputs are fp32 (fp64 for fp64 inputs). `chunk_rows` forces the
    chunked torch path with that chunk size (default: Triton on CUDA, 16 MiB blocks of logits otherwise).
    """
    image, text, scale, bias, on_kernel = _prepare(image_features, text_features, logit_scale, logit_bias, chunk_rows)
    image_loss, text_loss = _sigmoid_loss(image, text, scale, bias, 0, on_kernel, chunk_rows)
    return PairLoss(image_loss, text_loss)


class SigLipLoss(PairLossModule):
    """Drop-in for `open_clip.loss.SigLipLoss` that also yields per-sample losses.

    Same constructor, forward signature, scalar and `{"contrastive_loss": ...}` dict:
    the loss is this rank's image rows summed over the texts of every rank, divided by
    the local batch size, as open_clip computes it. `reduction`: "mean" (open_clip's),
    "sum" (the same without dividing by B) or "none" (this rank's per-sample
    (image_loss + text_loss) / 2, whose mean is the same loss on one process). The
    detached per-sample losses of the latest call are in `last_per_sample` as a
    PairLoss(image_loss, text_loss), and passed to `on_per_sample(image_loss, text_loss)`;
    `per_sample(...)` returns them with gradients.

    With world_size > 1 the text features of all ranks are all-gathered with gradient
    (every `dist_impl` of open_clip computes the same loss and gradients; the neighbour
    exchanges only save memory for the B x B blocks this loss never builds); the text
    losses of this rank's samples sum the column sums of every rank's images (an
    all-reduce of W * B floats).
    """

    def __init__(
        self,
        cache_labels: bool = False,
        rank: int = 0,
        world_size: int = 1,
        dist_impl: Optional[str] = None,
        reduction: str = "mean",
        on_per_sample: Optional[Callable[[torch.Tensor, torch.Tensor], None]] = None,
        chunk_rows: Optional[int] = None,
    ):
        super().__init__(cache_labels, rank, world_size, reduction, on_per_sample, chunk_rows)
        dist_impl = dist_impl or "bidir"
        if dist_impl not in _DIST_IMPLS:
            raise ValueError(f"dist_impl must be one of {_DIST_IMPLS}, got {dist_impl!r}")
        self.dist_impl = dist_impl

    def per_sample(self, image_features, text_features, logit_scale, logit_bias) -> PairLoss:
        """PairLoss(image_loss, text_loss), each (B,), of this rank's samples against the whole (gathered) batch."""
        if self.world_size == 1:
            return siglip_loss_per_sample(image_features, text_features, logit_scale, logit_bias, self.chunk_rows)
        image, text, scale, bias, on_kernel = _prepare(image_features, text_features, logit_scale, logit_bias,
                                                       self.chunk_rows)
        batch = image.shape[0]
        all_text = all_gather_with_grad(text)
        offset = self.rank * batch
        image_loss, column_sums = _sigmoid_loss(image, all_text, scale, bias, offset, on_kernel, self.chunk_rows)
        text_loss = all_reduce_with_grad(column_sums)[offset:offset + batch]
        return PairLoss(image_loss, text_loss)

    def forward(self, image_features, text_features, logit_scale, logit_bias, output_dict=False):
        pair = self.per_sample(image_features, text_features, logit_scale, logit_bias)
        self._record(pair)
        if self.reduction == "none":
            total = (pair.a + pair.b) / 2
        elif self.reduction == "sum":
            total = pair.a.sum()
        else:
            total = pair.a.mean()
        return {"contrastive_loss": total} if output_dict else total
