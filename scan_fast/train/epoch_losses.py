"""Every epoch's per-sample losses of a run (`--save-epoch-losses`): losses/epoch-NNN.npz in the run folder.

One file an epoch, written by rank 0 at the epoch's end under a temporary name and renamed: `ids` (int64, the
global ids the epoch trained on, in the order it saw them), `losses` (float32, the mean of each pair's two
directions: what the pruning rules bin, so a replay bins them as the run did) and `num_samples` (the data set's).
A diagnostic: it holds one row a sample-step, so memory on rank 0 and the disk grow with the epoch.
"""
import os
import re
from typing import Iterator, NamedTuple

import numpy as np

FOLDER = "losses"
_NAME = re.compile(r"epoch-(\d+)\.npz")


class EpochLosses(NamedTuple):
    epoch: int
    ids: np.ndarray
    losses: np.ndarray
    num_samples: int


def epoch_losses_path(run_folder: str, epoch: int) -> str:
    return os.path.join(run_folder, FOLDER, f"epoch-{epoch:03d}.npz")


def save_epoch_losses(run_folder: str, epoch: int, num_samples: int, kept) -> str:
    """Write one epoch's file (`kept`: the SampleLosses the epoch kept); returns its path."""
    from scan_fast.outputs import partial_path

    path = epoch_losses_path(run_folder, epoch)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = partial_path(path)
    with open(partial, "wb") as f:  # a file object: np.savez would add .npz to the temporary name
        np.savez(f, ids=np.asarray(kept.ids, np.int64), losses=np.asarray(kept.losses, np.float32),
                 num_samples=np.int64(num_samples))
    os.replace(partial, path)
    return path


def read_epoch_losses(run_folder: str) -> Iterator[EpochLosses]:
    """The run's saved epochs in epoch order; a clear error where there are none or a file is not one of them."""
    folder = os.path.join(run_folder, FOLDER)
    names = sorted((int(m.group(1)), name) for name in (os.listdir(folder) if os.path.isdir(folder) else ())
                   if (m := _NAME.fullmatch(name)))
    if not names:
        raise FileNotFoundError(f"{run_folder}: no per-epoch losses (losses/epoch-NNN.npz); train the run with "
                                f"--save-epoch-losses")
    num_samples = None
    for epoch, name in names:
        path = os.path.join(folder, name)
        try:
            with np.load(path) as data:
                ids, losses, n = data["ids"], data["losses"], int(data["num_samples"])
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"{path}: not a per-epoch losses file ({err})") from None
        if ids.shape != losses.shape or ids.ndim != 1:
            raise ValueError(f"{path}: ids {ids.shape} and losses {losses.shape} differ")
        if num_samples is not None and n != num_samples:
            raise ValueError(f"{path}: {n} samples, the run's earlier epochs {num_samples}")
        if len(ids) and (ids.min() < 0 or ids.max() >= n):
            raise ValueError(f"{path}: an id outside 0..{n - 1}")
        num_samples = n
        yield EpochLosses(epoch, ids, losses, n)
