"""`Task`: what one kind of training owns, after open_clip_train's task. One per kind: `ClipTask` and
`SigLipTask` (`clip.py`), `MocoTask` (`moco.py`).

A task checks its config and data, builds its model and its training loader, runs the forward that
turns a `Batch` into the `PairLoss` of this rank's rows, evaluates, and adds its own values to the
run's summary. What every task shares is done once: `scan_fast.train.run.train(task)` sets up the
processes, the seed, the schedule and the start check, `fit(task, schedule, runtime)` runs the
epochs, checkpoints and report, and `loop.train_one_epoch` the steps.
"""
from typing import Callable, Optional

import torch


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The model a DistributedDataParallel wrapper holds, or `model` itself."""
    return getattr(model, "module", model)


class Task:
    """One kind of training, made from its config (`cfg`). Subclasses set the attributes and define the
    methods below, which are called in this order: check (by `run.train`, before the processes start),
    build_model, build_loader and evaluation (by `fit`), forward and after_step in every step, and
    summarize at the end of the run.

    kind: names the run (its default folder, epoch lines, report title): "clip" for CLIP and SigLIP,
    "moco" for MoCo v3.
    pair_weight: a step minimises the batch mean of (pair.a + pair.b) x pair_weight (times the
    schedule's sample weights): 0.5, the mean of the two directions, as open_clip's losses; MoCo v3
    sums its two terms (1.0).
    """
    kind = ""
    pair_weight = 0.5

    def __init__(self, cfg=None):
        self.cfg = cfg
        self.model = None  # what build_model made (the task's own, unwrapped model)

    def check(self) -> int:
        """Validate the config and the data before anything is built; returns the number of training samples."""
        raise NotImplementedError

    def build_model(self, runtime) -> torch.nn.Module:
        """The model, its weights drawn from the generators the caller seeded (the same on every rank);
        also kept as `self.model`."""
        raise NotImplementedError

    def build_loader(self, schedule, runtime):
        """The training loader: this rank's shard of each epoch's kept ids, as `Batch`es."""
        raise NotImplementedError

    def evaluation(self, model, device) -> Optional[Callable[[], float]]:
        """The evaluation of `model` run after epochs (a score, higher is better), or None (no --val-data)."""
        return None

    def forward(self, model, batch, epoch: float):
        """The `PairLoss` of this rank's rows of `batch` at fractional epoch `epoch`; `model` is the task's
        model or its DistributedDataParallel wrapper. Called in every step: no host reads."""
        raise NotImplementedError

    def after_step(self, model) -> None:
        """Called after each optimizer step with the model of `forward` (e.g. to clamp a parameter)."""

    def summarize(self, summary: dict, schedule, history: list, runtime) -> None:
        """Add the task's own values to the run's summary, before the report is written (every rank)."""
