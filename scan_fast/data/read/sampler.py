"""`ScanSampler`: the kept ids of each epoch for a plain PyTorch DataLoader.

Same ids in the same order as the FFCV loader built with the same scan, seed
and rank (see `scan_fast.data.read.order`); call `set_epoch(epoch)` before each
epoch, as with torch's DistributedSampler.
"""
import os
from typing import Iterator, Optional

import torch
from torch.utils.data import Sampler

from scan_fast.schedule.shard import shard_length

from .order import KeptIdsSource


class ScanSampler(Sampler[int]):
    """Yields this rank's share of the epoch's kept ids (all ids when scan is None).

    dataset_len: the number of samples, or the path of a .beton or part folder to read it from.

    drop_last follows torch's DistributedSampler: with several ranks, True cuts
    the permuted list to a multiple of world_size (what the FFCV loader does: no
    id on two ranks); False pads it by repeating its head. With one rank it has
    no effect. rank/world_size default to the initialised process group, if any.
    """

    def __init__(self, scan, dataset_len: int, shuffle: bool = True, seed: int = 0,
                 rank: Optional[int] = None, world_size: Optional[int] = None,
                 drop_last: bool = False):
        if isinstance(dataset_len, (str, os.PathLike)):  # a .beton or part folder: its sample count
            from ..dataset import open_dataset

            dataset_len = open_dataset(dataset_len).num_samples
        if not isinstance(dataset_len, int) or dataset_len <= 0:
            raise ValueError(f"dataset_len must be a positive int, got {dataset_len!r}")
        rank, world_size = resolve_rank(rank, world_size)
        self.source = KeptIdsSource(scan, dataset_len, seed=seed, shuffle=shuffle,
                                    rank=rank, world_size=world_size, pad=not drop_last)
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        # a chunk of the shard at a time: never a Python list of the epoch
        for chunk in self.source.order_chunks(self.epoch, self.source.length(self.epoch)):
            yield from chunk.tolist()

    def __len__(self) -> int:
        return shard_length(len(self.source.kept(self.epoch)), self.source.world_size, pad=not self.drop_last)


def resolve_rank(rank, world_size):
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return (torch.distributed.get_rank() if rank is None else rank,
                torch.distributed.get_world_size() if world_size is None else world_size)
    return (0 if rank is None else rank), (1 if world_size is None else world_size)
