"""On-device selection of one direction's prune candidates (SCAN's per-batch rule, step 1).

X_ill = the k_ill highest losses, X_red = the k_red lowest, ties to the lower position and NaN
last in both orders, exactly as `scan_fast.schedule.candidates.direction_set` (numpy lexsort) ranks
them. Combining the two directions and the keyed top-up stay in torch (`scan_fast.schedule.candidates`).
"""
import torch
import triton
import triton.language as tl

from scan_fast.kernels.utils import INTERPRET

# A (BLOCK_I x BLOCK_J) tile of pair comparisons per step; this size compiles without spills.
BLOCK_I_GPU, BLOCK_J_GPU, NUM_WARPS_GPU = 64, 128, 4


@triton.jit
def _direction_masks_kernel(
    loss_ptr,  # (N,) fp32 or fp64 per-sample losses of one direction
    ill_ptr,  # (N,) uint8 out: 1 where the position is among the k_ill highest
    red_ptr,  # (N,) uint8 out: 1 where the position is among the k_red lowest
    N, k_ill, k_red,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    # Positions fit int32 (checked by the launcher); int32 pair tiles halve the registers.
    i = (pid * BLOCK_I).to(tl.int32) + tl.arange(0, BLOCK_I)
    i_mask = i < N
    li = tl.load(loss_ptr + i, mask=i_mask, other=0.0)
    nan_i = li != li

    # Exact ranks by counting, no sort: rank_high_i = #{j ahead of i in descending order},
    # rank_low_i = #{j ahead of i in ascending order}; j is ahead on a strictly more extreme
    # value, or on an equal value (NaN equals NaN) at a lower position; NaN is last either way.
    #   ill_i = rank_high_i < k_ill,   red_i = rank_low_i < k_red
    rank_high = tl.zeros((BLOCK_I,), dtype=tl.int32)
    rank_low = tl.zeros((BLOCK_I,), dtype=tl.int32)
    for j0 in range(0, N, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        j_mask = j < N
        lj = tl.load(loss_ptr + j, mask=j_mask, other=0.0)
        nan_j = lj != lj
        lower_position = j[None, :] < i[:, None]
        both_numbers = (~nan_i[:, None]) & (~nan_j[None, :])
        number_before_nan = (~nan_j[None, :]) & nan_i[:, None]
        tie = (lj[None, :] == li[:, None]) | (nan_j[None, :] & nan_i[:, None])
        tie_ahead = tie & lower_position
        higher = both_numbers & (lj[None, :] > li[:, None])
        lower = both_numbers & (lj[None, :] < li[:, None])
        ahead_high = (higher | number_before_nan | tie_ahead) & j_mask[None, :]
        ahead_low = (lower | number_before_nan | tie_ahead) & j_mask[None, :]
        rank_high += tl.sum(ahead_high.to(tl.int32), axis=1)
        rank_low += tl.sum(ahead_low.to(tl.int32), axis=1)
    tl.store(ill_ptr + i, (rank_high < k_ill).to(tl.uint8), mask=i_mask)
    tl.store(red_ptr + i, (rank_low < k_red).to(tl.uint8), mask=i_mask)


def direction_masks_forward(loss: torch.Tensor, k_ill: int, k_red: int):
    """(ill, red) bool masks of shape (N,) on loss's device. O(N^2 / BLOCK) work, O(N) memory."""
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"loss must be a torch.Tensor, got {type(loss).__name__}")
    if loss.dim() != 1:
        raise ValueError(f"loss must be 1-D (batch,), got shape {tuple(loss.shape)}")
    if not loss.is_floating_point():
        raise TypeError(f"loss must be floating point, got {loss.dtype}")
    n = loss.shape[0]
    if n >= 2**31:
        raise ValueError(f"loss has {n} entries; batch positions must fit int32")
    for name, k in (("k_ill", k_ill), ("k_red", k_red)):
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"{name} must be an int, got {type(k).__name__}")
        if not 0 <= k <= n:
            raise ValueError(f"{name}={k} must lie in [0, {n}] (the batch size)")
    # fp16/bf16 -> fp32 is exact, so ranks and ties do not change; fp64 is compared as is.
    loss = loss.detach().to(torch.float64 if loss.dtype == torch.float64 else torch.float32).contiguous()
    ill = torch.empty(n, dtype=torch.uint8, device=loss.device)
    red = torch.empty(n, dtype=torch.uint8, device=loss.device)
    if n == 0:
        return ill.bool(), red.bool()
    block_i, block_j = (64, 128) if INTERPRET else (BLOCK_I_GPU, BLOCK_J_GPU)
    grid = (triton.cdiv(n, block_i),)
    _direction_masks_kernel[grid](loss, ill, red, n, k_ill, k_red, BLOCK_I=block_i, BLOCK_J=block_j,
                                  num_warps=NUM_WARPS_GPU)
    return ill.view(torch.bool), red.view(torch.bool)


def direction_masks_triton(loss: torch.Tensor, k_ill: int, k_red: int):
    """The k_ill highest and k_red lowest losses of one direction as bool masks on loss's device.

    Ties go to the lower position and NaN ranks last in both orders (the rule of
    `scan_fast.schedule.candidates.direction_set`); deterministic, no host sync.
    """
    return direction_masks_forward(loss, k_ill, k_red)
