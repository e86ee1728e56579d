"""Validation of what callers hand a schedule: clear errors before any state changes."""
import math
import numbers
from typing import Tuple

import numpy as np

_SHOWN_IDS = 5  # how many offending ids an error message lists


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


def to_numpy(name: str, values) -> np.ndarray:
    """numpy view of an array-like or a torch tensor (CPU or CUDA: copied to the host)."""
    if type(values).__module__.startswith("torch"):
        values = values.detach()
        if values.is_floating_point() and values.dtype.itemsize < 4:
            values = values.float()  # numpy has no bfloat16
        values = values.cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def check_batch(sample_ids, loss_a, loss_b, num_samples: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids as int64, loss_a, loss_b as float32/float64) of one batch, or a ValueError/TypeError."""
    ids = to_numpy("sample_ids", sample_ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"sample_ids must have an integer dtype, got {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= num_samples):
        bad = ids[(ids < 0) | (ids >= num_samples)]
        raise ValueError(
            f"sample_ids must be in [0, num_samples={num_samples}); {bad.size} are not, "
            f"first {bad[:_SHOWN_IDS].tolist()}")
    ids = ids.astype(np.int64, copy=False)
    losses = []
    for name, loss in (("loss_a", loss_a), ("loss_b", loss_b)):
        loss = to_numpy(name, loss)
        if not (np.issubdtype(loss.dtype, np.floating) or np.issubdtype(loss.dtype, np.integer)) \
                or loss.dtype == np.bool_:
            raise TypeError(f"{name} must have a real dtype, got {loss.dtype}")
        if loss.shape[0] != ids.shape[0]:
            raise ValueError(f"{name} has {loss.shape[0]} values but sample_ids has {ids.shape[0]}")
        if loss.dtype not in (np.float32, np.float64):
            loss = loss.astype(np.float64)
        finite = np.isfinite(loss)
        if not finite.all():
            bad = ids[~finite]
            raise ValueError(
                f"{name} has {bad.size} non-finite values (NaN/inf), "
                f"at sample ids {bad[:_SHOWN_IDS].tolist()}{' ...' if bad.size > _SHOWN_IDS else ''}")
        losses.append(loss)
    return ids, losses[0], losses[1]
