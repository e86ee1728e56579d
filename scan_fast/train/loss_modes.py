"""`scan-fast losses`: the wrong-pair tests of scan-epoch's rules replayed on a run's saved per-epoch losses.

For every epoch saved with --save-epoch-losses: the samples' recent losses as the rules keep them
(`recent_codes`, from the first saved epoch on), the valley test's cut (`wrong_pair_cut`), the separation of the
two normals fitted to them and the overlap cut (`overlap_cut`), and the share of the seen samples above each
cut. With the training set of an embedded data set (its truth file lies beside it): each cut's precision and
recall against the wrong captions seen so far, and the best any single cut could reach (the highest
min(precision, recall)). These are the rules' tests, not a run's decisions, which also hang on its preparation
epochs, the floor of a wrong-pair mode and the confirmation (the run's log prints those). A plot draws each epoch's
histogram and cuts.
"""
import csv
import math
import os
from typing import List, Optional

import numpy as np

from scan_fast.schedule.scan_epoch import (EDGES, NUM_CODES, UNSEEN, loss_codes, overlap_cut, recent_codes,
                                           separation, two_normals, wrong_pair_cut)
from scan_fast.train.epoch_losses import FOLDER, read_epoch_losses
from scan_fast.train.run import candidate_precision_recall

COLUMNS = ("epoch", "seen", "valley_cut_loss", "valley_above", "separation", "overlap_cut_loss", "overlap_above",
           "valley_precision", "valley_recall", "overlap_precision", "overlap_recall", "best_cut_loss",
           "best_precision", "best_recall")


def code_loss(code: int) -> float:
    """The lowest loss of a code (its bin's lower edge; code 0 holds everything below the first edge)."""
    return float(EDGES[code - 1]) if code > 0 else 0.0


def fitted_separation(hist: np.ndarray) -> Optional[float]:
    """The `separation` of the two normals `two_normals` fits to the histogram (None: one mode)."""
    fit = two_normals(hist)
    return None if fit is None else separation(fit[1], fit[2])


def best_cut(recent: np.ndarray, wrong: np.ndarray):
    """(code, precision, recall) of the cut with the highest min(precision, recall) over the seen samples."""
    seen = recent != UNSEEN
    codes = recent[seen].astype(np.int64)
    above_all = np.cumsum(np.bincount(codes, minlength=NUM_CODES)[::-1])[::-1]  # samples with code >= c
    above_wrong = np.cumsum(np.bincount(codes, weights=wrong[seen], minlength=NUM_CODES)[::-1])[::-1]
    total_wrong = max(int(np.count_nonzero(wrong[seen])), 1)
    precision = above_wrong / np.maximum(above_all, 1)
    recall = above_wrong / total_wrong
    c = int(np.argmax(np.minimum(precision, recall)))
    return c, float(precision[c]), float(recall[c])


def replay(run_folder: str, rho_ill: float, wrong: Optional[np.ndarray] = None) -> List[dict]:
    """One row (COLUMNS) an epoch saved in `run_folder`; `wrong`: a boolean per sample, the wrong pairs."""
    rows, recent = [], None
    for saved in read_epoch_losses(run_folder):
        if recent is None:
            recent = np.full(saved.num_samples, UNSEEN, np.uint8)
            if wrong is not None and len(wrong) != saved.num_samples:
                raise ValueError(f"--data: its truth holds {len(wrong)} samples, the run trained on "
                                 f"{saved.num_samples}: not the run's training data")
        recent[saved.ids] = recent_codes(recent[saved.ids], loss_codes(saved.losses, saved.losses))
        seen = recent != UNSEEN
        hist = np.bincount(recent[seen], minlength=NUM_CODES)[:NUM_CODES]
        n_seen = int(np.count_nonzero(seen))
        k_ill = math.floor(rho_ill * saved.num_samples)
        row = dict.fromkeys(COLUMNS)
        row.update(epoch=saved.epoch, seen=n_seen, separation=fitted_separation(hist))
        for name, cut in (("valley", wrong_pair_cut(hist, k_ill)), ("overlap", overlap_cut(hist, k_ill))):
            if cut is None:
                continue
            row[f"{name}_cut_loss"] = code_loss(cut)
            row[f"{name}_above"] = int(hist[cut:].sum()) / max(n_seen, 1)
            if wrong is not None:
                chosen = np.flatnonzero(seen & (recent >= cut))
                row[f"{name}_precision"], row[f"{name}_recall"] = candidate_precision_recall(chosen, seen & wrong)
        row["hist"] = hist  # for the plot
        if wrong is not None:
            code, row["best_precision"], row["best_recall"] = best_cut(recent, wrong)
            row["best_cut_loss"] = code_loss(code)
            row["hist_wrong"] = np.bincount(recent[seen & wrong], minlength=NUM_CODES)[:NUM_CODES]
        rows.append(row)
    return rows


def _cell(value, kind: str) -> str:
    if value is None:
        return "-"
    return {"pct": f"{value:.1%}", "loss": f"{value:.3g}", "num": f"{value:.2f}"}.get(kind, str(value))


def format_rows(rows: List[dict]) -> str:
    """The replay as a text table: cuts as the loss they start at, shares and precision / recall in %."""
    with_truth = any(r["best_precision"] is not None for r in rows)
    head = ["epoch", "seen", "valley cut", "above", "separation", "overlap cut", "above"]
    if with_truth:
        head += ["valley P/R", "overlap P/R", "best cut", "best P/R"]
    lines = [" | ".join(head)]
    for r in rows:
        cells = [str(r["epoch"]), f"{r['seen']:,}", _cell(r["valley_cut_loss"], "loss"),
                 _cell(r["valley_above"], "pct"), _cell(r["separation"], "num"), _cell(r["overlap_cut_loss"], "loss"),
                 _cell(r["overlap_above"], "pct")]
        if with_truth:
            for name in ("valley", "overlap"):
                p, q = r[f"{name}_precision"], r[f"{name}_recall"]
                cells.append("-" if p is None else f"{p:.1%} / {q:.1%}")
            cells += [_cell(r["best_cut_loss"], "loss"), f"{r['best_precision']:.1%} / {r['best_recall']:.1%}"]
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def write_csv(path: str, rows: List[dict]) -> None:
    from scan_fast.outputs import partial_path

    partial = partial_path(path)
    with open(partial, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if r[k] is None else r[k] for k in COLUMNS})
    os.replace(partial, path)


def plot(path: str, rows: List[dict]) -> None:
    """Each epoch's histogram of recent losses (log axis; the wrong pairs' part in orange where the truth is
    known) with the valley cut (solid) and the overlap cut (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scan_fast.outputs import partial_path

    cols = min(len(rows), 4)
    lines = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(lines, cols, figsize=(3.2 * cols, 2.4 * lines), squeeze=False, sharex=True)
    used = np.flatnonzero(np.sum([r["hist"] for r in rows], axis=0)[1:len(EDGES)])  # bins any epoch fills
    span = (EDGES[used[0]], EDGES[used[-1] + 1]) if len(used) else (EDGES[0], EDGES[-1])
    for ax, r in zip(axes.flat, rows):
        # code c in 1..253 covers [EDGES[c - 1], EDGES[c]); codes 0 and 254, the open ends, are left out
        ax.stairs(r["hist"][1:len(EDGES)], EDGES, fill=True, color="tab:blue", label="all pairs")
        if "hist_wrong" in r:
            ax.stairs(r["hist_wrong"][1:len(EDGES)], EDGES, fill=True, color="tab:orange", label="wrong pairs")
        for name, style in (("valley", "-"), ("overlap", "--")):
            if r[f"{name}_cut_loss"] is not None:
                ax.axvline(r[f"{name}_cut_loss"], color="tab:red", linestyle=style, linewidth=1)
        ax.set_xscale("log")
        ax.set_xlim(*span)
        ax.set_title(f"epoch {r['epoch']}", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(rows):]:
        ax.set_visible(False)
    if "hist_wrong" in rows[0]:
        axes.flat[0].legend(fontsize=7)
    fig.supxlabel("recent loss (solid: valley cut, dashed: overlap cut)", fontsize=9)
    fig.supylabel("samples", fontsize=9)
    fig.tight_layout()
    partial = partial_path(path)
    fig.savefig(partial, dpi=100, format="png")
    plt.close(fig)
    os.replace(partial, path)


def replay_run(run_folder: str, rho_ill: float, data: Optional[str] = None) -> str:
    """Replay, write losses/modes.csv and losses/modes.png in the run folder, and return the table."""
    wrong = None
    if data is not None:
        from scan_fast.train.clip import mismatch_truth

        wrong = mismatch_truth(data)
        if wrong is None:
            raise ValueError(f"--data {data}: no truth file beside it (an embedded data set written by scan-fast "
                             f"data or the demo has one)")
    rows = replay(run_folder, rho_ill, wrong)
    write_csv(os.path.join(run_folder, FOLDER, "modes.csv"), rows)
    plot(os.path.join(run_folder, FOLDER, "modes.png"), rows)
    return format_rows(rows)
