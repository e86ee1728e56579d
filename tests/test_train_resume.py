"""A run's folder and its resume: nothing a run left is replaced without --overwrite, a resume names every
flag that differs from its checkpoint's, and the last epoch is saved before it is evaluated."""
import argparse
import contextlib
import io
import os

import pytest
import torch

from scan_fast.train.checkpoint import load_checkpoint
from scan_fast.train.clip import train_clip
from scan_fast.train.config import ClipConfig, MocoConfig

N_TRAIN, BATCH = 64, 32


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from scan_fast.data import write_shapes

    folder = tmp_path_factory.mktemp("resume_data")
    paths = {"train": str(folder / "train.beton"), "test": str(folder / "test.beton"),
             "moco": str(folder / "moco.beton")}
    write_shapes(paths["train"], num_samples=N_TRAIN, context_length=16, progress=False)
    write_shapes(paths["test"], num_samples=32, mismatch_fraction=0.0, duplicate_fraction=0.0, seed=1,
                 context_length=16, progress=False)
    write_shapes(paths["moco"], num_samples=N_TRAIN, kind="moco", progress=False)
    return paths


def _config(data, logs, **overrides):
    values = dict(train_data=data["train"], batch_size=BATCH, epochs=2, lr=1e-3, warmup_epochs=0.5, workers=1,
                  logs=str(logs), progress=False, tensorboard=False)
    values.update(overrides)
    return ClipConfig(**values)


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    """The logs folder of one finished two-epoch SCAN run named `run`; what it printed is in printed.*."""
    logs = tmp_path_factory.mktemp("logs")
    out, err = io.StringIO(), io.StringIO()  # not a terminal
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        train_clip(_config(data, logs, name="run", progress=True))
    (logs / "printed.out").write_text(out.getvalue())
    (logs / "printed.err").write_text(err.getvalue())
    return logs


def _files(folder):
    return {name: open(os.path.join(folder, name), "rb").read()
            for name in ("checkpoints/latest.pt", "epochs.csv", "report.md")}


def test_a_new_run_in_a_used_folder_is_refused_and_overwrite_replaces_it(data, tmp_path):
    folder = train_clip(_config(data, tmp_path, epochs=1))["folder"]  # default name
    assert os.path.basename(folder).startswith("clip-scan-seed0-")
    before = _files(folder)
    with pytest.raises(ValueError, match=r"run folder .*clip-scan-seed0-\w+ already holds a run: pass --resume "
                                         r"latest to continue it, --overwrite to replace it, or --name for another"):
        train_clip(_config(data, tmp_path, epochs=1))
    assert _files(folder) == before  # nothing touched
    with pytest.raises(ValueError, match=r"run folder .*ref already holds a run"):
        (tmp_path / "ref").mkdir()
        (tmp_path / "ref/notes.txt").write_text("mine")
        train_clip(_config(data, tmp_path, epochs=1, name="ref"))
    assert train_clip(_config(data, tmp_path, epochs=1, name="ref", overwrite=True))["epochs"] == 1
    assert not (tmp_path / "ref/notes.txt").exists() and (tmp_path / "ref/checkpoints/latest.pt").exists()
    with pytest.raises(ValueError, match="--resume continues the run in its folder and --overwrite replaces it"):
        train_clip(_config(data, tmp_path, name="ref", epochs=1, resume="latest", overwrite=True))
    from scan_fast.train.resume import open_run

    (tmp_path / "a-file").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="run folder .*a-file is a file, not a folder"):
            open_run(_config(data, tmp_path, name="a-file", overwrite=overwrite), str(tmp_path / "a-file"), 1, True)
    assert (tmp_path / "a-file").read_text() == "mine"


def test_default_run_folders_differ_between_experiments(data, tmp_path):
    from scan_fast.train.resume import run_folder

    folder = run_folder(_config(data, tmp_path), "clip", 1)
    assert os.path.basename(folder).startswith("clip-scan-seed0-")
    for other in (dict(lr=2e-3), dict(rho_ill=0.3), dict(epochs=3), dict(train_data=data["test"])):
        assert run_folder(_config(data, tmp_path, **other), "clip", 1) != folder, other
    assert run_folder(_config(data, tmp_path), "moco", 1) != folder
    # the same experiment maps to the same folder (so --resume latest finds it) whatever may change on resume,
    # and so does the same global batch on another number of processes
    same = _config(data, tmp_path, workers=2, eval_frequency=1, val_data=data["test"], progress=True)
    assert run_folder(same, "clip", 1) == folder
    assert run_folder(_config(data, tmp_path, batch_size=BATCH // 2), "clip", 2) == folder
    assert run_folder(_config(data, tmp_path, name="mine"), "clip", 1) == os.path.join(str(tmp_path), "mine")


def test_the_last_epoch_is_saved_before_it_is_evaluated(data, tmp_path, monkeypatch):
    from scan_fast.train import evaluate

    def failing_evaluation(*args, **kwargs):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(evaluate, "zero_shot_accuracy", failing_evaluation)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        train_clip(_config(data, tmp_path, name="eval-fails", val_data=data["test"]))
    state = load_checkpoint(tmp_path / "eval-fails/checkpoints/latest.pt")
    assert state["epoch"] == 2 and len(state["history"]) == 2  # both epochs' training is kept


@pytest.mark.parametrize("overrides, match", [
    (dict(wd=0.05, beta2=0.9), r"different --wd \(0.1 there, 0.05 here\), --beta2 \(0.98 there, 0.9 here\)"),
    (dict(lr=2e-3, eps=1e-8, grad_clip_norm=1.0), r"--lr \(0.001 there, 0.002 here\), --eps .*--grad-clip-norm "
                                                  r"\(None there, 1.0 here\)"),
    (dict(abs_ill=5.0), r"--abs-ill \(None there, 5.0 here\)"),
    (dict(epochs=3), r"--epochs \(2 there, 3 here\)"),
    (dict(batch_size=16), r"--batch-size x processes \(32 x 1 = 32 there, 16 x 1 = 16 here; the global batch"),
    (dict(infobatch_ratio=0.3, model="scan-tiny-vit"), r"--infobatch-ratio \(0.5 there, 0.3 here\)"),
])
def test_resume_with_a_changed_training_flag_is_refused_naming_it(data, finished, overrides, match):
    with pytest.raises(ValueError, match=match):
        train_clip(_config(data, finished, name="run", resume="latest", **overrides))


def test_resume_accepts_the_flags_that_may_change_and_cleans_stale_temporaries(data, finished):
    from scan_fast.train.resume import MAY_CHANGE

    stale = finished / "run/checkpoints/.ckpt-killed.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert load_checkpoint(finished / "run/checkpoints/latest.pt")["config"]["world_size"] == 1
    summary = train_clip(_config(data, finished, name="run", resume="latest", workers=2, eval_frequency=3,
                                 save_frequency=2, val_data=data["test"], dist_timeout=60.0))
    assert summary["epochs"] == 2 and not stale.exists()
    assert {"val_data", "workers", "device", "logs", "name", "resume", "overwrite"} <= set(MAY_CHANGE)
    assert "epochs" not in MAY_CHANGE and "batch_size" not in MAY_CHANGE


def test_resume_on_another_number_of_processes_needs_the_same_global_batch(data, finished, tmp_path):
    from scan_fast.train.resume import check_resume, checkpoint_config

    # a checkpoint written by 2 processes of 16 (as a 2-rank run saves it), resumed on 1 process
    state = load_checkpoint(finished / "run/checkpoints/latest.pt")
    state["config"].update(batch_size=BATCH // 2, world_size=2)
    two_ranks = str(tmp_path / "two-ranks.pt")
    torch.save(state, two_ranks)
    with pytest.raises(ValueError, match=r"--batch-size x processes \(16 x 2 = 32 there, 16 x 1 = 16 here"):
        train_clip(_config(data, tmp_path, name="elastic", resume=two_ranks, batch_size=BATCH // 2))
    assert train_clip(_config(data, tmp_path, name="elastic", resume=two_ranks))["epochs"] == 2  # 32 x 1 = 32
    # a checkpoint that does not record its processes compares the per-process batch
    saved = {k: v for k, v in checkpoint_config(_config(data, tmp_path), 1).items() if k != "world_size"}
    with pytest.raises(ValueError, match=r"--batch-size \(32 there, 16 here\)"):
        check_resume(saved, checkpoint_config(_config(data, tmp_path, batch_size=16), 2), "old.pt")


def test_infobatch_resume_compares_its_knobs(data, tmp_path):
    train_clip(_config(data, tmp_path, name="ib", epochs=1, prune="infobatch"))
    for overrides, match in ((dict(infobatch_ratio=0.25), r"--infobatch-ratio \(0.5 there, 0.25 here\)"),
                             (dict(infobatch_delta=0.5), r"--infobatch-delta \(0.875 there, 0.5 here\)"),
                             (dict(seed=3), r"--seed \(0 there, 3 here\)")):
        with pytest.raises(ValueError, match=match):
            train_clip(_config(data, tmp_path, name="ib", epochs=1, prune="infobatch", resume="latest",
                               **overrides))


def test_moco_resume_with_another_head_size_names_the_flag(data, tmp_path):
    from scan_fast.train.moco import train_moco

    def config(**overrides):
        return MocoConfig(train_data=data["moco"], arch="vit_tiny_cpu", batch_size=BATCH, epochs=1, workers=1,
                          logs=str(tmp_path), name="moco", progress=False, tensorboard=False, **overrides)

    train_moco(config())
    with pytest.raises(ValueError, match=r"different --moco-dim \(64 there, 32 here\)"):
        train_moco(config(resume="latest", moco_dim=32))


def test_absolute_thresholds_are_refused_outside_scan(data, tmp_path):
    for prune in ("random", "none"):
        with pytest.raises(ValueError, match=f"--abs-ill/--abs-red only apply to --prune scan .*--prune {prune}"):
            _config(data, tmp_path, prune=prune, abs_ill=3.0).validate()
    with pytest.raises(ValueError, match="--abs-ill must be finite, got nan"):
        _config(data, tmp_path, abs_ill=float("nan")).validate()


def test_progress_bars_only_on_a_terminal_and_one_line_per_epoch_otherwise(finished):
    out, err = (finished / "printed.out").read_text(), (finished / "printed.err").read_text()
    assert "clip epoch 0 [" not in err and "it/s" not in err  # no bar drawn
    lines = [line for line in out.splitlines() if line.startswith("clip epoch")]
    assert [line.split(":")[0] for line in lines] == ["clip epoch 0", "clip epoch 1"]


def _parse(argv):
    from scan_fast.train.cli import add_train_parsers, config_from_args

    parser = argparse.ArgumentParser()
    add_train_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return config_from_args(args, args.config_cls)


@pytest.mark.parametrize("text, field, value", [
    ("lr: 5e-4", "lr", 5e-4),          # PyYAML reads this as a string (YAML 1.1 wants 5.0e-4)
    ("lr: 1", "lr", 1.0),
    ("abs-ill: 2.5e+0", "abs_ill", 2.5),
    ("augment: true", "augment", True),
    ("grad_clip_norm: null", "grad_clip_norm", None),
])
def test_yaml_config_values_take_the_flag_type(tmp_path, text, field, value):
    path = tmp_path / "run.yaml"
    path.write_text(f"{text}\n")
    cfg = _parse(["train", "clip", "--config", str(path), "--train-data", "x.beton"])
    assert getattr(cfg, field) == value and type(getattr(cfg, field)) is type(value)


@pytest.mark.parametrize("text, match", [
    ("lr: true", "lr must be float, got True"),
    ("epochs: true", "epochs must be int, got True"),
    ("lr: fast", "lr must be float, got 'fast'"),
    ("augment: 1", "augment must be bool, got 1"),
    ("lr: null", "lr must be float, got None"),
])
def test_yaml_config_values_of_the_wrong_type_are_named(tmp_path, text, match):
    path = tmp_path / "run.yaml"
    path.write_text(f"{text}\n")
    with pytest.raises(TypeError, match=f"--config {path}: {match}"):
        _parse(["train", "clip", "--config", str(path), "--train-data", "x.beton"])


@pytest.mark.parametrize("argv", [["eval", "{missing}", "--val-data", "{missing}"],
                                  ["coreset", "export", "{missing}", "--out", "{out}"]])
def test_eval_and_coreset_errors_do_not_speak_of_resume(tmp_path, capsys, argv):
    from scan_fast.cli import main

    fill = {"missing": str(tmp_path / "nothing.pt"), "out": str(tmp_path / "ids.txt")}
    assert main([a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err
    assert f"error: no checkpoint at {tmp_path / 'nothing.pt'}" in err and "--resume" not in err


def test_help_lists_the_run_safety_flags(capsys):
    from scan_fast.cli import main

    with pytest.raises(SystemExit):
        main(["train", "clip", "--help"])
    out = capsys.readouterr().out
    for flag in ("--overwrite", "--dist-timeout", "--resume"):
        assert flag in out
