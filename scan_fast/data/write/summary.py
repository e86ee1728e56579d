"""WriteSummary: what one write read, wrote and skipped (and why); printed, and saved beside the target."""
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

from .tables import BadRow


@dataclass
class WriteSummary:
    path: str
    rows_read: int = 0
    rows_written: int = 0
    captions_truncated: int = 0
    jpegs_kept: int = 0  # images stored as the source JPEG's own bytes (not decoded and re-encoded)
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (where, reason)

    def skip(self, where: str, err: BadRow) -> None:
        self.skipped.append((where, str(err)))

    @property
    def skip_counts(self) -> Dict[str, int]:
        return dict(Counter(reason.split(":")[0] for _, reason in self.skipped))

    def __str__(self) -> str:
        lines = [f"{self.path}: read {self.rows_read} rows, wrote {self.rows_written}, "
                 f"skipped {len(self.skipped)}, captions truncated {self.captions_truncated}"
                 + (f", {self.jpegs_kept} JPEGs stored as they are" if self.jpegs_kept else "")]
        lines += [f"  skipped {n} x {kind}" for kind, n in sorted(self.skip_counts.items())]
        lines += [f"    {where}: {reason}" for where, reason in self.skipped[:10]]
        if len(self.skipped) > 10:
            lines.append(f"    ... {len(self.skipped) - 10} more in the summary file")
        return "\n".join(lines)

    def save(self, path) -> None:
        payload = {**asdict(self), "skip_counts": self.skip_counts}
        Path(path).write_text(json.dumps(payload, indent=1))
