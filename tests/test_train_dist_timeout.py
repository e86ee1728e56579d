"""A rank that hangs (alive, not dead) makes the others fail after --dist-timeout instead of waiting 30 minutes."""
import time

import pytest
import torch
import torch.multiprocessing as mp

from helpers import launch

TIMEOUT_S = 3.0


def _worker_with_a_hung_rank(rank):
    import torch.distributed as dist

    from scan_fast.train.runtime import setup_runtime

    setup_runtime("cpu", timeout_s=TIMEOUT_S)
    if rank == 1:  # alive but stuck, as a rank blocked on a dead file system would be
        time.sleep(600)
    started = time.monotonic()
    try:
        dist.all_reduce(torch.ones(1))
    finally:
        print(f"rank {rank} waited {time.monotonic() - started:.1f} s", flush=True)


def test_a_hung_rank_fails_the_others_after_the_timeout(capfd):
    with pytest.raises(mp.ProcessRaisedException, match=r"Timed out waiting 3000ms"):
        launch(_worker_with_a_hung_rank)
    waited = float(capfd.readouterr().out.split("rank 0 waited ")[1].split(" s")[0])
    assert TIMEOUT_S <= waited < TIMEOUT_S + 10


@pytest.mark.parametrize("kind", ["clip", "moco"])
def test_trainers_hand_dist_timeout_to_the_process_group(kind, monkeypatch, tmp_path):
    from scan_fast.train import clip, moco, run
    from scan_fast.train.cli import add_train_parsers, config_from_args

    seen = []

    class Stop(Exception):
        pass

    def setup_runtime(device="auto", timeout_s=None):
        seen.append(timeout_s)
        raise Stop

    monkeypatch.setattr(run, "setup_runtime", setup_runtime)  # in the set-up every trainer shares
    monkeypatch.setattr("scan_fast.data.check_beton", lambda *args, **kwargs: {"num_samples": 64})
    import argparse

    parser = argparse.ArgumentParser()
    add_train_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", kind, "--train-data", str(tmp_path / "x.beton"), "--dist-timeout", "7.5"])
    cfg = config_from_args(args, args.config_cls)
    with pytest.raises(Stop):
        (clip.train_clip if kind == "clip" else moco.train_moco)(cfg)
    assert seen == [7.5]
    with pytest.raises(ValueError,
                       match=r"--dist-timeout must be a positive number of seconds \(at most 1000000000\), got 0"):
        type(cfg)(train_data="x.beton", dist_timeout=0).validate()
