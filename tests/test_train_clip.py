"""End-to-end CLIP trainer runs on a tiny shapes .beton (a few seconds each on CPU)."""
import argparse
import csv
import os

import numpy as np
import pytest
import torch

from conftest import assert_resume_matches
from scan_fast.train.checkpoint import load_checkpoint
from scan_fast.train.clip import train_clip
from scan_fast.train.config import ClipConfig
from scan_fast.train.run import TrainingDiverged

N_TRAIN, BATCH = 192, 32


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from scan_fast.data import write_shapes

    folder = tmp_path_factory.mktemp("clip_data")
    train = str(folder / "shapes.beton")
    test = str(folder / "shapes_test.beton")
    write_shapes(train, num_samples=N_TRAIN, mismatch_fraction=0.2, context_length=16, progress=False)
    write_shapes(test, num_samples=48, mismatch_fraction=0.0, duplicate_fraction=0.0, seed=1, context_length=16,
                 progress=False)
    moco = str(folder / "moco.beton")  # images without captions: the wrong kind for CLIP
    write_shapes(moco, num_samples=16, kind="moco", progress=False)
    return {"train": train, "test": test, "moco": moco, "folder": folder}


def _config(data, tmp_path, **overrides):
    # prune_threshold 1.0: warm-up ends after epoch 1, so epoch 2 prepares and 3-4 prune.
    values = dict(train_data=data["train"], batch_size=BATCH, epochs=5, lr=1e-3, warmup_epochs=0.5,
                  workers=1, prune_threshold=1.0, logs=str(tmp_path), progress=False, tensorboard=False)
    values.update(overrides)
    return ClipConfig(**values)


def _rows(folder):
    with open(os.path.join(folder, "epochs.csv")) as f:
        return list(csv.DictReader(f))


def test_scan_run_end_to_end(data, tmp_path):
    summary = train_clip(_config(data, tmp_path, val_data=data["test"], tensorboard=True, save_losses=True))
    folder = summary["folder"]
    rows = _rows(folder)
    assert [r["phase"] for r in rows] == ["warmup", "warmup", "preparation", "mutation", "mutation"]
    with np.load(os.path.join(folder, "candidates.npz")) as cand:
        num_candidates = len(np.union1d(cand["ill"], cand["red"]))
        assert cand["losses"].dtype == np.float16 and len(cand["ids"]) == int(rows[2]["samples"])
    # rate(1) = 0.25, rate(2) = 0.75 of the candidates (docs/scan-method.md)
    assert [int(r["pruned"]) for r in rows[3:]] == [num_candidates // 4, int(0.75 * num_candidates)]
    assert num_candidates > 0.5 * N_TRAIN
    for r in rows:  # sample-steps are whole batches of the kept ids
        assert int(r["samples"]) == int(r["kept"]) // BATCH * BATCH
    assert summary["sample_steps"] == sum(int(r["samples"]) for r in rows)
    assert 0.0 <= summary["eval"] <= 1.0 and 0.0 <= summary["ill_precision"] <= 1.0
    for name in ("report.md", "loss.png", "kept.png", "candidates.png", "coreset.txt", "checkpoints/latest.pt"):
        assert os.path.isfile(os.path.join(folder, name)), name
    assert os.listdir(os.path.join(folder, "tb"))
    state = torch.load(os.path.join(folder, "checkpoints/latest.pt"), weights_only=True)
    assert state["epoch"] == 5 and state["global_step"] == sum(int(r["steps"]) for r in rows)
    # `scan-fast eval` on the checkpoint reproduces the run's own final zero-shot accuracy
    assert _cli(["eval", os.path.join(folder, "checkpoints/latest.pt"), "--val-data", data["test"],
                 "--workers", "1"]) == 0
    from scan_fast.train.cli import evaluate_checkpoint

    again = evaluate_checkpoint(os.path.join(folder, "checkpoints/latest.pt"), data["test"], workers=1)
    assert again["zero_shot"] == pytest.approx(summary["eval"])


def test_resume_after_a_kill_equals_an_uninterrupted_run(data, tmp_path):
    # random crops on: they are keyed by (seed, epoch, id), so the resumed run sees the same images
    full = train_clip(_config(data, tmp_path, name="full", augment=True))
    assert not os.path.exists(os.path.join(full["folder"], "candidates.npz")), "losses are saved only on request"
    # killed in the middle of epoch 3 (the first mutation epoch): no checkpoint of that epoch
    stopped = train_clip(_config(data, tmp_path, name="resumed", augment=True, stop_after_step=20))
    assert stopped["stopped_at_step"] == 20
    assert load_checkpoint(os.path.join(tmp_path, "resumed/checkpoints/latest.pt"))["epoch"] == 3
    train_clip(_config(data, tmp_path, name="resumed", augment=True, resume="latest"))
    a, b = _rows(os.path.join(tmp_path, "full")), _rows(os.path.join(tmp_path, "resumed"))
    assert [(r["epoch"], r["kept"], r["samples"]) for r in a] == [(r["epoch"], r["kept"], r["samples"]) for r in b]
    np.testing.assert_allclose([float(r["loss"]) for r in a], [float(r["loss"]) for r in b], rtol=1e-5)
    for name in ("coreset.txt",):
        np.testing.assert_array_equal(np.loadtxt(os.path.join(tmp_path, "full", name)),
                                      np.loadtxt(os.path.join(tmp_path, "resumed", name)))
    assert_resume_matches(os.path.join(tmp_path, "full"), os.path.join(tmp_path, "resumed"), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"different --prune \('scan' there, 'none' here\)"):
        train_clip(_config(data, tmp_path, name="resumed", augment=True, resume="latest", prune="none"))
    with pytest.raises(ValueError, match=r"different --augment \(True there, False here\)"):
        train_clip(_config(data, tmp_path, name="resumed", resume="latest"))


@pytest.mark.parametrize("prune", ["none", "random", "infobatch", "static", "scan-epoch", "seta"])
def test_each_prune_mode_trains_the_stated_counts(data, tmp_path, prune):
    extra, epochs = {}, 3
    if prune == "static":
        ids = np.arange(0, N_TRAIN, 2)
        np.savetxt(tmp_path / "coreset.txt", ids, fmt="%d")
        extra["coreset"] = str(tmp_path / "coreset.txt")
    if prune == "random":
        csv_path = tmp_path / "scan_epochs.csv"
        csv_path.write_text("epoch,pruned\n0,0\n1,20\n2,40\n")
        extra["prune_counts"] = str(csv_path)
    if prune == "infobatch":
        extra.update(infobatch_ratio=0.5, infobatch_delta=0.7)
    if prune == "scan-epoch":  # warm-up ends after epoch 1: epoch 2 prepares, 3 and 4 prune
        extra, epochs = dict(prune_threshold=1.0, t_cos=2), 5
    summary = train_clip(_config(data, tmp_path, epochs=epochs, prune=prune, **extra))
    pruned = [int(r["pruned"]) for r in _rows(summary["folder"])]
    if prune == "none":
        assert pruned == [0, 0, 0]
    elif prune == "static":
        assert pruned == [N_TRAIN // 2] * 3
    elif prune == "random":
        assert pruned == [0, 20, 40]
    elif prune == "scan-epoch":
        assert pruned[:3] == [0, 0, 0] and 0 < pruned[3] < pruned[4] <= int(0.7 * N_TRAIN)
        assert "ill_precision" in summary and "pruned_fraction_after_warmup" in summary
    elif prune == "seta":  # epoch 0 keeps every cluster; epoch 1 a window of 3 of 5; int(0.875 * 3) = 2 anneals
        assert pruned[0] == 0 and 0 < pruned[1] < N_TRAIN and pruned[2] == 0
    else:  # infobatch: epoch 0 has no scores; int(0.7 * 3) = 2: epoch 2 uses all data
        assert pruned[0] == 0 and 0 < pruned[1] < N_TRAIN // 2 + 20 and pruned[2] == 0


def _nan_at_call(monkeypatch, bad_call):
    from scan_fast.train import clip_model

    original, calls = clip_model.Clip.forward, []

    def forward(self, images, tokens):
        loss_a, loss_b = original(self, images, tokens)
        calls.append(1)
        return (loss_a * float("nan"), loss_b) if len(calls) == bad_call else (loss_a, loss_b)

    monkeypatch.setattr(clip_model.Clip, "forward", forward)


@pytest.mark.parametrize("log_every", [1, 50])
def test_nan_loss_stops_names_the_step_and_writes_no_checkpoint(data, tmp_path, monkeypatch, log_every):
    _nan_at_call(monkeypatch, 3)  # global step 2, in epoch 0 (6 steps an epoch)
    checked_at = 3 if log_every == 1 else 6  # the next log step, or the epoch's end
    with pytest.raises(TrainingDiverged, match=rf"epoch 0, step 2 of the epoch \(global step 2\), found by the "
                                               rf"check after global step {checked_at}.*no checkpoint was written"):
        train_clip(_config(data, tmp_path, name="nan", log_every=log_every))
    assert not os.path.exists(os.path.join(tmp_path, "nan/checkpoints"))


def test_nan_loss_after_a_checkpoint_keeps_the_finite_one(data, tmp_path, monkeypatch):
    _nan_at_call(monkeypatch, 8)  # global step 7: epoch 1, after epoch 0's checkpoint
    with pytest.raises(TrainingDiverged, match=r"epoch 1, step 1 of the epoch \(global step 7\).*the last "
                                               r"checkpoint, .*latest.pt, is from before it"):
        train_clip(_config(data, tmp_path, name="nan"))
    state = load_checkpoint(os.path.join(tmp_path, "nan/checkpoints/latest.pt"))
    assert state["epoch"] == 1 and state["global_step"] == 6
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def _cli(argv):
    from scan_fast.train.cli import add_coreset_parser, add_eval_parser, add_train_parsers

    parser = argparse.ArgumentParser(prog="scan-fast")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parsers(sub)
    add_coreset_parser(sub)
    add_eval_parser(sub)
    args = parser.parse_args(argv)
    return args.run(args)


def test_cli_config_file_flags_and_coreset_export(data, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"train-data: {data['train']}\nbatch_size: {BATCH}\nepochs: 4\nworkers: 1\n"
                      f"prune_threshold: 1.0\nlogs: {tmp_path}\nname: from-yaml\nprogress: false\n"
                      "tensorboard: false\nsave-losses: true\n")
    assert _cli(["train", "clip", "--config", str(config), "--epochs", "3"]) == 0  # the flag beats the file
    assert len(_rows(tmp_path / "from-yaml")) == 3
    out = tmp_path / "coreset.txt"
    assert _cli(["coreset", "export", str(tmp_path / "from-yaml/checkpoints/latest.pt"), "--out", str(out)]) == 0
    ids = np.loadtxt(out, dtype=np.int64)
    with np.load(tmp_path / "from-yaml/candidates.npz") as cand:
        dropped = np.union1d(cand["ill"], cand["red"])
    np.testing.assert_array_equal(ids, np.setdiff1d(np.arange(N_TRAIN), dropped))


@pytest.mark.parametrize(
    "argv, error, match",
    [
        (["--train-data", "{missing}"], FileNotFoundError, "no .beton file at"),
        (["--train-data", "{moco}"], ValueError, r"moco.beton lacks field\(s\) \['tokens'\]"),
        (["--train-data", "{test}", "--model", "ViT-Nope-1"], ValueError, "'ViT-Nope-1' is not an open_clip model"),
        (["--train-data", "{test}", "--prune", "static"], ValueError, "--prune static needs --coreset"),
        (["--train-data", "{test}", "--prune", "none", "--prune-counts", "x.csv"], ValueError,
         "--prune-counts only applies to --prune random"),
        (["--train-data", "{test}", "--batch-size", "0"], ValueError, "--batch-size must be a positive integer"),
        (["--train-data", "{test}", "--batch-size", "4096"], ValueError, "--batch-size 4096 x 1 rank"),
        (["--train-data", "{test}", "--config", "{cfg}"], ValueError, r"unknown key\(s\) \['bogus'\]"),
        (["--train-data", "{test}", "--epochs", "2", "--resume", "{missing}"], FileNotFoundError,
         "--resume: no checkpoint"),
    ],
)
def test_cli_errors_name_the_input(data, tmp_path, argv, error, match):
    (tmp_path / "bad.toml").write_text("bogus = 1\n")
    fill = {"missing": str(tmp_path / "missing.beton"), "test": data["test"], "cfg": str(tmp_path / "bad.toml"),
            "moco": data["moco"]}
    argv = [a.format(**fill) for a in argv]
    with pytest.raises(error, match=match):
        _cli(["train", "clip", "--logs", str(tmp_path), "--no-progress", "--batch-size", "16", "--workers", "1", *argv])
