"""A training run, whatever the model: processes, schedule, epochs, checkpoints, logs, report.

`fit` drives epochs of `loop.train_one_epoch` over an FFCV loader that reads
this rank's shard of the schedule's kept set for the epoch, ends each epoch in the
schedule, evaluates, logs, and checkpoints atomically; with `resume` it continues
a killed run exactly where its last checkpoint left it. It calls only what
`PruningSchedule` declares.
"""
import datetime
import os
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist

from scan_fast.train.checkpoint import restore, save_checkpoint
from scan_fast.train.loop import NonFiniteLoss, Step, StopTraining, lr_at, per_sample_losses, train_one_epoch
from scan_fast.train.report import RunLogger, plot_run, read_prune_counts, write_report
from scan_fast.train.resume import checkpoint_config, open_run, run_folder


class TrainingDiverged(RuntimeError):
    """The loss went NaN/inf; training stopped and no checkpoint was written after it."""


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
    """The pruning schedule `--prune` names, for a data set of `num_samples` (rank `rank` of `world_size`)."""
    from scan_fast.schedule.strategies import InfoBatch, NoPruning, RandomPruning, SeTa, StaticCoreset

    if cfg.prune == "scan":
        from scan_fast.schedule import Scan

        return Scan(num_samples, rho_ill=cfg.rho_ill, rho_red=cfg.rho_red, t_cos=cfg.t_cos,
                    prune_threshold=cfg.prune_threshold, mode=cfg.prune_target, seed=cfg.seed,
                    abs_ill=cfg.abs_ill, abs_red=cfg.abs_red)
    if cfg.prune == "scan-epoch":
        from scan_fast.schedule.scan_epoch import ScanEpoch

        return ScanEpoch(num_samples, rho_ill=cfg.rho_ill, rho_red=cfg.rho_red, t_cos=cfg.t_cos,
                         prune_threshold=cfg.prune_threshold, mode=cfg.prune_target, seed=cfg.seed, rank=rank,
                         world_size=world_size)
    if cfg.prune == "seta":
        return SeTa(num_samples, cfg.epochs, ratio=cfg.seta_ratio, groups=cfg.seta_groups, window=cfg.seta_window,
                    delta=cfg.seta_delta, seed=cfg.seed)
    if cfg.prune == "none":
        return NoPruning(num_samples)
    if cfg.prune == "random":
        counts = read_prune_counts(cfg.prune_counts) if cfg.prune_counts else None
        return RandomPruning(num_samples, prune_counts=counts, rho_ill=cfg.rho_ill, rho_red=cfg.rho_red,
                             t_cos=cfg.t_cos, prune_threshold=cfg.prune_threshold, mode=cfg.prune_target,
                             seed=cfg.seed)
    if cfg.prune == "infobatch":
        return InfoBatch(num_samples, cfg.epochs, prune_ratio=cfg.infobatch_ratio, delta=cfg.infobatch_delta,
                         seed=cfg.seed)
    return StaticCoreset.from_file(cfg.coreset, num_samples)


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


def fit(cfg, *, kind: str, model, loader, schedule, unpack: Callable, num_samples: int, runtime: Runtime,
        evaluate: Optional[Callable[[], float]] = None, forward_kwargs=None, after_step=None,
        truth_mismatched: Optional[np.ndarray] = None, pair_reduction: str = "mean") -> dict:
    """Train `cfg.epochs` epochs; returns the run summary (also in report.md on rank 0)."""
    from tqdm import tqdm

    folder = run_folder(cfg, kind, runtime.world_size)
    ckpt_dir = os.path.join(folder, "checkpoints")
    device = runtime.device
    state = open_run(cfg, folder, runtime.world_size, runtime.is_main, map_location=device)  # before any write
    model.to(device)
    train_model = model
    if runtime.world_size > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
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

    def checkpoint(path, epoch):
        if runtime.is_main:
            save_checkpoint(path, model=model, optimizer=optimizer, scaler=scaler, schedule=schedule,
                            epoch=epoch, global_step=global_step, history=history,
                            config=checkpoint_config(cfg, runtime.world_size))

    step = Step(model=train_model, optimizer=optimizer, scaler=scaler, schedule=schedule, unpack=unpack,
                base_lr=cfg.lr, warmup_epochs=cfg.warmup_epochs, epochs=cfg.epochs, forward_kwargs=forward_kwargs,
                autocast=_autocast(cfg, device), grad_clip_norm=cfg.grad_clip_norm, after_step=after_step,
                pair_reduction=pair_reduction, log_every=cfg.log_every, stop_after_step=cfg.stop_after_step,
                keep_losses=cfg.save_losses)
    try:
        for epoch in range(start_epoch, cfg.epochs):
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
                latest = os.path.join(ckpt_dir, "latest.pt")
                last = f"the last checkpoint, {latest}, is from before it" if os.path.isfile(latest) else \
                    "no checkpoint was written"
                raise TrainingDiverged(f"{err}; training stopped and {last}") from None
            finally:
                progress.close()
            global_step += result.steps
            schedule.end_epoch(epoch, result.mean_loss)
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
                checkpoint(os.path.join(ckpt_dir, "latest.pt"), epoch + 1)
            if evaluate is not None and runtime.is_main and (
                    last or (cfg.eval_frequency and (epoch + 1) % cfg.eval_frequency == 0)):
                history[-1]["eval"] = evaluate()
                if save:  # again, with the score in the saved history
                    checkpoint(os.path.join(ckpt_dir, "latest.pt"), epoch + 1)
            logger.log_epoch(history)
            if runtime.is_main:
                print(_epoch_line(kind, history[-1]), flush=True)
    except StopTraining as stop:
        return {"stopped_at_step": stop.global_step, "folder": folder}
    finally:
        logger.close()
        loader.stop()  # a run that stopped mid-epoch leaves no loader thread behind
    summary = _summary(cfg, kind, history, full_epoch_samples, folder, schedule, truth_mismatched)
    if runtime.is_main:
        np.savetxt(os.path.join(folder, "coreset.txt"), schedule.coreset(), fmt="%d")
        plots = plot_run(folder, history, _candidate_losses(folder))
        write_report(folder, f"{kind.upper()} run `{os.path.basename(folder)}` (--prune {cfg.prune})",
                     summary, history, plots)
    return summary


def _epoch_line(kind, row):
    score = f", eval {row['eval']:.4f}" if row["eval"] is not None else ""
    return (f"{kind} epoch {row['epoch']}: {row['phase']}, kept {row['kept_fraction']:.1%}, loss {row['loss']:.4f}, "
            f"{row['samples']} samples in {row['seconds']:.1f}s ({row['samples_per_s']:.0f}/s){score}")


def _save_candidates(folder, epoch, schedule, result):
    """--save-losses: the preparation epoch's per-sample losses (float16) beside its candidates."""
    ids, losses = per_sample_losses(result)
    np.savez(os.path.join(folder, "candidates.npz"), epoch=epoch, ids=ids, losses=losses,
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


def _summary(cfg, kind, history, full_epoch_samples, folder, schedule, truth_mismatched):
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
        if truth_mismatched is not None and any(r["phase"] == "preparation" for r in history):
            precision, recall = candidate_precision_recall(schedule.candidates("ill_matched"), truth_mismatched)
            summary["ill_precision"], summary["ill_recall"] = precision, recall
    return summary
