"""Two gloo processes train CLIP with SCAN: both ranks take identical pruning decisions."""
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

N_TRAIN, BATCH = 192, 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, train_data, logs, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from scan_fast.train import clip
    from scan_fast.train.clip import train_clip
    from scan_fast.train.config import ClipConfig

    made, kept = [], {}
    make_schedule = clip.make_schedule

    def recording_make_schedule(cfg, num_samples):
        schedule = make_schedule(cfg, num_samples)
        original = schedule.epoch_indices

        def epoch_indices(epoch):
            ids = original(epoch)
            kept[epoch] = ids.copy()
            return ids
        schedule.epoch_indices = epoch_indices
        made.append(schedule)
        return schedule

    clip.make_schedule = recording_make_schedule  # the name train_clip calls
    try:
        summary = train_clip(ClipConfig(train_data=train_data, batch_size=BATCH, epochs=4, lr=1e-3,
                                        warmup_epochs=0.5, workers=1, prune_threshold=1.0, logs=logs, name="ddp",
                                        progress=False, tensorboard=False))
        scan = made[0]
        np.savez(os.path.join(out, f"rank{rank}.npz"), ill=scan.candidates("ill_matched"),
                 red=scan.candidates("redundant"), sample_steps=summary["sample_steps"],
                 **{f"kept{e}": ids for e, ids in kept.items()})
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from scan_fast.data import write_shapes

    path = str(tmp_path_factory.mktemp("ddp_data") / "shapes.beton")
    write_shapes(path, num_samples=N_TRAIN, mismatch_fraction=0.2, context_length=16, progress=False)
    return path


def test_two_gloo_ranks_take_identical_pruning_decisions(shapes, tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), shapes, str(tmp_path / "logs"), str(tmp_path)), nprocs=2, join=True)
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
