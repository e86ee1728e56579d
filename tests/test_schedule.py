"""The SCAN schedule: Scan (C++ engine) against ScanReference (Python sets), resume, bad input."""
import io
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scan_fast.schedule.candidates import batch_candidates_reference
from scan_fast.schedule import Scan, ScanReference, cosine_rate, epoch_phase, warmup_step
from scan_fast.schedule.rates import batch_stream, mutation_stream

from helpers import requires_cuda

_SCHEDULES = ("schedule_type", [ScanReference, Scan])
_PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- a training loop over a seeded loss stream --------------------------------------------------
def _epoch_losses(stream_seed, epoch, num_samples, batch_size, config, separable):
    """(loss_a, loss_b) over all ids, batch order; separable streams keep ILL and RED apart."""
    rng = np.random.default_rng([stream_seed, epoch])
    order = rng.permutation(num_samples)
    if not separable:
        # few distinct values, so ties (broken by position) happen too
        return order, rng.integers(0, 8, num_samples) / 4.0, rng.integers(0, 8, num_samples) / 4.0
    loss_a, loss_b = np.empty(num_samples), np.empty(num_samples)
    for start in range(0, num_samples, batch_size):
        size = min(batch_size, num_samples - start)
        k_ill, k_red = config.batch_counts(size)
        n_high = rng.integers(k_ill or 0, size - (k_red or 0) + 1)
        # high side in [1, 2), low side in [0, 1): no sample can be ILL in one direction and RED in the other
        side = np.r_[np.ones(n_high), np.zeros(size - n_high)]
        batch = order[start:start + size]
        for loss in (loss_a, loss_b):
            loss[batch] = side + rng.random(size)
    return order, loss_a, loss_b


class _Interrupted(Exception):
    def __init__(self, log):
        self.log = log


def _drive(schedule, epochs, batch_size, stream_seed, epoch_losses, separable, first_epoch=0, skip_batches=0,
           stop_after=None):
    """Run the training loop; return {("ids", epoch): (ids, is_preparation), ("batch", epoch, b): counts}.

    A resumed loop starts at `first_epoch`, skipping the batches it had already observed; `stop_after`
    interrupts it (raising _Interrupted with the log so far) before that many calls have run.
    """
    log, calls = {}, [0]

    def call(method, *args):
        if calls[0] == stop_after:
            raise _Interrupted(log)
        calls[0] += 1
        return method(*args)

    n = schedule.num_samples
    for epoch in range(first_epoch, epochs):
        ids = call(schedule.epoch_indices, epoch)
        log[("ids", epoch)] = (ids.astype(np.int64).tolist(), schedule.is_preparation(epoch))
        order, loss_a, loss_b = _epoch_losses(stream_seed, epoch, n, batch_size, schedule.config, separable)
        order = order[np.isin(order, ids)]
        for number, start in enumerate(range(0, len(order), batch_size)):
            if epoch == first_epoch and number < skip_batches:
                continue
            batch = order[start:start + batch_size]
            log[("batch", epoch, number)] = call(schedule.observe, batch, loss_a[batch], loss_b[batch])
        call(schedule.end_epoch, epoch, epoch_losses[epoch])
    return log


def _values(log, kind):
    return [v for k, v in log.items() if k[0] == kind]


def _config_strategy():
    rho = st.integers(0, 20).map(lambda x: x / 20)
    return st.fixed_dictionaries({
        "rho_ill": rho, "rho_red": rho, "t_cos": st.integers(1, 4),
        "mode": st.sampled_from(["both", "redundant", "ill_matched"]),
        "abs_ill": st.one_of(st.none(), st.floats(1.0, 1.9)), "abs_red": st.one_of(st.none(), st.floats(0.1, 1.0)),
        "prune_threshold": st.sampled_from([0.1, 0.3, 0.6]), "seed": st.integers(0, 2**32),
    }).filter(lambda c: c["rho_ill"] + c["rho_red"] <= 1)


_run_strategy = st.fixed_dictionaries({
    "num_samples": st.integers(1, 300), "batch_size": st.integers(1, 64), "stream_seed": st.integers(0, 2**16),
    "separable": st.booleans(),
    "epoch_losses": st.lists(st.floats(0.5, 10.0), min_size=2, max_size=10),
    "config": _config_strategy(),
})


def _check_invariants(schedule, log):
    n = schedule.num_samples
    records = schedule.stats().records
    for (ids, _), record in zip(_values(log, "ids"), records):
        ids = np.array(ids, dtype=np.int64)
        assert ids.size == 0 or (ids[0] >= 0 and ids[-1] < n)
        assert np.all(np.diff(ids) > 0), "kept ids must be sorted without duplicates"
        assert len(ids) == record.kept == n - record.pruned
    # the last mutation epoch's pruned ids are candidates of the last completed preparation
    if records[-1].phase == "mutation":
        pruned = np.setdiff1d(np.arange(n), _values(log, "ids")[-1][0])
        assert np.isin(pruned, schedule.candidates()).all()
        assert len(schedule.candidates()) == records[-1].candidates


# -- pure arithmetic -----------------------------------------------------------------------------
def test_cosine_rate():
    assert [cosine_rate(j, 3) for j in (1, 2, 3)] == [0.25, 0.75, 1.0]
    assert cosine_rate(1, 1) == 1.0
    rates = [cosine_rate(j, 7) for j in range(1, 8)]
    assert rates == sorted(rates) and rates[-1] == 1.0 and rates[0] > 0
    with pytest.raises(ValueError, match="position"):
        cosine_rate(0, 3)


def test_epoch_phase():
    assert epoch_phase(5, None, 3) == ("warmup", 0)
    phases = [epoch_phase(e, 2, 3) for e in range(11)]
    assert phases == [("warmup", 0)] * 2 + [("preparation", 0), ("mutation", 1), ("mutation", 2), ("mutation", 3)] * 2 \
        + [("preparation", 0)]
    assert [epoch_phase(e, 0, 1)[0] for e in range(4)] == ["preparation", "mutation"] * 2


def test_streams_never_collide():
    streams = {mutation_stream(e) for e in range(50)} | {batch_stream(e, b) for e in range(50) for b in range(50)}
    assert len(streams) == 50 + 50 * 50


@pytest.mark.parametrize("losses, threshold, start", [
    ([5.0, 4.0, 3.0], 0.3, 2),          # drop 0.2 after epoch 1
    ([10.0, 5.0, 4.0, 1.0], 0.3, 3),    # drop 0.5 keeps warming up, then 0.2
    ([10.0, 7.0, 6.0, 5.0], 0.3, 3),    # a drop of exactly the threshold is not below it
    ([1.0, 2.0, 3.0], 0.3, 2),          # loss going up counts as no drop
    ([10.0, 5.0, 2.0, 1.0, 0.1], 0.3, None),  # still falling fast: warm-up goes on
    ([3.0, 3.0], 0.0, None),            # no drop is below a threshold of 0
])
@pytest.mark.parametrize(*_SCHEDULES)
def test_warmup_start(schedule_type, losses, threshold, start):
    scan = schedule_type(10, prune_threshold=threshold)
    for epoch, loss in enumerate(losses):
        scan.epoch_indices(epoch)
        scan.end_epoch(epoch, loss)
    found = next((e for e in range(len(losses) + 1) if scan.is_preparation(e)), None)
    assert found == start
    warmup_epochs = len(losses) if start is None else start
    assert [r.phase for r in scan.stats().records[:warmup_epochs]] == ["warmup"] * warmup_epochs


def test_warmup_step_keeps_prev_loss_when_starting():
    assert warmup_step(math.inf, 5.0, 0.3) == (False, 5.0)
    assert warmup_step(5.0, 4.0, 0.3) == (True, 5.0)
    assert warmup_step(0.0, 0.0, 0.3) == (True, 0.0)


# -- Scan against the reference -------------------------------------------------------------------
@_PROPERTY
@given(run=_run_strategy)
def test_scan_matches_reference(run):
    config = run["config"]
    n, batch_size, epochs = run["num_samples"], run["batch_size"], len(run["epoch_losses"])
    logs, schedules = [], []
    for schedule_type in (ScanReference, Scan):
        schedule = schedule_type(n, **config)
        logs.append(_drive(schedule, epochs, batch_size, run["stream_seed"], run["epoch_losses"], run["separable"]))
        _check_invariants(schedule, logs[-1])
        schedules.append(schedule)
    reference, scan = schedules
    # per-batch candidate counts and the phase of every epoch never depend on the random draws
    preparation = lambda log: [v for k, v in log.items() if k[0] == "batch" and log[("ids", k[1])][1]]  # noqa: E731
    assert preparation(logs[0]) == preparation(logs[1])
    assert [p for _, p in _values(logs[0], "ids")] == [p for _, p in _values(logs[1], "ids")]
    # |RED | ILL| depends on the top-up draws when a sample can be ILL one way and RED the other
    if run["separable"] or config["mode"] != "both":
        assert reference.stats() == scan.stats()
        assert len(reference.coreset()) == len(scan.coreset())
    else:
        assert [r.phase for r in reference.stats().records] == [r.phase for r in scan.stats().records]


@pytest.mark.parametrize("mode", ["both", "redundant", "ill_matched"])
def test_scan_candidates_are_the_oracle_masks(mode):
    """One preparation batch: Scan's candidates are the oracle's, top-up draws aside (none here)."""
    n = 64
    rng = np.random.default_rng(3)
    loss_a = rng.random(n)
    loss_b = loss_a + 0.01 * rng.random(n)  # nearly the same order: intersections above 90%, no top-up
    scan = Scan(n, mode=mode, prune_threshold=1.0)
    scan.epoch_indices(0), scan.end_epoch(0, 1.0), scan.epoch_indices(1), scan.end_epoch(1, 1.0)
    ids = rng.permutation(n)
    scan.epoch_indices(2)
    scan.observe(ids, loss_a, loss_b)
    scan.end_epoch(2, 1.0)
    ill, red = batch_candidates_reference(loss_a, loss_b, k_ill=22, k_red=22)
    expected = {"both": ill | red, "redundant": red, "ill_matched": ill}[mode]
    assert scan.candidates().tolist() == sorted(ids[expected].tolist())
    assert scan.coreset().tolist() == sorted(ids[~expected].tolist())


@pytest.mark.parametrize(*_SCHEDULES)
def test_coreset_before_any_preparation_is_everything(schedule_type):
    scan = schedule_type(7)
    assert scan.coreset().tolist() == list(range(7))
    assert len(scan.candidates()) == 0


# -- determinism and resume -------------------------------------------------------------------------
_DETERMINISM_RUN = dict(epochs=8, batch_size=50, stream_seed=1, epoch_losses=[5, 4] + [3] * 6, separable=True)


@pytest.mark.parametrize(*_SCHEDULES)
def test_same_seed_same_ids_other_seed_other_prune_set(schedule_type):
    logs = [_drive(schedule_type(500, seed=seed), **_DETERMINISM_RUN) for seed in (0, 0, 1)]
    assert logs[0] == logs[1]
    ids = lambda log: [x for x, _ in _values(log, "ids")]  # noqa: E731
    assert [len(x) for x in ids(logs[0])] == [len(x) for x in ids(logs[2])]
    assert ids(logs[0])[3:] != ids(logs[2])[3:]


def test_engine_threads_do_not_change_ids():
    """Big enough (2**20 ids) for the engine's bulk loops to split across threads."""
    from scan_fast import index

    n, batch_size = 1 << 20, 4096
    rng = np.random.default_rng(0)
    losses = rng.random((2, n), dtype=np.float32)
    order = rng.permutation(n)

    def run():
        scan, ids_per_epoch = Scan(n, seed=5), []
        for epoch in range(6):  # warm-up, warm-up, preparation, 3 mutation epochs
            ids_per_epoch.append(scan.epoch_indices(epoch))
            if scan.is_preparation(epoch):
                for start in range(0, n, batch_size):
                    batch = order[start:start + batch_size]
                    scan.observe(batch, losses[0, batch], losses[1, batch])
            scan.end_epoch(epoch, 1.0)
        return ids_per_epoch, scan.coreset()

    before = index.get_num_threads()
    try:
        runs = []
        for threads in (1, 2, 4):
            index.set_num_threads(threads)
            runs.append(run())
    finally:
        index.set_num_threads(before)
    for ids_per_epoch, coreset in runs[1:]:
        assert all(np.array_equal(x, y) for x, y in zip(ids_per_epoch, runs[0][0]))
        assert np.array_equal(coreset, runs[0][1])
    assert len(runs[0][0][-1]) < n  # the last epoch did prune


def _roundtrip(state):
    """Through torch.save / torch.load(weights_only=True), as a checkpoint does."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@_PROPERTY
@given(run=_run_strategy, cut=st.floats(0, 1, exclude_max=True), schedule_type=st.sampled_from([ScanReference, Scan]))
def test_resume_anywhere_equals_uninterrupted(run, cut, schedule_type):
    """Interrupt after any number of calls (mid-epoch, between epochs, mid-cycle); resume from a checkpoint."""
    loop = dict(epochs=len(run["epoch_losses"]), batch_size=run["batch_size"], stream_seed=run["stream_seed"],
                epoch_losses=run["epoch_losses"], separable=run["separable"])
    whole = schedule_type(run["num_samples"], **run["config"])
    expected = _drive(whole, **loop)
    total_calls = len(expected) + loop["epochs"]  # one end_epoch per epoch besides the logged calls
    first = schedule_type(run["num_samples"], **run["config"])
    with pytest.raises(_Interrupted) as stopped:
        _drive(first, **loop, stop_after=int(cut * total_calls))
    partial = stopped.value.log
    state = _roundtrip(first.state_dict())

    resumed = schedule_type(run["num_samples"], **run["config"])
    resumed.load_state_dict(state)
    epoch = state["epoch"]
    skip = sum(1 for k in partial if k[0] == "batch" and k[1] == epoch) if state["in_epoch"] else 0
    rest = _drive(resumed, **loop, first_epoch=epoch, skip_batches=skip)
    assert all(partial[k] == rest[k] for k in partial.keys() & rest.keys())
    assert {**partial, **rest} == expected
    assert resumed.stats() == whole.stats()
    assert resumed.coreset().tolist() == whole.coreset().tolist()
    assert resumed.state_dict() == whole.state_dict()


# -- inputs: torch tensors and bad values ------------------------------------------------------------
def _in_preparation(schedule_type, n=20, **kwargs):
    scan = schedule_type(n, prune_threshold=1.0, **kwargs)
    for epoch in (0, 1):
        scan.epoch_indices(epoch)
        scan.end_epoch(epoch, 1.0)
    scan.epoch_indices(2)
    assert scan.is_preparation(2)
    return scan


def _torch_batches(device):
    ids = torch.arange(10, device=device)
    loss = torch.linspace(0, 1, 10, device=device)
    return [(ids, loss, loss.flip(0)), (ids.int(), loss.bfloat16(), loss.half()),
            (ids.numpy() if device == "cpu" else ids, loss.double(), loss.float().requires_grad_())]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
@pytest.mark.parametrize(*_SCHEDULES)
def test_observe_takes_torch_tensors(schedule_type, device):
    scan = _in_preparation(schedule_type)
    numpy_scan = _in_preparation(schedule_type)
    for ids, loss_a, loss_b in _torch_batches(device):
        counts = scan.observe(ids, loss_a, loss_b)
        as_numpy = [torch.as_tensor(x).detach().float().cpu().numpy() for x in (loss_a, loss_b)]
        assert counts == numpy_scan.observe(torch.as_tensor(ids).cpu().numpy(), *as_numpy) == (3, 3)


@pytest.mark.parametrize(*_SCHEDULES)
def test_observe_empty_batch_collects_nothing(schedule_type):
    scan = _in_preparation(schedule_type)
    assert scan.observe([], [], []) == scan.observe(torch.empty(0, dtype=torch.long), torch.empty(0), torch.empty(0)) \
        == (0, 0)
    scan.end_epoch(2, 1.0)
    assert len(scan.candidates()) == 0


@pytest.mark.parametrize("kwargs, error, match", [
    ({"num_samples": 0}, ValueError, "num_samples must be >= 1, got 0"),
    ({"num_samples": 2.5}, TypeError, "num_samples must be an integer, got 2.5"),
    ({"rho_ill": -0.1}, ValueError, r"rho_ill must be in \[0, 1\], got -0.1"),
    ({"rho_red": 1.5}, ValueError, "rho_red must be in"),
    ({"rho_ill": float("nan")}, ValueError, "rho_ill must be finite, got nan"),
    ({"rho_ill": 0.6, "rho_red": 0.5}, ValueError, r"rho_ill \+ rho_red must be <= 1, got 0.6 \+ 0.5"),
    ({"t_cos": 0}, ValueError, "t_cos must be >= 1, got 0"),
    ({"mode": "noisy"}, ValueError, "mode must be one of .* got 'noisy'"),
    ({"prune_threshold": float("inf")}, ValueError, "prune_threshold must be finite, got inf"),
    ({"abs_ill": float("nan")}, ValueError, "abs_ill must be finite, got nan"),
    ({"prune_threshold": -1.0}, ValueError, r"prune_threshold must be in \[0, 1\] .*got -1.0"),
    ({"prune_threshold": 1.5}, ValueError, r"prune_threshold must be in \[0, 1\] .*got 1.5"),
    ({"abs_ill": -5.0}, ValueError, "abs_ill must be a loss value > 0 .*got -5.0"),
    ({"abs_red": 0.0}, ValueError, "abs_red must be a loss value > 0 .*got 0.0"),
    ({"abs_ill": 1e39}, ValueError, "abs_ill must be a loss value > 0 .*fits in float32, got 1e"),
    ({"abs_red": "low"}, TypeError, "abs_red must be a real number, got 'low'"),
    ({"seed": -1}, ValueError, "seed must be >= 0, got -1"),
])
@pytest.mark.parametrize(*_SCHEDULES)
def test_constructor_rejects_bad_input(schedule_type, kwargs, error, match):
    kwargs = {"num_samples": 10, **kwargs}
    with pytest.raises(error, match=match):
        schedule_type(**kwargs)


_BAD_BATCHES = [
    (lambda: ([0, -1, 2], [1.0, 2, 3], [1.0, 2, 3]), ValueError,
     r"sample_ids must be in \[0, num_samples=20\); 1 are not, first \[-1\]"),
    (lambda: ([0, 20, 21], [1.0, 2, 3], [1.0, 2, 3]), ValueError, r"2 are not, first \[20, 21\]"),
    (lambda: (np.array([0.0, 1.0]), [1.0, 2], [1.0, 2]), TypeError,
     "sample_ids must have an integer dtype, got float64"),
    (lambda: ([0, 1, 2], [1.0, 2], [1.0, 2, 3]), ValueError, "loss_a has 2 values but sample_ids has 3"),
    (lambda: ([[0, 1]], [[1.0, 2]], [[1.0, 2]]), ValueError, r"sample_ids must be one-dimensional, got shape \(1, 2\)"),
    (lambda: ([4, 5, 6, 7], [1.0, 2, 3, 4], [np.nan, 2, np.inf, np.nan]), ValueError,
     r"loss_b has 3 non-finite values \(NaN/inf\), at sample ids \[4, 6, 7\]"),
    (lambda: ([0, 1], ["a", "b"], [1.0, 2]), TypeError, "loss_a must have a real dtype"),
]


@pytest.mark.parametrize("batch, error, match", _BAD_BATCHES)
@pytest.mark.parametrize(*_SCHEDULES)
def test_observe_rejects_bad_batches_and_changes_nothing(schedule_type, batch, error, match):
    scan = _in_preparation(schedule_type)
    scan.observe(np.arange(10), np.arange(10.0), np.arange(10.0))
    before = scan.state_dict()
    with pytest.raises(error, match=match):
        scan.observe(*batch())
    assert scan.state_dict() == before


@pytest.mark.parametrize(*_SCHEDULES)
def test_calls_out_of_order(schedule_type):
    scan = schedule_type(10)
    with pytest.raises(ValueError, match=r"out of order: observe\(\) before begin_epoch\(0\)"):
        scan.observe([0], [1.0], [1.0])
    with pytest.raises(ValueError, match=r"out of order: end_epoch\(0, ...\) but the next call must be begin_epoch"):
        scan.end_epoch(0, 1.0)
    with pytest.raises(ValueError, match=r"out of order: epoch_indices\(1\) but the next epoch is 0"):
        scan.epoch_indices(1)
    first = scan.epoch_indices(0)
    assert scan.epoch_indices(0).tolist() == first.tolist()  # a repeat is fine (FFCV asks twice)
    with pytest.raises(ValueError, match=r"out of order: epoch_indices\(1\) while epoch 0 is in progress"):
        scan.epoch_indices(1)
    with pytest.raises(ValueError, match=r"out of order: end_epoch\(1, ...\) but the next call must be end_epoch\(0"):
        scan.end_epoch(1, 1.0)
    with pytest.raises(ValueError, match="epoch_loss must be finite, got nan"):
        scan.end_epoch(0, float("nan"))
    with pytest.raises(ValueError, match="epoch must be >= 0, got -1"):
        scan.epoch_indices(-1)
    scan.end_epoch(0, torch.tensor(2.0))  # a 0-d tensor is a number
    with pytest.raises(ValueError, match=r"out of order: epoch_indices\(0\) but the next epoch is 1"):
        scan.epoch_indices(0)


def _corrupt(state):
    """Flip one byte in the middle of the first serialised set (or one id of the reference's lists)."""
    state = dict(state)
    if isinstance(state["ill"], bytes):
        data = bytearray(state["ill"])
        data[len(data) // 2] ^= 0xFF
        state["ill"] = bytes(data)
    else:
        state["ill"] = state["ill"] + [10**9]
    return state


@pytest.mark.parametrize("tamper, match", [
    (lambda s: {**s, "num_samples": 21}, "num_samples=21"),
    (_corrupt, "state_dict\\['ill'\\]"),
    (lambda s: {**s, "ill": b"\x00" * 7 if isinstance(s["ill"], bytes) else ["x"]}, "state_dict\\['ill'\\]"),
    (lambda s: {k: v for k, v in s.items() if k != "prev_loss"}, "missing the key 'prev_loss'"),
    (lambda s: {**s, "config": {**s["config"], "seed": 99}}, "saved by a (Scan|ScanReference) with seed=99"),
    (lambda s: {**s, "epoch": -3}, "epoch'\\] must be >= 0"),
    (lambda s: {**s, "start": "soon"}, "start"),
])
@pytest.mark.parametrize(*_SCHEDULES)
def test_load_state_dict_rejects_bad_state_and_changes_nothing(schedule_type, tamper, match):
    source = _in_preparation(schedule_type, n=20)
    source.observe(np.arange(20), np.arange(20.0), np.arange(20.0)[::-1])
    source.end_epoch(2, 1.0)
    target = schedule_type(20, prune_threshold=1.0)
    before = target.state_dict()
    with pytest.raises(ValueError, match=match):
        target.load_state_dict(tamper(source.state_dict()))
    assert target.state_dict() == before
    target.load_state_dict(source.state_dict())
    assert target.state_dict() == source.state_dict()


def test_load_state_dict_rejects_collection_outside_preparation():
    scan = _in_preparation(Scan)
    state = scan.state_dict()
    scan.end_epoch(2, 1.0)
    with pytest.raises(ValueError, match="must be set exactly while a preparation epoch is in progress"):
        scan.load_state_dict({**scan.state_dict(), "new_ill": state["new_ill"], "new_red": state["new_red"]})
    with pytest.raises(ValueError, match="must be set exactly while a preparation epoch is in progress"):
        scan.load_state_dict({**state, "new_ill": None})


def test_state_dict_is_plain_python():
    scan = _in_preparation(Scan)
    states = [scan.state_dict()]  # inside a preparation epoch, nothing collected yet
    scan.observe(np.arange(10), np.arange(10.0), np.arange(10.0))
    states.append(scan.state_dict())

    def plain(value):
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return value is None or type(value) in (int, float, str, bool, bytes)
    for state in states:
        assert plain(state)
        assert _roundtrip(state) == state


@pytest.mark.parametrize(*_SCHEDULES)
def test_candidates_kind_must_be_a_mode(schedule_type):
    with pytest.raises(ValueError, match="kind must be one of .* got 'noisy'"):
        schedule_type(10).candidates("noisy")
