"""Changing the world size: the resume rule, an elastic CLIP resume (2 gloo ranks <-> 1), and 4 gloo ranks.

The multi-process runs take minutes on 2 cores, so they are marked slow: `make bench` runs them.
"""
import os

import numpy as np
import pytest

from helpers import launch, record_reads, record_schedule
from scan_fast.train.resume import check_resume

N_TRAIN, GLOBAL_BATCH, EPOCHS = 192, 32, 5


@pytest.mark.parametrize("saved_batch, saved_world, batch, world", [(16, 2, 32, 1), (32, 1, 16, 2), (8, 4, 16, 2)])
def test_the_world_size_may_change_at_the_same_global_batch(saved_batch, saved_world, batch, world):
    check_resume({"batch_size": saved_batch, "world_size": saved_world}, {"batch_size": batch, "world_size": world},
                 "ckpt.pt")


@pytest.mark.parametrize("saved, batch, world, message", [
    ({"batch_size": 16, "world_size": 2}, 16, 1,
     r"--batch-size x processes \(16 x 2 = 32 there, 16 x 1 = 16 here"),
    ({"batch_size": 32, "world_size": 1}, 32, 2, r"--batch-size x processes \(32 x 1 = 32 there, 32 x 2 = 64 here"),
    ({"batch_size": 32}, 16, 1, r"--batch-size \(32 there, 16 here\)"),  # no world size saved
])
def test_a_changed_global_batch_is_refused_naming_batch_size_and_both_world_sizes(saved, batch, world, message):
    with pytest.raises(ValueError, match=message):
        check_resume(saved, {"batch_size": batch, "world_size": world}, "ckpt.pt")


def _clip_worker(rank, train_data, logs, name, world, out, overrides):
    """One rank of a CLIP run; saves the kept ids of every epoch it began, the ids it read and the candidates."""
    from scan_fast.train import clip, run
    from scan_fast.train.config import ClipConfig

    made, kept, read = [], {}, {}
    record_schedule(run, made, kept)
    record_reads(clip.ClipTask, "clip_loader", read)
    clip.train_clip(ClipConfig(train_data=train_data, batch_size=GLOBAL_BATCH // world, epochs=EPOCHS, lr=1e-3,
                               warmup_epochs=0.5, workers=1, prune_threshold=1.0, logs=logs, name=name,
                               progress=False, tensorboard=False, **overrides))
    scan = made[0]
    np.savez(os.path.join(out, f"{name}-rank{rank}.npz"), ill=scan.candidates("ill_matched"),
             red=scan.candidates("redundant"), **{f"kept{e}": ids for e, ids in kept.items()},
             **{f"read{e}": np.concatenate(ids) for e, ids in read.items()})


def _run(data, tmp_path, name, world, **overrides):
    launch(_clip_worker, data, str(tmp_path / "logs"), name, world, str(tmp_path), overrides, world_size=world)
    return [dict(np.load(tmp_path / f"{name}-rank{r}.npz")) for r in range(world)]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from scan_fast.data import write_shapes

    path = str(tmp_path_factory.mktemp("elastic_data") / "shapes.beton")
    write_shapes(path, num_samples=N_TRAIN, mismatch_fraction=0.2, context_length=16, progress=False)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("old_world, new_world", [(2, 1), (1, 2)])
def test_a_run_resumed_on_another_world_size_trains_on_the_same_kept_ids(shapes, tmp_path, old_world, new_world):
    """Killed in epoch 3 (its checkpoint: after the preparation epoch 2), resumed at the same global batch on
    another number of ranks: epochs 3 and 4 keep the same ids as the run continued at the old size."""
    full = _run(shapes, tmp_path, "full", old_world)[0]
    _run(shapes, tmp_path, "elastic", old_world, stop_after_step=20)  # 6 steps an epoch: dies in epoch 3
    resumed = _run(shapes, tmp_path, "elastic", new_world, resume="latest")
    for rank_result in resumed:
        np.testing.assert_array_equal(rank_result["ill"], full["ill"])
        np.testing.assert_array_equal(rank_result["red"], full["red"])
        assert "kept3" in rank_result and "kept4" in rank_result and "kept2" not in rank_result  # resumed at 3
        for epoch in (3, 4):
            np.testing.assert_array_equal(rank_result[f"kept{epoch}"], full[f"kept{epoch}"], err_msg=str(epoch))
    assert len(full["kept4"]) < len(full["kept3"]) < N_TRAIN  # the mutation epochs prune, more and more
    # The new ranks read equal, disjoint shards of those ids: whole global batches of them.
    for epoch in (3, 4):
        reads = [r[f"read{epoch}"] for r in resumed]
        union = np.concatenate(reads)
        assert {len(r) for r in reads} == {len(full[f"kept{epoch}"]) // GLOBAL_BATCH * GLOBAL_BATCH // new_world}
        assert len(np.unique(union)) == len(union) and np.isin(union, full[f"kept{epoch}"]).all()


@pytest.mark.slow
def test_four_gloo_ranks_take_identical_decisions_on_disjoint_equal_shards(shapes, tmp_path):
    from scan_fast.schedule.shard import epoch_shard_reference

    world = 4
    ranks = _run(shapes, tmp_path, "four", world)
    for other in ranks[1:]:  # the same candidates and kept ids on every rank
        for key in ("ill", "red", *(f"kept{e}" for e in range(EPOCHS))):
            np.testing.assert_array_equal(other[key], ranks[0][key], err_msg=key)
    assert len(ranks[0]["ill"]) > 0 and len(ranks[0]["kept4"]) < N_TRAIN
    local = GLOBAL_BATCH // world
    for epoch in range(EPOCHS):
        kept = ranks[0][f"kept{epoch}"]
        reads = [r[f"read{epoch}"] for r in ranks]
        assert {len(r) for r in reads} == {len(kept) // world // local * local}, epoch
        union = np.concatenate(reads)
        assert len(np.unique(union)) == len(union) and np.isin(union, kept).all(), epoch
        for rank, ids in enumerate(reads):  # each rank reads the head of its shard, as defined
            np.testing.assert_array_equal(ids, epoch_shard_reference(kept, epoch, rank, world, seed=0)[:len(ids)])
