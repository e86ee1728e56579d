"""A training run, whatever the task: processes, schedule, epochs, checkpoints, logs, report.

`train(task)` is what every task (scan_fast/train/task.py) shares before its epochs: it checks the
task's config and data, starts the processes, seeds, builds the schedule and refuses a run an epoch
of which could train no step. `fit(cfg, task, schedule, runtime)` has the task build its model and
loader, then drives epochs of `loop.train_one_epoch` over the loader, which reads this rank's shard
of the schedule's kept set for the epoch, ends each epoch in the schedule, evaluates, logs, and
checkpoints atomically; with `resume` it continues a killed run exactly where its last checkpoint
left it. It calls only what `PruningSchedule` and `Task` declare.
"""
import datetime
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from scan_fast.data.source_ids import save_kept_bits
from scan_fast.train.checkpoint import first_non_finite, restore, save_checkpoint
from scan_fast.train.config import PRUNE_MODES
from scan_fast.train.loop import NonFiniteLoss, Step, StopTraining, lr_at, per_sample_losses, train_one_epoch
from scan_fast.train.report import RunLogger, plot_run, write_report
from scan_fast.train.resume import checkpoint_config, open_run, run_folder


class TrainingDiverged(RuntimeError):
    """The loss, a weight or the optimizer state went NaN/inf; training stopped and no checkpoint was
    written after it (every checkpoint on disk is finite)."""


class PeerLost(RuntimeError):
    """A collective failed because another rank died, hung past --dist-timeout or became unreachable;
    the message names the collective and the last checkpoint. The backend's error is its __cause__."""


# what gloo (its tcp transport), NCCL and the c10d store say when the other end of a collective is gone
_LOST_CONTACT = ("gloo/transport/", "Connection reset by peer", "Connection closed by peer", "Broken pipe",
                 "Timed out waiting", "remote process exited", "communicator was aborted",
                 "Watchdog caught collective operation timeout")


def lost_contact(err: BaseException) -> Optional[str]:
    """Where this rank lost contact with another ("all_gather at scan_fast/ops/distributed.py:30"), or
    None when err is not such a failure: a bug keeps its traceback."""
    if not (dist.is_available() and dist.is_initialized()) or not isinstance(err, RuntimeError):
        return None
    lost = isinstance(err, (dist.DistNetworkError, dist.DistStoreError)) or \
        any(text in str(err) for text in _LOST_CONTACT)
    if not lost:
        return None
    frames = traceback.extract_tb(err.__traceback__)
    ours = [f for f in frames if f"{os.sep}scan_fast{os.sep}" in f.filename]
    at = ""
    if ours:
        path = ours[-1].filename
        at = f" at {path[path.rindex(f'{os.sep}scan_fast{os.sep}') + 1:]}:{ours[-1].lineno}"
    called = [f.name for f in frames if f.filename.endswith("distributed_c10d.py") and f.name != "wrapper"]
    if any(f.name == "backward" for f in frames):  # a gathered loss's backward, or DDP's gradient all-reduce
        return f"{called[-1] if called else 'the gradient all-reduce'} in the backward pass{at}"
    if called:
        return called[-1] + at
    ddp = any(f.filename.endswith(os.path.join("nn", "parallel", "distributed.py")) for f in frames)
    return f"{'the forward pass of DistributedDataParallel' if ddp else 'a collective'}{at}"


@dataclass
class Runtime:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def flush_cpu_denormals() -> None:
    """Flush denormal floats to zero on the CPU (FTZ/DAZ), as a GPU does.

    AdamW's second moments of rarely-updated weights shrink into the denormal range, where
    each CPU operation on them costs about 100x a normal one: a tiny CLIP step ran up to
    ~30x slower. The mode is per thread and new threads inherit it, so it is set before
    any intra-op or loader thread starts: here, called first by setup_runtime (train clip,
    train moco) and by the main job. Values change only where a result would be below
    ~1.2e-38 in fp32.
    """
    torch.set_flush_denormal(True)


def setup_runtime(device: str = "auto", timeout_s: Optional[float] = None) -> Runtime:
    """Rank and device from torchrun's environment; gloo on CPU, NCCL on GPU; denormals flushed on the CPU.

    timeout_s bounds every collective: a rank that hangs (not dies) makes the
    others fail after it instead of waiting for the backend's default (30 min).
    """
    flush_cpu_denormals()  # first: before any thread pool of this process starts
    world_size, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda[:N], got {device!r}")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch_device = torch.device(device if device.startswith("cuda:") else f"cuda:{local}")
        torch.cuda.set_device(torch_device)
    else:
        torch_device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        timeout = None if timeout_s is None else datetime.timedelta(seconds=timeout_s)
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout)
    return Runtime(rank, world_size, torch_device)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def train(task) -> dict:
    """A run of `task` (made from its config, `task.cfg`); returns the run summary (fit's)."""
    cfg = task.cfg
    num_samples = task.check()
    runtime = setup_runtime(cfg.device, cfg.dist_timeout)
    seed_everything(cfg.seed)  # same seed on every rank: identical initial weights
    schedule = make_schedule(cfg, num_samples, runtime.rank, runtime.world_size)
    check_epochs_fill_a_batch(cfg, schedule, num_samples, runtime.world_size)  # before the model is built
    return fit(cfg, task, schedule, runtime)


def fit(cfg, task, schedule, runtime: Runtime) -> dict:
    """Train `cfg.epochs` epochs of `task` (made from `cfg`) on `schedule`'s ids; returns the run summary
    (also in report.md on rank 0). The task builds its model, loader and evaluation here, in that order,
    from the generators the caller seeded."""
    from tqdm import tqdm

    model = task.build_model(runtime)
    loader = task.build_loader(schedule, runtime)
    evaluate = task.evaluation(model, runtime.device)  # None: no --val-data
    kind, num_samples = task.kind, schedule.num_samples
    folder = run_folder(cfg, kind, runtime.world_size)
    ckpt_dir = os.path.join(folder, "checkpoints")
    device = runtime.device
    state = open_run(cfg, folder, runtime.world_size, runtime.is_main, map_location=device)  # before any write
    latest = os.path.join(ckpt_dir, "latest.pt")
    saved = {"epoch": None if state is None else state["epoch"],  # what latest.pt holds
             "step": 0 if state is None else state["global_step"]}

    def peer_lost(err):
        """err as PeerLost when a collective lost contact with another rank; None for any other error."""
        where = lost_contact(err)
        if where is None:
            return None
        if saved["epoch"] is None and not os.path.isfile(latest):
            last = "no checkpoint was written"
        else:
            after = "" if saved["epoch"] is None else \
                f" (saved after epoch {saved['epoch'] - 1}, global step {saved['step']})"
            last = f"the last checkpoint is {latest}{after}"
        return PeerLost(f"rank {runtime.rank} lost contact with another rank during {where} (a peer process "
                        f"died or hung; see its log); {last}")

    model.to(device)
    train_model = model
    if runtime.world_size > 1:
        try:  # broadcasts rank 0's weights
            train_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        except RuntimeError as err:
            lost = peer_lost(err)
            if lost is None:
                raise
            raise lost from err
    # fused on CUDA: GradScaler then hands the inf check to the optimizer's kernel instead of
    # reading found_inf on the host every step (torch's _step_supports_amp_scaling)
    implementation = {"fused": True} if device.type == "cuda" else {"foreach": True}
    optimizer = torch.optim.AdamW(param_groups(model, cfg.wd), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                  eps=cfg.eps, **implementation)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and cfg.precision == "amp")

    start_epoch, global_step, history = 0, 0, []
    if state is not None:
        restore(state, model=model, optimizer=optimizer, scaler=scaler, schedule=schedule)
        start_epoch, global_step, history = state["epoch"], state["global_step"], list(state["history"])

    logger = RunLogger(folder, tensorboard=cfg.tensorboard, enabled=runtime.is_main)
    batch_total = cfg.batch_size * runtime.world_size
    full_epoch_samples = num_samples // batch_total * batch_total

    def safe_checkpoint():
        """Where the run's last finite state is, for a message about a stopped run."""
        if not os.path.isfile(latest):
            return "no checkpoint was written"
        after = "" if saved["epoch"] is None else \
            f" (saved after epoch {saved['epoch'] - 1}, global step {saved['step']})"
        return f"the last checkpoint, {latest}, is from before it{after}"

    def checkpoint(epoch):
        # every rank checks (the weights are the same on all), so all stop together; nothing non-finite is saved
        bad = first_non_finite(model, optimizer)
        if bad is not None:
            raise TrainingDiverged(f"non-finite state after epoch {epoch - 1} (global step {global_step}): {bad} "
                                   f"holds NaN or inf although the losses checked were finite (an optimizer step "
                                   f"after the last check broke it); training stopped and {safe_checkpoint()}")
        if runtime.is_main:
            save_checkpoint(latest, model=model, optimizer=optimizer, scaler=scaler, schedule=schedule,
                            epoch=epoch, global_step=global_step, history=history,
                            config=checkpoint_config(cfg, runtime.world_size))
        saved.update(epoch=epoch, step=global_step)  # on every rank: what rank 0's latest.pt now holds

    step = Step(cfg=cfg, task=task, model=train_model, optimizer=optimizer, scaler=scaler, schedule=schedule,
                autocast=_autocast(cfg, device))
    try:
        for epoch in range(start_epoch, cfg.epochs):
            schedule.begin_epoch(epoch)
            kept = schedule.kept_count(epoch)
            phase = schedule.phase_name(epoch)
            loader.set_epoch(epoch)
            iters = len(loader)
            progress = tqdm(total=iters, desc=f"{kind} epoch {epoch} [{phase}, kept {kept / num_samples:.0%}]",
                            disable=None if cfg.progress and runtime.is_main else True,  # None: bars on a terminal only
                            leave=False, dynamic_ncols=True)
            try:
                result = train_one_epoch(step, loader, epoch, iters, global_step, progress)
            except NonFiniteLoss as err:
                raise TrainingDiverged(f"{err}; training stopped and {safe_checkpoint()}") from None
            finally:
                progress.close()
            global_step += result.steps
            schedule.end_epoch(epoch, _schedule_loss(result, history, epoch, kept, cfg, runtime))
            if runtime.is_main and cfg.save_losses and schedule.is_preparation(epoch):
                _save_candidates(folder, epoch, schedule, result)
            last = epoch == cfg.epochs - 1
            history.append({
                "epoch": epoch, "phase": phase, "kept": kept,
                "pruned": num_samples - kept, "kept_fraction": kept / num_samples, "steps": result.steps,
                "samples": result.samples, "loss": result.mean_loss,
                "lr": lr_at(epoch + 1, cfg.lr, cfg.warmup_epochs, cfg.epochs),
                "seconds": result.seconds, "cpu_seconds": result.cpu_seconds, "samples_per_s": result.samples / max(result.seconds, 1e-9),
                "eval": None})
            save = last or (epoch + 1) % cfg.save_frequency == 0
            if save:  # before evaluating: a failed evaluation must not lose the epoch's training
                checkpoint(epoch + 1)
            if evaluate is not None and runtime.is_main and (
                    last or (cfg.eval_frequency and (epoch + 1) % cfg.eval_frequency == 0)):
                history[-1]["eval"] = evaluate()
                if save:  # again, with the score in the saved history
                    checkpoint(epoch + 1)
            logger.log_epoch(history)
            if runtime.is_main:
                print(_epoch_line(kind, history[-1]), flush=True)
    except StopTraining as stop:
        return {"stopped_at_step": stop.global_step, "folder": folder}
    except RuntimeError as err:
        lost = peer_lost(err)
        if lost is None:
            raise
        raise lost from err
    finally:
        logger.close()
        loader.stop()  # a run that stopped mid-epoch leaves no loader thread behind
    summary = _summary(cfg, history, full_epoch_samples, folder, schedule)
    task.summarize(summary, schedule, history, runtime)
    if runtime.is_main:
        save_kept_bits(os.path.join(folder, "coreset.bits.npy"), schedule.coreset_set())
        plots = plot_run(folder, history, _candidate_losses(folder))
        write_report(folder, f"{kind.upper()} run `{os.path.basename(folder)}` (--prune {cfg.prune})",
                     summary, history, plots)
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


def _epoch_line(kind, row):
    score = f", eval {row['eval']:.4f}" if row["eval"] is not None else ""
    return (f"{kind} epoch {row['epoch']}: {row['phase']}, kept {row['kept_fraction']:.1%}, loss {row['loss']:.4f}, "
            f"{row['samples']} samples in {row['seconds']:.1f}s ({row['samples_per_s']:.0f}/s){score}")


def _save_candidates(folder, epoch, schedule, result):
    """--save-losses: the preparation epoch's per-sample losses (float16) beside its candidates."""
    kept = per_sample_losses(result)
    np.savez(os.path.join(folder, "candidates.npz"), epoch=epoch, ids=kept.ids, losses=kept.losses,
             ill=schedule.candidates("ill_matched"), red=schedule.candidates("redundant"))


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
