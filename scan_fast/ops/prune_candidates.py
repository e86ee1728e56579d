"""SCAN's per-batch candidate rule on torch tensors, masks on the input's device.

The rule (see scan_fast/candidates.py, the numpy oracle): per direction, ILL =
the int(B * rho_ill) highest losses, RED = the int(B * rho_red) lowest (or
loss > abs_ill / loss < abs_red), ties to the lower position; per kind,
C = X_a & X_b, topped up at random from (X_a | X_b) - C to |X_a| when
|C| < 0.9 |X_a|. On CUDA the direction sets come from the Triton top-k kernel.
"""
import math
from numbers import Number
from typing import Optional, Tuple

import numpy as np
import torch

from scan_fast.candidates import TOP_UP_FRACTION, batch_candidates_reference, candidate_count
from scan_fast.ops.info_nce import has_triton


def _check_losses(loss_a, loss_b) -> None:
    for name, loss in (("loss_a", loss_a), ("loss_b", loss_b)):
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(loss).__name__}")
        if not loss.is_floating_point():
            raise TypeError(f"{name} must have a floating dtype, got {loss.dtype}")
        if loss.dim() != 1:
            raise ValueError(f"{name} must be 1-D (batch,), got shape {tuple(loss.shape)}")
        if loss.shape[0] == 0:
            raise ValueError(f"{name} is an empty batch")
    if loss_a.shape != loss_b.shape:
        raise ValueError(f"loss_a {tuple(loss_a.shape)} and loss_b {tuple(loss_b.shape)} must have the same length")
    if loss_a.device != loss_b.device:
        raise ValueError(f"loss_a is on {loss_a.device} but loss_b on {loss_b.device}")
    for name, loss in (("loss_a", loss_a), ("loss_b", loss_b)):
        if bool(torch.isnan(loss).any()):
            raise ValueError(f"{name} contains NaN at position {int(torch.isnan(loss).nonzero()[0])}")


def _check_fraction(name: str, rho) -> float:
    if not isinstance(rho, Number) or isinstance(rho, bool):
        raise TypeError(f"{name} must be a number in [0, 1], got {rho!r}")
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {rho}")
    return float(rho)


def _check_threshold(name: str, value) -> Optional[float]:
    if value is None:
        return None
    if not isinstance(value, Number) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number or None, got {value!r}")
    if math.isnan(value):
        raise ValueError(f"{name} is NaN: pass a loss threshold, or None for the rho fraction")
    return float(value)


def prune_candidates_reference(loss_a, loss_b, rho_ill: float = 0.35, rho_red: float = 0.35,
                               rng: Optional[np.random.Generator] = None, abs_ill: Optional[float] = None,
                               abs_red: Optional[float] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The numpy oracle (scan_fast.candidates) on torch tensors; masks on the input's device.

    Its top-up draws from numpy's `rng`, so it equals `prune_candidates` only
    when no top-up happens.
    """
    _check_losses(loss_a, loss_b)
    batch = loss_a.shape[0]
    ill, red = batch_candidates_reference(
        loss_a.detach().double().cpu().numpy(), loss_b.detach().double().cpu().numpy(),
        k_ill=candidate_count(batch, _check_fraction("rho_ill", rho_ill)),
        k_red=candidate_count(batch, _check_fraction("rho_red", rho_red)),
        abs_ill=_check_threshold("abs_ill", abs_ill), abs_red=_check_threshold("abs_red", abs_red), rng=rng)
    return torch.from_numpy(ill).to(loss_a.device), torch.from_numpy(red).to(loss_a.device)


def _extreme_mask(loss: torch.Tensor, k: int, highest: bool) -> torch.Tensor:
    """The k highest (lowest) positions; a stable sort keeps ties in position order."""
    order = torch.sort(loss, descending=highest, stable=True).indices
    mask = torch.zeros(loss.shape[0], dtype=torch.bool, device=loss.device)
    mask[order[:k]] = True
    return mask


def use_kernels(loss: torch.Tensor) -> bool:
    return loss.is_cuda and has_triton()


def _direction_masks(loss: torch.Tensor, k_ill: int, k_red: int) -> Tuple[torch.Tensor, torch.Tensor]:
    if use_kernels(loss):
        from scan_fast.kernels.prune_candidates import direction_masks_triton

        return direction_masks_triton(loss, k_ill, k_red)
    return _extreme_mask(loss, k_ill, highest=True), _extreme_mask(loss, k_red, highest=False)


def _combine(x_a: torch.Tensor, x_b: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """C = X_a & X_b, topped up uniformly from (X_a | X_b) - C to |X_a| when under 90% of it."""
    common = x_a & x_b
    target, have = int(x_a.sum()), int(common.sum())
    if have < TOP_UP_FRACTION * target:
        pool = torch.nonzero(x_a ^ x_b).squeeze(1)  # (X_a | X_b) - C
        device = generator.device if generator is not None else pool.device
        picks = torch.randperm(pool.shape[0], generator=generator, device=device)[: target - have]
        common[pool[picks.to(pool.device)]] = True
    return common


def prune_candidates(loss_a: torch.Tensor, loss_b: torch.Tensor, rho_ill: float = 0.35, rho_red: float = 0.35,
                     generator: Optional[torch.Generator] = None, abs_ill: Optional[float] = None,
                     abs_red: Optional[float] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(ill_mask, red_mask): boolean (B,) masks of this batch's ill-matched and redundant candidates.

    loss_a, loss_b: the two directions' per-sample losses (B,). abs_ill / abs_red
    replace the fractions when set. The top-up draws from `generator` (the
    global torch RNG when None), so a seeded generator gives the same masks.
    """
    _check_losses(loss_a, loss_b)
    rho_ill, rho_red = _check_fraction("rho_ill", rho_ill), _check_fraction("rho_red", rho_red)
    abs_ill, abs_red = _check_threshold("abs_ill", abs_ill), _check_threshold("abs_red", abs_red)
    batch = loss_a.shape[0]
    k_ill, k_red = candidate_count(batch, rho_ill), candidate_count(batch, rho_red)
    loss_a, loss_b = loss_a.detach(), loss_b.detach()
    ill_a, red_a = _direction_masks(loss_a, k_ill, k_red)
    ill_b, red_b = _direction_masks(loss_b, k_ill, k_red)
    if abs_ill is not None:
        ill_a, ill_b = loss_a > abs_ill, loss_b > abs_ill
    if abs_red is not None:
        red_a, red_b = loss_a < abs_red, loss_b < abs_red
    return _combine(ill_a, ill_b, generator), _combine(red_a, red_b, generator)
