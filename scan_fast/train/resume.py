"""A run's folder and its resume: which folder a run writes, what must match to continue it.

A run folder holds one run. A new run refuses a folder that already holds
something unless `--resume` continues the run in it or `--overwrite` replaces
it, so no checkpoint, epochs.csv or report is ever lost by accident. The
default folder name carries a digest of the flags that define the training, so
two different experiments never share a default folder.

A resume continues the same training only when every flag that changes what
is trained is the one the checkpoint was made with. `MAY_CHANGE` lists the
flags that may differ (they change where and how a run is watched, not what it
learns); every other flag must match, and a resume that differs is refused with
the flags named. The per-process `--batch-size` may change together with the
number of processes as long as the global batch (batch size x processes) stays
the same. `--epochs` must match: the learning-rate cosine, MoCo's momentum ramp
and InfoBatch's final full-data epochs are functions of it.
"""
import hashlib
import json
import os
import shutil
from typing import Optional

from scan_fast.train.checkpoint import load_checkpoint, remove_stale_temporaries

# flag -> why it may differ on resume (docs/architecture.md lists them for users)
MAY_CHANGE = {
    "val_data": "evaluation only", "eval_frequency": "evaluation only", "zeroshot_classes": "evaluation only",
    "zeroshot_template": "evaluation only", "knn_k": "evaluation only", "probe_train_data": "evaluation only",
    "workers": "decoding threads; every crop is keyed by (seed, epoch, id), not by the thread",
    "direct_reads": "how the same bytes are read",
    "device": "where the run trains", "dist_timeout": "how long a collective may wait",
    "logs": "where the run is", "name": "where the run is", "resume": "how the run starts",
    "overwrite": "how the run starts", "save_frequency": "how often it is saved",
    "tensorboard": "what is logged", "progress": "what is printed", "stop_after_step": "tests of resume",
    "log_every": "how often the host reads the step's results", "save_losses": "what diagnostics are written",
    "save_epoch_losses": "what diagnostics are written",
}
# Compared as the global batch (batch_size x world_size) when the checkpoint records its world size.
_PER_PROCESS = "batch_size"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def checkpoint_config(cfg, world_size: int) -> dict:
    """The config a checkpoint records: every flag, and the number of processes that trained it."""
    return {**cfg.as_dict(), "world_size": int(world_size)}


def training_identity(config: dict) -> dict:
    """The values that define what a run trains: all flags but MAY_CHANGE, the batch as a global batch."""
    identity = {k: v for k, v in config.items() if k not in MAY_CHANGE and k not in (_PER_PROCESS, "world_size")}
    identity["global_batch"] = config[_PER_PROCESS] * config.get("world_size", 1)
    return identity


def run_folder(cfg, kind: str, world_size: int) -> str:
    """<logs>/<name>; the default name is <kind>-<prune>-seed<seed>-<digest of the training flags>."""
    if cfg.name:
        return os.path.join(cfg.logs, cfg.name)
    identity = json.dumps(training_identity(checkpoint_config(cfg, world_size)), sort_keys=True, default=str)
    digest = hashlib.sha256(f"{kind}:{identity}".encode()).hexdigest()[:8]
    return os.path.join(cfg.logs, f"{kind}-{cfg.prune}-seed{cfg.seed}-{digest}")


def open_run(cfg, folder: str, world_size: int, is_main: bool, map_location="cpu") -> Optional[dict]:
    """Make `folder` ready for this run; returns the checkpoint to continue (with --resume) or None.

    Without --resume a folder that holds anything is refused unless --overwrite,
    which deletes it (on the main process; the others only check). Call before
    any process writes into the folder.
    """
    if cfg.resume:
        path = os.path.join(folder, "checkpoints", "latest.pt") if cfg.resume == "latest" else cfg.resume
        try:
            state = load_checkpoint(path, map_location=map_location)
        except (FileNotFoundError, ValueError) as err:
            hint = ("; without --name the run folder is named after the training flags, so a resume must repeat "
                    "them (or pass --name)" if cfg.resume == "latest" and not cfg.name else "")
            raise type(err)(f"--resume: {err}{hint}") from None
        check_resume(state["config"], checkpoint_config(cfg, world_size), path)
        if is_main:
            remove_stale_temporaries(os.path.dirname(os.path.abspath(path)))
        return state
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"run folder {folder} is a file, not a folder: pass --name or --logs for another one")
    if cfg.overwrite:
        if is_main and os.path.isdir(folder):  # the other processes never look: it may vanish under them
            shutil.rmtree(folder)
    elif os.path.isdir(folder) and os.listdir(folder):
        raise ValueError(f"run folder {folder} already holds a run: pass --resume latest to continue it, "
                         "--overwrite to replace it, or --name for another folder")
    return None


def check_resume(saved: dict, current: dict, path: str) -> None:
    """ValueError naming every flag whose value differs between a checkpoint's config and this run's."""
    if "world_size" in saved:
        saved_id, current_id = training_identity(saved), training_identity(current)
    else:  # a checkpoint that does not record its processes: compare the per-process batch
        saved_id = {k: v for k, v in saved.items() if k not in MAY_CHANGE}
        current_id = {k: v for k, v in current.items() if k not in MAY_CHANGE and k != "world_size"}
    differences = []
    for key in current_id:
        if key == "global_batch":
            if saved_id[key] != current_id[key]:
                differences.append(
                    f"--batch-size x processes ({saved[_PER_PROCESS]} x {saved['world_size']} = {saved_id[key]} "
                    f"there, {current[_PER_PROCESS]} x {current['world_size']} = {current_id[key]} here; the "
                    "global batch must stay the same when the number of processes changes)")
        elif saved_id.get(key) != current_id[key]:
            differences.append(f"{_flag(key)} ({saved_id.get(key)!r} there, {current_id[key]!r} here)")
    if differences:
        raise ValueError(f"--resume {path}: the checkpoint was made with different " + ", ".join(differences)
                         + "; a resume must repeat the run's training flags")
