"""The equal-compute baseline (--prune none-matched), the demo's clean and hard-caption data sets, and the
shapes ground truth found beside any spelling of a part folder."""
import csv
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scan_fast.schedule.budget import matched_epochs, matched_prune_counts


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 5000), batch=st.integers(1, 300), data=st.data())
def test_a_matched_budget_trains_exactly_the_steps_in_the_fewest_epochs(n, batch, data):
    if n < batch:
        with pytest.raises(ValueError, match="at least one batch"):
            matched_epochs(0, n, batch)
        return
    full = n // batch
    steps = data.draw(st.integers(0, 12 * full))
    epochs = matched_epochs(steps * batch, n, batch)
    assert epochs == max(1, -(-steps // full))  # the fewest that hold them
    assert epochs == 1 or (epochs - 1) * full < steps
    counts = matched_prune_counts(steps * batch, n, batch, epochs)
    assert sorted(counts) == list(range(epochs))
    per_epoch = [(n - counts[e]) // batch for e in range(epochs)]  # steps of an epoch (the last batch dropped)
    assert all(0 <= counts[e] <= n and counts[e] % batch == 0 for e in counts)
    assert sum(per_epoch) == steps
    assert max(per_epoch) - min(per_epoch) <= 1 and per_epoch == sorted(per_epoch, reverse=True)


def test_a_matched_budget_names_what_does_not_fit():
    with pytest.raises(ValueError, match="--epochs must be at least 3"):
        matched_prune_counts(5 * 64, 130, 64, 2)
    with pytest.raises(ValueError, match="not a whole number of batches of 64"):
        matched_prune_counts(100, 130, 64, 2)


def _epochs_csv(path, samples):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "phase", "pruned", "samples"])
        for e, s in enumerate(samples):
            writer.writerow([e, "x", 0, s])
    return str(path)


def test_none_matched_trains_the_source_runs_sample_steps_over_fewer_epochs(tmp_path):
    from scan_fast.train.config import PRUNE_MODES, ClipConfig
    from scan_fast.demo.main_job import MainJobConfig, _epochs_of

    source = _epochs_csv(tmp_path / "epochs.csv", [896] * 5 + [512])  # 39 steps of 128
    job = MainJobConfig(out=str(tmp_path), num_samples=1000, batch_size=128)
    assert _epochs_of(job, "none", None) == 10
    epochs = _epochs_of(job, "none-matched", source)
    assert epochs == 6  # 39 steps, 7 a full epoch
    cfg = ClipConfig(train_data="x", batch_size=128, epochs=epochs, prune="none-matched", prune_counts=source).validate()
    schedule = PRUNE_MODES["none-matched"].build(cfg, 1000, 0, 1)
    kept = []
    for e in range(epochs):
        kept.append(len(schedule.epoch_indices(e)))
        schedule.end_epoch(e, 1.0)
    assert sum(k // 128 for k in kept) == 39 and kept == [1000 - 128 * p for p in (0, 0, 0, 1, 1, 1)]


@pytest.mark.parametrize("kwargs, match", [
    (dict(prune="none-matched"), "--prune none-matched needs --prune-counts"),
    (dict(prune="none", prune_counts="x.csv"), "--prune-counts only applies to --prune"),
])
def test_none_matched_flags(kwargs, match):
    from scan_fast.train.config import ClipConfig

    with pytest.raises(ValueError, match=match):
        ClipConfig(train_data="x", **kwargs).validate()
    ClipConfig(train_data="x", prune="random", prune_counts="x.csv").validate()  # random still takes it


def test_the_demo_table_pairs_every_strategy_with_none_matched():
    from scan_fast.demo.main_job import format_table

    rows = [dict(strategy=s, seed=seed, sample_steps=10, eval=e + seed / 100)
            for s, e in (("scan-epoch", 0.5), ("none", 0.4), ("none-matched", 0.45)) for seed in (0, 1)]
    lines = format_table(rows).splitlines()
    assert "vs none-matched, paired (points)" in lines[0]
    assert lines[2].split("|")[10:12] == [" +5.0 ± 0.0 ", " +5.0 "]  # scan-epoch: +5 on each seed
    assert "none-matched" not in format_table([r for r in rows if r["strategy"] != "none-matched"])


def test_near_miss_captions_differ_in_one_word_and_plain_data_is_unchanged():
    from scan_fast.data.embedded import SHAPES_TEMPLATE, VARIED_TEMPLATES, ShapesGenerator

    plain = ShapesGenerator(600, mismatch_fraction=0.2, seed=3)
    hard = ShapesGenerator(600, mismatch_fraction=0.2, seed=3, captions="varied")
    for key in ("shape", "colour", "position", "size", "mismatched", "duplicate_of"):
        np.testing.assert_array_equal(getattr(plain, key), getattr(hard, key))  # the same pairs, other captions
    np.testing.assert_array_equal(plain.render(0, 64), hard.render(0, 64))
    assert all(plain.caption(i).startswith("a ") and plain.template[i] == 0 for i in range(50))
    assert VARIED_TEMPLATES[0] == SHAPES_TEMPLATE
    assert len(set(hard.template.tolist())) == len(VARIED_TEMPLATES)
    bad = np.flatnonzero(hard.mismatched)
    wrong = (hard.caption_shape[bad] != hard.shape[bad]).astype(int) + (hard.caption_colour[bad] != hard.colour[bad])
    assert (wrong == 1).all() and (hard.caption_position[bad] == hard.position[bad]).all()
    assert 0.3 < (hard.caption_shape[bad] != hard.shape[bad]).mean() < 0.7
    good = np.flatnonzero(~hard.mismatched)
    assert (hard.caption_shape[good] == hard.shape[good]).all() and (hard.caption_colour[good] == hard.colour[good]).all()


def test_the_clean_and_hard_sets_are_written_with_their_noise(tmp_path):
    from scan_fast.data.embedded import load_shapes_truth, read_shapes_meta
    from scan_fast.demo.data_sets import build_data

    clean = build_data(str(tmp_path), 64, 16, progress=False, data="shapes-clean")
    hard = build_data(str(tmp_path), 64, 16, progress=False, data="shapes-hard")
    assert clean["test"] == hard["test"] and clean["train"] != hard["train"]
    assert not load_shapes_truth(clean["train"])["mismatched"].any()
    assert (load_shapes_truth(clean["train"])["duplicate_of"] >= 0).any()  # duplicates kept
    assert load_shapes_truth(hard["train"])["mismatched"].any()
    assert read_shapes_meta(hard["train"])["captions"] == "varied"
    assert "captions" not in read_shapes_meta(clean["train"])


def test_the_clean_colour_digits_keep_faint_pairs(tmp_path):
    from scan_fast.data.embedded import load_shapes_truth
    from scan_fast.demo.data_sets import build_data

    paths = build_data(str(tmp_path), 64, 16, progress=False, data="colour-digits-clean")
    truth = load_shapes_truth(paths["train"])
    assert not truth["mismatched"].any() and truth["faint"].any()
    assert json.loads(open(paths["train"][: -len(".beton")] + ".meta.json").read())["mismatch_fraction"] == 0.0


def test_mismatch_truth_is_found_beside_a_part_folder_named_with_a_trailing_slash(tmp_path):
    from scan_fast.data import write_shapes
    from scan_fast.train.clip import mismatch_truth

    folder = str(tmp_path / "shapes_train")
    write_shapes(folder, num_samples=40, mismatch_fraction=0.3, samples_per_part=10, progress=False)
    expected = mismatch_truth(folder)
    assert expected is not None and expected.any()
    np.testing.assert_array_equal(mismatch_truth(folder + "/"), expected)
    assert mismatch_truth(str(tmp_path / "elsewhere")) is None
    assert os.path.isfile(folder + ".truth.npz")
