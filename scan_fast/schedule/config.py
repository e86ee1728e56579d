"""The knobs of SCAN (see docs/scan-method.md), validated once at construction."""
from dataclasses import asdict, dataclass
from typing import Optional

from scan_fast.schedule.candidates import candidate_count
from scan_fast.schedule.inputs import (check_fraction, check_int, check_prune_threshold, check_rho_pair,
                                      check_threshold)

MODES = ("both", "redundant", "ill_matched")


def check_mode(name: str, mode) -> str:
    if mode not in MODES:
        raise ValueError(f"{name} must be one of {MODES}, got {mode!r}")
    return mode


@dataclass(frozen=True)
class ScanConfig:
    num_samples: int
    rho_ill: float = 0.35
    rho_red: float = 0.35
    t_cos: int = 3
    prune_threshold: float = 0.3
    mode: str = "both"
    seed: int = 0
    abs_ill: Optional[float] = None
    abs_red: Optional[float] = None

    def __post_init__(self):
        fix = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        fix("num_samples", check_int("num_samples", self.num_samples, minimum=1))
        fix("rho_ill", check_fraction("rho_ill", self.rho_ill))
        fix("rho_red", check_fraction("rho_red", self.rho_red))
        check_rho_pair(self.rho_ill, self.rho_red)
        fix("t_cos", check_int("t_cos", self.t_cos, minimum=1))
        fix("prune_threshold", check_prune_threshold("prune_threshold", self.prune_threshold))
        check_mode("mode", self.mode)
        fix("seed", check_int("seed", self.seed, minimum=0, maximum=2**63 - 1))
        fix("abs_ill", check_threshold("abs_ill", self.abs_ill))
        fix("abs_red", check_threshold("abs_red", self.abs_red))

    def batch_counts(self, batch_size: int):
        """(k_ill, k_red) of a batch: int(B * rho), or None where an absolute threshold rules."""
        k_ill = None if self.abs_ill is not None else candidate_count(batch_size, self.rho_ill)
        k_red = None if self.abs_red is not None else candidate_count(batch_size, self.rho_red)
        return k_ill, k_red

    def per_batch_candidates(self, batch_size: int) -> int:
        """The most candidates (by mode) one batch can give: int(B * rho) per kind, or all B under a threshold."""
        k_ill, k_red = self.batch_counts(batch_size)
        ill = batch_size if k_ill is None else k_ill
        red = batch_size if k_red is None else k_red
        return {"both": min(batch_size, ill + red), "ill_matched": ill, "redundant": red}[self.mode]

    def as_dict(self) -> dict:
        return asdict(self)
