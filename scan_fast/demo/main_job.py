"""The main job (`make demo`): SCAN and its epoch-wide variant against none / none-matched / random (and,
by --strategies, InfoBatch and SeTa) on the embedded shapes data, or another set of data_sets.py (--data:
clean, hard-caption and colour-digits sets).

Builds `shapes` (8 shapes x 8 colours, small or large, in one of 4 quadrants;
20% mismatched captions, 10% near-duplicates) with a clean held-out split for
zero-shot evaluation over its 64 shape x colour classes; trains the tiny CLIP
(`--loss siglip`: the same towers with the sigmoid loss) once per strategy and seed at equal
epochs (random prunes exactly the counts of the SCAN run of the same seed, read from its
epochs.csv), except none-matched, the equal-compute baseline: all the data for the sample-steps of
the scan-epoch run (--matched-to) of the same seed, over the fewest epochs that hold them, its learning rate's cosine
over that shorter run (scan_fast/schedule/budget.py); and prints one
table: sample-steps, training wall time, zero-shot accuracy (evaluated after every epoch, for the
accuracy-vs-compute plots), and for SCAN and its variants the
precision / recall of its ill-matched candidates against the injected
mismatches. Each run's report and plots, and the comparison report, are
written under the output folder.
"""
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Literal, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from scan_fast.demo.data_sets import DATA_SETS, build_data
from scan_fast.train.config import LOSSES, PRUNE_MODES, TrainConfig
from scan_fast.flags import add_config_flags, check_choices, config_from_args, flag, redefault


class Shown(NamedTuple):
    """How the demo runs and draws a --prune strategy: style, (colour, marker, line style) of its curves;
    copies_counts_of, the strategy whose run's counts it takes as --prune-counts (run first; none-matched's is
    --matched-to's)."""
    style: Tuple[str, str, str]
    copies_counts_of: Optional[str] = None


# The strategies the demo compares, in PRUNE_MODES' order (static needs a coreset file of its own).
SHOWN = {
    "scan": Shown(("tab:blue", "o", "-")),
    "scan-epoch": Shown(("tab:green", "s", "-")),
    "scan-epoch-or-none": Shown(("tab:cyan", "X", "-")),
    "none": Shown(("black", "D", "--")),
    "random": Shown(("tab:red", "v", ":"), copies_counts_of="scan"),
    "none-matched": Shown(("dimgray", "d", "-"), copies_counts_of="scan-epoch"),
    "infobatch": Shown(("tab:purple", "^", "-.")),
    "seta": Shown(("tab:orange", "P", "--")),
}
OTHER_STYLE = ("tab:gray", "x", "-")
STRATEGIES = tuple(SHOWN)
BASELINE = "none"  # what the others are compared with
MATCHED = next(name for name, mode in PRUNE_MODES.items() if mode.matches_sample_steps)  # the equal-compute baseline
DEFAULT_STRATEGIES = ("scan", "scan-epoch", "none", "none-matched", "random")  # make demo: under 4 min on 2 cores
PRUNING = tuple(s for s in STRATEGIES if s not in (BASELINE, MATCHED))  # what none-matched can be matched to


@dataclass
class MainJobConfig:
    out: str = flag("demo_out", "folder for data, runs and the report", "run")
    # 8000 pairs x 10 epochs: enough for the tiny CLIP to learn shape as well as colour
    # (4000 left the harder shapes near chance), about 3 minutes per seed on 2 cores.
    num_samples: int = flag(8000, "training pairs of the generated data set", "data")
    test_samples: int = flag(1024, "clean held-out pairs for the zero-shot evaluation", "data")
    epochs: int = flag(10, "epochs of every run", "training")
    batch_size: int = flag(128, "batch size", "training")
    lr: float = flag(2e-3, "peak learning rate", "training")
    warmup_epochs: float = flag(1.0, "linear LR warm-up, in (fractional) epochs", "training")
    seeds: Sequence[int] = flag((0,), "one run per strategy and seed", "training")
    strategies: Sequence[Literal[STRATEGIES]] = flag(DEFAULT_STRATEGIES, "the strategies to compare", "training")
    workers: int = flag(2, "FFCV decoding threads", "run")
    progress: bool = flag(True, "tqdm bars", "run")
    loss: Literal[LOSSES] = flag("clip", "clip: the tiny CLIP; siglip: the same towers with the sigmoid "
                                           "loss", "training")
    matched_to: Literal[PRUNING] = flag(SHOWN[MATCHED].copies_counts_of, "the strategy whose sample-steps "
                                        "none-matched trains for, run in the same job", "training")
    data: Literal[tuple(DATA_SETS)] = flag(
        "shapes", "shapes (20%% wrong captions), shapes-clean (none), shapes-hard (near-miss wrong captions, varied "
                  "templates), colour-digits (handwritten digits in colour, wrong and faint pairs), colour-digits-clean "
                  "(scan_fast/demo/data_sets.py)", "data")
    save_epoch_losses: bool = redefault(TrainConfig, "save_epoch_losses", False)

    def __post_init__(self):
        check_choices(self)
        for strategy in self.strategies:
            source = self.counts_source(strategy)
            if source is not None and source not in self.strategies:
                raise ValueError(f"--strategies: {strategy} matches a {source.upper()} run's counts, so it needs "
                                 f"{source} too")
        for name in ("num_samples", "test_samples", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.num_samples < self.batch_size:
            raise ValueError(f"--num-samples {self.num_samples} is fewer than one batch ({self.batch_size})")
        if not self.seeds:
            raise ValueError("--seeds: give at least one seed")

    def counts_source(self, strategy: str) -> Optional[str]:
        """The strategy whose run's counts `strategy` takes (SHOWN's copies_counts_of; for none-matched
        --matched-to), or None."""
        return self.matched_to if strategy == MATCHED else SHOWN[strategy].copies_counts_of

    def run_order(self) -> List[str]:
        """The strategies in the order a seed runs them: each after every run whose counts it takes (random after
        scan, none-matched after --matched-to's run, also when that is random)."""
        def links_fed(strategy):  # the longest chain of runs that take their counts from `strategy`
            return max((1 + links_fed(s) for s in self.strategies if self.counts_source(s) == strategy), default=0)
        return sorted(self.strategies, key=lambda s: -links_fed(s))


def _compile_loaders(job: MainJobConfig, data: Dict[str, str]) -> None:
    """Build the loaders of the job's runs as the trainer builds them, untimed, and read a batch from each:
    ffcv compiles their pipelines (numba, ~4 s a loader here and ~5 s more for a process's first), which
    every run then reuses (reuse_compiled_loaders) instead of timing it in its first epoch."""
    from scan_fast.train.clip import clip_task
    from scan_fast.train.runtime import setup_runtime

    cfg = _clip_config(job, data, "none", job.seeds[0], None)
    task, runtime = clip_task(cfg), setup_runtime(cfg.device)
    model = task.build_model(runtime)
    for loader in (task.build_loader(None, runtime), task.evaluation_loader(model, runtime.device)):
        next(iter(loader))
        loader.stop()


def _epochs_of(job: MainJobConfig, prune: str, prune_counts: Optional[str]) -> int:
    """The job's epochs, or for a strategy that matches another run's sample-steps the fewest that hold them."""
    if not PRUNE_MODES[prune].matches_sample_steps:
        return job.epochs
    from scan_fast.schedule.budget import matched_epochs
    from scan_fast.train.report import read_sample_steps

    return matched_epochs(read_sample_steps(prune_counts), job.num_samples, job.batch_size)


def _clip_config(job: MainJobConfig, data: Dict[str, str], prune: str, seed: int, prune_counts: Optional[str]):
    from scan_fast.demo.colour_digits import TEMPLATE
    from scan_fast.train.clip_model import TINY_CLIP, TINY_SIGLIP
    from scan_fast.train.config import ClipConfig

    extra = {"zeroshot_template": TEMPLATE} if DATA_SETS[job.data].family == "colour-digits" else {}
    epochs = _epochs_of(job, prune, prune_counts)
    return ClipConfig(model=TINY_SIGLIP if job.loss == "siglip" else TINY_CLIP, loss=job.loss,
                      train_data=data["train"], val_data=data["test"], batch_size=job.batch_size,
                      epochs=epochs, lr=job.lr, warmup_epochs=job.warmup_epochs,
                      seed=seed, prune=prune, prune_counts=prune_counts, workers=job.workers,
                      logs=os.path.join(job.out, "runs"), name=f"{prune}-seed{seed}", progress=job.progress,
                      tensorboard=True,
                      overwrite=True,  # the job's runs are its own outputs, made again on every call
                      save_frequency=epochs,  # so a checkpoint after the last epoch only: no run is resumed
                      eval_frequency=1,  # every epoch: the accuracy-vs-compute curves (a small held-out set)
                      # the report's loss histogram of the candidates (8k samples)
                      save_losses=PRUNE_MODES[prune].finds_candidates, save_epoch_losses=job.save_epoch_losses,
                      **extra)


def run_main_job(job: MainJobConfig) -> List[dict]:
    from scan_fast.data import reuse_compiled_loaders
    from scan_fast.train.clip import train_clip
    from scan_fast.train.runtime import flush_cpu_denormals

    flush_cpu_denormals()  # before building the data starts any thread pool
    start = time.perf_counter()
    data = build_data(job.out, job.num_samples, job.test_samples, job.progress, job.data)
    rows = []
    with reuse_compiled_loaders():
        _compile_loaders(job, data)
        for seed in job.seeds:
            for prune in job.run_order():
                counts, source = None, job.counts_source(prune)
                if source is not None:
                    counts = os.path.join(job.out, "runs", f"{source}-seed{seed}", "epochs.csv")
                print(f"== {prune}, seed {seed}", flush=True)
                summary = train_clip(_clip_config(job, data, prune, seed, counts))
                rows.append({"strategy": prune, "seed": seed, **summary})
    table = format_table(rows)
    path = write_comparison(job, rows, table, time.perf_counter() - start)
    print(table)
    print(f"\nreport: {path}")
    return rows


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values))


def aggregate(rows: List[dict]) -> List[dict]:
    """One row per strategy: means (and std over seeds) of each measure, and the zero-shot gap to
    the baseline (`none`) paired by seed (a seed's data and initial weights are shared by its strategies,
    so the paired gap is far less noisy than the spread of either accuracy over seeds), with its worst seed."""
    none_by_seed = {r["seed"]: r.get("eval") for r in rows if r["strategy"] == BASELINE}
    matched_by_seed = {r["seed"]: r.get("eval") for r in rows if r["strategy"] == MATCHED}
    out = []
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        group = [r for r in rows if r["strategy"] == strategy]
        agg = {"strategy": strategy, "seeds": len(group)}
        for key in ("sample_steps", "pruned_fraction", "pruned_fraction_after_warmup", "wall_seconds", "cpu_seconds",
                    "eval", "ill_precision", "ill_recall"):
            agg[key], agg[f"{key}_std"] = _mean_std([r.get(key) for r in group])
        gaps = [r["eval"] - none_by_seed[r["seed"]] for r in group
                if strategy != BASELINE and r.get("eval") is not None and none_by_seed.get(r["seed"]) is not None]
        agg["eval_vs_none"], agg["eval_vs_none_std"] = _mean_std(gaps)
        agg["eval_vs_none_worst"] = min(gaps) if gaps else None
        gaps = [r["eval"] - matched_by_seed[r["seed"]] for r in group
                if strategy != MATCHED and r.get("eval") is not None and matched_by_seed.get(r["seed"]) is not None]
        agg["eval_vs_matched"], agg["eval_vs_matched_std"] = _mean_std(gaps)
        agg["eval_vs_matched_worst"] = min(gaps) if gaps else None
        out.append(agg)
    return out


def format_table(rows: List[dict]) -> str:
    """Markdown table, one row per strategy (mean ± std over seeds)."""
    def cell(agg, key, scale=1.0, digits=1, suffix="", sign=""):
        mean, std = agg[key], agg[f"{key}_std"]
        if mean is None:
            return "—"
        text = f"{mean * scale:{sign}.{digits}f}{suffix}"
        return text + (f" ± {std * scale:.{digits}f}" if agg["seeds"] > 1 else "")

    matched = any(r["strategy"] == MATCHED for r in rows)
    header = ("| strategy | seeds | sample-steps | pruned (all / after warm-up) | train wall s | train CPU s "
              f"| zero-shot acc % | vs {BASELINE}, paired by seed (points) | worst seed vs {BASELINE} "
              + (f"| vs {MATCHED}, paired (points) | worst seed vs {MATCHED} " if matched else "")
              + "| ill-matched precision % | ill-matched recall % |")
    lines = [header, "|" + "---|" * (13 if matched else 11)]
    for agg in aggregate(rows):
        versus = ""
        if matched:
            worst_m = "—" if agg["eval_vs_matched_worst"] is None else f"{100 * agg['eval_vs_matched_worst']:+.1f}"
            versus = f"| {cell(agg, 'eval_vs_matched', 100, 1, sign='+')} | {worst_m} "
        pruned = cell(agg, "pruned_fraction", 100, 1, "%")
        if agg["pruned_fraction_after_warmup"] is not None:
            pruned += " / " + cell(agg, "pruned_fraction_after_warmup", 100, 1, "%")
        worst = "—" if agg["eval_vs_none_worst"] is None else f"{100 * agg['eval_vs_none_worst']:+.1f}"
        lines.append(f"| {agg['strategy']} | {agg['seeds']} | {cell(agg, 'sample_steps', 1, 0)} | {pruned} "
                     f"| {cell(agg, 'wall_seconds')} | {cell(agg, 'cpu_seconds')} | {cell(agg, 'eval', 100)} "
                     f"| {cell(agg, 'eval_vs_none', 100, 1, sign='+')} | {worst} {versus}"
                     f"| {cell(agg, 'ill_precision', 100)} "
                     f"| {cell(agg, 'ill_recall', 100)} |")
    return "\n".join(lines)


def write_comparison(job: MainJobConfig, rows: List[dict], table: str, seconds: float) -> str:
    """report.md in the output folder: the table, per-run rows, and a kept-fraction plot of every run."""
    from scan_fast.data.embedded import COLOURS, SHAPES

    curves = strategy_curves(rows)
    plot_comparison(curves, job.out)

    finders = ", ".join(name for name, mode in PRUNE_MODES.items() if mode.finds_candidates)
    truth_note = (f"Precision / recall: the ill-matched candidates of the last preparation epoch ({finders}) "
                  "against the injected mismatched captions.")
    choice = DATA_SETS[job.data]
    wrong = f"{round(100 * choice.mismatch_fraction)}% mismatched captions"
    if choice.captions == "varied":
        wrong += " that differ from the right one in one word, captions in several templates"
    if choice.family == "colour-digits":
        data_line = (f"# SCAN vs baselines on {job.data} (tiny {_MODEL_NAMES[job.loss]}, CPU)", "",
                     f"{job.num_samples} training pairs of handwritten digits in colour ({wrong}, "
                     f"15% faint but right, 10% near-duplicates), {job.test_samples} clean held-out pairs of unseen "
                     "handwriting for 80-way (digit x colour) zero-shot classification; ")
    else:
        data_line = (f"# SCAN vs baselines on {job.data} (tiny {_MODEL_NAMES[job.loss]}, CPU)", "",
                     f"{job.num_samples} training pairs ({wrong}, 10% near-duplicates), "
                     f"{job.test_samples} clean held-out pairs for {len(SHAPES) * len(COLOURS)}-way (shape x colour) "
                     "zero-shot classification; ")
    per_run = ["| strategy | seed | sample-steps | wall s | zero-shot acc | run report |", "|---|---|---|---|---|---|"]
    for r in rows:
        rel = os.path.relpath(os.path.join(r["folder"], "report.md"), job.out)
        per_run.append(f"| {r['strategy']} | {r['seed']} | {r['sample_steps']} | {r['wall_seconds']:.1f} "
                       f"| {100 * r['eval']:.1f}% | [{rel}]({rel}) |")
    text = "\n".join([
        data_line[0], data_line[1], data_line[2] + f"{job.epochs} epochs, "
        f"batch {job.batch_size}, lr {job.lr}, seeds {list(job.seeds)}. Random pruning removes exactly as many "
        "samples per epoch as the SCAN run of the same seed; none-matched trains all the data for the "
        f"sample-steps of the {job.matched_to} run of the same seed (fewer epochs, its own cosine). Total time "
        f"{seconds:.0f} s.", "", table, "", truth_note, "", "## Runs", "", *per_run, "",
        "## Plots", "",
        "Zero-shot accuracy after every epoch against the cumulative sample-steps and the cumulative training "
        "wall time (means over seeds): the further up and left, the less compute for the accuracy.", "",
        "![accuracy vs compute](accuracy_vs_compute.png)", "",
        "The share of the data each epoch trains on (means over seeds; markers and line styles differ and the "
        "points are shifted a little sideways, so strategies with equal counts, as random and scan, stay "
        "visible), and the mean training loss of each epoch. Each strategy's loss is over the samples it kept "
        "that epoch, so the losses of different strategies are over different subsets: a pruning strategy that "
        "drops the hardest samples shows a lower loss without having learnt more.", "",
        "![kept fraction and training loss](comparison.png)", ""])
    path = os.path.join(job.out, "report.md")
    with open(path, "w") as f:
        f.write(text)
    return path


_MODEL_NAMES = {"clip": "CLIP", "siglip": "SigLIP (sigmoid loss)"}


def strategy_curves(rows: List[dict]) -> Dict[str, dict]:
    """Per strategy, per epoch means over seeds: kept fraction, loss, zero-shot accuracy (None where an
    epoch was not evaluated), cumulative sample-steps and cumulative training wall seconds."""
    import csv

    by_strategy: Dict[str, list] = {}
    for r in rows:
        with open(os.path.join(r["folder"], "epochs.csv")) as f:
            by_strategy.setdefault(r["strategy"], []).append(list(csv.DictReader(f)))
    curves = {}
    for strategy, runs in by_strategy.items():
        epochs = min(len(run) for run in runs)

        def column(key):
            return np.array([[float(run[e][key]) if run[e][key] != "" else np.nan for e in range(epochs)]
                             for run in runs])

        accuracy = column("eval")
        curves[strategy] = {
            "epoch": np.arange(epochs), "kept_fraction": column("kept_fraction").mean(0),
            "loss": column("loss").mean(0), "sample_steps": np.cumsum(column("samples"), axis=1).mean(0),
            "seconds": np.cumsum(column("seconds"), axis=1).mean(0),
            "accuracy": np.where(np.isnan(accuracy).any(0), np.nan, accuracy.mean(0)), "seeds": len(runs)}
    return curves


def plot_comparison(curves: Dict[str, dict], out: str) -> List[str]:
    """accuracy_vs_compute.png and comparison.png (kept fraction, training loss) in `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def style(strategy):
        shown = SHOWN.get(strategy)
        return shown.style if shown is not None else OTHER_STYLE

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for strategy, c in curves.items():
        colour, marker, line = style(strategy)
        ok = ~np.isnan(c["accuracy"])
        for ax, key in zip(axes, ("sample_steps", "seconds")):
            ax.plot(c[key][ok], 100 * c["accuracy"][ok], color=colour, marker=marker, linestyle=line,
                    markersize=4, label=strategy)
    axes[0].set(xlabel="cumulative sample-steps", ylabel="zero-shot accuracy %",
                title="accuracy vs sample-steps (each point: one epoch)")
    axes[1].set(xlabel="cumulative training wall time, s", ylabel="zero-shot accuracy %",
                title="accuracy vs wall time")
    axes[0].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "accuracy_vs_compute.png"), dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    count = max(len(curves), 1)
    for i, (strategy, c) in enumerate(curves.items()):
        colour, marker, line = style(strategy)
        shift = (i - (count - 1) / 2) * 0.08  # sideways, so equal values stay visible
        axes[0].plot(c["epoch"] + shift, c["kept_fraction"], color=colour, marker=marker, linestyle=line,
                     markersize=5, alpha=0.85, label=strategy)
        axes[1].plot(c["epoch"], c["loss"], color=colour, marker=marker, linestyle=line, markersize=4,
                     label=strategy)
    axes[0].set(xlabel="epoch (points shifted sideways per strategy)", ylabel="kept fraction", ylim=(0, 1.05),
                title="data kept per epoch")
    axes[1].set(xlabel="epoch", ylabel="mean per-sample loss",
                title="training loss over each strategy's kept samples\n(different subsets: not comparable)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "comparison.png"), dpi=100)
    plt.close(fig)
    return ["accuracy_vs_compute.png", "comparison.png"]


def add_main_job_parser(sub, name: str = "demo") -> None:
    """`scan-fast demo`: the comparison above (wire it in scan_fast/cli.py); its flags are MainJobConfig's."""
    p = sub.add_parser(name, help="train a tiny CLIP with SCAN, scan-epoch and baselines (none / random / infobatch / "
                                  "seta) and compare",
                       description=__doc__.split("\n\n")[0])
    add_config_flags(p, MainJobConfig, ("data", "training", "run"))
    p.set_defaults(run=_run_main_job)


def _run_main_job(args):
    run_main_job(config_from_args(args, MainJobConfig))
    return 0
