"""Per-sample SigLIP (sigmoid) losses with Triton: one tiled sweep forward, recompute backward.

The sigmoid loss has no normaliser: every logit's loss is its own softplus, so the forward
needs no log-sum-exp and both directions come out of one sweep (row sums in registers,
column sums by atomic adds into a (NY,) vector). The tiles, the autotune configs and their
pruning, and the backward's dX steps are shared with the InfoNCE kernels (`kernels/tiles.py`);
the sigmoid epilogues are this file's.
"""
import torch
import triton
import triton.language as tl

from scan_fast.checks import first_order_only
from scan_fast.kernels.tiles import (
    accumulate_dx,
    backward_configs,
    column_tile,
    forward_configs,
    prune_backward,
    prune_forward,
    row_block,
    row_dim_grid,
    row_grid,
    store_dx,
)
from scan_fast.kernels.utils import (
    INTERPRET,
    as_scale_tensor,
    check_features,
    common_dtype,
    dot_precision,
    ensure_contiguous,
    size_bucket,
)


@triton.jit
def _softplus(v):
    # softplus(v) = max(v, 0) + log1p(exp(-|v|)); log1p(x) = log(u) * x / (u - 1) with u = 1 + x
    # (exact to a few ulps, where log(1 + x) loses all digits of x below 6e-8: the logits
    # of easy negatives, around the initial bias of -10, sit right there).
    x = tl.exp(-tl.abs(v))
    u = 1.0 + x
    exact = u == 1.0
    log1p = tl.where(exact, x, tl.log(u) * x / tl.where(exact, 1.0, u - 1.0))
    return tl.maximum(v, 0.0) + log1p


@triton.autotune(configs=forward_configs(), key=["SIZE_BUCKET", "D"],
                 prune_configs_by={"early_config_prune": prune_forward}, reset_to_zero=["col_loss_ptr"])
@triton.jit
def _siglip_loss_forward_kernel(
    X_ptr, X_stride,  # (NX, D) rows (images)
    Y_ptr, Y_stride,  # (NY, D) columns (texts)
    scale_ptr, bias_ptr,  # () fp32 logit scale and bias
    row_loss_ptr,  # (NX,) fp32 out: sum_j softplus(-t_ij z_ij)
    col_loss_ptr,  # (NY,) fp32 out, zeroed: sum_i softplus(-t_ij z_ij), by atomic adds
    NX, NY, D, offset,
    SIZE_BUCKET,  # autotune key only
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows, row_mask = row_block(tl.program_id(0).to(tl.int64), NX, BLOCK_M)
    scale = tl.load(scale_ptr).to(tl.float32)
    bias = tl.load(bias_ptr).to(tl.float32)

    # z = scale * x . y + bias, t = +1 where j = i + offset else -1, loss = softplus(v), v = -t z.
    # Row sums stay in registers; each tile adds its column sums to the shared vector.
    row_loss = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for n0 in range(0, NY, BLOCK_N):
        cols, col_mask, dot = column_tile(n0, X_ptr, X_stride, rows, row_mask, Y_ptr, Y_stride, NY, D,
                                          BLOCK_M, BLOCK_N, BLOCK_K, UPCAST, PRECISION)
        z = dot * scale + bias
        v = tl.where(cols[None, :] == rows[:, None] + offset, -z, z)
        loss = tl.where(row_mask[:, None] & col_mask[None, :], _softplus(v), 0.0)
        row_loss += tl.sum(loss, axis=1)
        tl.atomic_add(col_loss_ptr + cols, tl.sum(loss, axis=0), mask=col_mask, sem="relaxed")
    tl.store(row_loss_ptr + rows, row_loss, mask=row_mask)


@triton.autotune(configs=backward_configs(), key=["SIZE_BUCKET", "D"],
                 prune_configs_by={"early_config_prune": prune_backward})
@triton.jit
def _siglip_loss_backward_kernel(
    X_ptr, X_stride,  # (NX, D) rows we differentiate
    Y_ptr, Y_stride,  # (NY, D) rows swept over
    scale_ptr, bias_ptr,  # () fp32 logit scale and bias
    grad_row_ptr,  # (NX,) fp32: upstream grad of the losses of X's rows
    grad_col_ptr,  # (NY,) fp32: upstream grad of the losses of Y's rows
    dX_ptr, dX_stride,  # (NX, D) out, X's dtype
    dscale_ptr, dbias_ptr,  # (NX,) fp32 out: row partial sums of dz * (x . y) and of dz
    NX, NY, D, offset,
    SIZE_BUCKET,  # autotune key only
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_d = tl.program_id(1).to(tl.int64)
    rows, row_mask = row_block(tl.program_id(0).to(tl.int64), NX, BLOCK_M)
    dims, dim_mask = row_block(pid_d, D, BLOCK_D)
    scale = tl.load(scale_ptr).to(tl.float32)
    bias = tl.load(bias_ptr).to(tl.float32)
    g_row = tl.load(grad_row_ptr + rows, mask=row_mask, other=0.0)

    # Tiles of z are recomputed and never stored:
    #   dz = (g_row[:, None] + g_col[None, :]) * sigmoid(v) * (-t),   v = -t z
    #   dX = scale * dz @ Y,   dscale_part = sum_j dz * (x . y),   dbias_part = sum_j dz
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    dscale = tl.zeros((BLOCK_M,), dtype=tl.float32)
    dbias = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for n0 in range(0, NY, BLOCK_N):
        cols, col_mask, dot = column_tile(n0, X_ptr, X_stride, rows, row_mask, Y_ptr, Y_stride, NY, D,
                                          BLOCK_M, BLOCK_N, BLOCK_K, UPCAST, PRECISION)
        g_col = tl.load(grad_col_ptr + cols, mask=col_mask, other=0.0)
        z = dot * scale + bias
        is_target = cols[None, :] == rows[:, None] + offset
        p = tl.sigmoid(tl.where(is_target, -z, z)) * (g_row[:, None] + g_col[None, :])
        # padded rows and columns have z = bias, not 0: mask them out of every sum
        dz = tl.where(row_mask[:, None] & col_mask[None, :], tl.where(is_target, -p, p), 0.0)
        dscale += tl.sum(dz * dot, axis=1)
        dbias += tl.sum(dz, axis=1)
        acc = accumulate_dx(acc, dz, Y_ptr, Y_stride, cols, col_mask, dims, dim_mask, UPCAST, PRECISION)
    store_dx(dX_ptr, dX_stride, rows, row_mask, dims, dim_mask, acc, scale)
    if pid_d == 0:
        tl.store(dscale_ptr + rows, dscale, mask=row_mask)
        tl.store(dbias_ptr + rows, dbias, mask=row_mask)


def siglip_loss_forward(x, y, scale, bias, offset: int):
    """(row_loss (NX,), col_loss (NY,)), fp32: the row and column sums of the sigmoid losses of
    z = scale * x @ y^T + bias with positives at j = i + offset. x, y contiguous, same dtype;
    scale, bias 0-dim fp32 tensors on their device."""
    nx, d = x.shape
    ny = y.shape[0]
    row_loss = torch.empty(nx, dtype=torch.float32, device=x.device)
    col_loss = torch.zeros(ny, dtype=torch.float32, device=x.device)
    _siglip_loss_forward_kernel[row_grid(nx)](
        x, x.stride(0), y, y.stride(0), scale, bias, row_loss, col_loss,
        nx, ny, d, int(offset), size_bucket(max(nx, ny)),
        UPCAST=INTERPRET, PRECISION=dot_precision(x.dtype),
    )
    return row_loss, col_loss


def siglip_loss_sweep_backward(x, y, scale, bias, grad_row, grad_col, offset: int):
    """(dX, dscale_rows, dbias_rows): dX in x's dtype, the partial sums fp32 (NX,).

    grad_row (NX,) and grad_col (NY,) are the upstream grads of x's and y's losses. dY is the
    same sweep with the roles swapped: (y, x, grad_col, grad_row, -offset).
    """
    nx, d = x.shape
    ny = y.shape[0]
    dx = torch.empty_like(x)
    dscale_rows = torch.empty(nx, dtype=torch.float32, device=x.device)
    dbias_rows = torch.empty(nx, dtype=torch.float32, device=x.device)
    _siglip_loss_backward_kernel[row_dim_grid(nx, d)](
        x, x.stride(0), y, y.stride(0), scale, bias, grad_row, grad_col,
        dx, dx.stride(0), dscale_rows, dbias_rows,
        nx, ny, d, int(offset), size_bucket(max(nx, ny)),
        UPCAST=INTERPRET, PRECISION=dot_precision(x.dtype),
    )
    return dx, dscale_rows, dbias_rows


def siglip_loss_backward(x, y, scale, bias, grad_row, grad_col, offset: int,
                         need_dx=True, need_dy=True, need_dscale=True, need_dbias=True):
    """(dX, dY, dscale, dbias) of sum_i grad_row_i * row_loss_i + sum_j grad_col_j * col_loss_j.

    A None upstream grad counts as zeros.
    """
    grad_row = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device) if grad_row is None \
        else grad_row.to(torch.float32).contiguous()
    grad_col = torch.zeros(y.shape[0], dtype=torch.float32, device=x.device) if grad_col is None \
        else grad_col.to(torch.float32).contiguous()
    dx = dy = dscale = dbias = None
    if need_dx or need_dscale or need_dbias:  # the X sweep sees every dz tile, so it also sums dscale, dbias
        dx, dscale_rows, dbias_rows = siglip_loss_sweep_backward(x, y, scale, bias, grad_row, grad_col, offset)
        dscale, dbias = dscale_rows.sum(), dbias_rows.sum()
    if need_dy:  # dY = scale * dz^T @ X: the same sweep over z^T, rows and columns swapped
        dy = siglip_loss_sweep_backward(y, x, scale, bias, grad_col, grad_row, -offset)[0]
    return (dx if need_dx else None), dy, dscale, dbias


class SigLipLossFunction(torch.autograd.Function):
    """Per-sample sigmoid losses of rows X (NX, D) (images) against Y (NY, D) (texts):

        z_ij = scale * x_i . y_j + bias          (never materialised)
        t_ij = +1 if j = i + offset else -1
        row_loss_i = sum_j softplus(-t_ij z_ij),  col_loss_j = sum_i softplus(-t_ij z_ij)   (fp32)

    With one batch (NX = NY, offset 0) these are the image and the text losses of SigLIP.
    Forward: one sweep over (BLOCK_M x BLOCK_N) tiles; row sums in registers, column sums by
    atomic adds; nothing is saved but the inputs. Backward recomputes the tiles:

        dz = (g_row[:, None] + g_col[None, :]) * sigmoid(-t z) * (-t)
        dX = scale * dz @ Y      (sweep over Y),   dY = scale * dz^T @ X   (sweep over X, no atomics)
        dscale = sum_ij dz_ij * (x_i . y_j),       dbias = sum_ij dz_ij

    so any upstream gradient works (weighted per-sample losses). Extra memory O(NX + NY).
    fp32/bf16/fp16 inputs (mixed ones are promoted), fp32 accumulation, gradients in each input's
    dtype. `scale` and `bias` are floats or one-element tensors, read on the device (no host sync).
    """

    @staticmethod
    @ensure_contiguous
    def forward(ctx, x, y, scale, bias, offset=0):
        check_features("image_features", x)
        check_features("text_features", y)
        if x.shape[1] != y.shape[1]:
            raise ValueError(
                f"image_features {tuple(x.shape)} and text_features {tuple(y.shape)} must have the same dim")
        if x.device != y.device:
            raise ValueError(f"image_features is on {x.device} but text_features is on {y.device}")
        dtype = common_dtype(x, y)
        ctx.dtypes = (x.dtype, y.dtype)
        ctx.scalar_shapes = [s.shape if isinstance(s, torch.Tensor) else None for s in (scale, bias)]
        scale_t = as_scale_tensor("logit_scale", scale, x.device)
        bias_t = as_scale_tensor("logit_bias", bias, x.device)
        x, y = x.to(dtype), y.to(dtype)
        row_loss, col_loss = siglip_loss_forward(x, y, scale_t, bias_t, offset)
        ctx.save_for_backward(x, y, scale_t, bias_t)
        ctx.offset = offset
        ctx.set_materialize_grads(False)  # a None upstream grad counts as zeros
        return row_loss, col_loss

    @staticmethod
    @first_order_only("siglip_loss_per_sample (Triton)")  # the backward sweeps are not differentiable themselves
    @ensure_contiguous
    def backward(ctx, grad_row, grad_col):
        x, y, scale, bias = ctx.saved_tensors
        if grad_row is None and grad_col is None:
            return None, None, None, None, None
        scale_shape, bias_shape = ctx.scalar_shapes
        need_dx, need_dy, need_dscale, need_dbias = ctx.needs_input_grad[:4]
        need_dscale = need_dscale and scale_shape is not None
        need_dbias = need_dbias and bias_shape is not None
        dx, dy, dscale, dbias = siglip_loss_backward(
            x, y, scale, bias, grad_row, grad_col, ctx.offset,
            need_dx=need_dx, need_dy=need_dy, need_dscale=need_dscale, need_dbias=need_dbias)
        return (dx.to(ctx.dtypes[0]) if need_dx else None,
                dy.to(ctx.dtypes[1]) if need_dy else None,
                dscale.reshape(scale_shape) if need_dscale else None,
                dbias.reshape(bias_shape) if need_dbias else None,
                None)
