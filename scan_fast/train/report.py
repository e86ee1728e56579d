"""What a run leaves behind: epochs.csv, TensorBoard scalars, report.md and PNG plots.

The per-epoch history (a list of flat dicts) is the single source: the CSV is
rewritten from it after every epoch (so a resumed run has no duplicate rows),
and the report and plots are drawn from it at the end.
"""
import csv
import os
from typing import Dict, List, Optional

import numpy as np

COLUMNS = ("epoch", "phase", "kept", "pruned", "kept_fraction", "steps", "samples", "loss", "lr", "seconds",
           "cpu_seconds", "samples_per_s", "eval")


class RunLogger:
    """epochs.csv (+ TensorBoard event files under tb/) in the run folder, written on rank 0 only."""

    def __init__(self, folder: str, tensorboard: bool = True, enabled: bool = True):
        self.folder, self.enabled = folder, enabled
        self._writer = None
        if enabled:
            os.makedirs(folder, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(os.path.join(folder, "tb"))

    def log_epoch(self, history: List[dict]) -> None:
        if not self.enabled:
            return
        write_csv(os.path.join(self.folder, "epochs.csv"), history)
        if self._writer is not None:
            row = history[-1]
            for key in ("loss", "kept_fraction", "lr", "samples_per_s", "eval"):
                if row.get(key) is not None:
                    self._writer.add_scalar(f"train/{key}" if key != "eval" else "eval/accuracy",
                                            row[key], row["epoch"])
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def write_csv(path: str, history: List[dict]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})
    os.replace(tmp, path)


def read_prune_counts(path: str) -> Dict[int, int]:
    """{epoch: samples pruned} from a run's epochs.csv (to run --prune random at a SCAN run's counts)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--prune-counts: no file at {path}")
    counts = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"epoch", "pruned"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"--prune-counts: {path} lacks column(s) {sorted(missing)}; "
                             "expected a run's epochs.csv")
        for row_number, row in enumerate(reader, start=2):
            try:
                epoch, pruned = int(row["epoch"]), int(row["pruned"])
            except (TypeError, ValueError):
                raise ValueError(f"--prune-counts: {path}, line {row_number}: epoch and pruned must be "
                                 f"integers, got {row.get('epoch')!r}, {row.get('pruned')!r}") from None
            if pruned < 0:
                raise ValueError(f"--prune-counts: {path}, line {row_number}: negative pruned count {pruned}")
            counts[epoch] = pruned
    return counts


def read_sample_steps(path: str) -> int:
    """The sample-steps a run trained (the sum of its epochs.csv's samples column), for --prune none-matched."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--prune-counts: no file at {path}")
    total = 0
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if "samples" not in (reader.fieldnames or ()):
            raise ValueError(f"--prune-counts: {path} lacks column 'samples'; expected a run's epochs.csv")
        for row_number, row in enumerate(reader, start=2):
            try:
                samples = int(row["samples"])
            except (TypeError, ValueError):
                raise ValueError(f"--prune-counts: {path}, line {row_number}: samples must be an integer, "
                                 f"got {row.get('samples')!r}") from None
            if samples < 0:
                raise ValueError(f"--prune-counts: {path}, line {row_number}: negative samples {samples}")
            total += samples
    return total


def plot_run(folder: str, history: List[dict], candidate_losses: Optional[dict] = None) -> List[str]:
    """loss.png, kept.png and (when given) candidates.png; returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(epochs, [r["loss"] for r in history], marker="o")
    ax.set(xlabel="epoch", ylabel="mean per-sample loss", title="training loss")
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "loss.png"), dpi=100)
    plt.close(fig)
    written.append("loss.png")

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(epochs, [r["kept_fraction"] for r in history],
           color=["tab:orange" if r["phase"] == "preparation" else "tab:blue" for r in history])
    ax.set(xlabel="epoch", ylabel="kept fraction", ylim=(0, 1.05), title="data kept per epoch (orange: preparation)")
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "kept.png"), dpi=100)
    plt.close(fig)
    written.append("kept.png")

    if candidate_losses:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        all_losses = np.concatenate([v for v in candidate_losses.values() if len(v)])
        bins = np.linspace(all_losses.min(), all_losses.max(), 40)
        for label, values in candidate_losses.items():
            if len(values):
                ax.hist(values, bins=bins, alpha=0.6, label=f"{label} ({len(values)})")
        ax.set(xlabel="per-sample loss (last preparation epoch)", ylabel="samples", title="SCAN candidates")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(folder, "candidates.png"), dpi=100)
        plt.close(fig)
        written.append("candidates.png")
    return written


def markdown_table(rows: List[dict], columns) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_report(folder: str, title: str, summary: dict, history: List[dict], plots: List[str]) -> str:
    """report.md: the summary, the per-epoch table and the plots."""
    lines = [f"# {title}", ""]
    lines += [f"- **{k}**: {v:.4g}" if isinstance(v, float) else f"- **{k}**: {v}" for k, v in summary.items()]
    lines += ["", "## Epochs", "", markdown_table(history, COLUMNS), ""]
    lines += [f"![{p}]({p})" for p in plots]
    path = os.path.join(folder, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
