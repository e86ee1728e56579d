"""Validation of what callers hand a schedule: clear errors before any state changes."""
import math
import numbers
from typing import Optional, Tuple

import numpy as np

_SHOWN_IDS = 5  # how many offending ids an error message lists
_LOSS_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_int(name: str, value, minimum: int = None, maximum: int = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_real(name: str, value, finite: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        # torch / numpy 0-d values are not numbers.Real but convert cleanly
        if getattr(value, "ndim", None) == 0 or getattr(value, "shape", None) == ():
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if finite and not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_fraction(name: str, value, below_one: bool = False) -> float:
    """A real number in [0, 1] (or [0, 1) with below_one)."""
    value = check_real(name, value)
    if not (0.0 <= value < 1.0 if below_one else 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in {'[0, 1)' if below_one else '[0, 1]'}, got {value}")
    return value


_RHO_SUM_SLACK = 1e-12  # 0.35 + 0.65 must pass despite binary rounding


def check_rho_pair(rho_ill: float, rho_red: float) -> Tuple[float, float]:
    """SCAN's two candidate fractions: a sample is pruned as one kind or the other, so they sum to <= 1."""
    if rho_ill + rho_red > 1.0 + _RHO_SUM_SLACK:
        raise ValueError(f"rho_ill + rho_red must be <= 1, got {rho_ill} + {rho_red}")
    return rho_ill, rho_red


FLOAT32_MAX = 3.4028234663852886e38  # knobs compared with float32 losses on the device must fit in float32


def check_threshold(name: str, value) -> Optional[float]:
    """An absolute loss threshold: None, or a finite number > 0 that fits in float32.

    Per-sample losses are >= 0, so a threshold <= 0 would make every sample ill-matched
    (abs_ill) or none redundant (abs_red).
    """
    if value is None:
        return None
    value = check_real(name, value)
    if not 0.0 < value <= FLOAT32_MAX:
        raise ValueError(f"{name} must be a loss value > 0 (per-sample losses are >= 0) that fits in float32, "
                         f"got {value}")
    return value


def check_prune_threshold(name: str, value) -> float:
    """The warm-up's relative loss drop threshold, in [0, 1]: below 0 warm-up could never end, and a
    relative drop of non-negative losses is at most 1."""
    value = check_real(name, value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1] (a relative drop of the epoch loss), got {value}")
    return value


def check_u64(name: str, value) -> int:
    """A seed or stream number: an integer in [0, 2**64)."""
    return check_int(name, value, minimum=0, maximum=2**64 - 1)


def to_numpy(name: str, values) -> np.ndarray:
    """numpy view of an array-like or a torch tensor (CPU or CUDA: copied to the host)."""
    if type(values) is not np.ndarray:
        if type(values).__module__.startswith("torch"):
            values = values.detach()
            if values.is_floating_point() and values.dtype.itemsize < 4:
                values = values.float()  # numpy has no bfloat16
            values = values.cpu().numpy()
        values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {values.shape}")
    return values


def _check_ids(ids: np.ndarray, num_samples: int) -> np.ndarray:
    if ids.size == 0:
        return np.empty(0, dtype=np.int64)  # [] carries no integer dtype
    if ids.dtype.kind not in "iu":
        raise TypeError(f"sample_ids must have an integer dtype, got {ids.dtype}")
    # one pass: viewed as unsigned, negative ids wrap to values >= num_samples
    if ids.view(f"u{ids.dtype.itemsize}").max() >= num_samples:
        bad = ids[(ids < 0) | (ids >= num_samples)]
        raise ValueError(
            f"sample_ids must be in [0, num_samples={num_samples}); {bad.size} are not, "
            f"first {bad[:_SHOWN_IDS].tolist()}")
    return ids.astype(np.int64, copy=False)


def _check_loss(name: str, loss: np.ndarray, ids: np.ndarray) -> np.ndarray:
    if loss.dtype not in _LOSS_DTYPES:
        if loss.dtype.kind not in "iuf":
            raise TypeError(f"{name} must have a real dtype, got {loss.dtype}")
        loss = loss.astype(np.float64)
    if loss.shape[0] != ids.shape[0]:
        raise ValueError(f"{name} has {loss.shape[0]} values but sample_ids has {ids.shape[0]}")
    # one pass: the sum is finite when every value is (if it overflows, look closer before complaining)
    if not math.isfinite(np.add.reduce(loss)):
        bad = ids[~np.isfinite(loss)]
        if bad.size:
            raise ValueError(
                f"{name} has {bad.size} non-finite values (NaN/inf), "
                f"at sample ids {bad[:_SHOWN_IDS].tolist()}{' ...' if bad.size > _SHOWN_IDS else ''}")
    return loss


def check_batch(sample_ids, loss_a, loss_b, num_samples: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids as int64, loss_a, loss_b as float32/float64) of one batch, or a ValueError/TypeError.

    Runs once per training batch, so each check is a single pass over the batch.
    """
    ids = _check_ids(to_numpy("sample_ids", sample_ids), num_samples)
    return ids, _check_loss("loss_a", to_numpy("loss_a", loss_a), ids), \
        _check_loss("loss_b", to_numpy("loss_b", loss_b), ids)
