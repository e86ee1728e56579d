import io
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scan_fast.schedule import ScanReference
from scan_fast.schedule.infobatch import InfoBatch
from scan_fast.schedule.no_pruning import NoPruning
from scan_fast.schedule.random_pruning import RandomPruning
from scan_fast.schedule.static_coreset import StaticCoreset


def _roundtrip(state):
    """What a checkpoint does: torch.save, then torch.load(weights_only=True)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _sorted_unique_in_range(ids, n):
    return ids.dtype == np.int64 and np.all(np.diff(ids) > 0) and (ids.size == 0 or (ids[0] >= 0 and ids[-1] < n))


def _run_epoch(schedule, epoch, losses, batches=3):
    """One epoch as a trainer drives it; returns the kept ids."""
    kept = schedule.epoch_indices(epoch)
    for chunk in np.array_split(kept, batches):
        schedule.observe(chunk, losses[chunk], losses[chunk])
    schedule.end_epoch(epoch, float(losses[kept].mean()))
    return kept


def test_no_pruning_serves_everything():
    s = NoPruning(10)
    for epoch in range(3):
        np.testing.assert_array_equal(_run_epoch(s, epoch, np.ones(10)), np.arange(10))
    assert s.stats().sample_steps_saved == 0


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 400), data=st.data())
def test_random_prunes_exactly_the_given_counts(n, data):
    counts = data.draw(st.dictionaries(st.integers(0, 7), st.integers(0, n - 1), max_size=5))
    s = RandomPruning(n, prune_counts=counts, seed=data.draw(st.integers(0, 2**31)))
    for epoch in range(8):
        kept = s.epoch_indices(epoch)
        assert _sorted_unique_in_range(kept, n)
        assert kept.size == n - counts.get(epoch, 0)
        np.testing.assert_array_equal(kept, s.epoch_indices(epoch))  # FFCV asks twice
        s.end_epoch(epoch, 1.0)
    assert s.stats().sample_steps_saved == sum(v for k, v in counts.items() if k < 8)


def test_random_pruning_is_uniform():
    n, count, epochs = 50, 20, 1500
    s = RandomPruning(n, prune_counts={e: count for e in range(epochs)}, seed=3)
    hits = np.zeros(n)
    for e in range(epochs):
        hits[s.epoch_indices(e)] += 1
        s.end_epoch(e, 1.0)
    expected = epochs * (n - count) / n
    assert np.abs(hits - expected).max() < 5 * math.sqrt(epochs * 0.6 * 0.4)


def _scan_schedule_oracle(epoch_losses, batch_sizes, t_cos=3, threshold=0.3, rho=(0.35, 0.35)):
    """SCAN's prune count per epoch, written out step by step from docs/scan-method.md."""
    counts, prev, start, candidates = [], math.inf, None, 0
    for epoch, loss in enumerate(epoch_losses):
        step = None if start is None else (epoch - start) % (t_cos + 1)
        if not step:
            counts.append(0)
        else:
            counts.append(math.floor(0.5 * (1 + math.cos(math.pi * (t_cos - step) / t_cos)) * candidates))
        if step == 0:
            candidates = sum(int(b * rho[0]) + int(b * rho[1]) for b in batch_sizes)
        if start is None:
            if (prev - loss) / prev < threshold:
                start = epoch + 1
            else:
                prev = loss
    return counts


_LOSSES = [8.0, 4.0, 2.0, 1.8, 1.7, 1.6, 1.5, 1.4, 1.3, 1.2, 1.1, 1.0]


@pytest.mark.parametrize("batch_sizes", [[64] * 4, [41, 41, 18]])
def test_random_follows_scan_schedule(batch_sizes):
    n = sum(batch_sizes)
    s = RandomPruning(n, seed=1)
    got = []
    for epoch, loss in enumerate(_LOSSES):
        got.append(n - s.epoch_indices(epoch).size)
        for ids in np.split(np.arange(n), np.cumsum(batch_sizes)[:-1]):
            s.observe(ids, np.random.rand(len(ids)), np.random.rand(len(ids)))
        s.end_epoch(epoch, loss)
    assert got == _scan_schedule_oracle(_LOSSES, batch_sizes)
    assert sum(got) > 0


def test_random_matches_scan_reference_counts():
    """Same epoch losses and batches: RandomPruning prunes what ScanReference prunes, epoch by epoch."""
    n, b = 256, 64
    scan, rand = ScanReference(n, seed=0), RandomPruning(n, seed=0)
    rng = np.random.default_rng(0)
    for epoch, loss in enumerate(_LOSSES):
        kept_scan, kept_rand = scan.epoch_indices(epoch), rand.epoch_indices(epoch)
        assert kept_scan.size == kept_rand.size
        for ids in np.split(np.arange(n), n // b):
            la = rng.random(b)  # both directions agree: ILL and RED never overlap
            for s in (scan, rand):
                s.observe(ids, la, la)
        scan.end_epoch(epoch, loss)
        rand.end_epoch(epoch, loss)
    assert [r.pruned for r in scan.stats().records] == [r.pruned for r in rand.stats().records]


def test_random_state_roundtrip_resumes_identically():
    n = 200
    losses = np.linspace(1, 2, n)
    a, b = RandomPruning(n, seed=5), RandomPruning(n, seed=5)
    for epoch in range(3):
        _run_epoch(a, epoch, losses * (3 - epoch))
    b.load_state_dict(_roundtrip(a.state_dict()))
    for epoch in range(3, 10):
        np.testing.assert_array_equal(_run_epoch(a, epoch, losses), _run_epoch(b, epoch, losses))
    assert a.stats().sample_steps_saved > 0


def test_infobatch_prunes_below_mean_at_the_ratio_and_rescales():
    n, ratio = 4000, 0.5
    losses = np.random.default_rng(0).exponential(size=n)
    below = losses < losses.mean()
    s = InfoBatch(n, num_epochs=8, prune_ratio=ratio, delta=0.75)
    for epoch in range(8):
        kept = s.epoch_indices(epoch)
        pruned = np.setdiff1d(np.arange(n), kept)
        weights = s.sample_weights(kept)
        if epoch == 0 or epoch >= 6:  # nothing observed yet / int(0.75 * 8) = 6 on: full data
            assert kept.size == n and np.all(weights == 1.0)
        else:
            assert below[pruned].all()  # only below-mean samples are pruned
            assert abs(pruned.size / below.sum() - ratio) < 0.05
            np.testing.assert_array_equal(weights == 2.0, below[kept])
            np.testing.assert_array_equal(weights[~below[kept]], 1.0)
        for chunk in np.array_split(kept, 3):
            s.observe(chunk, losses[chunk], losses[chunk])
        s.end_epoch(epoch, 1.0)


def test_infobatch_coins_are_keyed_by_seed_epoch_and_id():
    """The soft-pruning coin of id i is u(seed, epoch, i) < ratio, from the keyed hash in plain Python ints."""
    from scan_fast.keyed_hash import INFOBATCH_PRUNE, GOLDEN, MASK64, mix64_int, stream_key
    from scan_fast.schedule.infobatch import infobatch_coins

    n, ratio, seed, epoch = 500, 0.3, 7, 4
    key = stream_key(seed, epoch, INFOBATCH_PRUNE)
    expected = [mix64_int((key + i * GOLDEN) & MASK64) < int(ratio * 2**64) for i in range(n)]
    np.testing.assert_array_equal(infobatch_coins(n, ratio, seed, epoch), expected)
    np.testing.assert_array_equal(infobatch_coins(n, ratio, seed, epoch, chunk=7), expected)  # chunks agree
    # an id's coin does not depend on how many ids there are (a rank can draw its own ids)
    np.testing.assert_array_equal(infobatch_coins(200, ratio, seed, epoch), expected[:200])
    assert not np.array_equal(infobatch_coins(n, ratio, seed, epoch + 1), expected)


def test_infobatch_plan_is_fixed_within_an_epoch_and_resumes():
    n = 300
    losses = np.random.default_rng(1).random(n)
    a, b = InfoBatch(n, num_epochs=10, seed=2), InfoBatch(n, num_epochs=10, seed=2)
    for epoch in range(3):
        _run_epoch(a, epoch, losses)
    b.load_state_dict(_roundtrip(a.state_dict()))
    first = a.epoch_indices(3)
    assert first.size < n
    a.observe(np.arange(n), np.zeros(n), np.zeros(n))  # scores change mid-epoch...
    np.testing.assert_array_equal(first, a.epoch_indices(3))  # ...the epoch's ids do not
    np.testing.assert_array_equal(first, b.epoch_indices(3))
    mid = InfoBatch(n, num_epochs=10, seed=2)
    mid.load_state_dict(_roundtrip(b.state_dict()))  # saved inside epoch 3
    np.testing.assert_array_equal(first, mid.epoch_indices(3))
    np.testing.assert_array_equal(b.sample_weights(first), mid.sample_weights(first))


def test_static_coreset_and_its_files(tmp_path):
    s = StaticCoreset(10, [7, 1, 3])
    np.testing.assert_array_equal(_run_epoch(s, 0, np.ones(10)), [1, 3, 7])
    assert s.stats().records[0].pruned == 7
    path = tmp_path / "ids.txt"
    path.write_text("# coreset\n4\n2\n\n9\n")
    np.testing.assert_array_equal(StaticCoreset.from_file(path, 10).epoch_indices(0), [2, 4, 9])
    np.save(tmp_path / "ids.npy", np.array([0, 5]))
    np.testing.assert_array_equal(StaticCoreset.from_file(tmp_path / "ids.npy", 10).coreset(), [0, 5])
    with pytest.raises(ValueError, match="different coreset"):
        StaticCoreset(10, [1, 2]).load_state_dict(_roundtrip(s.state_dict()))


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: StaticCoreset(10, [1, 10]), ValueError, r"keep_ids\[1\] = 10 is outside"),
        (lambda: StaticCoreset(10, [1, 1]), ValueError, "sample id 1 more than once"),
        (lambda: StaticCoreset(10, []), ValueError, "non-empty"),
        (lambda: StaticCoreset(10, [0.5]), TypeError, "keep_ids must be integers"),
        (lambda: RandomPruning(10, prune_counts={2: 11}), ValueError, r"prune_counts\[2\] = 11"),
        (lambda: RandomPruning(10, mode="all"), ValueError, "mode must be one of"),
        (lambda: InfoBatch(10, num_epochs=5, prune_ratio=1.0), ValueError, "prune_ratio"),
        (lambda: NoPruning(0), ValueError, "num_samples must be >= 1, got 0"),
    ],
)
def test_bad_arguments_are_named(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_coreset_file_names_the_line(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("1\n2\nthree\n")
    with pytest.raises(ValueError, match=r"ids.txt, line 3: .*'three'"):
        StaticCoreset.from_file(path, 10)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        StaticCoreset.from_file(tmp_path / "missing.txt", 10)


def test_state_of_another_strategy_is_refused():
    with pytest.raises(ValueError, match="InfoBatch"):
        RandomPruning(10).load_state_dict(_roundtrip(InfoBatch(10, num_epochs=2).state_dict()))


@pytest.mark.parametrize("saved, loaded, match", [
    (lambda: InfoBatch(10, num_epochs=4, prune_ratio=0.5), lambda: InfoBatch(10, num_epochs=4, prune_ratio=0.3),
     r"prune_ratio=0.5; this schedule has prune_ratio=0.3"),
    (lambda: InfoBatch(10, num_epochs=4, delta=0.5), lambda: InfoBatch(10, num_epochs=4), r"delta=0.5"),
    (lambda: InfoBatch(10, num_epochs=4, seed=1), lambda: InfoBatch(10, num_epochs=4), r"seed=1"),
    (lambda: InfoBatch(10, num_epochs=4), lambda: InfoBatch(10, num_epochs=6), r"num_epochs=4"),
    (lambda: RandomPruning(10, rho_ill=0.2), lambda: RandomPruning(10), r"rho_ill=0.2"),
    (lambda: RandomPruning(10, t_cos=2, mode="redundant"), lambda: RandomPruning(10),
     r"t_cos=2, mode='redundant'"),
    (lambda: RandomPruning(10, prune_counts={1: 3}), lambda: RandomPruning(10, prune_counts={1: 4}),
     r"prune_counts=\[\[1, 3\]\]"),
])
def test_state_saved_with_another_configuration_is_refused_naming_the_knobs(saved, loaded, match):
    target = loaded()
    before = target.state_dict()
    with pytest.raises(ValueError, match=match):
        target.load_state_dict(_roundtrip(saved().state_dict()))
    assert str(target.state_dict()) == str(before)  # left unchanged


def test_observe_rejects_out_of_range_ids():
    s = InfoBatch(5, num_epochs=3)
    s.epoch_indices(0)
    with pytest.raises(ValueError, match="7"):
        s.observe(np.array([1, 7]), np.zeros(2), np.zeros(2))


@pytest.mark.parametrize("make, cycle", [(lambda n: NoPruning(n), False), (lambda n: RandomPruning(n, seed=1), True),
                                         (lambda n: InfoBatch(n, num_epochs=4), False),
                                         (lambda n: StaticCoreset(n, [1, 2]), False)])
def test_epochs_begin_explicitly_and_readers_start_nothing(make, cycle):
    s = make(10)
    with pytest.raises(ValueError, match=r"kept_count\(0\) before begin_epoch\(0\)"):
        s.kept_count(0)
    if cycle:
        assert s.phase_name(0) == "warmup" and not s._in_epoch  # SCAN's cycle: known without beginning
    else:
        with pytest.raises(ValueError, match=r"before begin_epoch\(0\)"):
            s.phase_name(0)  # the phase is read from the begun epoch's kept set
    s.begin_epoch(0)
    s.begin_epoch(0)  # repeating it for the epoch in progress does nothing
    kept = s.kept_count(0)
    assert kept == len(s.epoch_indices(0)) and s.phase_name(0) in ("full", "pruning", "warmup")
    with pytest.raises(ValueError, match="out of order"):
        s.begin_epoch(1)  # epoch 0 has not ended
    s.end_epoch(0, 1.0)
    with pytest.raises(ValueError, match=r"kept_count\(1\) before begin_epoch\(1\)"):
        s.kept_count(1)


@pytest.mark.parametrize("n, count", [(20000, 100), (20000, 5000), (37, 36), (9, 0)])  # numpy's two choice paths
def test_random_keeps_exactly_the_ids_of_the_published_draw_from_a_bitset(n, count):
    """The oracle is the draw every `random` number was made with: all ids but
    default_rng([seed, epoch]).choice(N, k, replace=False); the kept set is the complement of a bitset."""
    s = RandomPruning(n, prune_counts={2: count}, seed=5)
    for epoch in range(3):
        drawn = np.random.default_rng([5, epoch]).choice(n, count if epoch == 2 else 0, replace=False)
        expected = np.setdiff1d(np.arange(n), drawn)
        kept_set = s.epoch_kept_set(epoch)
        assert not kept_set.members  # a bitset of the pruned ids, no array of the kept ones
        np.testing.assert_array_equal(s.epoch_indices(epoch), expected)
        s.end_epoch(epoch, 1.0)


def _infobatch_reference(scores, prune_ratio, seed, epoch):
    """The oracle of an InfoBatch epoch plan from float16 scores (inf: never seen), in one O(N) pass."""
    from scan_fast.schedule.infobatch import infobatch_coins

    seen = np.isfinite(scores)
    if not seen.any():
        return np.arange(len(scores)), np.zeros(len(scores), bool)
    well_learned = seen & (scores.astype(np.float64) < scores[seen].astype(np.float64).mean())
    pruned = well_learned & infobatch_coins(len(scores), prune_ratio, seed, epoch)
    return np.flatnonzero(~pruned), well_learned & ~pruned


@pytest.mark.parametrize("chunk", [8, 64, 1 << 22])
def test_infobatch_plan_matches_its_oracle_from_float16_scores(chunk, monkeypatch):
    from scan_fast.schedule import base

    monkeypatch.setattr(base, "PLAN_CHUNK", chunk)
    n = 301
    rng = np.random.default_rng(4)
    s = InfoBatch(n, num_epochs=10, prune_ratio=0.4, seed=3)
    assert s.scores.dtype == np.float16 and s.scores.nbytes == 2 * n  # 2 bytes a sample
    s.epoch_indices(0)
    seen = rng.random(n) < 0.8
    losses = rng.exponential(size=n) * 3
    seen[0], losses[0] = True, 1e6  # beyond float16: stored as its largest value, not as "never seen"
    s.observe(np.flatnonzero(seen), losses[seen], losses[seen])
    s.end_epoch(0, 1.0)
    assert np.isfinite(s.scores[0])
    for epoch in (1, 2):
        kept, upweighted = _infobatch_reference(s.scores, 0.4, 3, epoch)
        np.testing.assert_array_equal(s.epoch_indices(epoch), kept)
        np.testing.assert_array_equal(s.sample_weights(np.arange(n)) > 1, upweighted[np.arange(n)])
        s.end_epoch(epoch, 1.0)
