"""The equal-compute budget of `--prune none-matched`: all the data, trained for the sample-steps another run
used, spread evenly over whole epochs.

A run of S sample-steps at global batch B on N samples takes T = S / B steps; a full epoch takes
F = floor(N / B) (the last partial batch is dropped). The matched run trains E = ceil(T / F) epochs, so its
learning-rate schedule (warm-up, then cosine to zero) spans its own, shorter length; epoch e takes
t_e = floor(T / E) steps, one more for the first T mod E epochs, so the epochs differ by at most one step and the
total is exactly T. It keeps t_e B + (N mod B) samples of epoch e (a keyed random subset when short of all of
them): it prunes (F - t_e) B.
"""
import math
from typing import Dict


def _check(num_samples: int, global_batch: int) -> int:
    if global_batch < 1 or num_samples < global_batch:
        raise ValueError(f"a matched budget needs at least one batch: {num_samples} samples, batch {global_batch}")
    return num_samples // global_batch


def matched_epochs(sample_steps: int, num_samples: int, global_batch: int) -> int:
    """E = ceil(T / F): the fewest epochs that hold `sample_steps` (at least 1)."""
    full = _check(num_samples, global_batch)
    return max(1, math.ceil((sample_steps // global_batch) / full))


def matched_prune_counts(sample_steps: int, num_samples: int, global_batch: int, epochs: int) -> Dict[int, int]:
    """{epoch: samples pruned} that train `sample_steps` in `epochs` epochs, spread evenly (module docstring)."""
    full = _check(num_samples, global_batch)
    steps = sample_steps // global_batch
    if sample_steps < 0 or steps * global_batch != sample_steps:
        raise ValueError(f"sample-steps {sample_steps} is not a whole number of batches of {global_batch}")
    if not 1 <= epochs or steps > epochs * full:
        raise ValueError(f"{sample_steps} sample-steps do not fit in {epochs} epochs of {full * global_batch}; "
                         f"--epochs must be at least {matched_epochs(sample_steps, num_samples, global_batch)}")
    base, extra = divmod(steps, epochs)
    return {e: (full - base - (e < extra)) * global_batch for e in range(epochs)}
