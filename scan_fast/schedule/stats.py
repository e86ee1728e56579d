"""Per-epoch bookkeeping of a pruning schedule and its printable table."""
from dataclasses import astuple, dataclass, fields
from typing import List, Optional


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    phase: str          # "warmup", "preparation" or "mutation"
    candidates: int     # preparation: collected this epoch; mutation: the pool pruned from
    pruned: int         # samples left out of this epoch
    kept: int           # samples trained on
    loss: Optional[float] = None  # the epoch loss given to end_epoch


COLUMNS = tuple(f.name for f in fields(EpochRecord))


@dataclass(frozen=True)
class ScheduleStats:
    records: List[EpochRecord]

    @property
    def sample_steps_saved(self) -> int:
        return sum(r.pruned for r in self.records)

    @property
    def pruned_fraction(self) -> float:
        """Saved sample-steps over the sample-steps after warm-up (0 before pruning starts)."""
        after_warmup = sum(r.pruned + r.kept for r in self.records if r.phase != "warmup")
        return self.sample_steps_saved / after_warmup if after_warmup else 0.0

    def rows(self) -> List[tuple]:
        return [astuple(r) for r in self.records]

    def format(self, markdown: bool = False) -> str:
        """The schedule as an aligned text table (or a markdown table) with a summary line."""
        cells = [list(COLUMNS)] + [
            [str(v) if not isinstance(v, float) else f"{v:.4f}" for v in row] for row in self.rows()]
        widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
        lines = []
        for n, row in enumerate(cells):
            padded = [c.rjust(w) if n and c[-1:].isdigit() else c.ljust(w) for c, w in zip(row, widths)]
            lines.append("| " + " | ".join(padded) + " |" if markdown else "  ".join(padded).rstrip())
            if n == 0:
                rule = ["-" * w for w in widths]
                lines.append("|" + "|".join(f"-{r}-" for r in rule) + "|" if markdown else "  ".join(rule))
        lines.append("")
        lines.append(f"sample-steps saved: {self.sample_steps_saved} "
                     f"({100 * self.pruned_fraction:.1f}% of the sample-steps after warm-up)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()
