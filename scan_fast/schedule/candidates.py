"""SCAN's per-batch candidate rule: its one definition, the numpy oracle and the dispatch.

For each direction d in {a, b} (CLIP: image-to-text / text-to-image; MoCo: the two views),
X_d is a set of in-batch positions:

    ILL_d = the k_ill positions with the highest loss   (or loss > abs_ill, compared in float64)
    RED_d = the k_red positions with the lowest loss    (or loss < abs_red)

ties broken by the lower position first. For each kind X in {ILL, RED}, with C_X = X_a & X_b:

    if 10 |C_X| < 9 |X_a|  (under 90%): add the |X_a| - |C_X| positions of (X_a | X_b) - C_X
                                         with the smallest keyed hash h(seed, stream, kind, position)

where h is `scan_fast.keyed_hash` (the C++ engine's `CounterRng`): the top-up is a pure function
of (seed, stream, position), so the three implementations agree bit for bit:

- `batch_candidates_reference`: the oracle, plain numpy;
- `batch_candidates`: host arrays, through the C++ engine (`scan_fast.index`);
- `prune_candidates`: torch tensors on any device, masks stay there, no host synchronisation
  (the direction sets from the Triton kernel on CUDA, a stable sort elsewhere).

Losses must be finite: NaN/inf is the caller's check (the engine raises on it; the device op
does not look, since that would stall the GPU).
"""
from typing import Optional, Tuple

import numpy as np
import torch

from scan_fast.checks import check_batch_tensor, has_triton
from scan_fast.index import batch_candidates  # noqa: F401  (the engine: host arrays)
from scan_fast.keyed_hash import SIGN_BIT, TOP_UP_ILL, TOP_UP_RED, counter_hashes, stream_key
from scan_fast.schedule.inputs import check_fraction, check_rho_pair, check_threshold, check_u64

# Top-up when |C| < 9/10 |X_a|, compared in integers so every implementation agrees exactly.
TOP_UP_BELOW = (9, 10)


def candidate_count(batch_size: int, rho: float) -> int:
    """int(B * rho), as the public code does."""
    return int(batch_size * rho)


def needs_top_up(have, target):
    """|C| < 0.9 |X_a| in exact integer arithmetic (ints, numpy or torch values)."""
    return have * TOP_UP_BELOW[1] < target * TOP_UP_BELOW[0]


# ----------------------------------------------------------------------------- oracle (numpy)


def _extreme_positions(loss: np.ndarray, k: int, highest: bool) -> np.ndarray:
    """Positions of the k highest (or lowest) losses, ties to the lower position."""
    positions = np.arange(loss.shape[0])
    key = -loss if highest else loss
    order = np.lexsort((positions, key))  # last key is the primary one
    return order[:k]


def direction_set(loss: np.ndarray, k: Optional[int], threshold: Optional[float], highest: bool) -> np.ndarray:
    """Boolean mask of X_d: the k extreme positions, or those beyond the absolute threshold."""
    mask = np.zeros(loss.shape[0], dtype=bool)
    if threshold is not None:
        mask[:] = loss > threshold if highest else loss < threshold
    else:
        mask[_extreme_positions(loss, int(k), highest)] = True
    return mask


def combine_directions(x_a: np.ndarray, x_b: np.ndarray, key: int) -> np.ndarray:
    """C = X_a & X_b, topped up to |X_a| with the smallest-hash positions of (X_a | X_b) - C."""
    common = x_a & x_b
    target, have = int(x_a.sum()), int(common.sum())
    if needs_top_up(have, target):
        pool = np.flatnonzero(x_a ^ x_b)
        hashes = counter_hashes(key, pool.astype(np.int64)).view(np.uint64)
        common = common.copy()
        common[pool[np.argsort(hashes, kind="stable")[: target - have]]] = True
    return common


def batch_candidates_reference(loss_a, loss_b, *, k_ill: Optional[int] = None, k_red: Optional[int] = None,
                               abs_ill: Optional[float] = None, abs_red: Optional[float] = None,
                               seed: int = 0, stream: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(ill_mask, red_mask) over the batch positions. Either k or abs is given per kind."""
    loss_a = np.asarray(loss_a, dtype=np.float64)
    loss_b = np.asarray(loss_b, dtype=np.float64)
    ill = combine_directions(direction_set(loss_a, k_ill, abs_ill, highest=True),
                             direction_set(loss_b, k_ill, abs_ill, highest=True),
                             stream_key(seed, stream, TOP_UP_ILL))
    red = combine_directions(direction_set(loss_a, k_red, abs_red, highest=False),
                             direction_set(loss_b, k_red, abs_red, highest=False),
                             stream_key(seed, stream, TOP_UP_RED))
    return ill, red


# ----------------------------------------------------------------------------- host arrays: the engine
# `batch_candidates` (imported above) is the rule on host arrays by the C++ engine (threads, radix
# select), re-exported without a wrapper: the schedule calls it once per batch.


# ----------------------------------------------------------------------------- torch: any device, no sync


def _check_losses(loss_a, loss_b) -> None:
    """Type, shape and device only: free on any device (values are the caller's check)."""
    for name, loss in (("loss_a", loss_a), ("loss_b", loss_b)):
        check_batch_tensor(name, loss, 1, "(batch,)")
    if loss_a.shape != loss_b.shape:
        raise ValueError(f"loss_a {tuple(loss_a.shape)} and loss_b {tuple(loss_b.shape)} must have the same length")
    if loss_a.device != loss_b.device:
        raise ValueError(f"loss_a is on {loss_a.device} but loss_b on {loss_b.device}")


def _extreme_mask(loss: torch.Tensor, k: int, highest: bool) -> torch.Tensor:
    """The k highest (lowest) positions; a stable sort keeps ties in position order."""
    order = torch.sort(loss, descending=highest, stable=True).indices
    mask = torch.zeros(loss.shape[0], dtype=torch.bool, device=loss.device)
    mask[order[:k]] = True
    return mask


def _direction(loss: torch.Tensor, k_ill, k_red, abs_ill, abs_red, use_kernel: bool):
    """(ILL_d, RED_d) of one direction as bool masks on loss's device."""
    if use_kernel:
        from scan_fast.kernels.prune_candidates import direction_masks_triton

        ill, red = direction_masks_triton(loss, k_ill, k_red)
    else:
        ill, red = _extreme_mask(loss, k_ill, highest=True), _extreme_mask(loss, k_red, highest=False)
    if abs_ill is not None:  # float64 comparison, as the oracle and the engine
        ill = loss.double() > abs_ill
    if abs_red is not None:
        red = loss.double() < abs_red
    return ill, red


def _combine(x_a: torch.Tensor, x_b: torch.Tensor, key: int) -> torch.Tensor:
    """C = X_a & X_b plus the `need` smallest-hash positions of the pool, all on the device.

    The number to add is a device value, so the pool is ranked by hash (a sort) and the
    first `need` ranks taken with a comparison: no data-dependent shape, no host read.
    """
    positions = torch.arange(x_a.shape[0], device=x_a.device)
    common, pool = x_a & x_b, x_a ^ x_b  # (X_a | X_b) - C
    target, have = x_a.sum(), common.sum()
    need = torch.where(needs_top_up(have, target), target - have, 0)
    hashes = counter_hashes(key, positions) ^ SIGN_BIT  # signed order of these = unsigned order of the hashes
    order = torch.argsort(torch.where(pool, hashes, torch.iinfo(torch.int64).max))
    # rank within the pool: hashes are distinct (a bijection of the position), so this is exact
    pool_rank = torch.empty_like(positions).scatter_(0, order, torch.cumsum(pool[order], 0) - 1)
    return common | (pool & (pool_rank < need))


def masks_on_device(loss_a: torch.Tensor, loss_b: torch.Tensor, *, k_ill: Optional[int], k_red: Optional[int],
                    abs_ill: Optional[float], abs_red: Optional[float], seed: int, stream: int,
                    use_kernel: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """The rule on checked torch losses; counts and thresholds as `batch_candidates` takes them."""
    batch = loss_a.shape[0]
    k_ill = batch if k_ill is None else k_ill  # unused where a threshold rules; any valid k will do
    k_red = batch if k_red is None else k_red
    loss_a, loss_b = loss_a.detach(), loss_b.detach()
    ill_a, red_a = _direction(loss_a, k_ill, k_red, abs_ill, abs_red, use_kernel)
    ill_b, red_b = _direction(loss_b, k_ill, k_red, abs_ill, abs_red, use_kernel)
    return (_combine(ill_a, ill_b, stream_key(seed, stream, TOP_UP_ILL)),
            _combine(red_a, red_b, stream_key(seed, stream, TOP_UP_RED)))


def use_kernel(loss: torch.Tensor) -> bool:
    return loss.is_cuda and has_triton()


def prune_candidates(loss_a: torch.Tensor, loss_b: torch.Tensor, rho_ill: float = 0.35, rho_red: float = 0.35,
                     *, seed: int = 0, stream: int = 0, abs_ill: Optional[float] = None,
                     abs_red: Optional[float] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(ill_mask, red_mask): boolean (B,) masks of this batch's ill-matched and redundant candidates.

    loss_a, loss_b: the two directions' per-sample losses (B,), finite (not checked: the
    masks stay on the losses' device and nothing is read back). abs_ill / abs_red replace the
    fractions when set. The top-up is fixed by (seed, stream): the same masks as the C++
    engine (`batch_candidates`) and the oracle, on every device.
    """
    _check_losses(loss_a, loss_b)
    rho_ill, rho_red = check_rho_pair(check_fraction("rho_ill", rho_ill), check_fraction("rho_red", rho_red))
    abs_ill, abs_red = check_threshold("abs_ill", abs_ill), check_threshold("abs_red", abs_red)
    seed, stream = check_u64("seed", seed), check_u64("stream", stream)
    batch = loss_a.shape[0]
    return masks_on_device(loss_a, loss_b, k_ill=candidate_count(batch, rho_ill),
                           k_red=candidate_count(batch, rho_red), abs_ill=abs_ill, abs_red=abs_red,
                           seed=seed, stream=stream, use_kernel=use_kernel(loss_a))


def prune_candidates_reference(loss_a, loss_b, rho_ill: float = 0.35, rho_red: float = 0.35, *, seed: int = 0,
                               stream: int = 0, abs_ill: Optional[float] = None,
                               abs_red: Optional[float] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The numpy oracle on torch tensors (copied to the host); masks on the input's device."""
    _check_losses(loss_a, loss_b)
    rho_ill, rho_red = check_rho_pair(check_fraction("rho_ill", rho_ill), check_fraction("rho_red", rho_red))
    batch = loss_a.shape[0]
    ill, red = batch_candidates_reference(
        loss_a.detach().double().cpu().numpy(), loss_b.detach().double().cpu().numpy(),
        k_ill=candidate_count(batch, rho_ill), k_red=candidate_count(batch, rho_red),
        abs_ill=check_threshold("abs_ill", abs_ill), abs_red=check_threshold("abs_red", abs_red),
        seed=check_u64("seed", seed), stream=check_u64("stream", stream))
    return torch.from_numpy(ill).to(loss_a.device), torch.from_numpy(red).to(loss_a.device)
