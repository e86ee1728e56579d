"""SeTa (--prune seta): its selection against a small numpy oracle, keyed randomness and resume."""
import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scan_fast.schedule.seta import SeTa, kmeans_1d, seta_keep_reference, seta_window


def _roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _epoch(schedule, epoch, losses, batch=50, device_path=True):
    kept = schedule.epoch_indices(epoch)
    for start in range(0, len(kept), batch):
        ids = kept[start:start + batch]
        if device_path:
            schedule.observe_batch(torch.from_numpy(ids), torch.from_numpy(losses[ids]),
                                   torch.from_numpy(losses[ids]))
        else:
            schedule.observe(ids, losses[ids], losses[ids])
    schedule.end_epoch(epoch, 1.0)
    return kept


def test_window_slides_easy_to_hard_and_wraps_as_the_public_code():
    # 5 clusters, window 0.6: 3 clusters, start = epoch mod 3; epoch 0 keeps all
    assert [seta_window(e, 5, 0.6) for e in range(5)] == [(0, 5), (1, 3), (2, 3), (0, 3), (1, 3)]
    assert seta_window(4, 10, 0.5) == (4 % 6, 5)
    assert seta_window(3, 4, 0.625) == (3 % 3, 2)  # Python's round: round(2.5) = 2


def test_kmeans_1d_finds_separated_groups_in_order():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(c, 0.1, 100) for c in (5.0, 1.0, 3.0)])
    labels = kmeans_1d(values, 3)
    np.testing.assert_array_equal(labels, np.repeat([2, 0, 1], 100))
    np.testing.assert_array_equal(kmeans_1d(torch.from_numpy(values), 3).numpy(), labels)


def _oracle_kept(scores, epoch, **knobs):
    """The public code's steps written out plainly: random keep, k-means, window by centre rank."""
    return seta_keep_reference(scores, epoch, **knobs)


@settings(max_examples=10, deadline=None)
@given(n=st.integers(60, 600), seed=st.integers(0, 1000), groups=st.integers(2, 8),
       window=st.sampled_from([0.3, 0.5, 0.6, 0.9]), ratio=st.sampled_from([0.0, 0.1, 0.3]))
def test_selection_equals_the_numpy_oracle(n, seed, groups, window, ratio):
    if round(groups * window) < 1:
        return
    losses = np.random.default_rng(seed).gamma(2.0, 1.0, n).astype(np.float32)
    knobs = dict(num_epochs=8, ratio=ratio, groups=groups, window=window, delta=0.875, seed=seed)
    s = SeTa(n, 8, ratio=ratio, groups=groups, window=window, delta=0.875, seed=seed)
    scores = np.full(n, np.nan)
    for epoch in range(8):
        kept = _epoch(s, epoch, losses * (1 + 0.1 * epoch), device_path=epoch % 2 == 0)
        np.testing.assert_array_equal(kept, np.flatnonzero(_oracle_kept(scores, epoch, **knobs)))
        scores[kept] = (losses[kept] * np.float32(1 + 0.1 * epoch)).astype(np.float16)  # stored as float16


def test_windows_prune_whole_loss_clusters_and_anneal_to_the_random_keep():
    n = 900
    losses = np.repeat(np.array([0.5, 2.0, 4.0], np.float32), 300)
    s = SeTa(n, 8, ratio=0.0, groups=3, window=0.34, delta=0.75, seed=0)  # one cluster of three
    kept = [_epoch(s, e, losses) for e in range(8)]
    assert len(kept[0]) == n
    for epoch in range(1, 6):
        levels = np.unique(losses[kept[epoch]])
        assert len(levels) == 1 and levels[0] == np.sort(np.unique(losses))[epoch % 3]
    assert len(kept[6]) == len(kept[7]) == n  # annealing with ratio 0: everything


def test_random_keep_is_keyed_and_exact():
    n = 1000
    a, b = SeTa(n, 10, ratio=0.3, seed=7), SeTa(n, 10, ratio=0.3, seed=7)
    ka, kb = a.epoch_indices(0), b.epoch_indices(0)
    np.testing.assert_array_equal(ka, kb)
    assert len(ka) == 700
    c = SeTa(n, 10, ratio=0.3, seed=8)
    assert not np.array_equal(c.epoch_indices(0), ka)


def test_state_roundtrip_resumes_identically_also_inside_an_epoch():
    n = 500
    losses = np.random.default_rng(1).gamma(2.0, 1.0, n).astype(np.float32)
    a, b = SeTa(n, 10, ratio=0.1, seed=3), SeTa(n, 10, ratio=0.1, seed=3)
    for epoch in range(3):
        _epoch(a, epoch, losses)
    kept = a.epoch_indices(3)
    a.observe(kept[:40], losses[kept[:40]], losses[kept[:40]])
    b.load_state_dict(_roundtrip(a.state_dict()))
    np.testing.assert_array_equal(b.epoch_indices(3), kept)
    for s in (a, b):
        s.observe(kept[40:], losses[kept[40:]], losses[kept[40:]])
        s.end_epoch(3, 1.0)
    for epoch in range(4, 10):
        np.testing.assert_array_equal(_epoch(a, epoch, losses), _epoch(b, epoch, losses))
    with pytest.raises(ValueError, match="groups"):
        SeTa(n, 10, ratio=0.1, groups=4, seed=3).load_state_dict(_roundtrip(a.state_dict()))


@pytest.mark.parametrize("chunk", [64, 1 << 22])
def test_chunked_selection_equals_the_oracle_with_float16_scores(chunk, monkeypatch):
    """Scores are float16 (2 bytes a sample); the keep is a radix select and the k-means runs on the
    scores' histogram, a chunk of ids at a time: still exactly the oracle's ids."""
    from scan_fast.schedule import base

    monkeypatch.setattr(base, "PLAN_CHUNK", chunk)
    n = 700
    losses = np.random.default_rng(2).gamma(2.0, 1.0, n).astype(np.float32)
    losses[3] = 1e6  # beyond float16: stored as 65504
    knobs = dict(num_epochs=8, ratio=0.3, groups=4, window=0.5, delta=0.875, seed=11)
    s = SeTa(n, 8, ratio=0.3, groups=4, window=0.5, delta=0.875, seed=11)
    assert s.scores.dtype == torch.float16
    scores = np.full(n, np.nan)
    for epoch in range(8):
        kept = _epoch(s, epoch, losses, device_path=epoch % 2 == 0)
        np.testing.assert_array_equal(kept, np.flatnonzero(_oracle_kept(scores, epoch, **knobs)))
        scores[kept] = np.minimum(losses[kept], 65504).astype(np.float16)


def test_hash_rank_select_is_the_sorted_hash():
    from scan_fast.keyed_hash import SIGN_BIT, counter_hashes
    from scan_fast.schedule.seta import _hash_rank_select

    n, key = 1000, 123456789
    ordered = torch.sort(counter_hashes(key, torch.arange(n)) ^ SIGN_BIT).values
    for rank in (1, 2, 500, 999, 1000):
        assert _hash_rank_select(key, n, rank, "cpu") ^ SIGN_BIT == int(ordered[rank - 1])
