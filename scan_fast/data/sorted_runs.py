"""Merging sorted runs out of core: the one merge behind the pointer index's sort (beton.py) and the
uniqueness check of keys and uids (source_ids.py). Imports nothing of the package."""
from typing import Iterator, List

import numpy as np


def merge_sorted_runs(runs: List[np.ndarray], key: str, block: int = 1 << 16) -> Iterator[np.ndarray]:
    """The records of `runs` (structured arrays, each sorted by field `key`, e.g. memory-mapped) as one
    stream of sorted blocks: each round takes from every run what lies at or below the smallest of the
    runs' block maxima, which is then complete. Memory: about one block a run."""
    position = [0] * len(runs)
    while True:
        live = [i for i, run in enumerate(runs) if position[i] < len(run)]
        if not live:
            return
        heads = {i: runs[i][position[i]:position[i] + block] for i in live}
        cutoff = min(heads[i][key][-1] for i in live)
        taken = []
        for i in live:
            count = int(np.searchsorted(heads[i][key], cutoff, side="right"))
            taken.append(heads[i][:count])
            position[i] += count
        yield np.sort(np.concatenate(taken), order=key, kind="stable")
