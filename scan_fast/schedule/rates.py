"""Schedule arithmetic shared by every pruning schedule: small pure functions.

Like a learning-rate ramp, each is a function of the epoch (and the epoch at
which pruning started), so a resumed run recomputes the same values.
"""
import math
from typing import NamedTuple, Optional, Tuple

WARMUP, PREPARATION, MUTATION = "warmup", "preparation", "mutation"
PHASES = (WARMUP, PREPARATION, MUTATION)

# Random streams: one per mutation epoch (the prune sample) and one per
# preparation batch (the top-up), never shared, so no draw depends on another.
_EPOCH_STRIDE = 1 << 32


def cosine_rate(position: int, t_cos: int) -> float:
    """Share of the candidates pruned at mutation position j in 1..t_cos of a cycle.

    rate(j) = 0.5 (1 + cos(pi (t_cos - j) / t_cos)); for t_cos = 3: 0.25, 0.75, 1.0.
    Rounded to 12 digits so that exact values (0.25) are exact in binary too.
    """
    if not 1 <= position <= t_cos:
        raise ValueError(f"position must be in 1..t_cos={t_cos}, got {position}")
    return round(0.5 * (1.0 + math.cos(math.pi * (t_cos - position) / t_cos)), 12)


def prune_count(rate: float, num_candidates: int) -> int:
    """round-down(rate * |candidates|): how many candidates a mutation epoch prunes."""
    return math.floor(rate * num_candidates)


class EpochPhase(NamedTuple):
    """An epoch's phase (WARMUP, PREPARATION or MUTATION) and its position in the cycle: 0 for warm-up and
    preparation epochs, 1..t_cos for mutation epochs."""
    phase: str
    position: int


def epoch_phase(epoch: int, start: Optional[int], t_cos: int) -> EpochPhase:
    """EpochPhase(phase, position) of an epoch; cycles of t_cos + 1 epochs begin at `start`."""
    if start is None or epoch < start:
        return EpochPhase(WARMUP, 0)
    position = (epoch - start) % (t_cos + 1)
    return EpochPhase(PREPARATION, 0) if position == 0 else EpochPhase(MUTATION, position)


def relative_loss_drop(prev_loss: float, loss: float) -> float:
    """(L_prev - L) / L_prev; a zero L_prev counts as no drop."""
    return 0.0 if prev_loss == 0 else (prev_loss - loss) / prev_loss


def warmup_step(prev_loss: float, loss: float, prune_threshold: float) -> Tuple[bool, float]:
    """One warm-up test: (pruning starts next epoch, L_prev for the next test).

    L_prev starts at +inf, so the first warm-up epoch never ends warm-up.
    """
    if math.isfinite(prev_loss) and relative_loss_drop(prev_loss, loss) < prune_threshold:
        return True, prev_loss
    return False, loss


# The first warm-up epoch never ends warm-up, so pruning starts at epoch 2 at the earliest (a preparation
# epoch) and epoch 3 is the earliest mutation epoch.
EARLIEST_MUTATION = 3


def fewest_kept_in_cycles(num_samples: int, epochs: int, t_cos: int, global_batch: int, per_batch: int) -> int:
    """The fewest ids any epoch of a run of `epochs` can keep under SCAN's cycle (Scan, and RandomPruning
    without given counts).

    A preparation epoch trains num_samples // global_batch global batches and takes at most `per_batch`
    candidates from each; a mutation epoch at position j prunes floor(rate(j) x candidates). The largest
    position the run can reach is min(t_cos, epochs - EARLIEST_MUTATION).
    """
    last_position = min(t_cos, epochs - EARLIEST_MUTATION)
    if last_position < 1:
        return num_samples
    candidates = min(num_samples, num_samples // global_batch * per_batch)
    return num_samples - prune_count(cosine_rate(last_position, t_cos), candidates)


def mutation_stream(epoch: int) -> int:
    """Random stream of a mutation epoch's prune sample."""
    return epoch * _EPOCH_STRIDE


def batch_stream(epoch: int, batch_index: int) -> int:
    """Random stream of the top-up of batch `batch_index` of a preparation epoch."""
    return epoch * _EPOCH_STRIDE + batch_index + 1
