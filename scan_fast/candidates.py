"""The per-batch candidate rule of SCAN's preparation epochs (plain reference).

For each direction d in {a, b} (CLIP: image-to-text / text-to-image; MoCo: the
two views), X_d is a set of in-batch positions:

    ILL_d = the k_ill positions with the highest loss   (or loss > abs_ill)
    RED_d = the k_red positions with the lowest loss    (or loss < abs_red)

ties broken by the lower position first. For each kind X in {ILL, RED}:

    C_X = X_a & X_b
    if |C_X| < 0.9 * |X_a|: add |X_a| - |C_X| positions drawn uniformly without
                            replacement from (X_a | X_b) - C_X

This module is the oracle: the C++ engine (`scan_fast.index.batch_candidates`)
and the torch/Triton op (`scan_fast.prune_candidates`) implement the same rule,
each with its own seeded random source for the top-up.
"""
from typing import Optional, Tuple

import numpy as np

TOP_UP_FRACTION = 0.9


def candidate_count(batch_size: int, rho: float) -> int:
    """int(B * rho), as the public code does."""
    return int(batch_size * rho)


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


def combine_directions(x_a: np.ndarray, x_b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """C = X_a & X_b, topped up at random from (X_a | X_b) - C to |X_a| when under 90%."""
    common = x_a & x_b
    target = int(x_a.sum())
    have = int(common.sum())
    if have < TOP_UP_FRACTION * target:
        pool = np.flatnonzero((x_a | x_b) & ~common)
        common = common.copy()
        common[rng.choice(pool, size=target - have, replace=False)] = True
    return common


def batch_candidates_reference(
    loss_a: np.ndarray,
    loss_b: np.ndarray,
    *,
    k_ill: Optional[int] = None,
    k_red: Optional[int] = None,
    abs_ill: Optional[float] = None,
    abs_red: Optional[float] = None,
    rng: Optional[np.random.Generator] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """(ill_mask, red_mask) over the batch positions. Either k or abs is given per kind."""
    rng = rng if rng is not None else np.random.default_rng(0)
    loss_a = np.asarray(loss_a, dtype=np.float64)
    loss_b = np.asarray(loss_b, dtype=np.float64)
    ill = combine_directions(
        direction_set(loss_a, k_ill, abs_ill, highest=True),
        direction_set(loss_b, k_ill, abs_ill, highest=True),
        rng,
    )
    red = combine_directions(
        direction_set(loss_a, k_red, abs_red, highest=False),
        direction_set(loss_b, k_red, abs_red, highest=False),
        rng,
    )
    return ill, red
