"""Two gloo processes train CLIP and MoCo with SCAN: both ranks take identical pruning decisions."""
import csv
import os

import numpy as np
import pytest
import torch

from helpers import launch, record_reads, record_schedule

N_TRAIN, BATCH = 192, 16


def _clip_worker(rank, train_data, logs, out):
    from scan_fast.train import run
    from scan_fast.train.clip import train_clip
    from scan_fast.train.config import ClipConfig

    made, kept = [], {}
    record_schedule(run, made, kept)
    summary = train_clip(ClipConfig(train_data=train_data, batch_size=BATCH, epochs=4, lr=1e-3,
                                    warmup_epochs=0.5, workers=1, prune_threshold=1.0, logs=logs, name="ddp",
                                    progress=False, tensorboard=False, save_epoch_losses=True))
    scan = made[0]
    np.savez(os.path.join(out, f"rank{rank}.npz"), ill=scan.candidates("ill_matched"),
             red=scan.candidates("redundant"), sample_steps=summary["sample_steps"],
             **{f"kept{e}": ids for e, ids in kept.items()})


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from scan_fast.data import write_shapes

    path = str(tmp_path_factory.mktemp("ddp_data") / "shapes.beton")
    write_shapes(path, num_samples=N_TRAIN, mismatch_fraction=0.2, context_length=16, progress=False)
    return path


def test_two_gloo_ranks_take_identical_pruning_decisions(shapes, tmp_path):
    launch(_clip_worker, shapes, str(tmp_path / "logs"), str(tmp_path))
    with np.load(tmp_path / "rank0.npz") as r0, np.load(tmp_path / "rank1.npz") as r1:
        assert sorted(r0.files) == sorted(r1.files)
        for key in r0.files:
            np.testing.assert_array_equal(r0[key], r1[key], err_msg=key)
        assert len(r0["ill"]) > 0 and len(r0["red"]) > 0
        assert len(r0["kept3"]) < N_TRAIN  # the mutation epoch prunes
        # both ranks' batches (2 x 16 per step) are observed: a full epoch covers all 192 ids
        assert int(r0["sample_steps"]) == 3 * N_TRAIN + len(r0["kept3"]) // 32 * 32
    rows = open(tmp_path / "logs/ddp/epochs.csv").read().splitlines()
    assert len(rows) == 5  # header + 4 epochs, written by rank 0 only
    # --save-epoch-losses: every rank's samples of each epoch, gathered, in one file an epoch written by rank 0
    from scan_fast.train.epoch_losses import read_epoch_losses

    rows = list(csv.DictReader(open(tmp_path / "logs/ddp/epochs.csv")))
    epochs = list(read_epoch_losses(str(tmp_path / "logs/ddp")))
    assert [e.epoch for e in epochs] == [0, 1, 2, 3]
    with np.load(tmp_path / "rank0.npz") as r0:
        for e, row in zip(epochs, rows):
            assert len(e.ids) == int(row["samples"]) == len(np.unique(e.ids))
            assert np.isin(e.ids, r0[f"kept{e.epoch}"]).all()
            assert float(e.losses.astype(np.float64).mean()) == pytest.approx(float(row["loss"]), rel=1e-5)


def _moco_worker(rank, arch, train_data, logs, out):
    from scan_fast.train import moco, run
    from scan_fast.train.config import MocoConfig

    made, kept, models, read = [], {}, [], {}
    record_schedule(run, made, kept)
    record_reads(moco.MocoTask, "moco_loader", read)
    build_moco = moco.build_moco

    def recording_build_moco(*args, **kwargs):
        models.append(build_moco(*args, **kwargs))
        return models[-1]

    moco.build_moco = recording_build_moco
    summary = moco.train_moco(MocoConfig(train_data=train_data, arch=arch, batch_size=BATCH, epochs=4,
                                         prune_threshold=1.0, workers=1, logs=logs, name="ddp", progress=False,
                                         tensorboard=False))
    scan = made[0]
    np.savez(os.path.join(out, f"rank{rank}.npz"), ill=scan.candidates("ill_matched"),
             red=scan.candidates("redundant"), sample_steps=summary["sample_steps"],
             final_loss=summary["final_loss"], **{f"kept{e}": ids for e, ids in kept.items()},
             **{f"param:{name}": p.detach().numpy() for name, p in models[0].named_parameters()})
    np.savez(os.path.join(out, f"read{rank}.npz"), **{f"read{e}": np.concatenate(ids) for e, ids in read.items()})


@pytest.fixture(scope="module")
def moco_shapes(tmp_path_factory):
    from scan_fast.data import write_shapes

    path = str(tmp_path_factory.mktemp("ddp_moco_data") / "shapes.beton")
    write_shapes(path, num_samples=N_TRAIN, kind="moco", progress=False)
    return path


# MoCo under DDP, both backbones, runs with the slow tests (make bench): about 19 s of pytest on 2 cores each; the DDP
# path itself (identical pruning decisions, each rank's share of the kept ids) is the CLIP test's above
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vit_tiny_cpu", "resnet_tiny_cpu"])
def test_two_gloo_ranks_train_moco_with_identical_pruning_and_weights(moco_shapes, tmp_path, arch):
    launch(_moco_worker, arch, moco_shapes, str(tmp_path / "logs"), str(tmp_path))
    with np.load(tmp_path / "rank0.npz") as r0, np.load(tmp_path / "rank1.npz") as r1:
        assert sorted(r0.files) == sorted(r1.files)
        for key in r0.files:  # pruning decisions, the loss and every weight of the model agree
            np.testing.assert_array_equal(r0[key], r1[key], err_msg=key)
        params = [key for key in r0.files if key.startswith("param:")]
        assert "param:predictor.0.weight" in params and len(params) > 10
        if arch.startswith("vit"):
            assert "param:base_encoder.pos_embed" in params
        assert all(np.isfinite(r0[key]).all() for key in params)
        assert np.isfinite(float(r0["final_loss"]))
        assert len(r0["ill"]) > 0 and len(r0["red"]) > 0
        kept = {e: r0[f"kept{e}"] for e in range(4)}
    assert len(kept[0]) == N_TRAIN and len(kept[3]) < N_TRAIN  # the mutation epoch prunes
    with np.load(tmp_path / "read0.npz") as s0, np.load(tmp_path / "read1.npz") as s1:
        assert sorted(s0.files) == sorted(s1.files) == [f"read{e}" for e in range(4)]
        for e in range(4):  # each rank reads its own half of the epoch's kept list, whole batches of it
            a, b = s0[f"read{e}"], s1[f"read{e}"]
            assert len(a) == len(b) == len(kept[e]) // 2 // BATCH * BATCH, e
            assert len(np.unique(a)) == len(a) and not np.intersect1d(a, b).size, e
            assert np.isin(a, kept[e]).all() and np.isin(b, kept[e]).all(), e
    with open(tmp_path / "logs/ddp/epochs.csv") as f:
        rows = list(csv.DictReader(f))  # written by rank 0 only
    assert [r["phase"] for r in rows] == ["warmup", "warmup", "preparation", "mutation"]
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    assert int(rows[3]["kept"]) == len(kept[3])


def _gather_worker(rank, world_size):
    import torch.distributed as dist

    from scan_fast.train.loop import gather_batch

    dist.init_process_group("gloo")
    local = torch.arange(8) * world_size + rank  # this rank's rows: global positions rank, rank + W, ...
    ids, loss_a, loss_b = gather_batch(local, local.float() / 2, -local.float())
    assert ids.tolist() == list(range(8 * world_size)), ids.tolist()
    assert torch.equal(loss_a, ids.float() / 2) and torch.equal(loss_b, -ids.float())


@pytest.mark.parametrize("world_size", [2, pytest.param(3, marks=pytest.mark.slow)])  # 3: make bench
def test_gathered_losses_are_in_global_position_order(world_size):
    """The schedule sees a global batch in the same order whatever the world size (elastic resume)."""
    launch(_gather_worker, world_size, world_size=world_size)
