"""The main job's table and its argument checks (the runs themselves are covered by test_train_clip)."""
import os

import numpy as np
import pytest

from scan_fast.demo.main_job import MainJobConfig, aggregate, format_table


def _row(strategy, seed, steps, acc, **extra):
    return {"strategy": strategy, "seed": seed, "sample_steps": steps, "pruned_fraction": 1 - steps / 100,
            "wall_seconds": steps / 10, "cpu_seconds": steps / 5, "eval": acc, **extra}


def test_aggregate_means_and_stds_over_seeds():
    rows = [_row("scan", 0, 70, 0.30, pruned_fraction_after_warmup=0.35, ill_precision=0.5, ill_recall=1.0),
            _row("scan", 1, 70, 0.40, pruned_fraction_after_warmup=0.35, ill_precision=0.7, ill_recall=0.9),
            _row("none", 0, 100, 0.36), _row("none", 1, 100, 0.38)]
    scan, none = aggregate(rows)
    assert scan["strategy"] == "scan" and scan["seeds"] == 2
    assert scan["eval"] == pytest.approx(0.35) and scan["eval_std"] == pytest.approx(0.05)
    assert scan["ill_precision"] == pytest.approx(0.6) and none["ill_precision"] is None
    # paired by seed: 0.30 - 0.36 and 0.40 - 0.38
    assert scan["eval_vs_none"] == pytest.approx(-0.02) and scan["eval_vs_none_std"] == pytest.approx(0.04)
    assert scan["eval_vs_none_worst"] == pytest.approx(-0.06)
    assert none["eval_vs_none"] is None and none["eval_vs_none_worst"] is None
    table = format_table(rows).splitlines()
    assert table[2].startswith("| scan | 2 | 70 ± 0 | 30.0% ± 0.0 / 35.0% ± 0.0 |")
    assert "| 35.0 ± 5.0 | -2.0 ± 4.0 | -6.0 | 60.0 ± 10.0 | 95.0 ± 5.0 |" in table[2]
    assert table[3].endswith("| 37.0 ± 1.0 | — | — | — | — |")
    better = format_table([_row("scan", 0, 70, 0.40), _row("none", 0, 100, 0.36)]).splitlines()[2]
    assert "| 40.0 | +4.0 | +4.0 |" in better  # a gain is signed like a loss


@pytest.mark.parametrize("kwargs, match", [
    (dict(strategies=("scan", "bogus")), "--strategies must be one of .* got .bogus."),
    (dict(strategies=("none", "random")), "random matches a SCAN run"),
    (dict(strategies=("scan-epoch", "none-matched"), matched_to="scan"), "none-matched matches a SCAN run's counts, "
                                                                         "so it needs scan too"),
    (dict(matched_to="none"), "--matched-to must be one of .* got .none."),
    (dict(num_samples=64, batch_size=128), "fewer than one batch"),
    (dict(seeds=()), "at least one seed"),
    (dict(epochs=0), "--epochs must be >= 1"),
])
def test_bad_main_job_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MainJobConfig(**kwargs)


def test_none_matched_takes_the_counts_of_the_matched_to_strategy():
    assert MainJobConfig().counts_source("none-matched") == "scan-epoch"
    job = MainJobConfig(strategies=("scan-epoch-or-none", "none-matched", "random", "scan"),
                        matched_to="scan-epoch-or-none")
    assert job.counts_source("none-matched") == "scan-epoch-or-none" and job.counts_source("random") == "scan"
    assert job.counts_source("scan-epoch-or-none") is None
    assert job.run_order() == ["scan-epoch-or-none", "scan", "none-matched", "random"]
    chain = MainJobConfig(strategies=("none-matched", "none", "random", "scan"), matched_to="random")
    assert chain.run_order() == ["scan", "random", "none-matched", "none"]  # each after the run it copies


def test_build_data_reuses_current_shapes_and_rewrites_stale_ones(tmp_path):
    import json
    import os

    from scan_fast.data.embedded import SHAPES
    from scan_fast.demo.main_job import build_data

    paths = build_data(str(tmp_path), num_samples=40, test_samples=16, progress=False)
    assert sorted(paths) == ["test", "train"]
    train, test = os.path.basename(paths["train"]), os.path.basename(paths["test"])[: -len(".beton")]
    assert sorted(os.listdir(tmp_path / "data")) == sorted(  # the data the job uses, nothing else
        [train] + [train + suffix for suffix in (".truth.json", ".truth.npz")]
        + [test + suffix for suffix in (".beton", ".beton.summary.json", ".beton.index.json", ".truth.json",
                                        ".truth.npz")])
    # the training set is a part folder of 4 parts: the main job reads data as a large set is read
    assert sorted(os.listdir(paths["train"])) == ["manifest.json"] + [
        f"part-{i:05d}.beton{suffix}" for i in range(4) for suffix in ("", ".index.json", ".summary.json")]
    meta_path = paths["train"] + ".truth.json"
    assert json.loads(open(meta_path).read())["shapes"] == list(SHAPES)
    manifest = os.path.join(paths["train"], "manifest.json")
    written = os.stat(manifest).st_mtime_ns
    build_data(str(tmp_path), num_samples=40, test_samples=16, progress=False)
    assert os.stat(manifest).st_mtime_ns == written  # same size, same generator: reused
    meta = json.loads(open(meta_path).read())
    meta["shapes"] = ["circle", "square", "triangle"]  # as written by an older generator
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    build_data(str(tmp_path), num_samples=40, test_samples=16, progress=False)
    assert json.loads(open(meta_path).read())["shapes"] == list(SHAPES)


def test_curves_average_seeds_and_the_plots_are_written(tmp_path):
    from scan_fast.demo.main_job import plot_comparison, strategy_curves
    from scan_fast.train.report import write_csv

    rows = []
    for strategy, kept in (("scan", 0.5), ("random", 0.5), ("none", 1.0)):
        for seed in (0, 1):
            folder = tmp_path / f"{strategy}{seed}"
            folder.mkdir()
            history = [{"epoch": e, "phase": "mutation", "kept_fraction": kept if e else 1.0, "samples": 100 + seed,
                        "loss": 3.0 - e, "seconds": 2.0, "eval": 0.1 * e + 0.1 * seed} for e in range(3)]
            write_csv(str(folder / "epochs.csv"), history)
            rows.append({"strategy": strategy, "seed": seed, "folder": str(folder)})
    curves = strategy_curves(rows)
    assert set(curves) == {"scan", "random", "none"}
    np.testing.assert_allclose(curves["scan"]["sample_steps"], [100.5, 201, 301.5])
    np.testing.assert_allclose(curves["scan"]["seconds"], [2, 4, 6])
    np.testing.assert_allclose(curves["none"]["accuracy"], [0.05, 0.15, 0.25])
    np.testing.assert_allclose(curves["random"]["kept_fraction"], [1.0, 0.5, 0.5])
    written = plot_comparison(curves, str(tmp_path))
    assert all((tmp_path / name).stat().st_size > 1000 for name in written)


@pytest.mark.slow  # the demo app on its second data set: make bench runs it (8 s of pytest on 2 cores)
def test_the_job_runs_on_colour_digits_whose_held_out_split_has_no_captions(tmp_path):
    """The held-out split of colour-digits is labelled only (no tokens): the job reads it as the evaluation does."""
    from scan_fast.data.schema import check_beton
    from scan_fast.demo.main_job import run_main_job

    job = MainJobConfig(out=str(tmp_path), data="colour-digits", strategies=("none",), epochs=1, num_samples=128,
                        test_samples=64, batch_size=64, progress=False, workers=1)
    (row,) = run_main_job(job)
    assert row["strategy"] == "none" and row["sample_steps"] == 128
    assert 0.0 <= row["eval"] <= 1.0
    test_set = os.path.join(str(tmp_path), "data", "colour_digits_test64.beton")
    with pytest.raises(ValueError, match="lacks field"):
        check_beton(test_set, ("image", "tokens", "id"))
    assert os.path.isfile(os.path.join(str(tmp_path), "report.md"))
