"""Loaders kept for reuse: many runs in one process on the same files compile ffcv's pipelines once.

A ScanLoader's pipelines are numba code generated for that loader, compiled on its first batch: 3-5 s on
2 cores for a CLIP or evaluation pipeline, paid again by every loader built, whatever it shares with an
earlier one. A process that trains run after run on the same files (the demo's strategies and seeds, a
sweep) pays it twice a run. Inside `reuse_compiled_loaders()`, building a loader with the same file and
the same arguments as one built earlier in the block gives that loader back, re-pointed at the new
schedule, seed and start epoch (the only arguments its compiled code does not hold); its batches are
those a new loader would read.
"""
import contextlib
import threading
from typing import Callable, Dict, Hashable, Iterator, Optional

_LOCAL = threading.local()


@contextlib.contextmanager
def reuse_compiled_loaders() -> Iterator[None]:
    """Within the block, a loader built again with the same file and arguments is the earlier one,
    re-pointed (its earlier holder must no longer iterate it); the files must not change in the block.
    Loaders are closed when the outermost block ends."""
    outer = getattr(_LOCAL, "loaders", None)
    if outer is not None:
        yield
        return
    _LOCAL.loaders = {}
    try:
        yield
    finally:
        loaders, _LOCAL.loaders = _LOCAL.loaders, None
        for loader in loaders.values():
            loader.close()


def reused_or_built(key: Optional[Hashable], build: Callable[[], object], repoint: Callable[[object], None]):
    """build() or, inside `reuse_compiled_loaders()` and with a key, the loader built under that key
    earlier in the block after repoint(loader). key None: never reused (an open Dataset, unknown
    pipelines)."""
    loaders: Optional[Dict[Hashable, object]] = getattr(_LOCAL, "loaders", None)
    if loaders is None or key is None:
        return build()
    if key in loaders:
        repoint(loaders[key])
        return loaders[key]
    loader = loaders[key] = build()
    return loader
