"""Tile code shared by the tiled per-sample loss kernels (`info_nce.py` for CLIP / MoCo, `siglip_loss.py`).

Both losses sweep (BLOCK_M x BLOCK_N) tiles of X @ Y^T that are recomputed, never stored; they
differ only in what they do with a tile (their epilogues). Shared here:

- the autotune configs of the forward and backward sweeps and their pruning to the device's
  shared memory (`forward_configs`, `backward_configs`, `prune_forward`, `prune_backward`);
- the tile dot product (`tile_dot`, with `mma`, the one place that picks the dot's precision) and
  a sweep's step to its next column tile (`column_tile`);
- the twin steps of the backward sweeps: a row block's positions (`row_block`), dX += dlogits @ Y
  (`accumulate_dx`) and the scaled dX store (`store_dx`), and their launch grids.
"""
import functools

import torch
import triton
import triton.language as tl

from scan_fast.kernels.utils import AUTOTUNE, INTERPRET


def forward_configs():
    if INTERPRET:  # one config: the interpreter would otherwise "benchmark" every one of them
        return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=1)]
    # Hopper (H100) and Ampere (A100) both like 128x128 tiles with 64-wide K steps for bf16,
    # smaller tiles help small batches fill the SMs. Configs that do not fit the GPU's shared memory
    # are pruned; with SCAN_FAST_AUTOTUNE=0 the first remaining one runs.
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
        for bm, bn, bk, w, s in [
            (128, 128, 64, 8, 3),
            (128, 128, 32, 8, 4),
            (128, 64, 64, 4, 3),
            (64, 128, 64, 4, 3),
            (64, 64, 64, 4, 4),
            (64, 64, 32, 4, 2),
        ]
    ]


def backward_configs():
    if INTERPRET:  # BLOCK_K/BLOCK_D below 64 so the tests exercise the K loop and the D grid
        return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "BLOCK_D": 32}, num_warps=4, num_stages=1)]
    # BLOCK_D below D makes each D block recompute the tiles of S, so wide BLOCK_D (a 64 x 512 fp32
    # accumulator is 128 registers a thread at 8 warps) competes with smaller, spill-free ones.
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_D": bd}, num_warps=w, num_stages=s)
        for bm, bn, bk, bd, w, s in [
            (64, 64, 64, 256, 8, 2),
            (128, 64, 64, 128, 8, 2),
            (128, 64, 64, 256, 8, 2),
            (64, 64, 64, 512, 8, 2),
            (64, 64, 64, 128, 4, 3),
            (128, 128, 32, 128, 8, 2),
            (64, 32, 64, 64, 4, 3),
        ]
    ]


@functools.lru_cache(maxsize=None)
def max_shared_memory(device: torch.device) -> int:
    index = device.index if device.index is not None else torch.cuda.current_device()
    return triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"]


def shared_memory_bytes(config, elem_size: int, backward: bool) -> int:
    """Upper estimate of a config's shared memory: every operand tile pipelined num_stages deep, plus
    one transposed key tile (ptxas for sm_80/sm_90 reports at most this for the configs above;
    bench/kernels_ptxas_report.py checks it for every kernel)."""
    kw = config.kwargs
    tiles = (kw["BLOCK_M"] + kw["BLOCK_N"]) * kw["BLOCK_K"] + (kw["BLOCK_N"] * kw["BLOCK_D"] if backward else 0)
    return (config.num_stages * tiles + kw["BLOCK_N"] * kw["BLOCK_K"]) * elem_size


def _prune(configs, named_args, backward: bool):
    x = named_args["X_ptr"]
    limit = max_shared_memory(x.device)
    fits = [c for c in configs if shared_memory_bytes(c, x.element_size(), backward) <= limit] or configs[-1:]
    # K steps or D blocks wider than the (padded) feature dim only load masked zeros.
    d = triton.next_power_of_2(named_args["D"])
    kept = fits
    for name in ("BLOCK_K", "BLOCK_D") if backward else ("BLOCK_K",):
        cap = max(d, min(c.kwargs[name] for c in kept))
        kept = [c for c in kept if c.kwargs[name] <= cap]
    return kept if AUTOTUNE else kept[:1]


def prune_forward(configs, named_args, **kwargs):
    return _prune(configs, named_args, backward=False)


def prune_backward(configs, named_args, **kwargs):
    return _prune(configs, named_args, backward=True)


def row_grid(nx: int):
    """Launch grid of a forward sweep: one program per BLOCK_M rows of X."""
    return lambda meta: (triton.cdiv(nx, meta["BLOCK_M"]),)


def row_dim_grid(nx: int, d: int):
    """Launch grid of a backward sweep: one program per BLOCK_M rows and BLOCK_D feature columns of dX."""
    return lambda meta: (triton.cdiv(nx, meta["BLOCK_M"]), triton.cdiv(d, meta["BLOCK_D"]))


@triton.jit
def mma(a, b, acc, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    # The interpreter multiplies bf16 tiles wrongly; fp32 products of bf16/fp16 values are
    # exact, which is also what the tensor cores compute, so upcasting there changes nothing.
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def row_block(pid, N, BLOCK: tl.constexpr):
    # (positions, in-bounds mask) of block `pid` of BLOCK positions, int64 so offsets never overflow
    positions = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    return positions, positions < N


@triton.jit
def tile_dot(
    X_ptr, X_stride, rows, row_mask,
    Y_ptr, Y_stride, cols, col_mask,
    D,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    # dot[m, n] = sum_k X[rows[m], k] * Y[cols[n], k], accumulated in fp32 over K steps.
    dot = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < D
        x = tl.load(X_ptr + rows[:, None] * X_stride + ks[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        y = tl.load(Y_ptr + cols[:, None] * Y_stride + ks[None, :], mask=col_mask[:, None] & k_mask[None, :], other=0.0)
        dot = mma(x, tl.trans(y), dot, UPCAST, PRECISION)
    return dot


@triton.jit
def column_tile(
    n0, X_ptr, X_stride, rows, row_mask, Y_ptr, Y_stride, NY, D,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    # The sweep's tile at columns n0 .. n0 + BLOCK_N: (cols, col_mask, X[rows] . Y[cols]^T in fp32).
    cols = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
    col_mask = cols < NY
    dot = tile_dot(X_ptr, X_stride, rows, row_mask, Y_ptr, Y_stride, cols, col_mask, D,
                   BLOCK_M, BLOCK_N, BLOCK_K, UPCAST, PRECISION)
    return cols, col_mask, dot


@triton.jit
def accumulate_dx(
    acc, dlogits,  # (BLOCK_M, BLOCK_D) fp32 accumulator, (BLOCK_M, BLOCK_N) fp32 d loss / d (x . y) tile
    Y_ptr, Y_stride, cols, col_mask, dims, dim_mask,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    # acc += dlogits @ Y[cols, dims]. As flash attention does with P, the tensor cores take
    # dlogits in the input dtype.
    y = tl.load(Y_ptr + cols[:, None] * Y_stride + dims[None, :], mask=col_mask[:, None] & dim_mask[None, :], other=0.0)
    return mma(dlogits.to(y.dtype), y, acc, UPCAST, PRECISION)


@triton.jit
def store_dx(dX_ptr, dX_stride, rows, row_mask, dims, dim_mask, acc, scale):
    # dX[rows, dims] = scale * acc, in dX's dtype
    tl.store(dX_ptr + rows[:, None] * dX_stride + dims[None, :], (acc * scale).to(dX_ptr.dtype.element_ty),
             mask=row_mask[:, None] & dim_mask[None, :])
