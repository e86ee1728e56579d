"""A simulated per-sample loss stream, and the demo that runs Scan over it.

The population mimics what SCAN sees in contrastive pre-training: about 20%
ill-matched pairs whose loss stays high, some redundant easy pairs whose loss
falls fast, and the rest decaying steadily, so that the mean loss flattens and
warm-up ends after a few epochs. Everything is a function of the seed.
"""
import csv
import io
import os
from dataclasses import dataclass

import numpy as np

from scan_fast.flags import flag
from scan_fast.schedule.inputs import check_int

ILL, REDUNDANT, NORMAL = 0, 1, 2


class SimulatedLosses:
    """Per-sample losses loss(i, epoch) for the two directions (a, b) of a contrastive pair."""

    def __init__(self, num_samples: int, ill_fraction: float = 0.2, redundant_fraction: float = 0.2,
                 noise: float = 0.15, seed: int = 0):
        self.num_samples = check_int("num_samples", num_samples, minimum=1)
        self.seed = check_int("seed", seed, minimum=0)
        if not (0 <= ill_fraction and 0 <= redundant_fraction and ill_fraction + redundant_fraction <= 1):
            raise ValueError(f"fractions must be >= 0 and sum to <= 1, got ill_fraction={ill_fraction}, "
                             f"redundant_fraction={redundant_fraction}")
        rng = np.random.default_rng([self.seed, 0])
        self.kind = rng.choice([ILL, REDUNDANT, NORMAL], size=num_samples,
                               p=[ill_fraction, redundant_fraction, 1 - ill_fraction - redundant_fraction])
        self.difficulty = rng.uniform(0.8, 1.2, size=num_samples)
        self.noise = noise

    @property
    def ill_ids(self) -> np.ndarray:
        return np.flatnonzero(self.kind == ILL)

    def mean_loss(self, epoch: int) -> np.ndarray:
        """Noise-free loss of every sample at `epoch`."""
        by_kind = np.array([
            5.5 + 0.5 * np.exp(-epoch / 4),   # ill-matched: stays high
            0.05 + 3.0 * np.exp(-epoch / 1.2),  # redundant: learned fast
            0.8 + 6.0 * np.exp(-epoch / 1.5),   # the rest
        ])
        return self.difficulty * by_kind[self.kind]

    def epoch_losses(self, epoch: int):
        """(loss_a, loss_b) of every sample at `epoch`, each with its own multiplicative noise."""
        rng = np.random.default_rng([self.seed, 1, epoch])
        mean = self.mean_loss(epoch)
        return tuple(mean * np.exp(self.noise * rng.standard_normal(self.num_samples)) for _ in range(2))


@dataclass
class DemoResult:
    scan: "object"
    population: SimulatedLosses
    precision: float  # of the final ill-matched candidates against the injected ill-matched ids
    recall: float


def simulate_run(num_samples: int, epochs: int, batch_size: int, seed: int, progress: bool = False,
                 schedule_type=None, **scan_kwargs) -> DemoResult:
    """Drive Scan (or `schedule_type`, e.g. ScanReference) over the simulated stream like a training loop."""
    from tqdm import tqdm

    if schedule_type is None:
        from scan_fast.schedule import Scan as schedule_type

    epochs = check_int("epochs", epochs, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    population = SimulatedLosses(num_samples, seed=seed)
    scan = schedule_type(num_samples, seed=seed, **scan_kwargs)
    order_rng = np.random.default_rng([seed, 2])
    for epoch in tqdm(range(epochs), desc="epochs", disable=None if progress else True):  # None: terminal only
        ids = scan.epoch_indices(epoch)
        loss_a, loss_b = population.epoch_losses(epoch)
        if scan.is_preparation(epoch):
            order = order_rng.permutation(ids)
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                scan.observe(batch, loss_a[batch], loss_b[batch])
        scan.end_epoch(epoch, float((loss_a[ids].mean() + loss_b[ids].mean()) / 2))
    found = scan.candidates("ill_matched")
    hits = np.intersect1d(found, population.ill_ids).size
    precision = hits / found.size if found.size else 0.0
    recall = hits / population.ill_ids.size if population.ill_ids.size else 0.0
    return DemoResult(scan, population, precision, recall)


def _write_atomic(path: str, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temporary, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _csv_bytes(stats) -> bytes:
    from scan_fast.schedule.stats import COLUMNS

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(stats.rows())
    return text.getvalue().encode()


def _plot_png(stats) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    records = stats.records
    colours = {"warmup": "tab:grey", "preparation": "tab:blue", "mutation": "tab:orange"}
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar([r.epoch for r in records], [r.kept / (r.kept + r.pruned) for r in records],
           color=[colours[r.phase] for r in records])
    ax.set(xlabel="epoch", ylabel="kept fraction", ylim=(0, 1.2),
           title=f"SCAN schedule: {100 * stats.pruned_fraction:.1f}% of post-warm-up sample-steps saved")
    ax.legend(handles=[Patch(color=c, label=p) for p, c in colours.items()], loc="upper center", ncol=3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


@dataclass
class SimulateFlags:
    """`scan-fast simulate`'s arguments (run_demo's)."""
    out: str = flag("simulate_out", "folder for the outputs", "simulation")
    num_samples: int = flag(200_000, "samples in the simulated data set", "simulation")
    epochs: int = flag(16, "epochs of the schedule", "simulation")
    batch_size: int = flag(4096, "samples a batch (the paper's per-batch candidates are taken from each)",
                           "simulation")
    seed: int = flag(0, "seed of the simulated losses, the batch order and the schedule's keyed choices",
                     "simulation")


def run_demo(out: str, num_samples: int = 200_000, epochs: int = 16, batch_size: int = 4096,
             seed: int = 0) -> int:
    """Run Scan on the simulated stream; print the schedule; write schedule.csv/.md and kept_fraction.png."""
    result = simulate_run(num_samples, epochs, batch_size, seed, progress=True)
    stats = result.scan.stats()
    table = stats.format()
    quality = (f"ill-matched candidates vs the injected ill-matched ids: precision {result.precision:.3f}, "
               f"recall {result.recall:.3f}")
    print(table)
    print(quality)
    os.makedirs(out, exist_ok=True)
    _write_atomic(os.path.join(out, "schedule.csv"), _csv_bytes(stats))
    _write_atomic(os.path.join(out, "schedule.md"), (stats.format(markdown=True) + "\n\n" + quality + "\n").encode())
    _write_atomic(os.path.join(out, "kept_fraction.png"), _plot_png(stats))
    print(f"wrote schedule.csv, schedule.md, kept_fraction.png to {out}")
    return 0
