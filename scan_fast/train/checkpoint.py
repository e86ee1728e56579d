"""Checkpoints: one dict of state_dicts, written atomically, read with weights_only=True.

A checkpoint holds the model, optimizer, AMP scaler, pruning schedule, the
epoch to resume at and the global step (the LR is a function of the epoch
position, so nothing else is needed for it), every random generator (Python,
numpy, torch CPU and CUDA), the run's config and its per-epoch history. Only
tensors and plain Python values go in, so `torch.load(weights_only=True)`
reads it back.
"""
import os
import random
import tempfile
from typing import Optional

import numpy as np
import torch

from scan_fast.outputs import default_file_mode
from scan_fast.train.task import unwrapped

FORMAT = "scan-fast-checkpoint-v1"
_TMP_PREFIX, _TMP_SUFFIX = ".ckpt-", ".tmp"  # a write in progress, renamed over the target when complete


def rng_state() -> dict:
    version, mt_state, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [version, list(mt_state), gauss],
        "numpy": [np_kind, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss),
                  float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class NonFiniteState(RuntimeError):
    """A checkpoint was not written: the named model or optimizer tensor holds NaN or inf."""

    def __init__(self, name: str):
        super().__init__(f"{name} holds NaN or inf")
        self.name = name


def first_non_finite(model, optimizer) -> Optional[str]:
    """The name of the first model or optimizer-state tensor holding NaN or inf, or None when all are finite.

    One fused max-abs reduction per device (`torch._foreach_norm` with ord=inf, which propagates NaN)
    and one host read of its result: cheap enough for every checkpoint, and no read inside a step.
    """
    named = [(f"model weight {name}", t) for name, t in unwrapped(model).state_dict().items()]
    names = {id(p): name for name, p in unwrapped(model).named_parameters()}
    for param, values in optimizer.state.items():
        for key, value in values.items():
            named.append((f"optimizer state {key!r} of {names.get(id(param), 'a parameter')}", value))
    by_device = {}
    for name, tensor in named:
        if torch.is_tensor(tensor) and tensor.is_floating_point() and tensor.numel():
            by_device.setdefault(tensor.device, []).append((name, tensor.detach()))
    for entries in by_device.values():
        norms = torch.stack([n.float() for n in torch._foreach_norm([t for _, t in entries], float("inf"))])
        finite = torch.isfinite(norms).cpu()
        if not bool(finite.all()):
            return entries[int((~finite).nonzero()[0])][0]
    return None


def save_checkpoint(path, *, model, optimizer, scaler, schedule, epoch: int, global_step: int, config: dict,
                    history: list) -> None:
    """Write the checkpoint to a temporary file beside `path`, then rename it over `path`.

    Refuses (NonFiniteState, nothing written) when a model weight or optimizer state holds NaN or inf.
    """
    path = os.fspath(path)
    bad = first_non_finite(model, optimizer)
    if bad is not None:
        raise NonFiniteState(bad)
    state = {
        "format": FORMAT,
        "epoch": int(epoch),          # the next epoch to train
        "global_step": int(global_step),
        "model": unwrapped(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "schedule": schedule.state_dict(),
        "rng": rng_state(),
        "config": dict(config),
        "history": list(history),
    }
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())  # mkstemp makes it 0600: give it the mode any other file gets
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_stale_temporaries(folder) -> None:
    """Delete the temporary files of checkpoint writes that a killed process left in `folder`."""
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.startswith(_TMP_PREFIX) and name.endswith(_TMP_SUFFIX):
                os.unlink(os.path.join(folder, name))


def load_checkpoint(path, map_location="cpu") -> dict:
    """The checkpoint dict; ValueError naming the file if it is not one of ours."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated file, foreign pickle: say which file
        raise ValueError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a scan-fast checkpoint")
    return state


def restore(state: dict, *, model, optimizer, scaler, schedule) -> None:
    """Load every part of `state` into the live objects and the random generators."""
    unwrapped(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    schedule.load_state_dict(state["schedule"])
    set_rng_state(state["rng"])
