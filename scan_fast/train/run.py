"""A training run, whatever the task: processes, schedule, epochs, checkpoints, logs, report.

`train(task)` is what every task (scan_fast/train/task.py) shares before its epochs: it checks the
task's config and data, starts the processes, seeds, builds the schedule and refuses a run an epoch
of which could train no step. `fit(task, schedule, runtime)` has the task build its model and
loader, then drives epochs of `loop.train_one_epoch` over the loader, which reads this rank's shard
of the schedule's kept set for the epoch, ends each epoch in the schedule, evaluates, logs, and
checkpoints atomically; with `resume` it continues a killed run exactly where its last checkpoint
left it. It calls only what `PruningSchedule` and `Task` declare.
"""
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, List, Optional

import numpy as np
import torch

from scan_fast.data.source_ids import save_kept_bits
from scan_fast.train.checkpoint import first_non_finite, restore, save_checkpoint
from scan_fast.train.config import PRUNE_MODES
from scan_fast.train.epoch_losses import save_epoch_losses
from scan_fast.train.loop import NonFiniteLoss, Step, StopTraining, lr_at, per_sample_losses, train_one_epoch
from scan_fast.train.report import RunLogger, plot_run, write_report
from scan_fast.train.resume import checkpoint_config, open_run, run_folder
from scan_fast.train.runtime import PeerLost, Runtime, lost_contact, seed_everything, setup_runtime

if TYPE_CHECKING:
    from scan_fast.schedule import PruningSchedule
    from scan_fast.train.config import TrainConfig
    from scan_fast.train.task import Task


class TrainingDiverged(RuntimeError):
    """The loss, a weight or the optimizer state went NaN/inf; training stopped and no checkpoint was
    written after it (every checkpoint on disk is finite)."""


def make_schedule(cfg, num_samples: int, rank: int = 0, world_size: int = 1):
    """The pruning schedule `--prune` names (PRUNE_MODES), for a data set of `num_samples` (rank `rank` of
    `world_size`)."""
    return PRUNE_MODES[cfg.prune].build(cfg, num_samples, rank, world_size)


def check_epochs_fill_a_batch(cfg, schedule, num_samples: int, world_size: int) -> None:
    """Refuse a run in which an epoch could train no step: when the fewest ids the schedule can keep
    in an epoch of this run (`PruningSchedule.min_kept_count`, from its knobs) is below one global batch
    (--batch-size x processes; the loaders drop a last partial batch). Called before the model is built."""
    global_batch = cfg.batch_size * world_size
    batch = f"--batch-size {cfg.batch_size} x {world_size} rank(s)"
    if num_samples < global_batch:
        raise ValueError(f"{batch} is more than the {num_samples} samples of {cfg.train_data}")
    fewest = schedule.min_kept_count(cfg.epochs, global_batch)
    if fewest < global_batch:
        keeps = "is expected to keep" if PRUNE_MODES[cfg.prune].random_count else "keeps"  # a random draw
        raise ValueError(f"{batch} = {global_batch} samples a step, but --prune {cfg.prune} {keeps} as few "
                         f"as {fewest} of the {num_samples} samples of {cfg.train_data} in an epoch of this "
                         f"{cfg.epochs}-epoch run, which would then train no step: lower --batch-size or prune less")


def param_groups(model, wd: float):
    """Weight decay on matrices only, not on gains, biases or logit_scale (as open_clip_train)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": wd}]


def _autocast(cfg, device):
    if device.type != "cuda" or cfg.precision == "fp32":
        return None
    dtype = torch.bfloat16 if cfg.precision == "amp_bf16" else torch.float16
    return lambda: torch.autocast("cuda", dtype=dtype)


def train(task: "Task") -> dict:
    """A run of `task` (made from its config, `task.cfg`); returns the run summary (fit's)."""
    cfg = task.cfg
    num_samples = task.check()
    runtime = setup_runtime(cfg.device, cfg.dist_timeout)
    seed_everything(cfg.seed)  # same seed on every rank: identical initial weights
    schedule = make_schedule(cfg, num_samples, runtime.rank, runtime.world_size)
    check_epochs_fill_a_batch(cfg, schedule, num_samples, runtime.world_size)  # before the model is built
    return fit(task, schedule, runtime)


class RunCheckpoint:
    """The run's latest.pt: what it holds (the epoch and global step it was saved after, on every rank),
    saving only finite state, and the messages of a stopped run that name it."""

    def __init__(self, folder: str, state: Optional[dict], runtime: Runtime):
        self.path = os.path.join(folder, "checkpoints", "latest.pt")
        self.runtime = runtime
        self.epoch = None if state is None else state["epoch"]  # the next epoch to train, as saved
        self.step = 0 if state is None else state["global_step"]

    def _saved_after(self) -> str:
        return "" if self.epoch is None else f" (saved after epoch {self.epoch - 1}, global step {self.step})"

    def diverged(self, what: str) -> "TrainingDiverged":
        """A TrainingDiverged for `what` went non-finite, naming the last finite checkpoint."""
        safe = ("no checkpoint was written" if not os.path.isfile(self.path) else
                f"the last checkpoint, {self.path}, is from before it{self._saved_after()}")
        return TrainingDiverged(f"{what}; training stopped and {safe}")

    def peer_lost(self, err: BaseException) -> Optional[PeerLost]:
        """err as PeerLost when a collective lost contact with another rank; None for any other error."""
        where = lost_contact(err)
        if where is None:
            return None
        if self.epoch is None and not os.path.isfile(self.path):
            last = "no checkpoint was written"
        else:
            last = f"the last checkpoint is {self.path}{self._saved_after()}"
        return PeerLost(f"rank {self.runtime.rank} lost contact with another rank during {where} (a peer process "
                        f"died or hung; see its log); {last}")

    def save(self, step: Step, epoch: int, global_step: int, history: List[dict]) -> None:
        """Save the state after `epoch - 1` on rank 0. Every rank first checks the weights and optimizer state (the
        same on all), so all stop together: nothing non-finite is saved."""
        bad = first_non_finite(step.task.model, step.optimizer)
        if bad is not None:
            raise self.diverged(f"non-finite state after epoch {epoch - 1} (global step {global_step}): {bad} holds "
                                f"NaN or inf although the losses checked were finite (an optimizer step after the "
                                f"last check broke it)")
        if self.runtime.is_main:
            save_checkpoint(self.path, model=step.task.model, optimizer=step.optimizer, scaler=step.scaler,
                            schedule=step.schedule, epoch=epoch, global_step=global_step, history=history,
                            config=checkpoint_config(step.cfg, self.runtime.world_size))
        self.epoch, self.step = epoch, global_step  # on every rank: what rank 0's latest.pt now holds


@dataclass
class _Run:
    """A run once set up: its step, loader, evaluation, folder, checkpoint and where it starts."""
    step: Step
    loader: object
    evaluate: Optional[Callable[[], float]]
    folder: str
    checkpoint: RunCheckpoint
    logger: RunLogger
    start_epoch: int = 0
    global_step: int = 0
    history: List[dict] = field(default_factory=list)


def _set_up(task: "Task", schedule: "PruningSchedule", runtime: Runtime) -> _Run:
    """The task's model, loader and evaluation (in that order, from the generators the caller seeded), the
    optimizer, the run folder, and the state of the checkpoint it resumes."""
    cfg, device = task.cfg, runtime.device
    model = task.build_model(runtime)
    loader = task.build_loader(schedule, runtime)
    evaluate = task.evaluation(model, device)  # None: no --val-data
    folder = run_folder(cfg, task.kind, runtime.world_size)
    state = open_run(cfg, folder, runtime.world_size, runtime.is_main, map_location=device)  # before any write
    checkpoint = RunCheckpoint(folder, state, runtime)
    model.to(device)
    train_model = model
    if runtime.world_size > 1:
        try:  # broadcasts rank 0's weights
            train_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        except RuntimeError as err:
            lost = checkpoint.peer_lost(err)
            if lost is None:
                raise
            raise lost from err
    # fused on CUDA: GradScaler then hands the inf check to the optimizer's kernel instead of
    # reading found_inf on the host every step (torch's _step_supports_amp_scaling)
    implementation = {"fused": True} if device.type == "cuda" else {"foreach": True}
    optimizer = torch.optim.AdamW(param_groups(model, cfg.wd), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                  eps=cfg.eps, **implementation)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and cfg.precision == "amp")
    step = Step(task=task, model=train_model, optimizer=optimizer, scaler=scaler, schedule=schedule,
                autocast=_autocast(cfg, device))
    start = (0, 0, [])
    if state is not None:
        restore(state, model=model, optimizer=optimizer, scaler=scaler, schedule=schedule)
        start = (state["epoch"], state["global_step"], list(state["history"]))
    logger = RunLogger(folder, tensorboard=cfg.tensorboard, enabled=runtime.is_main)
    return _Run(step, loader, evaluate, folder, checkpoint, logger, *start)


def fit(task: "Task", schedule: "PruningSchedule", runtime: Runtime) -> dict:
    """Train `task.cfg.epochs` epochs of `task` on `schedule`'s ids; returns the run summary (also in report.md
    on rank 0)."""
    cfg = task.cfg
    run = _set_up(task, schedule, runtime)
    try:
        for epoch in range(run.start_epoch, cfg.epochs):
            row = _train_epoch(run, epoch, runtime)
            run.history.append(row)
            last = epoch == cfg.epochs - 1
            save = last or (epoch + 1) % cfg.save_frequency == 0
            if save:  # before evaluating: a failed evaluation must not lose the epoch's training
                run.checkpoint.save(run.step, epoch + 1, run.global_step, run.history)
            if run.evaluate is not None and runtime.is_main and (
                    last or (cfg.eval_frequency and (epoch + 1) % cfg.eval_frequency == 0)):
                row["eval"] = run.evaluate()
                if save:  # again, with the score in the saved history
                    run.checkpoint.save(run.step, epoch + 1, run.global_step, run.history)
            run.logger.log_epoch(run.history)
            if runtime.is_main:
                print(_epoch_line(task.kind, row, schedule.epoch_note(epoch)), flush=True)
    except StopTraining as stop:
        return {"stopped_at_step": stop.global_step, "folder": run.folder}
    except RuntimeError as err:
        lost = run.checkpoint.peer_lost(err)
        if lost is None:
            raise
        raise lost from err
    finally:
        run.logger.close()
        run.loader.stop()  # a run that stopped mid-epoch leaves no loader thread behind
    return _finish(run, runtime)


def _train_epoch(run: _Run, epoch: int, runtime: Runtime) -> dict:
    """One epoch: the schedule's kept ids through train_one_epoch, the epoch ended in the schedule; its history
    row (without its evaluation)."""
    from tqdm import tqdm

    cfg, schedule, num_samples = run.step.cfg, run.step.schedule, run.step.schedule.num_samples
    schedule.begin_epoch(epoch)
    kept, phase = schedule.kept_count(epoch), schedule.phase_name(epoch)
    run.loader.set_epoch(epoch)
    iters = len(run.loader)
    progress = tqdm(total=iters, desc=f"{run.step.task.kind} epoch {epoch} [{phase}, kept {kept / num_samples:.0%}]",
                    disable=None if cfg.progress and runtime.is_main else True,  # None: bars on a terminal only
                    leave=False, dynamic_ncols=True)
    try:
        result = train_one_epoch(run.step, run.loader, epoch, iters, run.global_step, progress)
    except NonFiniteLoss as err:
        raise run.checkpoint.diverged(str(err)) from None
    finally:
        progress.close()
    run.global_step += result.steps
    schedule.end_epoch(epoch, _schedule_loss(result, run.history, epoch, kept, cfg, runtime))
    if runtime.is_main and cfg.save_losses and schedule.is_preparation(epoch):
        _save_candidates(run.folder, epoch, schedule, result)
    if runtime.is_main and cfg.save_epoch_losses:
        save_epoch_losses(run.folder, epoch, num_samples, per_sample_losses(result))
    return {"epoch": epoch, "phase": phase, "kept": kept, "pruned": num_samples - kept,
            "kept_fraction": kept / num_samples, "steps": result.steps, "samples": result.samples,
            "loss": result.mean_loss, "lr": lr_at(epoch + 1, cfg.lr, cfg.warmup_epochs, cfg.epochs),
            "seconds": result.seconds, "cpu_seconds": result.cpu_seconds,
            "samples_per_s": result.samples / max(result.seconds, 1e-9), "eval": None}


def _finish(run: _Run, runtime: Runtime) -> dict:
    """The run's summary, with the task's values; on rank 0 the coreset bits, plots and report.md."""
    cfg, schedule, task = run.step.cfg, run.step.schedule, run.step.task
    batch_total = cfg.batch_size * runtime.world_size
    full_epoch_samples = schedule.num_samples // batch_total * batch_total
    summary = _summary(cfg, run.history, full_epoch_samples, run.folder, schedule)
    task.summarize(summary, schedule, run.history, runtime)
    if runtime.is_main:
        save_kept_bits(os.path.join(run.folder, "coreset.bits.npy"), schedule.coreset_set())
        plots = plot_run(run.folder, run.history, _candidate_losses(run.folder))
        write_report(run.folder, f"{task.kind.upper()} run `{os.path.basename(run.folder)}` (--prune {cfg.prune})",
                     summary, run.history, plots)
    return summary


def _schedule_loss(result, history, epoch, kept, cfg, runtime) -> float:
    """The epoch loss the schedule's warm-up test sees. The start check (check_epochs_fill_a_batch) rules
    out epochs without a step except for an unlucky InfoBatch draw (whose schedule ignores the loss);
    should one happen anyway, its loss is logged as NaN (EpochResult.mean_loss) with a one-line warning,
    and the schedule sees the last measured epoch's loss instead of a loss of 0 that nothing measured."""
    if result.steps:
        return result.mean_loss
    if runtime.is_main:
        print(f"scan-fast train: warning: epoch {epoch} trained no step: it kept {kept} ids, fewer than one global "
              f"batch of {cfg.batch_size * runtime.world_size} (--batch-size {cfg.batch_size} x "
              f"{runtime.world_size} rank(s)); its loss is logged as NaN", file=sys.stderr, flush=True)
    measured = [r["loss"] for r in history if r["steps"] and np.isfinite(r["loss"])]
    return measured[-1] if measured else 0.0  # none measured: epoch 0 without a step, refused at the start


def _epoch_line(kind, row, note=""):
    """The epoch's log line; `note`: what the schedule decided at its end (`PruningSchedule.epoch_note`)."""
    score = f", eval {row['eval']:.4f}" if row["eval"] is not None else ""
    said = f"; {note}" if note else ""
    return (f"{kind} epoch {row['epoch']}: {row['phase']}, kept {row['kept_fraction']:.1%}, loss {row['loss']:.4f}, "
            f"{row['samples']} samples in {row['seconds']:.1f}s ({row['samples_per_s']:.0f}/s){score}{said}")


def _save_candidates(folder, epoch, schedule, result):
    """--save-losses: the preparation epoch's per-sample losses (float16) beside its candidates."""
    kept = per_sample_losses(result)
    np.savez(os.path.join(folder, "candidates.npz"), epoch=epoch, ids=kept.ids,
             losses=kept.losses.astype(np.float16), ill=schedule.candidates("ill_matched"),
             red=schedule.candidates("redundant"))


def _candidate_losses(folder):
    path = os.path.join(folder, "candidates.npz")
    if not os.path.isfile(path):
        return None
    with np.load(path) as data:
        ids, losses, ill, red = data["ids"], data["losses"], data["ill"], data["red"]
    in_ill, in_red = np.isin(ids, ill), np.isin(ids, red)
    return {"ill-matched": losses[in_ill], "redundant": losses[in_red], "other": losses[~in_ill & ~in_red]}


def candidate_precision_recall(ill: np.ndarray, mismatched: np.ndarray):
    """Precision and recall of the ill-matched candidates `ill` against the injected mismatches."""
    hits = int(mismatched[ill].sum())
    return hits / max(len(ill), 1), hits / max(int(mismatched.sum()), 1)


def _summary(cfg, history, full_epoch_samples, folder, schedule):
    sample_steps = sum(r["samples"] for r in history)
    full = full_epoch_samples * len(history)
    after_warmup = [r for r in history if r["phase"] not in ("warmup",)]
    summary = {
        "prune": cfg.prune, "epochs": len(history), "sample_steps": sample_steps,
        "sample_steps_full_data": full, "pruned_fraction": 1 - sample_steps / full if full else 0.0,
        "wall_seconds": sum(r["seconds"] for r in history),
        "cpu_seconds": sum(r.get("cpu_seconds") or 0.0 for r in history), "final_loss": history[-1]["loss"] if history else None,
        "eval": history[-1]["eval"] if history else None, "folder": folder,
    }
    if schedule.finds_candidates():
        steps_after = sum(r["samples"] for r in after_warmup)
        full_after = full_epoch_samples * len(after_warmup)
        summary["pruned_fraction_after_warmup"] = 1 - steps_after / full_after if full_after else 0.0
    return summary
