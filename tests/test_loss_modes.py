"""Every epoch's per-sample losses (--save-epoch-losses) and their replay (`scan-fast losses`): the files round-trip
and refuse what is not theirs, the replay's cuts are the rules' and its best cut a brute-force search's, and a
run saves exactly the losses it trained on without training differently."""
import csv
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import clip_config, epoch_rows
from scan_fast.schedule.scan_epoch import UNSEEN, loss_codes, overlap_cut, recent_codes, wrong_pair_cut
from scan_fast.train.epoch_losses import epoch_losses_path, read_epoch_losses, save_epoch_losses
from scan_fast.train.loop import SampleLosses
from scan_fast.train.loss_modes import best_cut, code_loss, replay, replay_run


def _save(folder, epoch, ids, losses, n):
    return save_epoch_losses(str(folder), epoch, n, SampleLosses(np.asarray(ids, np.int64),
                                                                  np.asarray(losses, np.float32)))


def test_epoch_files_round_trip_in_epoch_order_without_temporaries(tmp_path):
    rng = np.random.default_rng(0)
    saved = {}
    for epoch in (10, 2, 0):  # written out of order, read in epoch order
        ids = rng.permutation(50)[:40]
        losses = rng.lognormal(size=40).astype(np.float32)
        saved[epoch] = (ids, losses)
        _save(tmp_path, epoch, ids, losses, 50)
    read = list(read_epoch_losses(str(tmp_path)))
    assert [r.epoch for r in read] == [0, 2, 10]
    for r in read:
        np.testing.assert_array_equal(r.ids, saved[r.epoch][0])
        np.testing.assert_array_equal(r.losses, saved[r.epoch][1])
        assert r.losses.dtype == np.float32 and r.num_samples == 50
    assert sorted(os.listdir(tmp_path / "losses")) == ["epoch-000.npz", "epoch-002.npz", "epoch-010.npz"]


def test_epoch_files_refuse_what_is_not_theirs(tmp_path):
    with pytest.raises(FileNotFoundError, match="--save-epoch-losses"):
        list(read_epoch_losses(str(tmp_path)))
    _save(tmp_path, 0, [0, 1], [1.0, 2.0], 4)
    _save(tmp_path, 1, [0, 1], [1.0, 2.0], 5)
    with pytest.raises(ValueError, match="epoch-001.npz: 5 samples, the run's earlier epochs 4"):
        list(read_epoch_losses(str(tmp_path)))
    _save(tmp_path, 1, [0, 9], [1.0, 2.0], 4)
    with pytest.raises(ValueError, match="epoch-001.npz: an id outside 0..3"):
        list(read_epoch_losses(str(tmp_path)))
    with open(epoch_losses_path(str(tmp_path), 1), "wb") as f:
        f.write(b"not an npz")
    with pytest.raises(ValueError, match="epoch-001.npz: not a per-epoch losses file"):
        list(read_epoch_losses(str(tmp_path)))


def _brute_best(recent, wrong):
    seen = recent != UNSEEN
    best = (0, -1.0, 0.0, 0.0)
    for c in range(256):
        sel = seen & (recent >= c)
        hits = int((sel & wrong).sum())
        p, r = hits / max(int(sel.sum()), 1), hits / max(int((wrong & seen).sum()), 1)
        if min(p, r) > best[1]:
            best = (c, min(p, r), p, r)
    return best[0], best[2], best[3]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_best_cut_is_the_brute_force_search(data):
    n = data.draw(st.integers(1, 300))
    recent = np.array(data.draw(st.lists(st.integers(0, 255), min_size=n, max_size=n)), np.uint8)
    wrong = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    c, p, r = best_cut(recent, wrong)
    bc, bp, br = _brute_best(recent, wrong)
    assert min(p, r) == pytest.approx(min(bp, br))
    assert (c, p, r) == (bc, pytest.approx(bp), pytest.approx(br))


def _two_mode_epochs(tmp_path, n=4000, epochs=4, seed=0):
    """Epochs of a pruned run: a clean mode near 1 and wrong pairs near 30 (20%); each epoch sees 90% of the ids."""
    rng = np.random.default_rng(seed)
    wrong = rng.random(n) < 0.2
    for epoch in range(epochs):
        ids = rng.permutation(n)[: int(0.9 * n)]
        losses = np.where(wrong[ids], rng.lognormal(np.log(30.0), 0.3, len(ids)),
                          rng.lognormal(0.0, 0.4, len(ids))).astype(np.float32)
        _save(tmp_path, epoch, ids, losses, n)
    return wrong


def test_replay_keeps_recent_codes_as_the_rules_and_makes_their_cuts(tmp_path):
    wrong = _two_mode_epochs(tmp_path)
    rows = replay(str(tmp_path), rho_ill=0.35, wrong=wrong)
    recent = np.full(len(wrong), UNSEEN, np.uint8)  # the oracle: the rules' functions, step by step
    for row, saved in zip(rows, read_epoch_losses(str(tmp_path))):
        recent[saved.ids] = recent_codes(recent[saved.ids], loss_codes(saved.losses, saved.losses))
        seen = recent != UNSEEN
        hist = np.bincount(recent[seen], minlength=255)[:255]
        assert row["seen"] == int(seen.sum())
        np.testing.assert_array_equal(row["hist"], hist)
        for name, cut in (("valley", wrong_pair_cut(hist, 1400)), ("overlap", overlap_cut(hist, 1400))):
            assert row[f"{name}_cut_loss"] == (None if cut is None else code_loss(cut))
    first = rows[0]
    assert first["seen"] == 3600 and first["valley_cut_loss"] is not None
    assert first["valley_precision"] > 0.99 and first["valley_recall"] > 0.99
    assert rows[-1]["seen"] > 3600  # ids unseen in one epoch are seen in a later one
    assert min(rows[-1]["best_precision"], rows[-1]["best_recall"]) > 0.99


def test_replay_refuses_a_truth_of_another_size(tmp_path):
    _two_mode_epochs(tmp_path, n=100, epochs=1)
    with pytest.raises(ValueError, match="truth holds 99 samples, the run trained on 100"):
        replay(str(tmp_path), 0.35, np.zeros(99, bool))


def test_a_run_saves_the_losses_it_trained_on_and_trains_the_same(data, tmp_path):
    from scan_fast.train.clip import train_clip

    plain = train_clip(clip_config(data, tmp_path, name="plain"))
    saved = train_clip(clip_config(data, tmp_path, name="saved", save_epoch_losses=True, save_losses=True))
    rows, plain_rows = epoch_rows(saved["folder"]), epoch_rows(plain["folder"])
    assert [(r["kept"], r["samples"], r["loss"]) for r in rows] == [
        (r["kept"], r["samples"], r["loss"]) for r in plain_rows], "saving the losses changes no step"
    epochs = list(read_epoch_losses(saved["folder"]))
    assert [e.epoch for e in epochs] == [int(r["epoch"]) for r in rows]
    for e, r in zip(epochs, rows):
        assert len(e.ids) == int(r["samples"]) and len(np.unique(e.ids)) == len(e.ids)
        assert float(e.losses.astype(np.float64).mean()) == pytest.approx(float(r["loss"]), rel=1e-5)
    with np.load(os.path.join(saved["folder"], "candidates.npz")) as cand:  # --save-losses: the same, as float16
        np.testing.assert_array_equal(cand["ids"], epochs[2].ids)
        np.testing.assert_array_equal(cand["losses"], epochs[2].losses.astype(np.float16))

    table = replay_run(saved["folder"], 0.35, data["train"])
    assert table.splitlines()[0].startswith("epoch | seen") and len(table.splitlines()) == 1 + len(rows)
    with open(os.path.join(saved["folder"], "losses", "modes.csv")) as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [e.epoch for e in epochs]
    assert os.path.getsize(os.path.join(saved["folder"], "losses", "modes.png")) > 0


def test_losses_command_prints_the_table_and_names_a_missing_truth(data, tmp_path):
    _two_mode_epochs(tmp_path, n=200, epochs=2)
    cmd = [sys.executable, "-m", "scan_fast.cli", "losses", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("epoch | seen"), done.stderr
    done = subprocess.run(cmd + ["--data", data["test"] + ".missing"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"scan-fast losses: error: --data {data['test']}.missing: no truth file beside it (an embedded data set "
        f"written by scan-fast data or the demo has one)"]
    done = subprocess.run([sys.executable, "-m", "scan_fast.cli", "losses", str(tmp_path / "nothing")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "--save-epoch-losses" in done.stderr and "Traceback" not in done.stderr
