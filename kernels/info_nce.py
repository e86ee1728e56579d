"""Per-sample InfoNCE (row direction) with Triton: one tiled sweep forward, recompute backward.

The two kernels here are the building blocks of the softmax losses, CLIP's and MoCo v3's:
`_info_nce_forward_kernel` gives, for each row x_i of X, the log-sum-exp of
scale * x_i . y_j over all rows y_j of Y and the target logit scale * x_i . y_{i+offset};
`_info_nce_backward_kernel` gives dX for the row term (X are the queries) and/or
the column term (X are the keys). `kernels/clip_loss.py` runs them in both directions;
MoCo v3 (`InfoNCEFunction`) runs the row direction. The tiles, configs and the backward's
dX steps are shared with the SigLIP kernels (`kernels/tiles.py`); the epilogues are this file's.
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


@triton.autotune(configs=forward_configs(), key=["SIZE_BUCKET", "D"], prune_configs_by={"early_config_prune": prune_forward})
@triton.jit
def _info_nce_forward_kernel(
    X_ptr, X_stride,  # (NX, D) rows whose log-sum-exp we want (queries)
    Y_ptr, Y_stride,  # (NY, D) rows swept over (keys)
    scale_ptr,  # () fp32 logit scale
    lse_ptr,  # (NX,) fp32 out: logsumexp_j scale * x_i . y_j
    target_ptr,  # (NX,) fp32 out: scale * x_i . y_{i+offset}
    NX, NY, D, offset,
    SIZE_BUCKET,  # autotune key only
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows, row_mask = row_block(tl.program_id(0).to(tl.int64), NX, BLOCK_M)
    scale = tl.load(scale_ptr).to(tl.float32)

    # Online log-sum-exp over column tiles (flash-attention style), in fp32:
    #   m_i <- max(m_i, max_j s_ij),  l_i <- l_i * exp(m_old - m_i) + sum_j exp(s_ij - m_i)
    #   lse_i = m_i + log(l_i);  target_i = s_{i, i+offset}, taken from the same tile values
    m = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l = tl.zeros((BLOCK_M,), dtype=tl.float32)
    target = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for n0 in range(0, NY, BLOCK_N):
        cols, col_mask, dot = column_tile(n0, X_ptr, X_stride, rows, row_mask, Y_ptr, Y_stride, NY, D,
                                          BLOCK_M, BLOCK_N, BLOCK_K, UPCAST, PRECISION)
        s = tl.where(col_mask[None, :], dot * scale, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        l = l * tl.exp(m - m_new) + tl.sum(tl.exp(s - m_new[:, None]), axis=1)
        m = m_new
        target += tl.sum(tl.where(cols[None, :] == rows[:, None] + offset, s, 0.0), axis=1)
    tl.store(lse_ptr + rows, m + tl.log(l), mask=row_mask)
    tl.store(target_ptr + rows, target, mask=row_mask)


@triton.autotune(configs=backward_configs(), key=["SIZE_BUCKET", "D", "HAS_ROW", "HAS_COL"],
                 prune_configs_by={"early_config_prune": prune_backward})
@triton.jit
def _info_nce_backward_kernel(
    X_ptr, X_stride,  # (NX, D) rows we differentiate
    Y_ptr, Y_stride,  # (NY, D) rows swept over
    scale_ptr,  # () fp32 logit scale
    grad_row_ptr, lse_row_ptr,  # (NX,) fp32: upstream grad and LSE of the losses of X's rows
    grad_col_ptr, lse_col_ptr,  # (NY,) fp32: upstream grad and LSE of the losses of Y's rows
    dX_ptr, dX_stride,  # (NX, D) out, X's dtype
    dscale_ptr,  # (NX,) fp32 out: row partial sums of dlogits * (x . y)
    NX, NY, D, row_offset, col_offset,
    SIZE_BUCKET,  # autotune key only
    HAS_ROW: tl.constexpr, HAS_COL: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_d = tl.program_id(1).to(tl.int64)
    rows, row_mask = row_block(tl.program_id(0).to(tl.int64), NX, BLOCK_M)
    dims, dim_mask = row_block(pid_d, D, BLOCK_D)
    scale = tl.load(scale_ptr).to(tl.float32)
    if HAS_ROW:
        g_row = tl.load(grad_row_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
        lse_row = tl.load(lse_row_ptr + rows, mask=row_mask, other=0.0)

    # Tiles of s = scale * X Y^T are recomputed and never stored. With P_row = exp(s - lse_row[:, None])
    # and P_col = exp(s - lse_col[None, :]):
    #   dlogits = g_row[:, None] * (P_row - [y == x + row_offset]) + g_col[None, :] * (P_col - [x == y + col_offset])
    #   dX = scale * dlogits @ Y,   dscale_part = sum_y dlogits * (X Y^T)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    dscale = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for n0 in range(0, NY, BLOCK_N):
        cols, col_mask, dot = column_tile(n0, X_ptr, X_stride, rows, row_mask, Y_ptr, Y_stride, NY, D,
                                          BLOCK_M, BLOCK_N, BLOCK_K, UPCAST, PRECISION)
        s = dot * scale
        dlogits = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if HAS_ROW:
            is_target = (cols[None, :] == rows[:, None] + row_offset).to(tl.float32)
            dlogits += g_row[:, None] * (tl.exp(s - lse_row[:, None]) - is_target)
        if HAS_COL:
            g_col = tl.load(grad_col_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
            lse_col = tl.load(lse_col_ptr + cols, mask=col_mask, other=0.0)
            is_target = (rows[:, None] == cols[None, :] + col_offset).to(tl.float32)
            dlogits += g_col[None, :] * (tl.exp(s - lse_col[None, :]) - is_target)
        # Padded rows are never stored; padded columns load y = 0 (so dot = 0) and g_col = 0,
        # hence add nothing to acc or dscale: no mask needed on dlogits.
        dscale += tl.sum(dlogits * dot, axis=1)
        acc = accumulate_dx(acc, dlogits, Y_ptr, Y_stride, cols, col_mask, dims, dim_mask, UPCAST, PRECISION)
    store_dx(dX_ptr, dX_stride, rows, row_mask, dims, dim_mask, acc, scale)
    if pid_d == 0:
        tl.store(dscale_ptr + rows, dscale, mask=row_mask)


def info_nce_sweep_forward(x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, offset: int):
    """(lse, target), both fp32 (NX,): logsumexp_j scale * x_i . y_j and scale * x_i . y_{i+offset}.

    x (NX, D) and y (NY, D) contiguous, same dtype; scale a 0-dim fp32 tensor on their device.
    """
    nx, d = x.shape
    ny = y.shape[0]
    lse = torch.empty(nx, dtype=torch.float32, device=x.device)
    target = torch.empty(nx, dtype=torch.float32, device=x.device)
    _info_nce_forward_kernel[row_grid(nx)](
        x, x.stride(0), y, y.stride(0), scale, lse, target,
        nx, ny, d, int(offset), size_bucket(max(nx, ny)),
        UPCAST=INTERPRET, PRECISION=dot_precision(x.dtype),
    )
    return lse, target


def info_nce_sweep_backward(x, y, scale, row=None, col=None):
    """(dX, dscale_rows) for the losses that involve the tiles scale * x @ y^T.

    row = (grad, lse, offset) of losses indexed by x's rows (x are the queries),
    col = (grad, lse, offset) of losses indexed by y's rows (y are the queries, x the keys);
    either may be None. dX has x's dtype; dscale_rows (NX,) fp32 sums to d loss / d scale.
    """
    nx, d = x.shape
    ny = y.shape[0]
    dx = torch.empty_like(x)
    dscale_rows = torch.empty(nx, dtype=torch.float32, device=x.device)
    unused = torch.empty(0, dtype=torch.float32, device=x.device)
    g_row, lse_row, row_offset = row if row is not None else (unused, unused, 0)
    g_col, lse_col, col_offset = col if col is not None else (unused, unused, 0)
    _info_nce_backward_kernel[row_dim_grid(nx, d)](
        x, x.stride(0), y, y.stride(0), scale,
        g_row, lse_row, g_col, lse_col,
        dx, dx.stride(0), dscale_rows,
        nx, ny, d, int(row_offset), int(col_offset), size_bucket(max(nx, ny)),
        HAS_ROW=row is not None, HAS_COL=col is not None,
        UPCAST=INTERPRET, PRECISION=dot_precision(x.dtype),
    )
    return dx, dscale_rows


def info_nce_forward(q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, offset: int):
    """(loss, lse): loss_i = logsumexp_j(scale * q_i . k_j) - scale * q_i . k_{i+offset}."""
    lse, target = info_nce_sweep_forward(q, k, scale, offset)
    return lse - target, lse


def info_nce_backward(q, k, scale, lse, grad_loss, offset: int, need_dq=True, need_dk=False, need_dscale=True):
    """(dq, dk, dscale) of sum_i grad_loss_i * loss_i; dk (the column sweep) only when asked."""
    grad_loss = grad_loss.to(torch.float32).contiguous()
    dq = dscale = dk = None
    if need_dq or need_dscale:  # the dq sweep also sums d loss / d scale
        dq, dscale_rows = info_nce_sweep_backward(q, k, scale, row=(grad_loss, lse, offset))
        dscale = dscale_rows.sum()
    if need_dk:
        dk = info_nce_sweep_backward(k, q, scale, col=(grad_loss, lse, offset))[0]
    return (dq if need_dq else None), dk, dscale


def check_info_nce_inputs(q, k, offset) -> None:
    check_features("q", q)
    check_features("k", k)
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"q and k must have the same feature dim, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if q.device != k.device:
        raise ValueError(f"q is on {q.device} but k is on {k.device}")
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise TypeError(f"offset must be an int, got {type(offset).__name__}")
    if offset < 0 or offset + q.shape[0] > k.shape[0]:
        raise ValueError(
            f"offset={offset} puts the positives of q's {q.shape[0]} rows outside k's {k.shape[0]} rows")


class InfoNCEFunction(torch.autograd.Function):
    """Per-sample InfoNCE of queries q (B, D) against keys k (M, D):

        loss_i = logsumexp_j(scale * q_i . k_j) - scale * q_i . k_{i+offset}      (fp32, (B,))

    Forward: one sweep over k in (BLOCK_M x BLOCK_N) tiles with an online log-sum-exp; only the
    row LSE (B floats) is saved. Backward recomputes the tiles: with dlogits_ij = g_i (P_ij - [j = i+offset]),
    dq = scale * dlogits @ k (sweep over k), dk = scale * dlogits^T @ q (a second sweep, over q,
    only when k requires grad, e.g. keys all-gathered with gradient), dscale = sum_ij dlogits_ij q_i . k_j.
    Extra memory O(B + M): no B x M buffer. fp32/bf16/fp16 inputs (mixed ones are promoted), fp32
    accumulation; gradients come back in each input's dtype.
    """

    @staticmethod
    @ensure_contiguous
    def forward(ctx, q, k, scale, offset=0):
        check_info_nce_inputs(q, k, offset)
        dtype = common_dtype(q, k)
        ctx.dtypes = (q.dtype, k.dtype)
        ctx.scale_shape = scale.shape if isinstance(scale, torch.Tensor) else None
        scale_t = as_scale_tensor("scale", scale, q.device)
        q, k = q.to(dtype), k.to(dtype)
        loss, lse = info_nce_forward(q, k, scale_t, offset)
        ctx.save_for_backward(q, k, scale_t, lse)
        ctx.offset = offset
        return loss

    @staticmethod
    @first_order_only("info_nce_per_sample (Triton)")  # the backward sweeps are not differentiable themselves
    @ensure_contiguous
    def backward(ctx, grad_loss):
        q, k, scale, lse = ctx.saved_tensors
        need_dq, need_dk, need_dscale = ctx.needs_input_grad[:3]
        dq, dk, dscale = info_nce_backward(q, k, scale, lse, grad_loss, ctx.offset,
                                           need_dq=need_dq, need_dk=need_dk, need_dscale=need_dscale)
        dq = dq.to(ctx.dtypes[0]) if need_dq else None
        dk = dk.to(ctx.dtypes[1]) if need_dk else None
        dscale = dscale.reshape(ctx.scale_shape) if need_dscale and ctx.scale_shape is not None else None
        return dq, dk, dscale, None
