"""One training epoch, shared by the CLIP and MoCo trainers (after moco-v3's main_moco.py).

The model's forward returns the two per-sample loss vectors of its rows; the
loop reduces them (weighted when the schedule asks, as InfoBatch does), steps
the optimizer, and feeds every batch's per-sample losses, gathered across
ranks, to the pruning schedule so that every rank takes the same decisions.
The learning rate is a pure function of the fractional epoch, so an epoch that
pruning made shorter still follows the same warm-up + cosine curve.
"""
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist


def lr_at(epoch: float, base_lr: float, warmup_epochs: float, epochs: int, min_lr: float = 0.0) -> float:
    """Linear warm-up to base_lr over warmup_epochs, then half-cosine down to min_lr at `epochs`."""
    if epoch < warmup_epochs:
        return base_lr * epoch / warmup_epochs
    span = max(epochs - warmup_epochs, 1e-12)
    progress = min(max((epoch - warmup_epochs) / span, 0.0), 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class NonFiniteLoss(RuntimeError):
    """The loss of a step is NaN or infinite; training stops before the optimizer steps."""

    def __init__(self, epoch: int, step: int, global_step: int, value: float):
        super().__init__(f"non-finite loss {value} at epoch {epoch}, step {step} of the epoch "
                         f"(global step {global_step}); the optimizer did not take that step")
        self.epoch, self.step, self.global_step, self.value = epoch, step, global_step, value


@dataclass
class EpochResult:
    epoch: int
    steps: int = 0
    samples: int = 0            # sample-steps over all ranks
    loss_sum: float = 0.0       # of the unweighted per-sample losses, over all ranks
    seconds: float = 0.0
    cpu_seconds: float = 0.0    # this process, all threads: less sensitive than wall time to other load
    ids: list = field(default_factory=list)     # per batch, all ranks (numpy int64)
    losses: list = field(default_factory=list)  # per batch, (loss_a + loss_b) / 2, all ranks

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.samples, 1)

    def per_sample(self):
        """(ids, mean per-sample loss) of every sample trained on this epoch."""
        if not self.ids:
            return np.zeros(0, np.int64), np.zeros(0)
        return np.concatenate(self.ids), np.concatenate(self.losses)


def gather_batch(ids: torch.Tensor, loss_a: torch.Tensor, loss_b: torch.Tensor):
    """The batch of every rank, in rank order (identical on all ranks), as numpy."""
    local = torch.stack([ids.to(loss_a.device, torch.float64), loss_a.double(), loss_b.double()])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, local.contiguous())
        local = torch.cat(parts, dim=1)
    local = local.cpu().numpy()
    return local[0].astype(np.int64), local[1], local[2]


def _finite_on_all_ranks(loss: torch.Tensor) -> bool:
    """Every rank must stop at the same step, or the others would wait in the next collective."""
    finite = torch.isfinite(loss.detach()).float().reshape(1)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


def train_one_epoch(model, loader, optimizer, scaler, schedule, epoch: int, iters: int, *, base_lr: float,
                    warmup_epochs: float, epochs: int, global_step: int, unpack: Callable,
                    forward_kwargs: Optional[Callable[[float], dict]] = None, autocast=None,
                    grad_clip_norm: Optional[float] = None, after_step: Optional[Callable] = None,
                    progress=None, stop_after_step: Optional[int] = None, pair_reduction: str = "mean") -> EpochResult:
    """Trains one epoch; `unpack(batch) -> (inputs tuple, ids tensor)`, `model(*inputs) -> (loss_a, loss_b)`.

    The step minimises the batch mean of (loss_a + loss_b) / 2 (CLIP, as open_clip)
    or of loss_a + loss_b (pair_reduction="sum", MoCo v3's symmetric loss).
    """
    pair_weight = 0.5 if pair_reduction == "mean" else 1.0
    model.train()
    result = EpochResult(epoch)
    weights_of = getattr(schedule, "sample_weights", None)
    start, cpu_start = time.perf_counter(), time.process_time()
    for i, batch in enumerate(loader):
        fractional_epoch = epoch + i / max(iters, 1)
        lr = lr_at(fractional_epoch, base_lr, warmup_epochs, epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        inputs, ids = unpack(batch)
        with autocast() if autocast is not None else nullcontext():
            loss_a, loss_b = model(*inputs, **(forward_kwargs(fractional_epoch) if forward_kwargs else {}))
        per_sample = (loss_a.float() + loss_b.float()) * pair_weight
        if weights_of is not None:
            weights = torch.as_tensor(weights_of(ids.cpu().numpy()), device=per_sample.device)
            loss = (per_sample * weights).mean()
        else:
            loss = per_sample.mean()
        if not _finite_on_all_ranks(loss):
            raise NonFiniteLoss(epoch, i, global_step, float(loss.detach()))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
        scaler.step(optimizer)
        scaler.update()
        if after_step is not None:
            after_step()
        global_step += 1

        all_ids, all_a, all_b = gather_batch(ids, loss_a.detach(), loss_b.detach())
        schedule.observe(all_ids, all_a, all_b)
        batch_losses = (all_a + all_b) / 2
        result.ids.append(all_ids)
        result.losses.append(batch_losses)
        result.steps += 1
        result.samples += len(all_ids)
        result.loss_sum += float(batch_losses.sum())
        result.seconds = time.perf_counter() - start
        result.cpu_seconds = time.process_time() - cpu_start
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{result.mean_loss:.4f}", lr=f"{lr:.2e}",
                                 samples_s=f"{result.samples / max(result.seconds, 1e-9):.0f}")
        if stop_after_step is not None and global_step >= stop_after_step:
            raise StopTraining(global_step)
    return result


class StopTraining(Exception):
    """Raised after the step a caller asked to stop at (simulates a killed run in tests)."""

    def __init__(self, global_step: int):
        super().__init__(f"stopped after global step {global_step}")
        self.global_step = global_step
