"""The schedules' device path (observe_batch, flush) against their host path (observe).

A trainer on a GPU hands each batch's per-sample losses to the schedule as device tensors and
reads nothing back until a log step; the decisions must be exactly those of the host path.
"""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scan_fast.schedule import Scan, ScanReference
from scan_fast.schedule.infobatch import InfoBatch
from scan_fast.schedule.no_pruning import NoPruning
from scan_fast.schedule.random_pruning import RandomPruning

N, BATCH, EPOCHS = 240, 40, 9


def _make(kind, **scan_kwargs):
    if kind == "scan":
        return Scan(N, prune_threshold=0.3, seed=5, **scan_kwargs)
    if kind == "reference":
        return ScanReference(N, prune_threshold=0.3, seed=5, **scan_kwargs)
    if kind == "random":
        return RandomPruning(N, prune_threshold=0.3, seed=5)
    if kind == "infobatch":
        return InfoBatch(N, EPOCHS, seed=5)
    return NoPruning(N)


def _epoch_stream(epoch, kept, ties):
    rng = np.random.default_rng([11, epoch])
    order = rng.permutation(kept)
    if ties:  # few distinct values: ties and top-ups are common
        return order, (rng.integers(0, 6, order.size) / 4).astype(np.float32), \
            (rng.integers(0, 6, order.size) / 4).astype(np.float32)
    return order, rng.random(order.size, dtype=np.float32), rng.random(order.size, dtype=np.float32)


def _run(schedule, epoch, on_device, flush_every, ties):
    kept = schedule.epoch_indices(epoch)
    order, loss_a, loss_b = _epoch_stream(epoch, kept, ties)
    for i, start in enumerate(range(0, order.size - BATCH + 1, BATCH)):
        part = slice(start, start + BATCH)
        if not schedule.needs_losses(epoch):
            continue
        if on_device:
            schedule.observe_batch(torch.from_numpy(order[part]), torch.from_numpy(loss_a[part]),
                                   torch.from_numpy(loss_b[part]))
            if flush_every and (i + 1) % flush_every == 0:
                schedule.flush()
        else:
            schedule.observe(order[part], loss_a[part], loss_b[part])
    schedule.end_epoch(epoch, 4.0 * 0.8 ** min(epoch, 2))  # warm-up ends after epoch 2


@settings(max_examples=12, deadline=None)
@given(kind=st.sampled_from(["scan", "reference", "random", "infobatch", "none"]),
       flush_every=st.sampled_from([0, 1, 3]), ties=st.booleans(), thresholds=st.booleans())
def test_device_path_takes_the_host_paths_decisions(kind, flush_every, ties, thresholds):
    kwargs = {"abs_ill": 1.0, "rho_red": 0.2} if thresholds and kind in ("scan", "reference") else {}
    host, device = _make(kind, **kwargs), _make(kind, **kwargs)
    for epoch in range(EPOCHS):
        _run(host, epoch, False, flush_every, ties)
        _run(device, epoch, True, flush_every, ties)
        np.testing.assert_array_equal(host.candidates(), device.candidates())
        np.testing.assert_array_equal(host.coreset(), device.coreset())
        assert host.stats() == device.stats()
        if epoch + 1 < EPOCHS:
            np.testing.assert_array_equal(host.epoch_indices(epoch + 1), device.epoch_indices(epoch + 1))
    host_state, device_state = host.state_dict(), device.state_dict()
    assert host_state.keys() == device_state.keys()
    for key in host_state:
        if isinstance(host_state[key], torch.Tensor):
            assert torch.equal(host_state[key], device_state[key])
        else:
            assert host_state[key] == device_state[key], key
    if kind in ("scan", "reference", "random"):
        assert any(r.phase == "preparation" for r in host.stats().records), "the run must reach preparation"


@pytest.mark.parametrize("ties", [False, True])
def test_scan_equals_its_python_reference_including_top_ups(ties):
    """With the keyed top-up the engine-backed Scan and the plain-Python oracle pick the same ids."""
    scan, reference = _make("scan"), _make("reference")
    for epoch in range(EPOCHS):
        _run(scan, epoch, False, 0, ties)
        _run(reference, epoch, False, 0, ties)
        np.testing.assert_array_equal(scan.candidates("ill_matched"), reference.candidates("ill_matched"))
        np.testing.assert_array_equal(scan.candidates("redundant"), reference.candidates("redundant"))
    assert len(scan.candidates()) > 0


def test_scan_keeps_only_chosen_ids_on_the_device():
    scan = _make("scan")
    for epoch in range(2):
        _run(scan, epoch, False, 0, False)
    assert scan.is_preparation(2)
    scan.epoch_indices(2)
    ids = torch.arange(BATCH)
    scan.observe_batch(ids, torch.rand(BATCH), torch.rand(BATCH))
    (pending,) = scan._pending
    assert pending.shape == (2, BATCH) and pending.dtype == torch.int64  # ids or -1, no losses
    assert set(pending.unique().tolist()) <= set(ids.tolist()) | {-1}


def test_infobatch_weights_on_the_device_equal_the_host_weights():
    schedule = InfoBatch(N, EPOCHS, prune_ratio=0.5, seed=2)
    _run(schedule, 0, False, 0, False)
    kept = schedule.epoch_indices(1)
    host = schedule.sample_weights(kept)
    device = schedule.sample_weights(torch.from_numpy(kept))
    assert isinstance(device, torch.Tensor) and device.dtype == torch.float32
    np.testing.assert_array_equal(host, device.numpy())
    assert set(np.unique(host).tolist()) == {1.0, 2.0}


def test_observe_batch_checks_shapes_and_order():
    scan = _make("scan")
    with pytest.raises(ValueError, match=r"observe_batch\(\) before begin_epoch\(0\)"):
        scan.observe_batch(torch.arange(3), torch.rand(3), torch.rand(3))
    scan.epoch_indices(0)
    with pytest.raises(ValueError, match="must have one length"):
        scan.observe_batch(torch.arange(3), torch.rand(4), torch.rand(3))
    with pytest.raises(TypeError, match="1-D torch tensors"):
        scan.observe_batch(np.arange(3), torch.rand(3), torch.rand(3))
