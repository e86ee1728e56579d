"""Plain names the test modules share: skip marks, input makers, tolerances and other helpers (fixtures are in
conftest.py).

Imported as `from helpers import ...`: tests/ is no package, and pytest puts it on sys.path as it does for
conftest.py, which imports this module first (after it has set TRITON_INTERPRET) with its asserts rewritten
like a test module's.
"""
import copy
import csv
import logging
import os
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

# ----------------------------------------------------------------------------- devices and skip marks

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs an NVIDIA GPU")
# Without a GPU, conftest.py sets TRITON_INTERPRET=1: only then do CPU tensors reach the Triton kernels.
requires_triton_interpreter = pytest.mark.skipif(HAS_CUDA or os.environ.get("TRITON_INTERPRET") != "1",
                                                 reason="CPU tensors reach the kernel only in Triton's interpreter")

# ----------------------------------------------------------------------------- the losses (scan_fast.ops, kernels)

# the chunked CPU paths (tests/test_ops_*.py) against the references: tolerances per input dtype
DTYPE_PARAMS = (
    "dtype, atol, rtol",
    [
        (torch.float32, 1e-5, 1e-5),
        (torch.bfloat16, 2e-2, 2e-2),
        (torch.float16, 2e-3, 2e-3),
    ],
)
FEATURE_SHAPE_PARAMS = ("B, D", [(1, 8), (7, 33), (64, 64), (130, 8), (130, 33), (64, 8), (7, 64)])
# 16-row chunks: several chunks and a ragged last one for every B above 16
CHUNK_ROWS = 16
# open_clip's SigLIP initialisation: logit_scale = exp(log 10), logit_bias = -10
SIGLIP_INIT_SCALE, SIGLIP_INIT_BIAS = 10.0, -10.0


def unit_features(batch, dim, dtype=torch.float32, device="cpu", scale=1.0):
    """Image and text features: random rows of length `scale`, in `dtype`, requiring grad."""
    image = F.normalize(torch.randn(batch, dim, device=device), dim=1) * scale
    text = F.normalize(torch.randn(batch, dim, device=device), dim=1) * scale
    return image.to(dtype).requires_grad_(), text.to(dtype).requires_grad_()


# the Triton kernels (tests/test_kernels_*.py): on the GPU, else in Triton's interpreter on CPU tensors
DEVICE = "cuda" if HAS_CUDA else "cpu"
# The interpreter multiplies in fp32 like the reference; on a GPU fp32 tiles go through 3xTF32
# tensor-core products, a few ulps from cuBLAS's fp32 GEMM (which scale up to 100 magnifies).
LOSS_TOL = dict(atol=1e-3, rtol=1e-4) if HAS_CUDA else dict(atol=1e-4, rtol=1e-5)
FP32_GRAD_TOL = 2e-4 if HAS_CUDA else 1e-5
# Losses are fp32 from exact products of the inputs; gradients pass dlogits through the
# input dtype on the tensor cores, so half-precision gradients get a relative tolerance.
HALF_DTYPE_PARAMS = ("dtype, grad_tol", [(torch.bfloat16, 2e-2), (torch.float16, 4e-3)])


def assert_grads_close(actual, expected, tol, names):
    """Each gradient has its reference's dtype and shape and lies within `tol` of it: relative, and absolute in
    units of the reference's largest entry (at least 1). `names` label the pairs, in order."""
    for name, a, e in zip(names, actual, expected):
        assert a.dtype == e.dtype and a.shape == e.shape, name
        e = e.float()
        torch.testing.assert_close(a.float(), e, atol=tol * max(1.0, e.abs().max().item()), rtol=tol, msg=name)


# ----------------------------------------------------------------------------- open_clip_train's loop


class _Loader(list):
    num_batches = 2
    num_samples = 2 * 16


def train_two_steps(loss_fn, model, accum_freq=1):
    """open_clip_train's own train_one_epoch over two tiny batches (16 pairs each, `accum_freq` of them a step)."""
    train = pytest.importorskip("open_clip_train.train")
    torch.manual_seed(1)
    batches = _Loader([(torch.randn(16, 12), torch.randint(0, 50, (16, 5))) for _ in range(2 * accum_freq)])
    batches.num_batches = len(batches)
    data = {"train": SimpleNamespace(dataloader=batches, set_epoch=lambda epoch: None)}
    args = SimpleNamespace(
        device="cpu", precision="fp32", distill=False, accum_freq=accum_freq, skip_scheduler=True, horovod=False,
        grad_clip_norm=None, log_every_n_steps=1, batch_size=16, world_size=1, rank=0, local_rank=0, wandb=False,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    train.train_one_epoch(model, data, loss_fn, 0, optimizer, None, None, None, args)
    return model


def assert_open_clip_train_loop_matches(ours, theirs, start, accum_freq, caplog):
    """open_clip_train's loop trains one copy of the model `start` with the loss `ours` and one with open_clip's
    `theirs`: it logs the contrastive loss, every parameter trains, and both copies end at the same weights."""
    with caplog.at_level(logging.INFO):
        trained = train_two_steps(ours, copy.deepcopy(start), accum_freq)
    reference = train_two_steps(theirs, copy.deepcopy(start), accum_freq)
    assert any("Contrastive_loss" in record.getMessage() for record in caplog.records)
    for (name, got), want in zip(trained.named_parameters(), reference.parameters()):
        assert not torch.equal(got, start.state_dict()[name]), f"{name} did not train"
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5, msg=lambda m: f"{name}: {m}")


# ----------------------------------------------------------------------------- processes (gloo on CPU)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _process(rank, world_size, port, target, args):
    """One rank as torchrun would start it: its environment, one thread, then target(rank, *args)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    try:
        target(rank, *args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(target, *args, world_size=2):
    """Runs target(rank, *args) in `world_size` processes (a module-level function: they are spawned)."""
    mp.spawn(_process, args=(world_size, free_port(), target, args), nprocs=world_size, join=True)


def record_schedule(module, made, kept):
    """Replaces module.make_schedule (the name the trainer calls) by one that records each epoch's kept ids."""
    make_schedule = module.make_schedule

    def recording_make_schedule(cfg, num_samples, *rank_and_world):
        schedule = make_schedule(cfg, num_samples, *rank_and_world)
        original = schedule.epoch_kept_set

        def epoch_kept_set(epoch):
            ids = original(epoch)
            kept[epoch] = ids.to_array()
            return ids
        schedule.epoch_kept_set = epoch_kept_set
        made.append(schedule)
        return schedule

    module.make_schedule = recording_make_schedule


def record_reads(task_cls, loader_name, read):
    """Replaces scan_fast.data.<loader_name> and task_cls.forward by ones that record, per epoch, the ids
    this rank's loader hands out."""
    import scan_fast.data

    make_loader, forward, epoch_now = getattr(scan_fast.data, loader_name), task_cls.forward, [None]

    def recording_loader(*args, **kwargs):
        loader = make_loader(*args, **kwargs)
        set_epoch = loader.set_epoch

        def recording_set_epoch(epoch):
            epoch_now[0] = epoch
            set_epoch(epoch)
        loader.set_epoch = recording_set_epoch
        return loader

    def recording_forward(self, model, batch, epoch):
        read.setdefault(epoch_now[0], []).append(batch.ids.reshape(-1).cpu().numpy().copy())
        return forward(self, model, batch, epoch)

    setattr(scan_fast.data, loader_name, recording_loader)
    task_cls.forward = recording_forward


# ----------------------------------------------------------------------------- trainer runs

# the tiny CLIP runs on conftest.py's `data` (test_train_clip.py, test_train_siglip.py)
CLIP_N_TRAIN, CLIP_BATCH = 192, 32


def clip_config(data, tmp_path, **overrides):
    from scan_fast.train.config import ClipConfig

    # prune_threshold 1.0: warm-up ends after epoch 1, so epoch 2 prepares and 3-4 prune.
    values = dict(train_data=data["train"], batch_size=CLIP_BATCH, epochs=5, lr=1e-3, warmup_epochs=0.5,
                  workers=1, prune_threshold=1.0, logs=str(tmp_path), progress=False, tensorboard=False)
    values.update(overrides)
    return ClipConfig(**values)


def epoch_rows(folder):
    """A run folder's epochs.csv, a dict a row."""
    with open(os.path.join(folder, "epochs.csv")) as f:
        return list(csv.DictReader(f))


def assert_resume_matches(full_folder, resumed_folder, **weight_tolerance):
    """A resumed run's schedule state (candidate bitsets, records) equals the uninterrupted run's,
    and so do its final weights: exactly, or within `weight_tolerance` (torch.testing.assert_close's
    rtol/atol)."""
    from scan_fast.train.checkpoint import load_checkpoint

    full_state = load_checkpoint(os.path.join(full_folder, "checkpoints/latest.pt"))
    resumed_state = load_checkpoint(os.path.join(resumed_folder, "checkpoints/latest.pt"))
    for key in ("ill", "red", "epoch", "start"):
        assert full_state["schedule"][key] == resumed_state["schedule"][key], key
    assert full_state["schedule"]["ill"] or full_state["schedule"]["red"]
    full, resumed = full_state["model"], resumed_state["model"]
    assert full.keys() == resumed.keys()
    for key in full:
        if weight_tolerance:
            torch.testing.assert_close(full[key], resumed[key], **weight_tolerance)
        else:
            assert torch.equal(full[key], resumed[key]), key


def write_tar(path, members):
    """A tar file of (name, bytes) members, in order (webdataset shards and broken ones for the data tests)."""
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
