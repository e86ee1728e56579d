"""Distributed losses on 2 gloo processes (CPU) against the single-process reference on the whole batch."""
import datetime

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from helpers import free_port
from scan_fast.ops.clip_loss import ClipLoss, clip_loss_per_sample_reference
from scan_fast.ops.info_nce import MocoLoss, info_nce_per_sample, info_nce_per_sample_reference

open_clip_loss = pytest.importorskip("open_clip.loss")

WORLD_SIZE = 2
LOCAL_BATCH = 13
DIM = 6


def _global_inputs():
    """The whole batch, identical on every rank."""
    generator = torch.Generator().manual_seed(123)
    batch = WORLD_SIZE * LOCAL_BATCH
    image = F.normalize(torch.randn(batch, DIM, generator=generator), dim=1)
    text = F.normalize(torch.randn(batch, DIM, generator=generator), dim=1)
    weights = torch.rand(2, batch, generator=generator)
    return image, text, weights


def _local_leaves(tensor, rank):
    return tensor[rank * LOCAL_BATCH:(rank + 1) * LOCAL_BATCH].clone().requires_grad_()


def _check_weighted_local_loss(rank):
    """local_loss + gather_with_grad: per-sample losses and gradients are slices of the global reference."""
    image, text, weights = _global_inputs()
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    scale = torch.tensor(4.0, requires_grad=True)
    local_image, local_text = _local_leaves(image, rank), _local_leaves(text, rank)
    loss_fn = ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=WORLD_SIZE, chunk_rows=4)
    loss_i2t, loss_t2i = loss_fn.per_sample(local_image, local_text, scale)  # this rank's rows
    ((loss_i2t * weights[0, rows]).sum() + (loss_t2i * weights[1, rows]).sum()).backward()

    ref_image, ref_text = image.clone().requires_grad_(), text.clone().requires_grad_()
    ref_scale = torch.tensor(4.0, requires_grad=True)
    ref_i2t, ref_t2i = clip_loss_per_sample_reference(ref_image, ref_text, ref_scale)
    ((ref_i2t * weights[0]).sum() + (ref_t2i * weights[1]).sum()).backward()

    torch.testing.assert_close(loss_i2t, ref_i2t[rows])
    torch.testing.assert_close(loss_t2i, ref_t2i[rows])
    torch.testing.assert_close(local_image.grad, ref_image.grad[rows])
    torch.testing.assert_close(local_text.grad, ref_text.grad[rows])
    dist.all_reduce(scale.grad)  # each rank holds its own rows' share of d logit_scale
    torch.testing.assert_close(scale.grad, ref_scale.grad)


def _check_same_as_open_clip(rank, local_loss, gather_with_grad):
    """Scalar, gradients and per-sample losses for every gather mode, next to open_clip's ClipLoss."""
    image, text, _ = _global_inputs()
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    config = dict(local_loss=local_loss, gather_with_grad=gather_with_grad, rank=rank, world_size=WORLD_SIZE)
    ours = ClipLoss(**config, chunk_rows=4)
    results = []
    for loss_fn in (ours, open_clip_loss.ClipLoss(**config)):
        local_image, local_text = _local_leaves(image, rank), _local_leaves(text, rank)
        scale = torch.tensor(4.0, requires_grad=True)
        loss = loss_fn(local_image, local_text, scale, output_dict=True)["contrastive_loss"]
        loss.backward()
        results.append((loss, local_image.grad, local_text.grad, scale.grad))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)
    ref_i2t, ref_t2i = clip_loss_per_sample_reference(image, text, 4.0)
    torch.testing.assert_close(ours.last_per_sample[0], ref_i2t[rows])
    torch.testing.assert_close(ours.last_per_sample[1], ref_t2i[rows])


def _check_moco(rank):
    """MocoLoss gathers keys and offsets targets by rank; q gradients match the global reference."""
    generator = torch.Generator().manual_seed(7)
    q = torch.randn(WORLD_SIZE * LOCAL_BATCH, DIM, generator=generator)
    k = torch.randn(WORLD_SIZE * LOCAL_BATCH, DIM, generator=generator)
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    local_q = _local_leaves(q, rank)
    loss_fn = MocoLoss(T=0.2)
    loss_fn(local_q, k[rows]).backward()

    ref_q = q.clone().requires_grad_()
    ref = info_nce_per_sample_reference(F.normalize(ref_q, dim=1), F.normalize(k, dim=1), 0.2)
    ref[rows].mean().backward()
    torch.testing.assert_close(loss_fn.last_per_sample, ref[rows].detach())
    torch.testing.assert_close(local_q.grad, ref_q.grad[rows])
    # the default offset under torch.distributed is rank * B
    torch.testing.assert_close(info_nce_per_sample(q[rows], k, 0.2), info_nce_per_sample_reference(q[rows], k, 0.2,
                                                                                                 rank * LOCAL_BATCH))


def _worker(rank, port):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE,
                            timeout=datetime.timedelta(seconds=60))
    try:
        _check_weighted_local_loss(rank)
        for local_loss in (False, True):
            for gather_with_grad in (False, True):
                _check_same_as_open_clip(rank, local_loss, gather_with_grad)
        _check_moco(rank)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_the_global_reference():
    mp.spawn(_worker, args=(free_port(),), nprocs=WORLD_SIZE, join=True)
