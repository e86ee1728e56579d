"""One training epoch, shared by every task (after moco-v3's main_moco.py).

The task's forward returns the `PairLoss` (two per-sample loss vectors) of this rank's rows
of a `Batch`; the loop reduces them (weighted when the schedule asks, as InfoBatch does) and
steps the optimizer. Nothing in a step waits on the host, as in open_clip's and
nanoGPT's loops: the finiteness check and the loss sums accumulate on the device
and are read every `log_every` steps and at the epoch's end; in epochs whose
schedule wants the losses, every rank's per-sample losses are gathered on the
device and handed to the schedule there (`observe_batch`), which sends only the
chosen ids to the host, in bulk, when the loop flushes it at a log step.
The learning rate is a pure function of the fractional epoch, so an epoch that
pruning made shorter still follows the same warm-up + cosine curve.
"""
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, NamedTuple, Optional

import numpy as np
import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from scan_fast.schedule import PruningSchedule
    from scan_fast.train.config import TrainConfig
    from scan_fast.train.task import Task

_NO_BAD_STEP = torch.iinfo(torch.int64).max


def lr_at(epoch: float, base_lr: float, warmup_epochs: float, epochs: int, min_lr: float = 0.0) -> float:
    """Linear warm-up to base_lr over warmup_epochs, then half-cosine down to min_lr at `epochs`."""
    if epoch < warmup_epochs:
        return base_lr * epoch / warmup_epochs
    span = max(epochs - warmup_epochs, 1e-12)
    progress = min(max((epoch - warmup_epochs) / span, 0.0), 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class NonFiniteLoss(RuntimeError):
    """The loss of a step was NaN or infinite; found at the next check (a log step or the epoch's end).

    Steps are counted from 1 (step 1 is an epoch's first; global step G is the G-th optimizer step of
    the run, as --stop-after-step and the checkpoints' global_step count them); epochs from 0, as in the logs.
    """

    def __init__(self, epoch: int, step: int, global_step: int, checked_at: int):
        super().__init__(f"non-finite loss at epoch {epoch}, step {step} of the epoch (global step {global_step}; "
                         f"epochs count from 0, steps from 1), found by the check after global step {checked_at} "
                         f"(the loss is checked every --log-every steps and at each epoch's end)")
        self.epoch, self.step, self.global_step, self.checked_at = epoch, step, global_step, checked_at


class StopTraining(Exception):
    """Raised after the step a caller asked to stop at (simulates a killed run in tests)."""

    def __init__(self, global_step: int):
        super().__init__(f"stopped after global step {global_step}")
        self.global_step = global_step


@dataclass
class Step:
    """What one optimisation step needs, fixed for a run (moco-v3's train() arguments, in one place).

    task: its forward, pair_weight and after_step, and its config (`cfg`: the run's flags the step
    reads: lr, warmup_epochs, epochs, grad_clip_norm, log_every, stop_after_step, save_losses);
    model: the model the task calls (its DistributedDataParallel wrapper on several ranks);
    schedule: where the per-sample losses go (`observe_batch`); autocast: a context factory for
    mixed precision, or None.
    """
    task: "Task"
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: "PruningSchedule"
    autocast: Optional[Callable] = None

    @property
    def cfg(self) -> "TrainConfig":
        return self.task.cfg


class SampleLosses(NamedTuple):
    """Every sample's loss of an epoch run with --save-losses or --save-epoch-losses: the ids and the float32 mean
    of each pair's two directions."""
    ids: np.ndarray
    losses: np.ndarray


@dataclass
class EpochResult:
    epoch: int
    steps: int = 0
    samples: int = 0            # sample-steps over all ranks
    loss_sum: float = 0.0       # of the unweighted per-sample losses, over all ranks
    seconds: float = 0.0
    cpu_seconds: float = 0.0    # this process, all threads: less sensitive than wall time to other load
    losses: Optional[SampleLosses] = None  # with --save-losses (a preparation epoch) or --save-epoch-losses

    @property
    def mean_loss(self) -> float:
        """The epoch's mean per-sample loss; NaN for an epoch that trained no step (it has no loss)."""
        return self.loss_sum / self.samples if self.samples else math.nan


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_batch(ids: torch.Tensor, loss_a: torch.Tensor, loss_b: torch.Tensor):
    """Every rank's (ids, loss_a, loss_b) on the device, in global-position order.

    Rank r of W reads positions r, r + W, ... of the epoch's order, so its j-th sample is
    global position j * W + r: transposing the gathered (W, B) blocks puts the global batch
    in that order, the same whatever the world size (elastic resume relies on it).
    """
    # a copy: loaders (FFCV) reuse their batch buffers, and the schedule may keep these ids past the step
    ids = ids.to(loss_a.device, torch.int64, non_blocking=True, copy=True)
    losses = torch.stack([loss_a.detach().float(), loss_b.detach().float()])
    if not _distributed():
        return ids, losses[0], losses[1]
    world = dist.get_world_size()
    id_parts = [torch.empty_like(ids) for _ in range(world)]
    loss_parts = [torch.empty_like(losses) for _ in range(world)]
    dist.all_gather(id_parts, ids.contiguous())
    dist.all_gather(loss_parts, losses.contiguous())
    all_ids = torch.stack(id_parts, dim=1).reshape(-1)                 # (B, W) -> global positions
    all_losses = torch.stack(loss_parts, dim=2).reshape(2, -1)         # (2, B, W) -> (2, global positions)
    return all_ids, all_losses[0], all_losses[1]


class FiniteMonitor:
    """The first global step whose loss was not finite, kept on the device until `check` reads it."""

    def __init__(self, device: torch.device):
        self.first_bad = torch.full((), _NO_BAD_STEP, dtype=torch.int64, device=device)

    def add(self, loss: torch.Tensor, global_step: int) -> None:
        bad = ~torch.isfinite(loss.detach())
        self.first_bad = torch.where(bad, torch.clamp(self.first_bad, max=global_step), self.first_bad)

    def check(self) -> Optional[int]:
        """The first bad step over all ranks (one host read, one collective), or None."""
        first = self.first_bad.clone()
        if _distributed():  # every rank must stop at the same check, or the others would wait
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        value = int(first)
        return None if value == _NO_BAD_STEP else value


def _reduce_sum(value: torch.Tensor) -> float:
    if _distributed():
        value = value.clone()
        dist.all_reduce(value)
    return float(value)


def train_one_epoch(step: Step, loader, epoch: int, iters: int, global_step: int, progress=None) -> EpochResult:
    """Trains one epoch of `Batch`es; `step.task.forward(model, batch, epoch)` returns the PairLoss of
    this rank's rows.

    The step minimises the batch mean of (a + b) x task.pair_weight: (a + b) / 2 for CLIP and SigLIP,
    as open_clip, a + b for MoCo v3's symmetric loss; times the schedule's sample weights where it
    gives them.
    """
    cfg, task = step.cfg, step.task
    schedule, model, optimizer, scaler = step.schedule, step.model, step.optimizer, step.scaler
    world = dist.get_world_size() if _distributed() else 1
    collect = schedule.needs_losses(epoch)
    save = (collect and cfg.save_losses) or cfg.save_epoch_losses  # every sample's loss, gathered on every rank
    keep = save and (not _distributed() or dist.get_rank() == 0)  # and kept by rank 0, which writes them
    model.train()
    result = EpochResult(epoch)
    first_step = global_step
    monitor = loss_sum = None
    kept_ids, kept_losses = [], []
    start, cpu_start = time.perf_counter(), time.process_time()

    def check(at_step):
        bad = monitor.check()
        if bad is not None:
            raise NonFiniteLoss(epoch, bad - first_step + 1, bad + 1, at_step)  # monitor keeps 0-based step indices
        schedule.flush()

    for i, batch in enumerate(loader):
        fractional_epoch = epoch + i / max(iters, 1)
        lr = lr_at(fractional_epoch, cfg.lr, cfg.warmup_epochs, cfg.epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with step.autocast() if step.autocast is not None else nullcontext():
            pair = task.forward(model, batch, fractional_epoch)
        per_sample = (pair.a.float() + pair.b.float()) * task.pair_weight
        weights = schedule.sample_weights(batch.ids)
        loss = (per_sample * weights).mean() if weights is not None else per_sample.mean()
        if monitor is None:
            monitor, loss_sum = FiniteMonitor(loss.device), torch.zeros((), dtype=torch.float64, device=loss.device)
        monitor.add(loss, global_step)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
        scaler.step(optimizer)
        scaler.update()
        task.after_step(model)
        global_step += 1

        detached_a, detached_b = pair.a.detach().float(), pair.b.detach().float()
        loss_sum += (detached_a + detached_b).sum(dtype=torch.float64) / 2
        if collect or save:
            all_ids, all_a, all_b = gather_batch(batch.ids, detached_a, detached_b)
            if collect:
                schedule.observe_batch(all_ids, all_a, all_b)
            if keep:
                kept_ids.append(all_ids)
                kept_losses.append((all_a + all_b) * 0.5)  # float32, as loss_codes bins it
        result.steps += 1
        result.samples += int(batch.ids.shape[0]) * world  # host-known shape: no sync
        if progress is not None:
            progress.update(1)
        if result.steps % cfg.log_every == 0:  # a log step: the only host reads inside the epoch
            check(global_step)
            result.loss_sum = _reduce_sum(loss_sum)
            if progress is not None:
                progress.set_postfix(loss=f"{result.mean_loss:.4f}", lr=f"{lr:.2e}",
                                     samples_s=f"{result.samples / max(time.perf_counter() - start, 1e-9):.0f}")
        if cfg.stop_after_step is not None and global_step >= cfg.stop_after_step:
            raise StopTraining(global_step)
    if monitor is not None:
        check(global_step)
        result.loss_sum = _reduce_sum(loss_sum)
    if kept_ids:
        result.losses = SampleLosses(torch.cat(kept_ids).cpu().numpy(), torch.cat(kept_losses).cpu().numpy())
    result.seconds = time.perf_counter() - start
    result.cpu_seconds = time.process_time() - cpu_start
    return result


def per_sample_losses(result: EpochResult) -> SampleLosses:
    """The SampleLosses kept by an epoch run with --save-losses or --save-epoch-losses, or empty arrays."""
    if result.losses is None:
        return SampleLosses(np.zeros(0, np.int64), np.zeros(0, np.float32))
    return result.losses
