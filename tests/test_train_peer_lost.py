"""A rank killed under torchrun: the others stop with one line naming the collective and the last
checkpoint, not the backend's traceback."""
import glob
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from scan_fast.data.embedded import write_shapes


def _rank_processes(launcher):
    ranks = {}
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            rank = child.environ().get("RANK")
        except psutil.Error:
            continue
        if rank is not None:
            ranks[int(rank)] = child
    return ranks


def _running(process):
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow  # two torchrun ranks start, train an epoch and stop: about 45 s on 2 shared cores
def test_a_killed_rank_stops_rank_0_with_one_line(tmp_path):
    data = tmp_path / "d.beton"
    write_shapes(data, num_samples=64, resolution=16, progress=False)
    logs = tmp_path / "torchrun"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--redirects", "3",
         "--log-dir", str(logs), "-m", "--", "scan_fast.cli", "train", "clip", "--train-data", str(data),
         "--epochs", "50", "--batch-size", "16", "--prune", "none", "--workers", "1", "--no-progress",
         "--logs", str(tmp_path / "runs"), "--name", "r"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    latest = tmp_path / "runs" / "r" / "checkpoints" / "latest.pt"
    try:
        deadline = time.monotonic() + 240
        while not latest.exists():  # killed after epoch 0's checkpoint, in a later epoch's collectives
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()[0]
            time.sleep(0.1)
        ranks = _rank_processes(launcher)
        # torchrun stops every rank soon after one dies; held while rank 0 reacts, so rank 0's own exit is seen
        agent = psutil.Process(launcher.pid)
        agent.suspend()
        try:
            ranks[1].kill()
            deadline = time.monotonic() + 60
            while _running(ranks[0]):  # a zombie until the agent reaps it
                assert time.monotonic() < deadline, "rank 0 did not stop"
                time.sleep(0.1)
        finally:
            agent.resume()
        out = launcher.communicate(timeout=120)[0]
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0, out
    assert re.search(r"rank +: 0 \(local_rank: 0\)\n +exitcode +: 4 ", out), out
    (stderr,) = glob.glob(str(logs / "*" / "attempt_0" / "0" / "stderr.log"))
    text = open(stderr).read()
    assert "Traceback" not in text, text
    assert re.fullmatch(
        r"scan-fast train clip: error: rank 0 lost contact with another rank during \w[\w' -]+ "
        r"at scan_fast/\S+:\d+ \(a peer process died or hung; see its log\); the last checkpoint is "
        + re.escape(str(latest)) + r" \(saved after epoch \d+, global step \d+\)",
        text.strip().splitlines()[-1]), text


def test_only_a_lost_peer_is_cut_to_one_line():
    import torch.distributed as dist

    from scan_fast.train.runtime import lost_contact

    def raised(err):
        try:
            raise err
        except Exception as caught:
            return caught

    lost = "[third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:24989: Connection reset by peer"
    assert lost_contact(raised(RuntimeError(lost))) is None  # no process group: not a collective's failure
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        assert lost_contact(raised(RuntimeError(lost))) == "a collective"
        assert lost_contact(raised(RuntimeError("Timed out waiting 3000ms for recv operation"))) == "a collective"
        assert lost_contact(raised(dist.DistNetworkError("failed to recv, got 0 bytes"))) == "a collective"
        for bug in (RuntimeError("mat1 and mat2 shapes cannot be multiplied (16x8 and 4x8)"),
                    ValueError("Connection reset by peer"), KeyError("all_gather")):
            assert lost_contact(raised(bug)) is None, bug
    finally:
        dist.destroy_process_group()
