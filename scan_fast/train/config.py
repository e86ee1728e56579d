"""One config dataclass per trainer; `validate()` names the flag of any bad value or combination.

Field names follow open_clip_train (model, train_data, batch_size, lr, wd,
beta1, beta2, eps, precision, workers, logs, name, resume, seed, ...) and MoCo
v3's main_moco.py (moco_m, moco_t, moco_dim, moco_mlp_dim, arch) where they
mean the same; `warmup_epochs` is in epochs because pruned epochs vary in steps.
"""
import math
from dataclasses import dataclass, fields
from typing import Callable, Optional, Tuple

from scan_fast.schedule.inputs import FLOAT32_MAX, check_prune_threshold, check_threshold


@dataclass(frozen=True)
class PruneMode:
    """One --prune strategy, as PRUNE_MODES registers it.

    build(cfg, num_samples, rank, world_size) -> its PruningSchedule (run.make_schedule);
    flags: config fields only this strategy reads (given with another --prune, refused by validate());
    needs_flags: they must be given with it (static's --coreset);
    finds_candidates: it chooses SCAN's ill-matched and redundant candidates (the demo saves their losses);
    coreset_state: the state_dict kind of its schedule when `coreset export` can read its checkpoints;
    random_count: how many ids it keeps is a random draw, so its fewest is an expectation (InfoBatch);
    in_demo: the demo can run it (static needs a coreset file of its own);
    copies_counts_of: the strategy whose run's per-epoch counts it matches (the demo runs that one first);
    matches_sample_steps: it matches that run's total sample-steps, not its per-epoch counts: all the data over
        the fewest epochs that hold them (scan_fast/schedule/budget.py), the demo sets --epochs to those;
    demo_baseline: the demo's reference, every other strategy's accuracy is compared with it;
    style: (colour, marker, line style) of its curves in the demo's plots.
    """
    build: Callable
    flags: Tuple[str, ...] = ()
    needs_flags: bool = False
    finds_candidates: bool = False
    coreset_state: Optional[str] = None
    random_count: bool = False
    in_demo: bool = True
    copies_counts_of: Optional[str] = None
    matches_sample_steps: bool = False
    demo_baseline: bool = False
    style: Tuple[str, str, str] = ("tab:gray", "x", "-")


# the schedule builders of PRUNE_MODES: (cfg, num_samples, rank, world_size) -> a PruningSchedule


def _scan(cfg, num_samples, rank, world_size):
    from scan_fast.schedule import Scan

    return Scan(num_samples, rho_ill=cfg.rho_ill, rho_red=cfg.rho_red, t_cos=cfg.t_cos,
                prune_threshold=cfg.prune_threshold, mode=cfg.prune_target, seed=cfg.seed,
                abs_ill=cfg.abs_ill, abs_red=cfg.abs_red)


def _scan_epoch(cfg, num_samples, rank, world_size):
    from scan_fast.schedule.scan_epoch import ScanEpoch

    return ScanEpoch(num_samples, rho_ill=cfg.rho_ill, rho_red=cfg.rho_red, t_cos=cfg.t_cos,
                     prune_threshold=cfg.prune_threshold, mode=cfg.prune_target, seed=cfg.seed, rank=rank,
                     world_size=world_size)


def _none(cfg, num_samples, rank, world_size):
    from scan_fast.schedule.strategies import NoPruning

    return NoPruning(num_samples)


def _random(cfg, num_samples, rank, world_size):
    from scan_fast.schedule.strategies import RandomPruning
    from scan_fast.train.report import read_prune_counts

    counts = read_prune_counts(cfg.prune_counts) if cfg.prune_counts else None
    return RandomPruning(num_samples, prune_counts=counts, rho_ill=cfg.rho_ill, rho_red=cfg.rho_red,
                         t_cos=cfg.t_cos, prune_threshold=cfg.prune_threshold, mode=cfg.prune_target, seed=cfg.seed)


def _none_matched(cfg, num_samples, rank, world_size):
    from scan_fast.schedule.budget import matched_prune_counts
    from scan_fast.schedule.strategies import RandomPruning
    from scan_fast.train.report import read_sample_steps

    counts = matched_prune_counts(read_sample_steps(cfg.prune_counts), num_samples, cfg.batch_size * world_size,
                                  cfg.epochs)
    return RandomPruning(num_samples, prune_counts=counts, seed=cfg.seed)


def _infobatch(cfg, num_samples, rank, world_size):
    from scan_fast.schedule.strategies import InfoBatch

    return InfoBatch(num_samples, cfg.epochs, prune_ratio=cfg.infobatch_ratio, delta=cfg.infobatch_delta,
                     seed=cfg.seed)


def _seta(cfg, num_samples, rank, world_size):
    from scan_fast.schedule.strategies import SeTa

    return SeTa(num_samples, cfg.epochs, ratio=cfg.seta_ratio, groups=cfg.seta_groups, window=cfg.seta_window,
                delta=cfg.seta_delta, seed=cfg.seed)


def _static(cfg, num_samples, rank, world_size):
    from scan_fast.data.source_ids import coreset_ids
    from scan_fast.schedule.strategies import StaticCoreset

    ids = coreset_ids(cfg.coreset, cfg.train_data)  # uids, keys or a kept bitset -> ids; None: an id list
    return StaticCoreset.from_file(cfg.coreset, num_samples) if ids is None else StaticCoreset(num_samples, ids)


# every --prune strategy, registered once: make_schedule (run.py) builds each, validate() checks their flags,
# the demo (main_job.py) and `coreset export` (cli.py) read what they need from here; nothing else tests the names
PRUNE_MODES = {
    "scan": PruneMode(_scan, flags=("abs_ill", "abs_red"), finds_candidates=True, coreset_state="Scan",
                      style=("tab:blue", "o", "-")),
    "scan-epoch": PruneMode(_scan_epoch, finds_candidates=True, coreset_state="ScanEpoch",
                            style=("tab:green", "s", "-")),
    "none": PruneMode(_none, demo_baseline=True, style=("black", "D", "--")),
    "random": PruneMode(_random, flags=("prune_counts",), copies_counts_of="scan", style=("tab:red", "v", ":")),
    # the equal-compute baseline: no pruning, for the sample-steps of the variant's run, its own cosine
    "none-matched": PruneMode(_none_matched, flags=("prune_counts",), needs_flags=True,
                              copies_counts_of="scan-epoch", matches_sample_steps=True,
                              style=("dimgray", "d", "-")),
    "infobatch": PruneMode(_infobatch, random_count=True, style=("tab:purple", "^", "-.")),
    "seta": PruneMode(_seta, style=("tab:orange", "P", "--")),
    "static": PruneMode(_static, flags=("coreset",), needs_flags=True, in_demo=False),
}
SCAN_TARGETS = ("both", "redundant", "ill_matched")
PRECISIONS = ("amp", "amp_bf16", "fp32")
LOSSES = ("clip", "siglip")


_MAX_TIMEOUT_S = 10.0 ** 9  # datetime.timedelta holds at most 999999999 days


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _number(name: str, value):
    """`value` unless it is not a number (a config file may hold anything): then a ValueError naming the flag."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"{_flag(name)} must be a number, got {value!r}")
    return value


def _check_float(name: str, value, minimum: float, above_minimum: bool = False, hint: str = "") -> float:
    """A float flag that reaches tensors: finite, >= (or >) minimum and at most float32's largest value."""
    value = _number(name, value)
    low_ok = value > minimum if above_minimum else value >= minimum
    if not (math.isfinite(value) and low_ok and value <= FLOAT32_MAX):
        raise ValueError(f"{_flag(name)} must be a finite number {'>' if above_minimum else '>='} {minimum:g} and "
                         f"at most {FLOAT32_MAX:.4g} (float32's largest){hint}, got {value!r}")
    return value


@dataclass
class TrainConfig:
    """What both trainers share: data, optimisation, pruning and the run."""
    train_data: str = ""
    val_data: Optional[str] = None
    batch_size: int = 128
    workers: int = 2
    epochs: int = 10
    lr: float = 5e-4
    wd: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup_epochs: float = 1.0
    grad_clip_norm: Optional[float] = None
    precision: str = "amp"  # AMP on GPU; CPU always runs fp32
    device: str = "auto"
    seed: int = 0
    augment: bool = False
    # pruning
    prune: str = "scan"
    rho_ill: float = 0.35
    rho_red: float = 0.35
    t_cos: int = 3
    prune_threshold: float = 0.3
    prune_target: str = "both"
    abs_ill: Optional[float] = None
    abs_red: Optional[float] = None
    coreset: Optional[str] = None          # --prune static: id list (.txt or .npy)
    prune_counts: Optional[str] = None     # --prune random: a SCAN run's epochs.csv to match
    infobatch_ratio: float = 0.5
    infobatch_delta: float = 0.875
    # SeTa (Zhou et al., CVPR 2025); defaults of its ImageNet script
    seta_ratio: float = 0.0        # share of all samples dropped at random each epoch
    seta_groups: int = 5           # k-means clusters of the losses
    seta_window: float = 0.6       # share of the clusters (easy to hard) the sliding window keeps
    seta_delta: float = 0.875      # share of the epochs that prune; the rest anneal (random keep only)
    # run
    logs: str = "runs"
    name: Optional[str] = None
    resume: Optional[str] = None
    overwrite: bool = False   # replace what the run folder holds (a new run refuses a folder in use)
    save_frequency: int = 1
    eval_frequency: int = 0   # evaluate every N epochs; 0: only after the last
    tensorboard: bool = True
    progress: bool = True
    log_every: int = 50       # steps between host reads: loss check, progress, candidate flush
    save_losses: bool = False  # write each preparation epoch's per-sample losses (candidates.npz, histogram)
    stop_after_step: Optional[int] = None  # stop (as if killed) after this global step
    dist_timeout: float = 600.0  # seconds a collective waits for the other ranks (gloo's default: 30 min)

    def validate(self) -> "TrainConfig":
        if not self.train_data:
            raise ValueError("--train-data is required: the .beton or part folder to train on")
        for name in ("batch_size", "workers", "epochs", "t_cos", "save_frequency", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{_flag(name)} must be a positive integer, got {value!r}")
        if self.eval_frequency < 0:
            raise ValueError(f"--eval-frequency must be >= 0, got {self.eval_frequency}")
        for name in ("lr", "wd", "eps", "warmup_epochs"):
            _check_float(name, getattr(self, name), minimum=0.0)
        if self.grad_clip_norm is not None:  # torch's clip_grad_norm_ flips the gradients for a negative norm
            _check_float("grad_clip_norm", self.grad_clip_norm, minimum=0.0, above_minimum=True,
                         hint=" (leave it out for no clipping)")
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"--warmup-epochs {self.warmup_epochs} is longer than --epochs {self.epochs}")
        for name in ("beta1", "beta2", "rho_ill", "rho_red"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{_flag(name)} must be in [0, 1], got {getattr(self, name)!r}")
        if self.rho_ill + self.rho_red > 1.0 + 1e-12:
            raise ValueError(f"--rho-ill + --rho-red must be <= 1, got {self.rho_ill} + {self.rho_red}")
        if not 0.0 <= self.infobatch_ratio < 1.0:
            raise ValueError(f"--infobatch-ratio must be in [0, 1), got {self.infobatch_ratio}")
        if not 0.0 <= self.infobatch_delta <= 1.0:
            raise ValueError(f"--infobatch-delta must be in [0, 1], got {self.infobatch_delta}")
        if not 0.0 <= self.seta_ratio <= 0.9:
            raise ValueError(f"--seta-ratio must be in [0, 0.9], got {self.seta_ratio}")
        if isinstance(self.seta_groups, bool) or not isinstance(self.seta_groups, int) or self.seta_groups < 1:
            raise ValueError(f"--seta-groups must be a positive integer, got {self.seta_groups!r}")
        if not 0.0 < self.seta_window <= 1.0 or round(self.seta_groups * self.seta_window) < 1:
            raise ValueError(f"--seta-window must be in (0, 1] and keep at least one of --seta-groups "
                             f"{self.seta_groups} clusters, got {self.seta_window}")
        if not 0.0 <= self.seta_delta <= 1.0:
            raise ValueError(f"--seta-delta must be in [0, 1], got {self.seta_delta}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.prune not in PRUNE_MODES:
            raise ValueError(f"--prune must be one of {tuple(PRUNE_MODES)}, got {self.prune!r}")
        if self.prune_target not in SCAN_TARGETS:
            raise ValueError(f"--prune-target must be one of {SCAN_TARGETS}, got {self.prune_target!r}")
        self._check_strategy_flags()
        check_prune_threshold("--prune-threshold", _number("prune_threshold", self.prune_threshold))
        for name in ("abs_ill", "abs_red"):
            check_threshold(_flag(name), _number(name, getattr(self, name)))
        if self.resume and self.overwrite:
            raise ValueError("--resume continues the run in its folder and --overwrite replaces it: pass one")
        if not (math.isfinite(self.dist_timeout) and 0 < self.dist_timeout <= _MAX_TIMEOUT_S):
            raise ValueError(f"--dist-timeout must be a positive number of seconds (at most {_MAX_TIMEOUT_S:.0f}), "
                             f"got {self.dist_timeout!r}")
        if self.stop_after_step is not None and self.stop_after_step < 1:
            raise ValueError(f"--stop-after-step must be >= 1, got {self.stop_after_step}")
        return self

    def _check_strategy_flags(self) -> None:
        """The flags a strategy owns (PruneMode.flags) are only given with it, and with it when it needs them."""
        for name, mode in PRUNE_MODES.items():
            given = [f for f in mode.flags if getattr(self, f) is not None]
            # a flag two strategies share (--prune-counts) is the chosen one's where it owns it too
            chosen = self.prune == name or bool(given and self.prune in PRUNE_MODES
                                                and set(given) <= set(PRUNE_MODES[self.prune].flags))
            if mode.needs_flags and chosen != bool(given):
                flags = "/".join(_flag(f) for f in mode.flags)
                values = ", ".join(f"{_flag(f)} {getattr(self, f)}" for f in mode.flags)
                raise ValueError(f"--prune {name} needs {flags} FILE, and {flags} is only used with --prune {name}"
                                 f" (got --prune {self.prune}, {values})")
            if given and not chosen:
                flags = "/".join(_flag(f) for f in mode.flags)
                verb = "applies" if len(mode.flags) == 1 else "apply"
                raise ValueError(f"{flags} only {verb} to --prune {name} (got --prune {self.prune})")

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class ClipConfig(TrainConfig):
    model: str = "scan-tiny-vit"
    loss: Optional[str] = None  # "clip" or "siglip"; None: the model config's (SigLIP for *-SigLIP* names)
    zeroshot_classes: Optional[str] = None  # class names file for a user ImageFolder-style val set
    zeroshot_template: str = "a photo of a {}."

    def validate(self) -> "ClipConfig":
        super().validate()
        if self.loss is not None and self.loss not in LOSSES:
            raise ValueError(f"--loss must be one of {LOSSES}, got {self.loss!r}")
        return self


@dataclass
class MocoConfig(TrainConfig):
    arch: str = "vit_tiny_cpu"
    moco_dim: int = 64
    moco_mlp_dim: int = 256
    moco_m: float = 0.99
    moco_m_cos: bool = True
    moco_t: float = 0.2
    lr: float = 1.5e-4
    wd: float = 0.1
    beta2: float = 0.999
    eps: float = 1e-8
    augment: bool = True
    resolution: int = 32
    knn_k: int = 20
    probe_train_data: Optional[str] = None  # labelled .beton for the kNN bank / probe fit (default: train_data)

    def validate(self) -> "MocoConfig":
        super().validate()
        if not 0.0 <= self.moco_m <= 1.0:
            raise ValueError(f"--moco-m must be in [0, 1], got {self.moco_m}")
        _check_float("moco_t", self.moco_t, minimum=0.0, above_minimum=True)
        if self.resolution < 8:
            raise ValueError(f"--resolution must be >= 8, got {self.resolution}")
        return self
