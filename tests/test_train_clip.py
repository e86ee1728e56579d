"""End-to-end CLIP trainer runs on a tiny shapes .beton (a few seconds each on CPU)."""
import argparse
import os

import numpy as np
import pytest
import torch

from helpers import CLIP_BATCH, CLIP_N_TRAIN, assert_resume_matches, clip_config, epoch_rows
from scan_fast.train.checkpoint import load_checkpoint
from scan_fast.train.clip import train_clip
from scan_fast.train.config import ClipConfig
from scan_fast.train.run import TrainingDiverged


def test_scan_run_end_to_end(data, tmp_path):
    summary = train_clip(clip_config(data, tmp_path, val_data=data["test"], tensorboard=True, save_losses=True))
    folder = summary["folder"]
    rows = epoch_rows(folder)
    assert [r["phase"] for r in rows] == ["warmup", "warmup", "preparation", "mutation", "mutation"]
    with np.load(os.path.join(folder, "candidates.npz")) as cand:
        num_candidates = len(np.union1d(cand["ill"], cand["red"]))
        assert cand["losses"].dtype == np.float16 and len(cand["ids"]) == int(rows[2]["samples"])
    # rate(1) = 0.25, rate(2) = 0.75 of the candidates (docs/scan-method.md)
    assert [int(r["pruned"]) for r in rows[3:]] == [num_candidates // 4, int(0.75 * num_candidates)]
    assert num_candidates > 0.5 * CLIP_N_TRAIN
    for r in rows:  # sample-steps are whole batches of the kept ids
        assert int(r["samples"]) == int(r["kept"]) // CLIP_BATCH * CLIP_BATCH
    assert summary["sample_steps"] == sum(int(r["samples"]) for r in rows)
    assert 0.0 <= summary["eval"] <= 1.0 and 0.0 <= summary["ill_precision"] <= 1.0
    for name in ("report.md", "loss.png", "kept.png", "candidates.png", "coreset.bits.npy",
                 "checkpoints/latest.pt"):
        assert os.path.isfile(os.path.join(folder, name)), name
    assert os.listdir(os.path.join(folder, "tb"))
    state = torch.load(os.path.join(folder, "checkpoints/latest.pt"), weights_only=True)
    assert state["epoch"] == 5 and state["global_step"] == sum(int(r["steps"]) for r in rows)
    # `scan-fast eval` on the checkpoint reproduces the run's own final zero-shot accuracy
    assert _cli(["eval", os.path.join(folder, "checkpoints/latest.pt"), "--val-data", data["test"],
                 "--workers", "1"]) == 0
    from scan_fast.train.evaluate import evaluate_checkpoint

    again = evaluate_checkpoint(os.path.join(folder, "checkpoints/latest.pt"), data["test"], workers=1)
    assert again["zero_shot"] == pytest.approx(summary["eval"])


def test_resume_after_a_kill_equals_an_uninterrupted_run(data, tmp_path):
    # random crops on: they are keyed by (seed, epoch, id), so the resumed run sees the same images
    full = train_clip(clip_config(data, tmp_path, name="full", augment=True))
    assert not os.path.exists(os.path.join(full["folder"], "candidates.npz")), "losses are saved only on request"
    # killed in the middle of epoch 3 (the first mutation epoch): no checkpoint of that epoch
    stopped = train_clip(clip_config(data, tmp_path, name="resumed", augment=True, stop_after_step=20))
    assert stopped["stopped_at_step"] == 20
    assert load_checkpoint(os.path.join(tmp_path, "resumed/checkpoints/latest.pt"))["epoch"] == 3
    train_clip(clip_config(data, tmp_path, name="resumed", augment=True, resume="latest"))
    a, b = epoch_rows(os.path.join(tmp_path, "full")), epoch_rows(os.path.join(tmp_path, "resumed"))
    assert [(r["epoch"], r["kept"], r["samples"]) for r in a] == [(r["epoch"], r["kept"], r["samples"]) for r in b]
    np.testing.assert_allclose([float(r["loss"]) for r in a], [float(r["loss"]) for r in b], rtol=1e-5)
    for name in ("coreset.bits.npy",):
        np.testing.assert_array_equal(np.load(os.path.join(tmp_path, "full", name)),
                                      np.load(os.path.join(tmp_path, "resumed", name)))
    assert_resume_matches(os.path.join(tmp_path, "full"), os.path.join(tmp_path, "resumed"), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"different --prune \('scan' there, 'none' here\)"):
        train_clip(clip_config(data, tmp_path, name="resumed", augment=True, resume="latest", prune="none"))
    with pytest.raises(ValueError, match=r"different --augment \(True there, False here\)"):
        train_clip(clip_config(data, tmp_path, name="resumed", resume="latest"))


# none's counts (every sample, every epoch) are the SCAN run's warm-up epochs: make bench runs it
@pytest.mark.parametrize("prune", [pytest.param("none", marks=pytest.mark.slow), "random", "infobatch", "static",
                                   "scan-epoch", "seta"])
def test_each_prune_mode_trains_the_stated_counts(data, tmp_path, capsys, prune):
    extra, epochs = {}, 3
    if prune == "static":
        ids = np.arange(0, CLIP_N_TRAIN, 2)
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
    summary = train_clip(clip_config(data, tmp_path, epochs=epochs, prune=prune, **extra))
    pruned = [int(r["pruned"]) for r in epoch_rows(summary["folder"])]
    if prune == "none":
        assert pruned == [0, 0, 0]
    elif prune == "static":
        assert pruned == [CLIP_N_TRAIN // 2] * 3
    elif prune == "random":
        assert pruned == [0, 20, 40]
    elif prune == "scan-epoch":
        assert pruned[:3] == [0, 0, 0] and 0 < pruned[3] < pruned[4] <= int(0.7 * CLIP_N_TRAIN)
        assert "ill_precision" in summary and "pruned_fraction_after_warmup" in summary
        lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("clip epoch ")]
        said = ["wrong-pair mode" in line for line in lines]  # the preparation's decision, on its line only
        assert len(lines) == 5 and said == [False, False, True, False, False]
    elif prune == "seta":  # epoch 0 keeps every cluster; epoch 1 a window of 3 of 5; int(0.875 * 3) = 2 anneals
        assert pruned[0] == 0 and 0 < pruned[1] < CLIP_N_TRAIN and pruned[2] == 0
    else:  # infobatch: epoch 0 has no scores; int(0.7 * 3) = 2: epoch 2 uses all data
        assert pruned[0] == 0 and 0 < pruned[1] < CLIP_N_TRAIN // 2 + 20 and pruned[2] == 0


def _nan_at_call(monkeypatch, bad_call):
    from scan_fast.train import clip_model

    original, calls = clip_model.Clip.forward, []

    def forward(self, images, tokens):
        pair = original(self, images, tokens)
        calls.append(1)
        return pair._replace(a=pair.a * float("nan")) if len(calls) == bad_call else pair

    monkeypatch.setattr(clip_model.Clip, "forward", forward)


@pytest.mark.parametrize("log_every", [1, 50])
def test_nan_loss_stops_names_the_step_and_writes_no_checkpoint(data, tmp_path, monkeypatch, log_every):
    _nan_at_call(monkeypatch, 3)  # the 3rd step, in epoch 0 (6 steps an epoch); steps are counted from 1
    checked_at = 3 if log_every == 1 else 6  # the next log step, or the epoch's end
    with pytest.raises(TrainingDiverged, match=rf"epoch 0, step 3 of the epoch \(global step 3; epochs count from 0, "
                                               rf"steps from 1\), found by the check after global step {checked_at}"
                                               rf".*no checkpoint was written"):
        train_clip(clip_config(data, tmp_path, name="nan", log_every=log_every))
    assert not os.path.exists(os.path.join(tmp_path, "nan/checkpoints"))


def test_nan_loss_after_a_checkpoint_keeps_the_finite_one(data, tmp_path, monkeypatch):
    _nan_at_call(monkeypatch, 8)  # the 8th step: the 2nd of epoch 1, after epoch 0's checkpoint
    with pytest.raises(TrainingDiverged, match=r"epoch 1, step 2 of the epoch \(global step 8;.*the last "
                                               r"checkpoint, .*latest.pt, is from before it \(saved after epoch 0, "
                                               r"global step 6\)"):
        train_clip(clip_config(data, tmp_path, name="nan"))
    state = load_checkpoint(os.path.join(tmp_path, "nan/checkpoints/latest.pt"))
    assert state["epoch"] == 1 and state["global_step"] == 6
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("flags, match", [
    (["--lr", "1e39"], r"--lr must be a finite number >= 0 and at most 3.403e\+38 \(float32's largest\), got 1e\+39"),
    (["--wd", "-1"], "--wd must be a finite number >= 0"),
    (["--eps", "inf"], "--eps must be a finite number >= 0 .*got inf"),
    (["--grad-clip-norm", "-1"], r"--grad-clip-norm must be a finite number > 0 .*no clipping\), got -1.0"),
    (["--grad-clip-norm", "nan"], "--grad-clip-norm must be a finite number > 0 .*got nan"),
    (["--grad-clip-norm", "0"], "--grad-clip-norm must be a finite number > 0 .*got 0.0"),
    (["--prune-threshold", "-1"], r"--prune-threshold must be in \[0, 1\] .*got -1.0"),
    (["--abs-ill", "-5"], "--abs-ill must be a loss value > 0 .*got -5.0"),
    (["--abs-red", "1e39"], "--abs-red must be a loss value > 0 .*fits in float32, got 1e"),
    (["--dist-timeout", "1e30"], "--dist-timeout must be a positive number of seconds"),
])
def test_out_of_range_float_flags_are_refused_in_one_line(tmp_path, capsys, flags, match):
    import re

    from scan_fast.cli import main

    code = main(["train", "clip", "--train-data", str(tmp_path / "never-read.beton"), "--logs", str(tmp_path), *flags])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and re.search(match, err), err
    assert not os.listdir(tmp_path)  # refused before anything is written


def test_moco_temperature_must_fit_in_float32():
    from scan_fast.train.config import MocoConfig

    with pytest.raises(ValueError, match="--moco-t must be a finite number > 0"):
        MocoConfig(train_data="x.beton", moco_t=1e39).validate()


def _break_weights_at_step(monkeypatch, bad_step):
    """After optimizer step `bad_step` (from 1) a weight becomes NaN while every loss stays finite until
    then: what only a check of the state itself can find."""
    from scan_fast.train import clip_model

    original, calls = clip_model.Clip.clamp_logit_scale, []

    def after_step(self):
        original(self)
        calls.append(1)
        if len(calls) == bad_step:
            with torch.no_grad():
                self.model.logit_scale.fill_(float("nan"))

    monkeypatch.setattr(clip_model.Clip, "clamp_logit_scale", after_step)


@pytest.mark.parametrize("bad_step, saved", [(6, None), (12, 1)])
def test_non_finite_weights_are_never_checkpointed(data, tmp_path, monkeypatch, bad_step, saved):
    _break_weights_at_step(monkeypatch, bad_step)  # the last step of epoch 0 (6 steps an epoch), or of epoch 1
    latest = os.path.join(tmp_path, "w/checkpoints/latest.pt")
    epoch = bad_step // 6 - 1
    where = "no checkpoint was written" if saved is None else \
        rf"the last checkpoint, {latest}, is from before it \(saved after epoch 0, global step 6\)"
    with pytest.raises(TrainingDiverged, match=rf"non-finite state after epoch {epoch} \(global step {bad_step}\): "
                                               rf"model weight model.logit_scale holds NaN or inf.*training stopped "
                                               rf"and {where}$"):
        train_clip(clip_config(data, tmp_path, name="w", epochs=3, prune="none"))
    if saved is None:
        assert not os.path.exists(latest)
    else:
        state = load_checkpoint(latest)
        assert state["epoch"] == saved
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_save_checkpoint_refuses_non_finite_optimizer_state(tmp_path):
    from scan_fast.schedule.no_pruning import NoPruning
    from scan_fast.train.checkpoint import NonFiniteState, save_checkpoint

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    kwargs = dict(model=model, optimizer=optimizer, scaler=torch.amp.GradScaler("cpu", enabled=False),
                  schedule=NoPruning(4), epoch=1, global_step=1, config={}, history=[])
    save_checkpoint(tmp_path / "ok.pt", **kwargs)  # finite: written
    optimizer.state[model.bias]["exp_avg_sq"][1] = float("inf")
    with pytest.raises(NonFiniteState, match="optimizer state 'exp_avg_sq' of bias holds NaN or inf"):
        save_checkpoint(tmp_path / "bad.pt", **kwargs)
    assert sorted(os.listdir(tmp_path)) == ["ok.pt"]  # nothing written, no temporary left


@pytest.fixture(scope="module")
def seven(tmp_path_factory):
    from scan_fast.data import write_shapes

    path = str(tmp_path_factory.mktemp("seven") / "s7.beton")
    write_shapes(path, num_samples=7, context_length=16, progress=False)
    return path


@pytest.mark.parametrize("prune, extra, fewest", [
    ("scan", {}, 3),          # one batch of 7: int(7 x 0.35) = 2 candidates a kind; rate 1.0 at position 3
    ("random", {}, 3),        # the same counts, drawn from all samples
    ("infobatch", {}, 4),     # expected: 7 - 0.5 x 6 below-mean samples, rounded up
    ("static", {"ids": [0, 2, 4, 6]}, 4),
])
def test_a_run_whose_epoch_could_train_no_step_is_refused(seven, tmp_path, prune, extra, fewest):
    from scan_fast.train.run import check_epochs_fill_a_batch, make_schedule

    if "ids" in extra:
        np.savetxt(tmp_path / "c.txt", extra.pop("ids"), fmt="%d")
        extra["coreset"] = str(tmp_path / "c.txt")
    cfg = ClipConfig(train_data=seven, batch_size=7, epochs=8, prune=prune, logs=str(tmp_path), **extra)
    with pytest.raises(ValueError, match=rf"^--batch-size 7 x 1 rank\(s\) = 7 samples a step, but --prune {prune}"
                                         rf"( is expected to keep| keeps) as few as {fewest} of the 7 samples of "
                                         rf".*s7.beton in an epoch of this 8-epoch run, which would then train no "
                                         rf"step: lower --batch-size or prune less$"):
        check_epochs_fill_a_batch(cfg, make_schedule(cfg, 7), 7, 1)
    if prune != "static":  # 7 batches of 7: enough is kept
        check_epochs_fill_a_batch(cfg, make_schedule(cfg, 49), 49, 1)
    if prune in ("scan", "random"):  # no mutation epoch before epoch 3: a 3-epoch run never prunes
        short = ClipConfig(train_data=seven, batch_size=7, epochs=3, prune=prune, logs=str(tmp_path))
        check_epochs_fill_a_batch(short, make_schedule(short, 7), 7, 1)


def test_cli_refuses_the_seven_sample_scan_run_in_one_line(seven, tmp_path, capsys):
    from scan_fast.cli import main

    code = main(["train", "clip", "--train-data", seven, "--batch-size", "7", "--epochs", "8", "--prune", "scan",
                 "--logs", str(tmp_path / "runs"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--prune scan keeps as few as 3 of the 7 samples" in err and not (tmp_path / "runs").exists()


def test_an_epoch_without_a_step_logs_nan_and_warns(seven, tmp_path, monkeypatch, capsys):
    from scan_fast.train import run

    monkeypatch.setattr(run, "check_epochs_fill_a_batch", lambda *args: None)  # past the start check
    np.savetxt(tmp_path / "c.txt", [0, 1, 2], fmt="%d")
    summary = train_clip(ClipConfig(train_data=seven, batch_size=4, epochs=1, prune="static",
                                    coreset=str(tmp_path / "c.txt"), workers=1, logs=str(tmp_path),
                                    progress=False, tensorboard=False))
    rows = epoch_rows(summary["folder"])
    assert rows[0]["steps"] == "0" and rows[0]["loss"] == "nan" and np.isnan(summary["final_loss"])
    assert "warning: epoch 0 trained no step: it kept 3 ids, fewer than one global batch of 4" in capsys.readouterr().err


def test_warmup_only_checkpoint_is_not_exported_and_has_the_usual_file_mode(seven, tmp_path):
    from scan_fast.train.coreset import export_coreset

    summary = train_clip(ClipConfig(train_data=seven, batch_size=7, epochs=1, workers=1, logs=str(tmp_path),
                                    progress=False, tensorboard=False))
    latest = os.path.join(summary["folder"], "checkpoints", "latest.pt")
    mode = lambda path: os.stat(path).st_mode & 0o777  # noqa: E731
    assert mode(latest) == mode(os.path.join(summary["folder"], "epochs.csv"))  # not mkstemp's 0600
    with pytest.raises(ValueError, match=r"latest.pt: the run has not completed a preparation epoch \(it holds 1 "
                                         r"epoch\(s\), all warm-up\).*coreset would be every id"):
        export_coreset(latest, str(tmp_path / "coreset.txt"))
    assert not (tmp_path / "coreset.txt").exists()


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
    config.write_text(f"train-data: {data['train']}\nbatch_size: {CLIP_BATCH}\nepochs: 4\nworkers: 1\n"
                      f"prune_threshold: 1.0\nlogs: {tmp_path}\nname: from-yaml\nprogress: false\n"
                      "tensorboard: false\nsave-losses: true\n")
    assert _cli(["train", "clip", "--config", str(config), "--epochs", "3"]) == 0  # the flag beats the file
    assert len(epoch_rows(tmp_path / "from-yaml")) == 3
    out = tmp_path / "coreset.txt"
    assert _cli(["coreset", "export", str(tmp_path / "from-yaml/checkpoints/latest.pt"), "--out", str(out)]) == 0
    ids = np.loadtxt(out, dtype=np.int64)
    with np.load(tmp_path / "from-yaml/candidates.npz") as cand:
        dropped = np.union1d(cand["ill"], cand["red"])
    np.testing.assert_array_equal(ids, np.setdiff1d(np.arange(CLIP_N_TRAIN), dropped))
    # the run folder keeps the same set as packed bits (N / 8 bytes, not text)
    bits = np.load(tmp_path / "from-yaml/coreset.bits.npy")
    assert bits.dtype == np.uint8 and bits.shape == ((CLIP_N_TRAIN + 7) // 8,)
    np.testing.assert_array_equal(np.flatnonzero(np.unpackbits(bits, bitorder="little")), ids)


@pytest.mark.parametrize(
    "argv, error, match",
    [
        (["--train-data", "{missing}"], FileNotFoundError, "no .beton file or part folder at"),
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
