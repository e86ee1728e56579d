"""Per-sample CLIP losses (both directions) with Triton, without a B x B buffer.

The CLIP loss is InfoNCE run both ways over one similarity matrix S = scale * I T^T:
image-to-text losses are InfoNCE(q=I, k=T) and text-to-image losses InfoNCE(q=T, k=I),
so this module drives the tiled sweeps of `kernels/info_nce.py` in both directions.
"""
import torch

from scan_fast.checks import first_order_only
from scan_fast.kernels.info_nce import info_nce_sweep_backward, info_nce_sweep_forward
from scan_fast.kernels.utils import as_scale_tensor, check_features, common_dtype, ensure_contiguous


def clip_loss_forward(image_features, text_features, scale):
    """(loss_i2t, loss_t2i, lse_row, lse_col), all fp32 (B,).

    Row sweep: programs own blocks of image rows and stream text tiles; column sweep: the same
    kernel with the roles swapped (rows of S^T = T I^T). Each gives its LSEs and the diagonal.
    """
    lse_row, diag_row = info_nce_sweep_forward(image_features, text_features, scale, 0)
    lse_col, diag_col = info_nce_sweep_forward(text_features, image_features, scale, 0)
    return lse_row - diag_row, lse_col - diag_col, lse_row, lse_col


def clip_loss_backward(image_features, text_features, scale, lse_row, lse_col, grad_i2t, grad_t2i,
                       need_di=True, need_dt=True, need_dscale=True):
    """(d_image, d_text, d_scale) of sum_i grad_i2t_i * loss_i2t_i + grad_t2i_i * loss_t2i_i.

    A None upstream grad drops its term from both sweeps.
    """
    row = (grad_i2t.to(torch.float32).contiguous(), lse_row, 0) if grad_i2t is not None else None
    col = (grad_t2i.to(torch.float32).contiguous(), lse_col, 0) if grad_t2i is not None else None
    d_image = d_text = d_scale = None
    if need_di or need_dscale:  # the image sweep sees every dlogits tile, so it also sums d scale
        d_image, dscale_rows = info_nce_sweep_backward(image_features, text_features, scale, row=row, col=col)
        d_scale = dscale_rows.sum()
    if need_dt:
        # dT = scale * dlogits^T @ I: the same sweep over S^T, the row and column terms swapped.
        d_text, _ = info_nce_sweep_backward(text_features, image_features, scale, row=col, col=row)
    return (d_image if need_di else None), d_text, d_scale


class ClipLossFunction(torch.autograd.Function):
    """Per-sample CLIP losses of image features I (B, D) and text features T (B, D):

        S = scale * I @ T^T                  (never materialised)
        loss_i2t_i = logsumexp_j S_ij - S_ii,    loss_t2i_j = logsumexp_i S_ij - S_jj      (fp32, (B,))

    Forward: two tiled sweeps with an online (running max) log-sum-exp, one over row blocks
    (row LSE + diagonal) and one over column blocks (column LSE + diagonal); only the 2B LSEs are
    saved. Why two sweeps: a single sweep gets the row LSE in registers, but the column LSE then
    needs either per-row-block partial (max, sumexp) pairs, O(B^2 / BLOCK_M) memory, or exp against
    a fixed per-column bound such as scale * |T_j| * max_i |I_i|, which underflows to a zero sum
    for columns far below the bound (scale 100, cosines near 0) and is wrong exactly where SCAN
    looks (ill-matched pairs). The second sweep costs one extra GEMM (forward is a third of the
    work) and keeps the extra memory at O(B).

    Backward recomputes tiles from the saved LSEs (flash-attention style). With
    P_row = exp(S - lse_row[:, None]), P_col = exp(S - lse_col[None, :]) and upstream grads g_r, g_c:

        dlogits = g_r[:, None] * (P_row - Id) + g_c[None, :] * (P_col - Id)
        dI = scale * dlogits @ T        (sweep over text tiles)
        dT = scale * dlogits^T @ I      (sweep over image tiles, no atomics)
        dscale = sum_ij dlogits_ij * (I @ T^T)_ij

    so any upstream gradient works (weighted per-sample losses), not only the mean. fp32/bf16/fp16
    features (mixed ones are promoted), fp32 accumulation, gradients in each input's dtype; any B,
    D tiled in BLOCK_K steps. `scale` is a 0-dim fp32 tensor (or a float), read on the device.
    """

    @staticmethod
    @ensure_contiguous
    def forward(ctx, image_features, text_features, scale):
        check_features("image_features", image_features)
        check_features("text_features", text_features)
        if image_features.shape != text_features.shape:
            raise ValueError(
                f"image_features {tuple(image_features.shape)} and text_features {tuple(text_features.shape)} "
                "must have the same (batch, dim)")
        if image_features.device != text_features.device:
            raise ValueError(
                f"image_features is on {image_features.device} but text_features is on {text_features.device}")
        dtype = common_dtype(image_features, text_features)
        ctx.dtypes = (image_features.dtype, text_features.dtype)
        ctx.scale_shape = scale.shape if isinstance(scale, torch.Tensor) else None
        scale_t = as_scale_tensor("logit_scale", scale, image_features.device)
        image_features, text_features = image_features.to(dtype), text_features.to(dtype)
        loss_i2t, loss_t2i, lse_row, lse_col = clip_loss_forward(image_features, text_features, scale_t)
        ctx.save_for_backward(image_features, text_features, scale_t, lse_row, lse_col)
        ctx.set_materialize_grads(False)  # a None upstream grad skips its term
        return loss_i2t, loss_t2i

    @staticmethod
    @first_order_only("clip_loss_per_sample (Triton)")  # the backward sweeps are not differentiable themselves
    @ensure_contiguous
    def backward(ctx, grad_i2t, grad_t2i):
        image_features, text_features, scale, lse_row, lse_col = ctx.saved_tensors
        need_di, need_dt, need_dscale = ctx.needs_input_grad[:3]
        need_dscale = need_dscale and ctx.scale_shape is not None
        if grad_i2t is None and grad_t2i is None:
            return None, None, None
        d_image, d_text, d_scale = clip_loss_backward(
            image_features, text_features, scale, lse_row, lse_col, grad_i2t, grad_t2i,
            need_di=need_di, need_dt=need_dt, need_dscale=need_dscale)
        d_image = d_image.to(ctx.dtypes[0]) if need_di else None
        d_text = d_text.to(ctx.dtypes[1]) if need_dt else None
        d_scale = d_scale.reshape(ctx.scale_shape) if need_dscale else None
        return d_image, d_text, d_scale
