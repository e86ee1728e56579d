"""One config dataclass per trainer: each field is a flag (help text, choices and section beside it).

Values are checked when a config is made (`__post_init__`, naming the flag of a bad value or
combination); `validate()` adds what only a run needs (--train-data).

Field names follow open_clip_train (model, train_data, batch_size, lr, wd,
beta1, beta2, eps, precision, workers, logs, name, resume, seed, ...) and MoCo
v3's main_moco.py (moco_m, moco_t, moco_dim, moco_mlp_dim, arch) where they
mean the same; `warmup_epochs` is in epochs because pruned epochs vary in steps.
"""
import math
from dataclasses import dataclass, fields
from typing import Callable, Literal, Optional, Tuple

from scan_fast.schedule.inputs import FLOAT32_MAX, check_prune_threshold, check_threshold
from scan_fast.flags import check_choices, choices_of, flag, option_name, redefault


@dataclass(frozen=True)
class PruneMode:
    """One --prune strategy, as PRUNE_MODES registers it.

    build(cfg, num_samples, rank, world_size) -> its PruningSchedule (run.make_schedule);
    flags: config fields only this strategy reads (given with another --prune, refused by validate());
    needs_flags: they must be given with it (static's --coreset);
    finds_candidates: it chooses SCAN's ill-matched and redundant candidates (the demo saves their losses);
    coreset_state: the state_dict kind of its schedule when `coreset export` can read its checkpoints;
    random_count: how many ids it keeps is a random draw, so its fewest is an expectation (InfoBatch);
    matches_sample_steps: it matches another run's total sample-steps (--prune-counts), not its per-epoch
        counts: all the data over the fewest epochs that hold them (scan_fast/schedule/budget.py).

    How the demo runs and draws each strategy lives with the demo (scan_fast/demo/main_job.py: SHOWN).
    """
    build: Callable
    flags: Tuple[str, ...] = ()
    needs_flags: bool = False
    finds_candidates: bool = False
    coreset_state: Optional[str] = None
    random_count: bool = False
    matches_sample_steps: bool = False


# the schedule builders of PRUNE_MODES: (cfg, num_samples, rank, world_size) -> a PruningSchedule


def _scan(cfg, num_samples, rank, world_size):
    from scan_fast.schedule import Scan

    return Scan(num_samples, rho_ill=cfg.rho_ill, rho_red=cfg.rho_red, t_cos=cfg.t_cos,
                prune_threshold=cfg.prune_threshold, mode=cfg.prune_target, seed=cfg.seed,
                abs_ill=cfg.abs_ill, abs_red=cfg.abs_red)


def _scan_epoch(cfg, num_samples, rank, world_size, fallback="paper", recent_look=False):
    from scan_fast.schedule.scan_epoch import ScanEpoch, wrong_pair_floor

    # the floor holds for the CLIP loss's softmax over the global batch (scan_epoch.wrong_pair_floor)
    floor = wrong_pair_floor(cfg.batch_size * world_size) if cfg.pair_loss() == "clip" else None
    return ScanEpoch(num_samples, rho_ill=cfg.rho_ill, rho_red=cfg.rho_red, t_cos=cfg.t_cos,
                     prune_threshold=cfg.prune_threshold, mode=cfg.prune_target, seed=cfg.seed, rank=rank,
                     world_size=world_size, min_mode_loss=floor, fallback=fallback, recent_look=recent_look)


def _scan_epoch_or_none(cfg, num_samples, rank, world_size):
    return _scan_epoch(cfg, num_samples, rank, world_size, fallback="none", recent_look=True)


def _none(cfg, num_samples, rank, world_size):
    from scan_fast.schedule.no_pruning import NoPruning

    return NoPruning(num_samples)


def _random(cfg, num_samples, rank, world_size):
    from scan_fast.schedule.random_pruning import RandomPruning
    from scan_fast.train.report import read_prune_counts

    counts = read_prune_counts(cfg.prune_counts) if cfg.prune_counts else None
    return RandomPruning(num_samples, prune_counts=counts, rho_ill=cfg.rho_ill, rho_red=cfg.rho_red,
                         t_cos=cfg.t_cos, prune_threshold=cfg.prune_threshold, mode=cfg.prune_target, seed=cfg.seed)


def _none_matched(cfg, num_samples, rank, world_size):
    from scan_fast.schedule.budget import matched_prune_counts
    from scan_fast.schedule.random_pruning import RandomPruning
    from scan_fast.train.report import read_sample_steps

    counts = matched_prune_counts(read_sample_steps(cfg.prune_counts), num_samples, cfg.batch_size * world_size,
                                  cfg.epochs)
    return RandomPruning(num_samples, prune_counts=counts, seed=cfg.seed)


def _infobatch(cfg, num_samples, rank, world_size):
    from scan_fast.schedule.infobatch import InfoBatch

    return InfoBatch(num_samples, cfg.epochs, prune_ratio=cfg.infobatch_ratio, delta=cfg.infobatch_delta,
                     seed=cfg.seed)


def _seta(cfg, num_samples, rank, world_size):
    from scan_fast.schedule.seta import SeTa

    return SeTa(num_samples, cfg.epochs, ratio=cfg.seta_ratio, groups=cfg.seta_groups, window=cfg.seta_window,
                delta=cfg.seta_delta, seed=cfg.seed)


def _static(cfg, num_samples, rank, world_size):
    from scan_fast.data.source_ids import coreset_ids
    from scan_fast.schedule.static_coreset import StaticCoreset

    ids = coreset_ids(cfg.coreset, cfg.train_data)  # uids, keys or a kept bitset -> ids; None: an id list
    return StaticCoreset.from_file(cfg.coreset, num_samples) if ids is None else StaticCoreset(num_samples, ids)


# every --prune strategy, registered once: make_schedule (run.py) builds each, validate() checks their flags,
# `coreset export` (coreset.py) and the demo (scan_fast/demo/main_job.py) read what they need from here
PRUNE_MODES = {
    "scan": PruneMode(_scan, flags=("abs_ill", "abs_red"), finds_candidates=True, coreset_state="Scan"),
    "scan-epoch": PruneMode(_scan_epoch, finds_candidates=True, coreset_state="ScanEpoch"),
    # scan-epoch, but a wrong-pair mode is taken only where the samples' recent losses show one too (from them when
    # the preparation's own losses do not), and a cycle without one prunes nothing (none's run on clean data)
    "scan-epoch-or-none": PruneMode(_scan_epoch_or_none, finds_candidates=True, coreset_state="ScanEpoch"),
    "none": PruneMode(_none),
    "random": PruneMode(_random, flags=("prune_counts",)),
    # the equal-compute baseline: no pruning, for the sample-steps of another run, its own cosine
    "none-matched": PruneMode(_none_matched, flags=("prune_counts",), needs_flags=True, matches_sample_steps=True),
    "infobatch": PruneMode(_infobatch, random_count=True),
    "seta": PruneMode(_seta),
    "static": PruneMode(_static, flags=("coreset",), needs_flags=True),
}
DEFAULT_ZEROSHOT_TEMPLATE = "a photo of a {}."
SECTIONS = ("data", "model", "optimisation", "pruning", "evaluation", "run")  # --help's argument groups, in order
_MAX_TIMEOUT_S = 10.0 ** 9  # datetime.timedelta holds at most 999999999 days


def _number(name: str, value):
    """`value` unless it is not a number (a config file may hold anything): then a ValueError naming the flag."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"{option_name(name)} must be a number, got {value!r}")
    return value


def _check_float(name: str, value, minimum: float, above_minimum: bool = False, hint: str = "") -> float:
    """A float flag that reaches tensors: finite, >= (or >) minimum and at most float32's largest value."""
    value = _number(name, value)
    low_ok = value > minimum if above_minimum else value >= minimum
    if not (math.isfinite(value) and low_ok and value <= FLOAT32_MAX):
        raise ValueError(f"{option_name(name)} must be a finite number {'>' if above_minimum else '>='} {minimum:g} "
                         f"and at most {FLOAT32_MAX:.4g} (float32's largest){hint}, got {value!r}")
    return value


def _check_positive_ints(config, names) -> None:
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{option_name(name)} must be a positive integer, got {value!r}")


def _check_unit(config, names) -> None:
    for name in names:
        if not 0.0 <= _number(name, getattr(config, name)) <= 1.0:
            raise ValueError(f"{option_name(name)} must be in [0, 1], got {getattr(config, name)!r}")


@dataclass
class TrainConfig:
    """What both trainers share: data, optimisation, pruning and the run."""
    train_data: str = flag("", "the training data: a .beton, a part folder or an index of webdataset shards "
                                "(scan-fast data ...)", "data")
    val_data: Optional[str] = flag(None, "labelled .beton or part folder for evaluation (zero-shot for CLIP, "
                                   "kNN/linear probe for MoCo): scan-fast data labelled, or data clip --label-column",
                                   "data")
    batch_size: int = flag(128, "batch size per process", "data")
    workers: int = flag(2, "FFCV decoding threads", "data")
    direct_reads: bool = flag(False, "read an index's shards with O_DIRECT: each image costs its own 512-byte blocks "
                                     "from storage and fills no page cache (for data larger than memory; every "
                                     "epoch then reads from storage)", "data")
    epochs: int = flag(10, "epochs to train", "optimisation")
    lr: float = flag(5e-4, "peak learning rate", "optimisation")
    wd: float = flag(0.1, "AdamW weight decay", "optimisation")
    beta1: float = flag(0.9, "AdamW beta1", "optimisation")
    beta2: float = flag(0.98, "AdamW beta2", "optimisation")
    eps: float = flag(1e-6, "AdamW epsilon", "optimisation")
    warmup_epochs: float = flag(1.0, "linear LR warm-up, in (fractional) epochs", "optimisation")
    grad_clip_norm: Optional[float] = flag(None, "clip the gradients' total norm to this value, a number > 0 (not "
                                           "given: no clipping)", "optimisation")
    precision: Literal["amp", "amp_bf16", "fp32"] = flag("amp", "GPU only (CPU always runs fp32)", "optimisation")
    device: str = flag("auto", "auto, cpu or cuda[:N]", "data")
    seed: int = flag(0, "seed of the model, the schedule's draws and the augmentation", "data")
    augment: bool = flag(False, "random-resized-crop augmentation (crops are keyed by seed, epoch and sample id, so "
                         "a resumed run sees the same images)", "data")
    prune: Literal[tuple(PRUNE_MODES)] = flag("scan", "pruning strategy (docs/scan-method.md)", "pruning")
    rho_ill: float = flag(0.35, "SCAN: share of each batch taken as ill-matched candidates (scan-epoch: the most "
                          "of the epoch)", "pruning")
    rho_red: float = flag(0.35, "SCAN: share of each batch taken as redundant candidates (scan-epoch: share of the "
                          "epoch)", "pruning")
    t_cos: int = flag(3, "SCAN: mutation epochs per cycle", "pruning")
    prune_threshold: float = flag(0.3, "SCAN: warm-up ends when the epoch loss drops by less than this share, in "
                                  "[0, 1]", "pruning")
    prune_target: Literal["both", "redundant", "ill_matched"] = flag("both", "SCAN candidates", "pruning")
    abs_ill: Optional[float] = flag(None, "SCAN: ill-matched candidates are the losses above this value (> 0) "
                                    "instead of --rho-ill's share", "pruning")
    abs_red: Optional[float] = flag(None, "SCAN: redundant candidates are the losses below this value (> 0) "
                                    "instead of --rho-red's share", "pruning")
    coreset: Optional[str] = flag(None, "--prune static: the samples to train on: sample ids (.txt, one a line, or "
                                  ".npy), a DataComp uid .npy (u8,u8) or a key list (coreset export --format "
                                  "datacomp|keys: matched to --train-data's uids or keys), or a run's "
                                  "coreset.bits.npy", "pruning")
    prune_counts: Optional[str] = flag(None, "--prune random: epochs.csv of a SCAN run whose per-epoch counts to "
                                       "match; --prune none-matched: epochs.csv of a run whose total sample-steps to "
                                       "train on all the data, spread evenly over --epochs (the demo sets the fewest "
                                       "that hold them)", "pruning")
    infobatch_ratio: float = flag(0.5, "InfoBatch: pruning probability of below-mean samples", "pruning")
    infobatch_delta: float = flag(0.875, "InfoBatch: share of the epochs that may prune (the rest use all data)",
                                  "pruning")
    # SeTa (Zhou et al., CVPR 2025); defaults of its ImageNet script
    seta_ratio: float = flag(0.0, "SeTa: share of all samples dropped at random each epoch", "pruning")
    seta_groups: int = flag(5, "SeTa: k-means clusters of the per-sample losses", "pruning")
    seta_window: float = flag(0.6, "SeTa: share of the clusters, easy to hard, that the sliding window keeps",
                              "pruning")
    seta_delta: float = flag(0.875, "SeTa: share of the epochs that prune with the window (the rest anneal: random "
                             "drop only)", "pruning")
    logs: str = flag("runs", "folder of all runs", "run")
    name: Optional[str] = flag(None, "run folder name (default <kind>-<prune>-seed<seed>-<digest of the training "
                               "flags>)", "run")
    resume: Optional[str] = flag(None, "checkpoint to resume, or 'latest' for this run's last one; the training "
                                 "flags must be the checkpoint's (docs/architecture.md lists those that may change)",
                                 "run")
    overwrite: bool = flag(False, "replace the run folder if it already holds a run (without it, a new run refuses "
                           "it)", "run")
    save_frequency: int = flag(1, "checkpoint every N epochs (and after the last), before evaluating", "run")
    eval_frequency: int = flag(0, "evaluate every N epochs (0: after the last only)", "evaluation")
    tensorboard: bool = flag(True, "write TensorBoard event files in the run folder", "run")
    progress: bool = flag(True, "a progress bar within each epoch, drawn on a terminal only (the line that sums up "
                          "each epoch is always printed)", "run")
    log_every: int = flag(50, "steps between the loop's host reads: the non-finite loss check, progress, and moving "
                          "the candidates found on the device to the host", "run")
    save_losses: bool = flag(False, "save each preparation epoch's per-sample losses (float16) as candidates.npz "
                             "and plot their histogram in the report (memory and disk grow with the epoch)", "run")
    save_epoch_losses: bool = flag(False, "save every epoch's per-sample losses (float32, the mean of both "
                                   "directions, as the pruning rules bin them) as losses/epoch-NNN.npz in the run "
                                   "folder, for `scan-fast losses`; rank 0's memory and the disk grow with the "
                                   "epoch", "run")
    stop_after_step: Optional[int] = flag(None, "stop after this global step without saving (tests of resume)",
                                          "run")
    dist_timeout: float = flag(600.0, "seconds a collective waits for the other processes before the run fails "
                               "(the other ranks wait while rank 0 evaluates: keep it above the evaluation's time); "
                               "a rank that loses another stops with one line naming the collective and the last "
                               "checkpoint (exit code 4)", "run")

    def __post_init__(self):
        check_choices(self)
        _check_positive_ints(self, ("batch_size", "workers", "epochs", "t_cos", "save_frequency", "log_every",
                                    "seta_groups"))
        if self.eval_frequency < 0:
            raise ValueError(f"--eval-frequency must be >= 0, got {self.eval_frequency}")
        for name in ("lr", "wd", "eps", "warmup_epochs"):
            _check_float(name, getattr(self, name), minimum=0.0)
        if self.grad_clip_norm is not None:  # torch's clip_grad_norm_ flips the gradients for a negative norm
            _check_float("grad_clip_norm", self.grad_clip_norm, minimum=0.0, above_minimum=True,
                         hint=" (leave it out for no clipping)")
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"--warmup-epochs {self.warmup_epochs} is longer than --epochs {self.epochs}")
        _check_unit(self, ("beta1", "beta2", "rho_ill", "rho_red", "infobatch_delta", "seta_delta"))
        if self.rho_ill + self.rho_red > 1.0 + 1e-12:
            raise ValueError(f"--rho-ill + --rho-red must be <= 1, got {self.rho_ill} + {self.rho_red}")
        if not 0.0 <= self.infobatch_ratio < 1.0:
            raise ValueError(f"--infobatch-ratio must be in [0, 1), got {self.infobatch_ratio}")
        if not 0.0 <= self.seta_ratio <= 0.9:
            raise ValueError(f"--seta-ratio must be in [0, 0.9], got {self.seta_ratio}")
        if not 0.0 < self.seta_window <= 1.0 or round(self.seta_groups * self.seta_window) < 1:
            raise ValueError(f"--seta-window must be in (0, 1] and keep at least one of --seta-groups "
                             f"{self.seta_groups} clusters, got {self.seta_window}")
        self._check_strategy_flags()
        check_prune_threshold("--prune-threshold", _number("prune_threshold", self.prune_threshold))
        for name in ("abs_ill", "abs_red"):
            check_threshold(option_name(name), _number(name, getattr(self, name)))
        if self.resume and self.overwrite:
            raise ValueError("--resume continues the run in its folder and --overwrite replaces it: pass one")
        if not (math.isfinite(self.dist_timeout) and 0 < self.dist_timeout <= _MAX_TIMEOUT_S):
            raise ValueError(f"--dist-timeout must be a positive number of seconds (at most {_MAX_TIMEOUT_S:.0f}), "
                             f"got {self.dist_timeout!r}")
        if self.stop_after_step is not None and self.stop_after_step < 1:
            raise ValueError(f"--stop-after-step must be >= 1, got {self.stop_after_step}")

    def validate(self) -> "TrainConfig":
        """The config of a run: its values are checked already; a run needs --train-data besides."""
        if not self.train_data:
            raise ValueError("--train-data is required: the .beton or part folder to train on")
        return self

    def _check_strategy_flags(self) -> None:
        """The flags a strategy owns (PruneMode.flags) are only given with it, and with it when it needs them."""
        for name, mode in PRUNE_MODES.items():
            given = [f for f in mode.flags if getattr(self, f) is not None]
            # a flag two strategies share (--prune-counts) is the chosen one's where it owns it too
            chosen = self.prune == name or bool(given and self.prune in PRUNE_MODES
                                                and set(given) <= set(PRUNE_MODES[self.prune].flags))
            flags = "/".join(option_name(f) for f in mode.flags)
            if mode.needs_flags and chosen != bool(given):
                values = ", ".join(f"{option_name(f)} {getattr(self, f)}" for f in mode.flags)
                raise ValueError(f"--prune {name} needs {flags} FILE, and {flags} is only used with --prune {name}"
                                 f" (got --prune {self.prune}, {values})")
            if given and not chosen:
                verb = "applies" if len(mode.flags) == 1 else "apply"
                raise ValueError(f"{flags} only {verb} to --prune {name} (got --prune {self.prune})")

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def pair_loss(self) -> Optional[str]:
        """The loss the run's pairs are trained with: "clip", "siglip" or "moco"; None for the options every
        task shares alone (`coreset export` rebuilds a schedule from them)."""
        return None


@dataclass
class ClipConfig(TrainConfig):
    model: str = flag("scan-tiny-vit", "open_clip model config name (random init, no download)", "model")
    loss: Optional[Literal["clip", "siglip"]] = flag(None, "CLIP loss: clip (InfoNCE) or siglip (sigmoid, learnt "
                                                     "bias); default: the model config's, siglip for open_clip's "
                                                     "*-SigLIP* names and scan-tiny-vit-siglip", "model")
    zeroshot_classes: Optional[str] = flag(None, "file of class names, one a line in label order, one per label "
                                           "(default: the names saved beside --val-data)", "evaluation")
    zeroshot_template: str = flag(DEFAULT_ZEROSHOT_TEMPLATE, "prompt for each class name, with one {} where the "
                                  "name goes", "evaluation")

    def pair_loss(self) -> str:
        """--loss, or the model config's default (`default_loss`)."""
        from scan_fast.train.clip_model import default_loss

        return self.loss or default_loss(self.model)


@dataclass
class MocoConfig(TrainConfig):
    arch: str = flag("vit_tiny_cpu", "MoCo backbone: vit_small, resnet50, vit_tiny_cpu or resnet_tiny_cpu", "model")
    moco_dim: int = flag(64, "MoCo: output dimension of the projection head", "model")
    moco_mlp_dim: int = flag(256, "MoCo: hidden dimension of the projection and prediction heads", "model")
    moco_m: float = flag(0.99, "MoCo: momentum of the momentum encoder, in [0, 1]", "model")
    moco_m_cos: bool = flag(True, "MoCo: raise the momentum to 1 on a half-cosine over the run", "model")
    moco_t: float = flag(0.2, "MoCo: softmax temperature of the InfoNCE loss (> 0)", "model")
    lr: float = redefault(TrainConfig, "lr", 1.5e-4)
    wd: float = redefault(TrainConfig, "wd", 0.1)
    beta2: float = redefault(TrainConfig, "beta2", 0.999)
    eps: float = redefault(TrainConfig, "eps", 1e-8)
    augment: bool = redefault(TrainConfig, "augment", True)
    resolution: int = flag(32, "MoCo input size in pixels", "data")
    knn_k: int = flag(20, "MoCo kNN eval: neighbours", "evaluation")
    probe_train_data: Optional[str] = flag(None, "MoCo eval: labelled .beton or part folder for the kNN bank and "
                                           "the linear probe (default --train-data, which then needs labels)",
                                           "evaluation")

    def pair_loss(self) -> str:
        return "moco"

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.moco_m <= 1.0:
            raise ValueError(f"--moco-m must be in [0, 1], got {self.moco_m}")
        _check_float("moco_t", self.moco_t, minimum=0.0, above_minimum=True)
        if self.resolution < 8:
            raise ValueError(f"--resolution must be >= 8, got {self.resolution}")


PRECISIONS = choices_of(TrainConfig, "precision")
SCAN_TARGETS = choices_of(TrainConfig, "prune_target")
LOSSES = choices_of(ClipConfig, "loss")
