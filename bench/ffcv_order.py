"""FFCV's own read path over a schedule's shard order, for the benchmarks that compare the staged loader with it
(bench_loader.py, bench_open.py): an ffcv `TraversalOrder` reading `KeptIdsSource.order(epoch)`."""
from typing import Sequence

import numpy as np
from ffcv.traversal_order.base import TraversalOrder

from scan_fast.data.read.order import KeptIdsSource


class KeptIdsOrder(TraversalOrder):
    """FFCV traversal order reading `source.order(epoch)` at the start of every epoch."""

    def __init__(self, loader, source: KeptIdsSource):
        super().__init__(loader)
        if source.dataset_len != loader.reader.num_samples:
            raise ValueError(
                f"dataset_len={source.dataset_len} but {loader.fname} holds "
                f"{loader.reader.num_samples} samples")
        self.source = source

    def sample_order(self, epoch: int) -> Sequence[int]:
        # FFCV's own orders hand out uint64 ids; the JIT-compiled readers are typed on that.
        # The shard's int64 ids are non-negative, so the view is free.
        return self.source.order(epoch).view(np.uint64)


class OrderFactory:
    """A hashable stand-in registered in ffcv's ORDER_MAP for one Loader.

    ffcv 1.0.2 only accepts orders by key and builds them as `ORDER_MAP[key](loader)`,
    so each loader registers its own factory while it is constructed.
    """

    def __init__(self, source: KeptIdsSource):
        self.source = source

    def __call__(self, loader) -> KeptIdsOrder:
        return KeptIdsOrder(loader, self.source)
