"""Count the places where scan-fast's own code reads a tensor back to the host (a test instrument, imported
as `from host_reads import count_host_reads` by the tests and by bench/bench_train_step.py).

On a GPU each such read (`.item()`, `.cpu()`, `.numpy()`, `.tolist()`, `bool()`, `int()`,
`float()` of a tensor, `.nonzero()`) waits for the device to finish its queued work. The
trainer may do it only at log steps; `count_host_reads` counts calls made directly from
scan_fast code on the main thread, on any device, so the rule can be checked without a GPU
(bench/bench_train_step.py, tests/test_train_sync.py; on a GPU bench/gpu_check.sh also runs
torch.cuda.set_sync_debug_mode("error")). The chunked CPU implementations of the losses
(`*Chunked` autograd Functions) are not counted: on CUDA the Triton kernels replace them.
"""
import os
import sys
import threading
from contextlib import contextmanager

import torch

import scan_fast

_METHODS = ("item", "cpu", "numpy", "tolist", "nonzero", "__bool__", "__int__", "__float__", "__index__")
_PACKAGE_DIRS = (os.path.dirname(os.path.abspath(scan_fast.__file__)) + os.sep,)


def _kernels_dir():
    import scan_fast.kernels

    return os.path.dirname(os.path.abspath(scan_fast.kernels.__file__)) + os.sep


class HostReads:
    """Calls counted so far, by 'file:line function' of the caller."""

    def __init__(self):
        self.count = 0
        self.where = {}

    def record(self, frame) -> None:
        self.count += 1
        place = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno} {frame.f_code.co_qualname}"
        self.where[place] = self.where.get(place, 0) + 1


@contextmanager
def count_host_reads():
    """Within the block, count host reads of tensors made by scan_fast code on this thread."""
    reads, main = HostReads(), threading.get_ident()
    roots = _PACKAGE_DIRS + (_kernels_dir(),)
    originals = {name: getattr(torch.Tensor, name) for name in _METHODS}

    def wrap(name, original):
        def counted(self, *args, **kwargs):
            frame = sys._getframe(1)
            if (threading.get_ident() == main and frame.f_code.co_filename.startswith(roots)
                    and "Chunked." not in frame.f_code.co_qualname):
                reads.record(frame)
            return original(self, *args, **kwargs)
        return counted

    for name, original in originals.items():
        setattr(torch.Tensor, name, wrap(name, original))
    try:
        yield reads
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
