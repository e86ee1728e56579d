"""The processes of a run: rank, device and process group from torchrun's environment, the CPU's
float mode, the seed, and what a lost peer process looks like."""
import datetime
import os
import traceback
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist


class PeerLost(RuntimeError):
    """A collective failed because another rank died, hung past --dist-timeout or became unreachable;
    the message names the collective and the last checkpoint. The backend's error is its __cause__."""


# what gloo (its tcp transport), NCCL and the c10d store say when the other end of a collective is gone
_LOST_CONTACT = ("gloo/transport/", "Connection reset by peer", "Connection closed by peer", "Broken pipe",
                 "Timed out waiting", "remote process exited", "communicator was aborted",
                 "Watchdog caught collective operation timeout")


def lost_contact(err: BaseException) -> Optional[str]:
    """Where this rank lost contact with another ("all_gather at scan_fast/ops/distributed.py:30"), or
    None when err is not such a failure: a bug keeps its traceback."""
    if not (dist.is_available() and dist.is_initialized()) or not isinstance(err, RuntimeError):
        return None
    lost = isinstance(err, (dist.DistNetworkError, dist.DistStoreError)) or \
        any(text in str(err) for text in _LOST_CONTACT)
    if not lost:
        return None
    frames = traceback.extract_tb(err.__traceback__)
    ours = [f for f in frames if f"{os.sep}scan_fast{os.sep}" in f.filename]
    at = ""
    if ours:
        path = ours[-1].filename
        at = f" at {path[path.rindex(f'{os.sep}scan_fast{os.sep}') + 1:]}:{ours[-1].lineno}"
    called = [f.name for f in frames if f.filename.endswith("distributed_c10d.py") and f.name != "wrapper"]
    if any(f.name == "backward" for f in frames):  # a gathered loss's backward, or DDP's gradient all-reduce
        return f"{called[-1] if called else 'the gradient all-reduce'} in the backward pass{at}"
    if called:
        return called[-1] + at
    ddp = any(f.filename.endswith(os.path.join("nn", "parallel", "distributed.py")) for f in frames)
    return f"{'the forward pass of DistributedDataParallel' if ddp else 'a collective'}{at}"


@dataclass
class Runtime:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def flush_cpu_denormals() -> None:
    """Flush denormal floats to zero on the CPU (FTZ/DAZ), as a GPU does.

    AdamW's second moments of rarely-updated weights shrink into the denormal range, where
    each CPU operation on them costs about 100x a normal one: a tiny CLIP step ran up to
    ~30x slower. The mode is per thread and new threads inherit it, so it is set before
    any intra-op or loader thread starts: here, called first by setup_runtime (train clip,
    train moco) and by the main job. Values change only where a result would be below
    ~1.2e-38 in fp32.
    """
    torch.set_flush_denormal(True)


def setup_runtime(device: str = "auto", timeout_s: Optional[float] = None) -> Runtime:
    """Rank and device from torchrun's environment; gloo on CPU, NCCL on GPU; denormals flushed on the CPU.

    timeout_s bounds every collective: a rank that hangs (not dies) makes the
    others fail after it instead of waiting for the backend's default (30 min).
    """
    flush_cpu_denormals()  # first: before any thread pool of this process starts
    world_size, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda[:N], got {device!r}")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch_device = torch.device(device if device.startswith("cuda:") else f"cuda:{local}")
        torch.cuda.set_device(torch_device)
    else:
        torch_device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        timeout = None if timeout_s is None else datetime.timedelta(seconds=timeout_s)
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout)
    return Runtime(rank, world_size, torch_device)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
