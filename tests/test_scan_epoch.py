"""ScanEpoch (--prune scan-epoch): the epoch-wide candidate rule against its numpy oracle, the host and
device paths, exact and elastic resume."""
import io

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from scan_fast.index import SampleSet
from scan_fast.schedule.scan_epoch import (EDGES, NUM_CODES, UNSEEN, ScanEpoch, epoch_candidates_reference,
                                           has_two_modes, loss_codes, otsu_cut, overlap_cut, plan,
                                           recent_candidates_reference, recent_codes, two_normals)


def _roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _losses(n, seed, bad=0.2):
    """Clean pairs around 1, a share `bad` of wrong ones around 6 (log-normal), both directions."""
    rng = np.random.default_rng(seed)
    wrong = rng.random(n) < bad
    centre = np.where(wrong, np.log(6.0), np.log(1.0))
    a = np.exp(centre + 0.35 * rng.standard_normal(n)).astype(np.float32)
    b = np.exp(centre + 0.35 * rng.standard_normal(n)).astype(np.float32)
    return a, b, wrong


def _to_preparation(schedule):
    """Two warm-up epochs whose loss barely drops: epoch 2 prepares."""
    for epoch, loss in ((0, 10.0), (1, 9.9)):
        schedule.epoch_indices(epoch)
        schedule.end_epoch(epoch, loss)
    assert schedule.is_preparation(2)


def _observe_in_batches(schedule, order, a, b, batch, device_path):
    for start in range(0, len(order), batch):
        ids = order[start:start + batch]
        if device_path:
            schedule.observe_batch(torch.from_numpy(ids), torch.from_numpy(a[ids]), torch.from_numpy(b[ids]))
        else:
            schedule.observe(ids, a[ids], b[ids])


def _prepare(schedule, order, a, b, batch, device_path):
    schedule.epoch_indices(2)
    _observe_in_batches(schedule, order, a, b, batch, device_path)


def test_codes_are_the_bins_of_the_float32_mean_and_torch_agrees():
    a, b, _ = _losses(5000, 0)
    codes = loss_codes(a, b)
    mean = (a + b) * np.float32(0.5)
    assert codes.max() < NUM_CODES
    lower = np.where(codes > 0, EDGES[np.maximum(codes.astype(int) - 1, 0)], -np.inf)
    upper = np.where(codes < NUM_CODES - 1, EDGES[np.minimum(codes.astype(int), NUM_CODES - 2)], np.inf)
    assert np.all((lower <= mean) & (mean < upper))
    torch_codes = torch.bucketize((torch.from_numpy(a) + torch.from_numpy(b)) * 0.5, torch.from_numpy(EDGES),
                                  right=True)
    np.testing.assert_array_equal(torch_codes.numpy(), codes)


def test_otsu_finds_the_valley_of_two_modes_and_is_its_brute_force():
    hist = np.zeros(NUM_CODES, np.int64)
    hist[40:60] = 50
    hist[150:160] = 20
    t = otsu_cut(hist)
    assert 60 <= t <= 150
    values = np.arange(NUM_CODES)
    best, arg = -1.0, None
    for cut in range(1, NUM_CODES):
        w0, w1 = hist[:cut].sum(), hist[cut:].sum()
        if w0 and w1:
            m0, m1 = (hist[:cut] * values[:cut]).sum() / w0, (hist[cut:] * values[cut:]).sum() / w1
            score = w0 * w1 * (m0 - m1) ** 2
            if score > best + 1e-9 * best:
                best, arg = score, cut
    assert t == arg
    assert otsu_cut(np.bincount([7] * 10, minlength=NUM_CODES)) == NUM_CODES  # one bin: nothing above


def test_rule_separates_wrong_pairs_where_the_batch_rank_cannot():
    """20% wrong pairs: the paper's per-batch rank takes 35% as ill-matched; the valley takes the wrong ones."""
    n = 8000
    a, b, wrong = _losses(n, 1)
    ill, red, p = epoch_candidates_reference(np.arange(n), a, b, rho_ill=0.35, rho_red=0.35, seed=0, epoch=2,
                                             batch=100)
    assert not p["paper_cycle"]
    precision, recall = wrong[ill].mean(), wrong[ill].sum() / wrong.sum()
    assert precision > 0.97 and recall > 0.97
    assert len(np.intersect1d(ill, red)) == 0
    assert abs(len(red) - int(0.35 * n)) <= 0.02 * n  # RED keeps its own budget; the partial bin is a coin per id
    assert not wrong[red].any()


def test_unimodal_losses_take_the_papers_per_batch_candidates():
    """One mode: no loss tells a wrong pair from a hard one, so each batch gives its int(B rho) extremes."""
    rng = np.random.default_rng(2)
    a = np.exp(0.3 * rng.standard_normal(4000)).astype(np.float32)
    ill, red, p = epoch_candidates_reference(np.arange(4000), a, a, rho_ill=0.2, rho_red=0.3, seed=0, epoch=2,
                                             batch=100)
    assert p["paper_cycle"] and p["ill"] is None and p["red"] is None
    assert len(ill) == 40 * 20 and len(red) == 40 * 30  # both directions agree: exactly k of each batch
    for start in range(0, 4000, 100):
        batch = np.arange(start, start + 100)
        top = batch[np.argsort(-a[batch], kind="stable")[:20]]
        np.testing.assert_array_equal(np.intersect1d(ill, batch), np.sort(top))


@settings(max_examples=12, deadline=None)
@given(n=st.integers(300, 1500), batch=st.sampled_from([32, 64, 100]), seed=st.integers(0, 2**31 - 1),
       bad=st.floats(0.0, 0.4), rho=st.sampled_from([(0.35, 0.35), (0.2, 0.3), (0.5, 0.1)]))
def test_schedule_equals_the_oracle_on_host_and_device_paths(n, batch, seed, bad, rho):
    a, b, _ = _losses(n, seed, bad)
    order = np.random.default_rng(seed).permutation(n).astype(np.int64)[: n - n % batch or n]
    results = []
    for device_path in (False, True):
        s = ScanEpoch(n, rho_ill=rho[0], rho_red=rho[1], seed=seed % 1000)
        _to_preparation(s)
        _prepare(s, order, a, b, batch, device_path)
        s.end_epoch(2, 1.0)
        results.append((s.candidates("ill_matched"), s.candidates("redundant")))
    ill, red, _ = epoch_candidates_reference(order, a[order], b[order], rho_ill=rho[0], rho_red=rho[1],
                                             seed=seed % 1000, epoch=2, batch=batch)
    for got_ill, got_red in results:
        np.testing.assert_array_equal(got_ill, ill)
        np.testing.assert_array_equal(got_red, red)


@pytest.mark.parametrize("bad", [0.2, 0.0])  # two modes: the epoch-wide cut; one: the per-batch candidates
def test_exact_resume_inside_a_preparation_epoch(bad):
    n, batch = 1200, 100
    a, b, _ = _losses(n, 3, bad)
    order = np.random.default_rng(3).permutation(n).astype(np.int64)
    full, resumed = ScanEpoch(n, seed=4), ScanEpoch(n, seed=4)
    _to_preparation(full)
    _prepare(full, order[:600], a, b, batch, device_path=True)
    resumed.load_state_dict(_roundtrip(full.state_dict()))
    for s in (full, resumed):
        for start in range(600, n, batch):
            ids = order[start:start + batch]
            s.observe_batch(torch.from_numpy(ids), torch.from_numpy(a[ids]), torch.from_numpy(b[ids]))
        s.end_epoch(2, 1.0)
    np.testing.assert_array_equal(full.candidates(), resumed.candidates())
    for epoch in (3, 4, 5):
        np.testing.assert_array_equal(full.epoch_indices(epoch), resumed.epoch_indices(epoch))
        full.end_epoch(epoch, 1.0)
        resumed.end_epoch(epoch, 1.0)
    assert len(full.epoch_indices(6)) == n  # the next cycle prepares on all samples


@pytest.mark.parametrize("world", [2, 3, 7])
def test_decisions_do_not_depend_on_the_world_size(world):
    """Every rank keeps the codes of its own block of ids and the same histogram; the union of the
    blocks' candidates is the one-rank result."""
    n, batch = 1000, 50
    a, b, _ = _losses(n, 5)
    order = np.random.default_rng(5).permutation(n).astype(np.int64)
    one = ScanEpoch(n, seed=1)
    ranks = [ScanEpoch(n, seed=1, rank=r, world_size=world) for r in range(world)]
    for s in [one, *ranks]:
        _to_preparation(s)
        _prepare(s, order, a, b, batch, device_path=True)  # every rank sees the gathered global batch
    whole = one.block_candidates(2)
    blocks = [s.block_candidates(2) for s in ranks]
    block = -(-n // world)
    for kind in (0, 1):  # ILL, RED
        union = SampleSet(n)
        for rank, found in enumerate(blocks):
            ids = found[kind].to_array()
            assert ((ids >= rank * block) & (ids < (rank + 1) * block)).all()  # a rank decides its own block only
            union |= found[kind]
        assert union == whole[kind] and len(union) > 0
    sizes = [s.state_dict()["codes"].shape[0] - 1 for s in ranks]
    assert max(sizes) == block and sum(sizes) == n  # one byte a sample, split over the ranks


def test_a_block_is_decided_the_same_in_chunks_of_any_size(monkeypatch):
    from scan_fast.schedule import scan_epoch

    n = 1000
    a, b, _ = _losses(n, 5)
    order = np.random.default_rng(5).permutation(n).astype(np.int64)
    found = {}
    for chunk in (1 << 22, 64, 7):
        monkeypatch.setattr(scan_epoch, "BLOCK_CHUNK", chunk)
        s = ScanEpoch(n, seed=1, rank=1, world_size=3)
        _to_preparation(s)
        _prepare(s, order, a, b, 50, device_path=True)
        found[chunk] = s.block_candidates(2)
    assert len(found[7][0]) > 0 and len(found[7][1]) > 0
    assert found[64] == found[1 << 22] and found[7] == found[1 << 22]


def test_epoch_end_state_resumes_on_any_world_size_and_mid_epoch_state_only_on_its_own():
    n = 400
    a, b, _ = _losses(n, 6)
    order = np.arange(n, dtype=np.int64)
    s = ScanEpoch(n, seed=2)
    _to_preparation(s)
    _prepare(s, order, a, b, 100, device_path=False)
    mid = _roundtrip(s.state_dict())
    with pytest.raises(ValueError, match="same number of ranks"):
        ScanEpoch(n, seed=2, rank=0, world_size=2).load_state_dict(mid)
    s.end_epoch(2, 1.0)
    other = ScanEpoch(n, seed=2, rank=1, world_size=2)
    other.load_state_dict(_roundtrip(s.state_dict()))
    np.testing.assert_array_equal(other.epoch_indices(3), s.epoch_indices(3))
    with pytest.raises(ValueError, match="not ScanEpoch"):
        from scan_fast.schedule import Scan
        ScanEpoch(n, seed=2).load_state_dict(Scan(n, seed=2).state_dict())


def test_plan_keeps_each_side_at_its_own_budget():
    hist = np.zeros(NUM_CODES, np.int64)
    hist[50:70] = 40  # 800 clean
    hist[160:165] = 40  # 200 wrong
    p = plan(hist, 1000, 0.35, 0.35)
    assert p["ill"][0] >= 70 and p["ill"][1] == -1  # the whole upper mode, no partial bin
    assert p["k_ill"] == 350 and p["k_red"] == 350  # the 150 ILL leaves free do not move to RED
    assert plan(hist, 1000, 0.35, 0.2)["k_red"] == 200


def test_modes_other_than_both_keep_the_paper_counts():
    n = 2000
    a, b, _ = _losses(n, 8)
    s = ScanEpoch(n, seed=0, mode="redundant")
    _to_preparation(s)
    _prepare(s, np.arange(n, dtype=np.int64), a, b, 100, device_path=True)
    s.end_epoch(2, 1.0)
    ill, red, _ = epoch_candidates_reference(np.arange(n), a, b, rho_ill=0.35, rho_red=0.35, seed=0, epoch=2,
                                             batch=100)
    np.testing.assert_array_equal(s.candidates("redundant"), red)
    np.testing.assert_array_equal(s.candidates(), red)
    assert abs(len(red) - 700) <= 0.02 * n


# ----------------------------------------------------------------------------- held-out ill-matched pairs


def _through_first_cycle(s, n, a, b, batch=100):
    """Warm-up, the first preparation (epoch 2) and its three mutation epochs; epoch 6 prepares again."""
    _to_preparation(s)
    _prepare(s, np.arange(n, dtype=np.int64), a, b, batch, device_path=True)
    s.end_epoch(2, 1.0)
    for epoch in (3, 4, 5):
        s.epoch_indices(epoch)
        s.end_epoch(epoch, 1.0)
    assert s.is_preparation(6)


def _weights_oracle(batch_ids, ill_ids):
    """0 for the held-out ids, B / (B - held) for the others (all 0 when the whole batch is held)."""
    held = np.isin(batch_ids, ill_ids)
    kept = len(batch_ids) - held.sum()
    return np.where(held, 0.0, len(batch_ids) / kept if kept else 0.0).astype(np.float32)


@pytest.mark.parametrize("mode", ["both", "ill_matched"])
def test_mutation_epochs_prune_every_ill_candidate_and_red_at_the_cosine_rate(mode):
    n = 3000
    a, b, _ = _losses(n, 9)
    s = ScanEpoch(n, seed=3, mode=mode)
    _to_preparation(s)
    _prepare(s, np.arange(n, dtype=np.int64), a, b, 100, device_path=True)
    s.end_epoch(2, 1.0)
    ill, red = s.candidates("ill_matched"), s.candidates("redundant")
    assert len(ill) > 0 and len(np.intersect1d(ill, red)) == 0
    for epoch, rate in ((3, 0.25), (4, 0.75), (5, 1.0)):
        pruned = np.setdiff1d(np.arange(n), s.epoch_indices(epoch))
        assert np.isin(ill, pruned).all()  # no ill-matched candidate trains in a mutation epoch
        red_pruned = np.intersect1d(pruned, red)
        assert len(red_pruned) == (int(rate * len(red)) if mode == "both" else 0)
        assert len(pruned) == len(ill) + len(red_pruned)  # nothing outside the candidates
        assert s.sample_weights(torch.arange(10)) is None  # mutation epochs weigh every kept sample 1
        s.end_epoch(epoch, 1.0)


def test_redundant_mode_is_the_papers_mutation_and_holds_nothing_out():
    n = 2000
    a, b, _ = _losses(n, 10)
    s = ScanEpoch(n, seed=0, mode="redundant")
    _through_first_cycle(s, n, a, b)
    s.epoch_indices(6)
    assert not s.holds_out() and s.sample_weights(torch.arange(n)) is None


@settings(max_examples=10, deadline=None)
@given(n=st.integers(400, 1500), seed=st.integers(0, 2**31 - 1), bad=st.floats(0.05, 0.25),
       batch=st.sampled_from([16, 50, 128]))
@example(n=420, seed=0, bad=0.0625, batch=16)  # 26 wrong pairs: no wrong-pair mode, nothing held out
def test_preparation_weights_equal_the_oracle_on_host_and_device(n, seed, bad, batch):
    """The next preparation scores the last ILL candidates but holds them out of the loss (wrong pairs
    within rho_ill: the variant's cycle); after a preparation without a wrong-pair mode (few wrong pairs in a
    small set) nothing is held out."""
    a, b, _ = _losses(n, seed, bad)
    s = ScanEpoch(n, seed=seed % 1000)
    _through_first_cycle(s, n, a, b)
    ill = s.candidates("ill_matched")
    held = not s.paper_cycle() and len(ill) > 0
    s.epoch_indices(6)
    assert s.holds_out() == held
    order = np.random.default_rng(seed).permutation(n).astype(np.int64)
    for start in range(0, n, batch):
        ids = order[start:start + batch]
        expected = _weights_oracle(ids, ill) if held else None
        on_device = s.sample_weights(torch.from_numpy(ids))
        on_host = s.sample_weights(ids)
        if expected is None:
            assert on_device is None and on_host is None
            continue
        np.testing.assert_allclose(on_device.numpy(), expected, rtol=1e-6)
        np.testing.assert_allclose(on_host, expected, rtol=1e-6)
        assert on_device.dtype == torch.float32 and on_device.device == torch.device("cpu")


def test_the_epoch_note_says_what_the_preparation_decided():
    """The log line of a preparation epoch: the wrong-pair mode's size and its lowest loss, or the paper's
    candidates; other epochs say nothing."""
    n = 2000
    a, b, _ = _losses(n, 11)
    s = ScanEpoch(n, seed=5)
    _through_first_cycle(s, n, a, b)
    ill = s.candidates("ill_matched")
    note = s.epoch_note(2)
    assert note.startswith(f"wrong-pair mode: {len(ill):,} of {n:,} (") and "at loss >= " in note
    assert float(note.rsplit(">= ", 1)[1]) <= np.sort((a + b) / 2)[-len(ill)]  # the mode starts at or below it
    assert s.epoch_note(3) == s.epoch_note(5) == ""
    clean_a, clean_b, _ = _losses(n, 11, bad=0.0)
    clean = ScanEpoch(n, seed=5)
    _through_first_cycle(clean, n, clean_a, clean_b)
    assert clean.epoch_note(2) == "no wrong-pair mode: the paper's per-batch candidates"


def test_an_ill_candidate_is_scored_again_and_can_leave_the_set():
    """Held-out pairs stay in the batches of the next preparation: a pair whose loss fell leaves ILL."""
    n = 2000
    a, b, wrong = _losses(n, 11)
    s = ScanEpoch(n, seed=5)
    _through_first_cycle(s, n, a, b)
    first = s.candidates("ill_matched")
    fixed = first[:25]  # these pairs' losses now look clean
    a2, b2 = a.copy(), b.copy()
    a2[fixed], b2[fixed] = 1.0, 1.0
    s.epoch_indices(6)
    for start in range(0, n, 100):
        ids = np.arange(start, start + 100, dtype=np.int64)
        s.observe_batch(torch.from_numpy(ids), torch.from_numpy(a2[ids]), torch.from_numpy(b2[ids]))
    s.end_epoch(6, 1.0)
    second = s.candidates("ill_matched")
    assert not np.isin(fixed, second).any()
    assert np.isin(np.setdiff1d(first, fixed), second).mean() > 0.95


def test_hold_out_resumes_exactly_inside_the_preparation_and_on_other_world_sizes():
    n, batch = 1200, 100
    a, b, _ = _losses(n, 12)
    full = ScanEpoch(n, seed=6)
    _through_first_cycle(full, n, a, b)
    full.epoch_indices(6)
    probe = torch.arange(n, dtype=torch.int64)
    expected = full.sample_weights(probe)
    # exact: saved inside the preparation epoch, on the same number of ranks
    resumed = ScanEpoch(n, seed=6)
    resumed.load_state_dict(_roundtrip(full.state_dict()))
    torch.testing.assert_close(resumed.sample_weights(probe), expected, rtol=0, atol=0)
    # elastic: saved at the end of the mutation epoch before, loaded by each rank of 3
    before = ScanEpoch(n, seed=6)
    _through_first_cycle(before, n, a, b)
    for rank in range(3):
        r = ScanEpoch(n, seed=6, rank=rank, world_size=3)
        r.load_state_dict(_roundtrip(before.state_dict()))
        r.epoch_indices(6)
        torch.testing.assert_close(r.sample_weights(probe), expected, rtol=0, atol=0)
    # and a state from an epoch's end holds nothing out until its preparation begins
    idle = ScanEpoch(n, seed=6)
    idle.load_state_dict(_roundtrip(before.state_dict()))
    assert not idle.holds_out()


# ----------------------------------------------------------------------------- no wrong-pair mode: the paper's cycle


def _binned(counts_per_mode, length=NUM_CODES):
    """A histogram of normal modes [(weight count, centre bin, sd in bins)], counts rounded to integers."""
    bins = np.arange(length)
    hist = np.zeros(length)
    for count, centre, sd in counts_per_mode:
        density = np.exp(-0.5 * ((bins - centre) / sd) ** 2)
        hist += count * density / density.sum()
    return np.rint(hist).astype(np.int64)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2000, 200000), centre=st.integers(60, 190), sd=st.floats(2.0, 15.0),
       skew=st.floats(1.0, 2.5), scale=st.integers(1, 5))
def test_a_single_hump_gets_the_papers_cycle_at_any_scale(n, centre, sd, skew, scale):
    """A single hump (a right tail up to 2.5x as wide as the left) has no valley: one mode, at any count."""
    from scan_fast.schedule.scan_epoch import has_two_modes

    bins = np.arange(NUM_CODES)
    width = np.where(bins < centre, sd, sd * skew)
    hist = np.rint(n * np.exp(-0.5 * ((bins - centre) / width) ** 2) / (sd * 2.5)).astype(np.int64)
    assert not has_two_modes(hist, otsu_cut(hist))
    assert plan(hist * scale, int((hist * scale).sum()), 0.35, 0.35)["paper_cycle"]
    assert overlap_cut(hist * scale, int((hist * scale).sum())) is None  # nor two normals that stand apart


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2000, 200000), share=st.floats(0.05, 0.3), centre=st.integers(60, 140),
       sd=st.floats(2.0, 8.0), gap=st.floats(7.0, 12.0), scale=st.integers(1, 5))
def test_a_separate_wrong_pair_mode_is_found_at_any_scale(n, share, centre, sd, gap, scale):
    """A second mode gap x sd above the first (clean sd, a tighter wrong-pair mode) is two modes."""
    hist = _binned([(n * (1 - share), centre, sd), (n * share, centre + gap * sd, sd * 0.6)])
    p = plan(hist * scale, int((hist * scale).sum()), 0.35, 0.35)
    assert not p["paper_cycle"]
    assert p == dict(plan(hist, int(hist.sum()), 0.35, 0.35), k_ill=p["k_ill"], k_red=p["k_red"],
                     ill=p["ill"], red=p["red"]) and p["cut"] == otsu_cut(hist)


def test_an_upper_mode_larger_than_rho_ill_is_not_taken_for_wrong_pairs():
    """Clean shapes: pairs whose caption has a twin in the batch sit at ln 2, a second mode of 20-40% of the
    epoch. More than rho_ill above the valley: the paper's cycle, with its budget."""
    hist = _binned([(6000, 80, 8.0), (4000, 122, 2.0)])
    p = plan(hist, int(hist.sum()), 0.35, 0.35)
    assert p["paper_cycle"] and p["ill"] is None and p["k_ill"] == int(0.35 * hist.sum())
    wider = plan(hist, int(hist.sum()), 0.45, 0.35)
    assert not wider["paper_cycle"] and int(hist[wider["ill"][0]:].sum()) <= wider["k_ill"]


def test_a_wrong_pair_mode_above_a_twin_caption_mode_is_found_once_the_data_has_shown_one():
    """Noisy shapes late in a long run: learned pairs low, twin captions at ln 2, wrong pairs far above. The
    first cut puts the twins with the wrong pairs (over rho_ill); after a preparation that found a wrong-pair
    mode the second look, above it, finds the wrong pairs alone; before one, nothing is taken (on clean data
    the twins alone split the same way)."""
    hist = _binned([(4700, 70, 10.0), (1700, 125, 3.0), (1600, 170, 3.0)])
    n = int(hist.sum())
    first = otsu_cut(hist)
    assert has_two_modes(hist, first) and int(hist[first:].sum()) > int(0.35 * n)  # over the budget at first
    assert plan(hist, n, 0.35, 0.35)["paper_cycle"]
    p = plan(hist, n, 0.35, 0.35, look_again=True)
    assert not p["paper_cycle"] and 135 < p["cut"] < 160
    assert abs(int(hist[p["cut"]:].sum()) - 1600) <= 10
    assert int(hist[:p["cut"]][:p["red"][0]].sum()) <= p["k_red"]  # RED from below the cut only


# up to four normal modes anywhere on the codes: the mixtures the plan's invariants are checked on (`_binned`)
MIXTURES = dict(weights=st.lists(st.integers(0, 4000), min_size=1, max_size=4),
                centres=st.lists(st.integers(20, 230), min_size=4, max_size=4),
                sds=st.lists(st.floats(1.0, 12.0), min_size=4, max_size=4))


@settings(max_examples=80, deadline=None)
@given(**MIXTURES, rho_ill=st.floats(0.05, 0.6), look_again=st.booleans())
def test_the_cut_fits_the_budget_and_a_first_look_that_fits_decides(weights, centres, sds, rho_ill, look_again):
    """On any mixture: a cut leaves at most k_ill above it; when the first look has two modes and fits, it is the
    cut (those runs are unchanged by the second look); when the first look has no valley, nothing is taken; the
    second look only ever adds a cut above the first."""
    hist = _binned(list(zip(weights, centres, sds)))
    n = int(hist.sum())
    if n == 0:
        return
    p = plan(hist, n, rho_ill, 0.35, look_again)
    once = plan(hist, n, rho_ill, 0.35)
    first = otsu_cut(hist)
    if not has_two_modes(hist, first):
        assert p["paper_cycle"]
    elif int(hist[first:].sum()) <= p["k_ill"]:
        assert p["cut"] == first
    if not once["paper_cycle"]:
        assert p == once
    if not p["paper_cycle"]:
        assert int(hist[p["cut"]:].sum()) <= p["k_ill"]
        assert p["cut"] >= first
    both = plan(hist, n, rho_ill, 0.35, look_again, overlap=True)  # the recent look's plan
    if not p["paper_cycle"]:
        assert both == p  # a valley decides first
    elif not both["paper_cycle"]:
        assert both["overlapping"] and both["cut"] == overlap_cut(hist, both["k_ill"])
        assert int(hist[both["cut"]:].sum()) <= both["k_ill"]


@settings(max_examples=80, deadline=None)
@given(n=st.integers(5000, 200000), share=st.floats(0.08, 0.3), sd=st.floats(4.0, 10.0), ratio=st.floats(0.6, 1.0),
       separation=st.floats(4.5, 7.0), centre=st.floats(50.0, 120.0), scale=st.sampled_from([1, 2, 4, 8]))
def test_two_overlapping_normals_are_split_where_the_upper_becomes_the_likelier(n, share, sd, ratio, separation,
                                                                               centre, scale):
    """Two normal modes whose Ashman separation is 4.5-7, with or without a valley between them: the fit finds the
    upper one's share, and the cut is the first code above the lower mean where the upper density is the larger
    (within a code), holding the upper mode's count (within 6%: the tails cross the cut). Scaling every count by a
    power of two changes nothing (exact in floating point)."""
    upper_sd = sd * ratio
    upper = centre + separation * np.hypot(sd, upper_sd) / np.sqrt(2.0)
    hist = _binned([(n * (1 - share), centre, sd), (n * share, upper, upper_sd)])
    codes = np.arange(NUM_CODES, dtype=np.float64)
    lower_density = (1 - share) * np.exp(-0.5 * ((codes - centre) / sd) ** 2) / sd
    upper_density = share * np.exp(-0.5 * ((codes - upper) / upper_sd) ** 2) / upper_sd
    expected = int(np.flatnonzero((upper_density >= lower_density) & (codes > centre))[0])
    cut = overlap_cut(hist, int(hist.sum()))
    assert abs(cut - expected) <= 1
    assert abs(int(hist[cut:].sum()) / (n * share) - 1) < 0.06
    weight, _, _ = two_normals(hist)
    assert abs(weight[1] - share) < 0.02
    assert overlap_cut(hist * scale, int((hist * scale).sum())) == cut
    assert overlap_cut(hist, int(hist[cut:].sum()) - 1) is None  # over the budget: not a wrong-pair mode


def test_two_normals_need_two_non_empty_bins():
    hist = np.zeros(NUM_CODES, np.int64)
    assert two_normals(hist) is None and overlap_cut(hist, 10) is None
    hist[100] = 500
    assert two_normals(hist) is None and overlap_cut(hist, 1000) is None
    hist[140] = 100  # two spikes: each a component of the smallest variance, far apart
    weight, mean, var = two_normals(hist)
    np.testing.assert_allclose(weight, [500 / 600, 100 / 600])
    np.testing.assert_allclose(mean, [100, 140])
    assert overlap_cut(hist, 100) == 121  # where the upper spike's density, a sixth of the lower's, overtakes it


def _three_mode_losses(n, seed):
    """Learned pairs (55%) near 0.016, twin captions (25%) near ln 2, wrong pairs (20%) near 22, log-normal."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(3, size=n, p=[0.55, 0.25, 0.2])
    centre = np.log(np.array([0.016, 0.69, 22.0]))[kind]
    spread = np.array([0.7, 0.1, 0.2])[kind]
    a = np.exp(centre + spread * rng.standard_normal(n)).astype(np.float32)
    b = np.exp(centre + spread * rng.standard_normal(n)).astype(np.float32)
    return a, b, kind == 2


@pytest.mark.parametrize("after_a_mode", [False, True])
def test_the_schedule_looks_again_only_after_a_preparation_with_a_wrong_pair_mode(after_a_mode):
    """Three modes in the preparation at epoch 6: after a first preparation with wrong pairs apart, ILL = the wrong
    pairs (the oracle with look_again); after a clean one, the paper's per-batch candidates."""
    n = 3000
    first_a, first_b, _ = _losses(n, 21, bad=0.2 if after_a_mode else 0.0)
    s = ScanEpoch(n, seed=4)
    _through_first_cycle(s, n, first_a, first_b)
    assert s.paper_cycle() is not after_a_mode and s.holds_out() is False
    a, b, wrong = _three_mode_losses(n, 22)
    s.epoch_indices(6)
    assert s.holds_out() is after_a_mode
    for start in range(0, n, 100):
        ids = np.arange(start, start + 100, dtype=np.int64)
        s.observe_batch(torch.from_numpy(ids), torch.from_numpy(a[ids]), torch.from_numpy(b[ids]))
    s.end_epoch(6, 1.0)
    ill, red, p = epoch_candidates_reference(np.arange(n), a, b, rho_ill=0.35, rho_red=0.35, seed=4, epoch=6,
                                             batch=100, look_again=after_a_mode)
    assert p["paper_cycle"] is not after_a_mode and s.paper_cycle() is not after_a_mode
    np.testing.assert_array_equal(s.candidates("ill_matched"), ill)
    np.testing.assert_array_equal(s.candidates("redundant"), red)
    if after_a_mode:
        assert np.array_equal(ill, np.flatnonzero(wrong))  # the wrong pairs, and only they


# ----------------------------------------------------------------------------- the floor of a wrong-pair mode


def test_a_mode_that_peaks_below_the_floor_is_not_taken_for_wrong_pairs():
    """Clean shapes late in a long CLIP run: learned pairs near 0.001, pairs whose caption has a copy in the batch
    at ln 2 (26% of the epoch, within rho_ill). Without a floor that mode is taken for wrong pairs; with CLIP's
    (ln 128 / 2 = 2.43) it is not, and the note says why. Wrong pairs near 6 are taken either way, the same cut."""
    from scan_fast.schedule.scan_epoch import decision_note, upper_peak, wrong_pair_floor

    floor = wrong_pair_floor(128)
    assert floor == pytest.approx(np.log(128) / 2)
    code = lambda loss: int(loss_codes(loss, loss))  # noqa: E731
    twins = _binned([(5900, code(0.001), 10.0), (2100, code(0.69), 2.0)])
    n = int(twins.sum())
    without = plan(twins, n, 0.35, 0.35)
    assert not without["paper_cycle"] and without["low_peak"] is None
    p = plan(twins, n, 0.35, 0.35, min_mode_loss=floor)
    assert p["paper_cycle"] and p["cut"] is None and p["ill"] is None and p["red"] is None
    assert p["low_peak"] == upper_peak(twins, without["cut"]) and EDGES[p["low_peak"] - 1] < floor
    assert decision_note(twins, p) == (f"no wrong-pair mode (the upper mode peaks at loss "
                                       f"{EDGES[p['low_peak'] - 1]:.3g}, below 2.43): the paper's per-batch candidates")
    wrong = _binned([(6400, code(1.0), 6.0), (1600, code(6.0), 3.0)])
    taken = plan(wrong, int(wrong.sum()), 0.35, 0.35, min_mode_loss=floor)
    assert not taken["paper_cycle"] and taken == dict(plan(wrong, int(wrong.sum()), 0.35, 0.35), min_mode_loss=floor)


@settings(max_examples=60, deadline=None)
@given(**MIXTURES, floor=st.floats(0.01, 50.0), look_again=st.booleans())
def test_the_floor_only_refuses_a_mode_that_peaks_below_it(weights, centres, sds, floor, look_again):
    """On any mixture the floor changes a decision only by refusing the cut whose upper mode peaks in a bin below
    the floor's; every other plan is the plan without it."""
    from scan_fast.schedule.scan_epoch import upper_peak

    hist = _binned(list(zip(weights, centres, sds)))
    n = int(hist.sum())
    if n == 0:
        return
    free = plan(hist, n, 0.35, 0.35, look_again)
    p = plan(hist, n, 0.35, 0.35, look_again, min_mode_loss=floor)
    if not free["paper_cycle"] and upper_peak(hist, free["cut"]) < int(loss_codes(floor, floor)):
        assert p["paper_cycle"] and p["low_peak"] == upper_peak(hist, free["cut"])
    else:
        assert p == dict(free, min_mode_loss=floor)


@pytest.mark.parametrize("device_path", [False, True])
def test_the_schedule_applies_its_floor_as_the_oracle_does(device_path):
    """The twin-caption losses of a clean long run: ScanEpoch with CLIP's floor keeps the paper's per-batch
    candidates, as the oracle; without a floor it takes the twins (the oracle again)."""
    from scan_fast.schedule.scan_epoch import wrong_pair_floor

    n = 3000
    rng = np.random.default_rng(8)
    twin = rng.random(n) < 0.26
    centre = np.log(np.where(twin, 0.69, 0.001))
    a, b = (np.exp(centre + np.where(twin, 0.05, 0.7) * rng.standard_normal(n)).astype(np.float32)
            for _ in range(2))
    order = np.arange(n, dtype=np.int64)
    for floor in (wrong_pair_floor(100), None):
        s = ScanEpoch(n, seed=3, min_mode_loss=floor)
        _to_preparation(s)
        _prepare(s, order, a, b, 100, device_path)
        s.end_epoch(2, 1.0)
        ill, red, p = epoch_candidates_reference(order, a, b, rho_ill=0.35, rho_red=0.35, seed=3, epoch=2,
                                                 batch=100, min_mode_loss=floor)
        assert s.paper_cycle() is p["paper_cycle"] is (floor is not None)
        np.testing.assert_array_equal(s.candidates("ill_matched"), ill)
        np.testing.assert_array_equal(s.candidates("redundant"), red)
        if floor is None:
            assert np.array_equal(ill, np.flatnonzero(twin))  # the twins taken for wrong pairs


def test_the_trainer_gives_the_floor_of_its_global_batch_to_the_clip_loss_only():
    from scan_fast.schedule.scan_epoch import wrong_pair_floor
    from scan_fast.train.config import ClipConfig, MocoConfig
    from scan_fast.train.run import make_schedule

    for loss, expected in (("clip", wrong_pair_floor(64 * 2)), ("siglip", None)):
        cfg = ClipConfig(train_data="unused", prune="scan-epoch", batch_size=64, loss=loss)
        assert make_schedule(cfg, 1000, 1, 2).min_mode_loss == expected
    assert make_schedule(ClipConfig(train_data="unused", prune="scan-epoch", batch_size=32), 1000).min_mode_loss == \
        wrong_pair_floor(32)  # scan-tiny-vit's default loss is CLIP's
    moco = MocoConfig(train_data="unused", prune="scan-epoch", arch="vit_tiny_cpu")
    assert make_schedule(moco, 1000).min_mode_loss is None
    with pytest.raises(ValueError, match="min_mode_loss must be a loss value > 0"):
        ScanEpoch(1000, min_mode_loss=0.0)


@pytest.mark.parametrize("device_path", [False, True])
def test_a_run_whose_losses_never_have_two_modes_is_scans_run(device_path):
    """Clean losses: every preparation keeps Scan's per-batch candidates and every mutation epoch Scan's draw,
    so the variant's run is the paper's, epoch for epoch, over two cycles; nothing is held out."""
    from scan_fast.schedule import Scan

    n, batch = 3000, 100
    variant, paper = ScanEpoch(n, seed=3), Scan(n, seed=3)
    rng = np.random.default_rng(12)
    for s in (variant, paper):
        _to_preparation(s)
    for epoch in range(2, 10):
        a = np.exp(-0.1 * epoch + 0.35 * rng.standard_normal(n)).astype(np.float32)
        b = np.exp(-0.1 * epoch + 0.35 * rng.standard_normal(n)).astype(np.float32)
        kept = [s.epoch_indices(epoch) for s in (variant, paper)]
        np.testing.assert_array_equal(*kept)
        assert variant.is_preparation(epoch) == paper.is_preparation(epoch)
        if variant.is_preparation(epoch):
            assert not variant.holds_out() and variant.sample_weights(torch.arange(n)) is None
            order = rng.permutation(n).astype(np.int64)
            for s in (variant, paper):
                _observe_in_batches(s, order, a, b, batch, device_path)
        for s in (variant, paper):
            s.end_epoch(epoch, 1.0)
        if variant.is_preparation(epoch) or epoch == 2:
            assert variant.paper_cycle()
        for kind in ("ill_matched", "redundant"):
            np.testing.assert_array_equal(variant.candidates(kind), paper.candidates(kind))
    assert [r.phase for r in variant.stats().records] == [r.phase for r in paper.stats().records]
    assert sum(r.phase == "preparation" for r in variant.stats().records) == 2


def test_the_cycle_decision_survives_a_checkpoint_and_is_made_again_each_preparation():
    n = 2000
    clean_a, clean_b, _ = _losses(n, 13, bad=0.0)
    s = ScanEpoch(n, seed=1)
    _through_first_cycle(s, n, clean_a, clean_b)
    assert s.paper_cycle()
    resumed = ScanEpoch(n, seed=1)
    resumed.load_state_dict(_roundtrip(s.state_dict()))
    assert resumed.paper_cycle()
    state = s.state_dict()
    state["paper_cycle"] = "yes"
    with pytest.raises(ValueError, match="paper_cycle"):
        ScanEpoch(n, seed=1).load_state_dict(state)
    noisy_a, noisy_b, _ = _losses(n, 13, bad=0.2)
    s.epoch_indices(6)
    for start in range(0, n, 100):
        ids = np.arange(start, start + 100, dtype=np.int64)
        s.observe_batch(torch.from_numpy(ids), torch.from_numpy(noisy_a[ids]), torch.from_numpy(noisy_b[ids]))
    s.end_epoch(6, 1.0)
    assert not s.paper_cycle()  # wrong pairs appeared: the epoch-wide cycle again
    ill = s.candidates("ill_matched")
    assert np.isin(ill, np.setdiff1d(np.arange(n), s.epoch_indices(7))).all()


@pytest.mark.parametrize("device_path", [False, True])
def test_with_fallback_none_a_run_whose_losses_never_have_two_modes_is_nones_run(device_path):
    """fallback="none" on clean losses: every preparation finds no wrong-pair mode, so every epoch trains on all
    the data in none's order (the same shards on every rank), with no candidates and nothing held out."""
    from scan_fast.schedule.no_pruning import NoPruning

    n, batch = 3000, 100
    variant, none = ScanEpoch(n, seed=3, fallback="none"), NoPruning(n)
    rng = np.random.default_rng(12)
    _to_preparation(variant)
    for epoch in range(2):
        none.epoch_indices(epoch)
        none.end_epoch(epoch, 1.0)
    for epoch in range(2, 10):
        for rank in (0, 1):
            np.testing.assert_array_equal(variant.epoch_shard(epoch, rank, 2, seed=3),
                                          none.epoch_shard(epoch, rank, 2, seed=3))
        if variant.is_preparation(epoch):
            assert not variant.holds_out() and variant.sample_weights(torch.arange(n)) is None
            a = np.exp(-0.1 * epoch + 0.35 * rng.standard_normal(n)).astype(np.float32)
            b = np.exp(-0.1 * epoch + 0.35 * rng.standard_normal(n)).astype(np.float32)
            _observe_in_batches(variant, rng.permutation(n).astype(np.int64), a, b, batch, device_path)
        variant.end_epoch(epoch, 1.0)
        none.end_epoch(epoch, 1.0)
        if variant.is_preparation(epoch):
            assert variant.paper_cycle()
            assert variant.epoch_note(epoch) == "no wrong-pair mode: nothing pruned this cycle"
            assert len(variant.candidates("ill_matched")) == len(variant.candidates("redundant")) == 0
    phases = [r.phase for r in variant.stats().records]
    assert phases.count("preparation") == 2 and phases.count("mutation") == 6
    assert all(r.kept == n for r in variant.stats().records)


def test_with_fallback_none_a_found_mode_prunes_as_scan_epoch_does_and_a_clean_cycle_prunes_nothing():
    """Noisy losses: the same candidates and kept sets as fallback="paper"; a later preparation without a mode
    prunes nothing in its cycle (where "paper" keeps the per-batch candidates and prunes them)."""
    n, batch = 2000, 100
    noisy_a, noisy_b, _ = _losses(n, 21, bad=0.2)
    clean_a, clean_b, _ = _losses(n, 22, bad=0.0)
    runs = {fallback: ScanEpoch(n, seed=4, fallback=fallback) for fallback in ("paper", "none")}
    order = np.random.default_rng(5).permutation(n).astype(np.int64)
    for s in runs.values():
        _to_preparation(s)
    for epoch in range(2, 10):
        kept = {f: s.epoch_indices(epoch) for f, s in runs.items()}
        if epoch < 6:
            np.testing.assert_array_equal(kept["paper"], kept["none"])
        elif epoch > 6:  # the second cycle: clean losses, no mode
            assert len(kept["none"]) == n and len(kept["paper"]) < n
        for s in runs.values():
            if s.is_preparation(epoch):
                a, b = (noisy_a, noisy_b) if epoch == 2 else (clean_a, clean_b)
                _observe_in_batches(s, order, a, b, batch, device_path=False)
            s.end_epoch(epoch, 1.0)
        if epoch == 2:
            for kind in ("ill_matched", "redundant"):
                np.testing.assert_array_equal(runs["paper"].candidates(kind), runs["none"].candidates(kind))
            assert len(runs["none"].candidates("ill_matched")) > 0
    assert runs["none"].epoch_note(6) == "no wrong-pair mode: nothing pruned this cycle"


def test_the_fallback_is_checked_on_resume_and_by_the_constructor():
    n = 2000
    a, b, _ = _losses(n, 13, bad=0.0)
    s = ScanEpoch(n, seed=1, fallback="none")
    _through_first_cycle(s, n, a, b)
    state = _roundtrip(s.state_dict())
    resumed = ScanEpoch(n, seed=1, fallback="none")
    resumed.load_state_dict(state)
    assert resumed.paper_cycle() and resumed.fallback == "none"
    np.testing.assert_array_equal(resumed.epoch_shard(6, seed=1), s.epoch_shard(6, seed=1))
    with pytest.raises(ValueError, match="fallback='none'; this schedule has fallback='paper'"):
        ScanEpoch(n, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="fallback must be one of paper, none, got 'all'"):
        ScanEpoch(n, fallback="all")


def test_the_trainer_builds_scan_epoch_or_none_with_the_none_fallback():
    from scan_fast.train.config import ClipConfig
    from scan_fast.train.run import make_schedule

    built = {prune: make_schedule(ClipConfig(train_data="unused", prune=prune, batch_size=64), 1000)
             for prune in ("scan-epoch", "scan-epoch-or-none")}
    assert built["scan-epoch"].fallback == "paper" and built["scan-epoch-or-none"].fallback == "none"
    assert built["scan-epoch"].min_mode_loss == built["scan-epoch-or-none"].min_mode_loss


# ----------------------------------------------------------------------------- the second look: recent losses


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.integers(0, NUM_CODES - 1)), min_size=1, max_size=50))
def test_recent_codes_take_a_first_code_and_then_the_mean_rounded_half_up(pairs):
    recent = np.array([r for r, _ in pairs], np.uint8)
    codes = np.array([c for _, c in pairs], np.uint8)
    expected = np.array([c if r == UNSEEN else (int(r) + int(c) + 1) // 2 for r, c in pairs], np.uint8)
    np.testing.assert_array_equal(recent_codes(recent, codes), expected)
    np.testing.assert_array_equal(recent_codes(torch.from_numpy(recent), torch.from_numpy(codes)).numpy(), expected)
    assert recent_codes(torch.from_numpy(recent), torch.from_numpy(codes)).dtype == torch.uint8


def _noisy_epochs(n, seed, epochs, gap=6.0, sd=0.6):
    """Per epoch fresh noise around 1 (clean) and `gap` (a share 0.2 of wrong pairs): too wide for one epoch's
    histogram to show a valley, narrow enough once averaged over three epochs."""
    rng = np.random.default_rng(seed)
    wrong = rng.random(n) < 0.2
    centre = np.where(wrong, np.log(gap), 0.0)
    losses = [np.exp(centre + sd * rng.standard_normal(n)).astype(np.float32) for _ in range(epochs)]
    return losses, wrong


def _run_epochs(s, losses, batch, device_path, order_seed=0, first=0):
    """Epochs first.. of `losses` (one array an epoch, both directions alike), each id once in a keyed order;
    the first two are warm-up epochs whose loss barely drops."""
    for epoch, a in enumerate(losses, start=first):
        kept = s.epoch_indices(epoch)
        if s.needs_losses(epoch):
            order = np.random.default_rng(order_seed + epoch).permutation(kept).astype(np.int64)
            _observe_in_batches(s, order, a, a, batch, device_path)
        s.end_epoch(epoch, {0: 10.0, 1: 9.9}.get(epoch, 1.0))


@pytest.mark.parametrize("device_path", [False, True])
def test_a_mode_only_the_recent_losses_show_is_found_by_the_second_look(device_path):
    n, batch, seed = 3000, 100, 3
    losses, wrong = _noisy_epochs(n, 7, 3)
    s = ScanEpoch(n, seed=seed, fallback="none", recent_look=True)
    _run_epochs(s, losses, batch, device_path)
    assert s.is_preparation(2) and s.needs_losses(0) and s.needs_losses(3)
    recent = np.full(n, UNSEEN, np.uint8)
    for a in losses:
        recent = recent_codes(recent, loss_codes(a, a))
    order = np.random.default_rng(2).permutation(n).astype(np.int64)
    _, _, own = epoch_candidates_reference(order, losses[2][order], losses[2][order], rho_ill=0.35, rho_red=0.35,
                                           seed=seed, epoch=2, batch=batch)
    assert own["paper_cycle"]  # the preparation's own losses show no mode
    ill, red, p = recent_candidates_reference(recent, rho_ill=0.35, rho_red=0.35, seed=seed, epoch=2)
    assert not s.paper_cycle()
    np.testing.assert_array_equal(s.candidates("ill_matched"), ill)
    np.testing.assert_array_equal(s.candidates("redundant"), red)
    assert wrong[ill].mean() > 0.95 and wrong[ill].sum() > 0.9 * wrong.sum()
    assert s.epoch_note(2).startswith(f"wrong-pair mode in the recent losses: {len(ill):,} of {n:,}")
    assert np.isin(ill, s.epoch_indices(3), invert=True).all()  # held out from the next epoch


@pytest.mark.parametrize("device_path", [False, True])
def test_the_recent_losses_find_a_mode_that_overlaps_the_rest_without_a_valley(device_path):
    """Wrong pairs 3.5x as lossy as the rest, in noise too wide for a valley even over three epochs: two normals that
    stand apart fit the recent codes, and the cut where the upper becomes the likelier takes the wrong pairs."""
    n, batch, seed = 3000, 100, 3
    losses, wrong = _noisy_epochs(n, 7, 3, gap=3.5, sd=0.5)
    recent = np.full(n, UNSEEN, np.uint8)
    for a in losses:
        recent = recent_codes(recent, loss_codes(a, a))
    hist = np.bincount(recent, minlength=NUM_CODES)[:NUM_CODES]
    assert plan(hist, n, 0.35, 0.35)["paper_cycle"]  # no valley in the recent losses
    ill, red, p = recent_candidates_reference(recent, rho_ill=0.35, rho_red=0.35, seed=seed, epoch=2)
    assert p["overlapping"] and p["cut"] == overlap_cut(hist, p["k_ill"])
    assert wrong[ill].mean() > 0.95 and wrong[ill].sum() > 0.95 * wrong.sum()
    s = ScanEpoch(n, seed=seed, fallback="none", recent_look=True)
    _run_epochs(s, losses, batch, device_path)
    assert not s.paper_cycle()
    np.testing.assert_array_equal(s.candidates("ill_matched"), ill)
    np.testing.assert_array_equal(s.candidates("redundant"), red)
    assert s.epoch_note(2).startswith(f"wrong-pair mode in the recent losses, overlapping the rest: {len(ill):,} of")


def test_without_the_second_look_the_same_losses_prune_nothing():
    n = 3000
    losses, _ = _noisy_epochs(n, 7, 6)
    s = ScanEpoch(n, seed=3, fallback="none")
    _run_epochs(s, losses, 100, device_path=True)
    assert s.paper_cycle() and len(s.candidates("ill_matched")) == 0
    assert not s.needs_losses(3) and len(s.epoch_indices(6)) == n


def test_the_recent_losses_survive_a_checkpoint_and_restart_on_another_world_size():
    n, batch = 3000, 100
    losses, _ = _noisy_epochs(n, 7, 3)
    full, resumed = ScanEpoch(n, seed=3, recent_look=True), ScanEpoch(n, seed=3, recent_look=True)
    _run_epochs(full, losses[:2], batch, device_path=True)
    state = _roundtrip(full.state_dict())
    assert state["recent"].shape == (n + 1,) and state["recent_look"] is True
    resumed.load_state_dict(state)
    for s in (full, resumed):
        _run_epochs(s, losses[2:], batch, device_path=True, first=2)
    assert not full.paper_cycle()
    np.testing.assert_array_equal(full.candidates(), resumed.candidates())
    other = ScanEpoch(n, seed=3, rank=1, world_size=2, recent_look=True)
    other.load_state_dict(state)
    assert other.state_dict()["recent"] is None  # other blocks: the average starts again
    with pytest.raises(ValueError, match="recent_look=True; this schedule has recent_look=False"):
        ScanEpoch(n, seed=3).load_state_dict(state)
    older = {k: v for k, v in state.items() if k not in ("recent_look", "recent")}  # saved before the second look
    ScanEpoch(n, seed=3, recent_look=True).load_state_dict(older)
    state["recent"] = state["recent"][:-1]
    with pytest.raises(ValueError, match=r"state_dict\[.recent.\] does not fit this rank.s block"):
        ScanEpoch(n, seed=3, recent_look=True).load_state_dict(state)
    with pytest.raises(ValueError, match="recent_look must be True or False, got 1"):
        ScanEpoch(n, recent_look=1)


def _recent_look_worker(rank, world_size):
    import torch.distributed as dist

    dist.init_process_group("gloo")
    n, batch = 3000, 100
    losses, _ = _noisy_epochs(n, 7, 3)
    one = ScanEpoch(n, seed=3, recent_look=True)
    mine = ScanEpoch(n, seed=3, rank=rank, world_size=world_size, recent_look=True)
    for s in (one, mine):  # every rank sees every gathered global batch
        _run_epochs(s, losses, batch, device_path=True)
    assert not one.paper_cycle() and not mine.paper_cycle()
    for kind in ("ill_matched", "redundant"):
        np.testing.assert_array_equal(mine.candidates(kind), one.candidates(kind))
    block = -(-n // world_size)
    own = min((rank + 1) * block, n) - rank * block
    assert mine.state_dict()["recent"].shape[0] == own + 1  # one byte a sample of its own block, and the sink


def test_ranks_sum_their_blocks_recent_histograms_to_the_one_rank_decision():
    from helpers import launch

    launch(_recent_look_worker, 2, world_size=2)


def test_the_trainer_gives_scan_epoch_or_none_the_second_look_only():
    from scan_fast.train.config import ClipConfig
    from scan_fast.train.run import make_schedule

    built = {prune: make_schedule(ClipConfig(train_data="unused", prune=prune, batch_size=64), 1000)
             for prune in ("scan-epoch", "scan-epoch-or-none")}
    assert built["scan-epoch-or-none"].recent_look and not built["scan-epoch"].recent_look


def test_a_mode_the_recent_losses_do_not_show_yet_is_not_taken_until_they_do():
    """Pairs that looked easy for two epochs and stand apart in the third (a model that learned one attribute
    before another): the preparation's own histogram has a mode, the recent losses not yet, so that cycle prunes
    nothing; once the mode persists (epoch 6) it is taken, from the epoch's own losses."""
    n, batch = 3000, 100
    rng = np.random.default_rng(8)
    flagged = rng.random(n) < 0.15
    losses = [np.exp(np.where(flagged, centre, 0.0) + 0.35 * rng.standard_normal(n)).astype(np.float32)
              for centre in [-1.5, -1.5] + [np.log(6.0)] * 5]
    order = np.random.default_rng(2).permutation(n).astype(np.int64)
    runs = {look: ScanEpoch(n, seed=3, fallback="none", recent_look=look) for look in (True, False)}
    for look, s in runs.items():
        _run_epochs(s, losses[:3], batch, device_path=True)
    _, _, own = epoch_candidates_reference(order, losses[2][order], losses[2][order], rho_ill=0.35, rho_red=0.35,
                                           seed=3, epoch=2, batch=batch)
    recent = np.full(n, UNSEEN, np.uint8)
    for a in losses[:3]:
        recent = recent_codes(recent, loss_codes(a, a))
    assert not own["paper_cycle"] and recent_candidates_reference(recent, rho_ill=0.35, rho_red=0.35, seed=3,
                                                                  epoch=2) is None
    assert len(runs[False].candidates("ill_matched")) > 0  # without the second look the mode is taken at once
    waiting = runs[True]
    assert waiting.paper_cycle() and len(waiting.candidates("ill_matched")) == 0
    assert waiting.epoch_note(2).startswith("a wrong-pair mode in this epoch only, not in the recent losses: ")
    assert waiting.epoch_note(2).endswith("; nothing pruned this cycle")
    _run_epochs(waiting, losses[3:], batch, device_path=True, first=3)
    assert all(r.kept == n for r in waiting.stats().records)
    six = np.random.default_rng(6).permutation(n).astype(np.int64)
    ill, red, p = epoch_candidates_reference(six, losses[6][six], losses[6][six], rho_ill=0.35, rho_red=0.35, seed=3,
                                             epoch=6, batch=batch)
    assert not waiting.paper_cycle() and not p["paper_cycle"]
    np.testing.assert_array_equal(waiting.candidates("ill_matched"), ill)
    np.testing.assert_array_equal(waiting.candidates("redundant"), red)
    assert flagged[ill].mean() > 0.95 and flagged[ill].sum() > 0.95 * flagged.sum()  # the flagged pairs
