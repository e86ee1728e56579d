"""prune_candidates follows SCAN's per-batch rule (scan_fast.candidates is the oracle)."""
import os
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import HAS_CUDA, requires_cuda
from scan_fast.candidates import candidate_count, direction_set
from scan_fast.ops.prune_candidates import prune_candidates, prune_candidates_reference

# `scan_fast.ops.prune_candidates` the attribute is the function; the module is this one
prune_candidates_module = sys.modules["scan_fast.ops.prune_candidates"]

# few distinct values so that ties are common
_losses = st.integers(1, 60).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 6).map(float), min_size=n, max_size=n),
        st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=n, max_size=n),
    )
)
_rho = st.floats(0.0, 1.0)


def _expected_direction_sets(loss, rho_ill, rho_red, abs_ill=None, abs_red=None):
    loss = loss.double().numpy()
    n = loss.shape[0]
    ill = direction_set(loss, candidate_count(n, rho_ill), abs_ill, highest=True)
    red = direction_set(loss, candidate_count(n, rho_red), abs_red, highest=False)
    return ill, red


def _check_rule(x_a, x_b, got):
    """C = X_a & X_b, or, when that is under 90% of |X_a|, a superset of it inside X_a | X_b of size |X_a|."""
    common = x_a & x_b
    if common.sum() >= 0.9 * x_a.sum():
        np.testing.assert_array_equal(got, common)
    else:
        assert got.sum() == x_a.sum()
        assert not (common & ~got).any(), "the intersection is always kept"
        assert not (got & ~(x_a | x_b)).any(), "top-up only from X_a | X_b"


@settings(max_examples=150, deadline=None)
@given(_losses, _rho, _rho, st.integers(0, 2**31 - 1))
def test_follows_the_rule(losses, rho_ill, rho_red, seed):
    loss_a = torch.tensor(losses[0])
    loss_b = torch.tensor(losses[1])
    ill, red = prune_candidates(loss_a, loss_b, rho_ill, rho_red, generator=torch.Generator().manual_seed(seed))
    assert ill.dtype == torch.bool and ill.shape == loss_a.shape and red.shape == loss_a.shape
    ill_a, red_a = _expected_direction_sets(loss_a, rho_ill, rho_red)
    ill_b, red_b = _expected_direction_sets(loss_b, rho_ill, rho_red)
    _check_rule(ill_a, ill_b, ill.numpy())
    _check_rule(red_a, red_b, red.numpy())


@settings(max_examples=100, deadline=None)
@given(_losses, st.floats(-6, 6), st.floats(-6, 6), st.integers(0, 2**31 - 1))
def test_absolute_thresholds(losses, abs_ill, abs_red, seed):
    loss_a, loss_b = torch.tensor(losses[0]), torch.tensor(losses[1])
    ill, red = prune_candidates(loss_a, loss_b, generator=torch.Generator().manual_seed(seed),
                                abs_ill=abs_ill, abs_red=abs_red)
    _check_rule((loss_a > abs_ill).numpy(), (loss_b > abs_ill).numpy(), ill.numpy())
    _check_rule((loss_a < abs_red).numpy(), (loss_b < abs_red).numpy(), red.numpy())


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 80), _rho, _rho)
def test_equals_the_numpy_oracle_without_top_up(n, rho_ill, rho_red):
    # directions that agree on the order never need a top-up
    loss_a = torch.randn(n)
    loss_b = loss_a * 2 + 1
    got = prune_candidates(loss_a, loss_b, rho_ill, rho_red)
    want = prune_candidates_reference(loss_a, loss_b, rho_ill, rho_red)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    assert int(got[0].sum()) == candidate_count(n, rho_ill)
    assert int(got[1].sum()) == candidate_count(n, rho_red)


def test_ties_go_to_the_lower_position():
    loss = torch.zeros(10)
    ill, red = prune_candidates(loss, loss.clone(), rho_ill=0.3, rho_red=0.2)
    assert ill.nonzero().squeeze(1).tolist() == [0, 1, 2]
    assert red.nonzero().squeeze(1).tolist() == [0, 1]


def test_disjoint_directions_are_topped_up_deterministically():
    loss_a = torch.arange(100, dtype=torch.float32)
    loss_b = -loss_a  # opposite orders: the direction sets never meet
    first = prune_candidates(loss_a, loss_b, generator=torch.Generator().manual_seed(7))
    again = prune_candidates(loss_a, loss_b, generator=torch.Generator().manual_seed(7))
    for a, b in zip(first, again):
        assert torch.equal(a, b)
        assert int(a.sum()) == 35
    # the pool is the two extremes: top-35 of a and top-35 of b
    pool = (loss_a >= 65) | (loss_a < 35)
    assert not (first[0] & ~pool).any() and not (first[1] & ~pool).any()
    other = [prune_candidates(loss_a, loss_b, generator=torch.Generator().manual_seed(s))[0] for s in range(5)]
    assert any(not torch.equal(o, first[0]) for o in other), "the top-up should depend on the generator"


def test_top_up_is_uniform_over_the_pool():
    loss_a = torch.arange(10, dtype=torch.float32)
    loss_b = -loss_a
    generator = torch.Generator().manual_seed(0)
    picks = torch.zeros(10)
    trials = 2000
    for _ in range(trials):
        ill, _ = prune_candidates(loss_a, loss_b, rho_ill=0.3, rho_red=0.0, generator=generator)
        picks += ill.float()
    # pool = positions {0,1,2} (top of b) and {7,8,9} (top of a); 3 of the 6 drawn each time
    frequency = picks / trials
    assert torch.all(frequency[3:7] == 0)
    torch.testing.assert_close(frequency[[0, 1, 2, 7, 8, 9]], torch.full((6,), 0.5), atol=0.05, rtol=0)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(rho_ill=1.5), ValueError, r"rho_ill must be in \[0, 1\], got 1.5"),
        (dict(rho_red=-0.1), ValueError, "rho_red must be in"),
        (dict(loss_a=torch.arange(5)), TypeError, "loss_a must have a floating dtype"),
        (dict(loss_b=torch.randn(5, 1)), ValueError, "loss_b must be 1-D"),
        (dict(loss_b=torch.randn(6)), ValueError, "same length"),
        (dict(loss_a=torch.empty(0), loss_b=torch.empty(0)), ValueError, "empty batch"),
        (dict(loss_a=torch.tensor([0.0, float("nan"), 1, 2, 3])), ValueError, "loss_a contains NaN at position 1"),
        (dict(abs_ill="high"), TypeError, "abs_ill"),
        (dict(abs_ill=float("nan")), ValueError, "abs_ill is NaN"),
    ],
)
def test_bad_input(kwargs, error, match):
    args = dict(loss_a=torch.randn(5), loss_b=torch.randn(5))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        prune_candidates(**args)


@pytest.mark.skipif(HAS_CUDA or os.environ.get("TRITON_INTERPRET") != "1", reason="CPU tensors reach the kernel "
                    "only in Triton's interpreter")
def test_dispatch_to_the_triton_kernel_in_the_interpreter(monkeypatch):
    pytest.importorskip("triton")
    loss_a, loss_b = torch.randint(0, 5, (2, 40)).float()  # ties between positions
    want = prune_candidates(loss_a, loss_b, generator=torch.Generator().manual_seed(1))
    kernels = pytest.importorskip("scan_fast.kernels.prune_candidates")
    calls = []
    kernel = kernels.direction_masks_triton
    monkeypatch.setattr(kernels, "direction_masks_triton", lambda *args: calls.append(args) or kernel(*args))
    monkeypatch.setattr(prune_candidates_module, "use_kernels", lambda loss: True)
    got = prune_candidates(loss_a, loss_b, generator=torch.Generator().manual_seed(1))
    assert len(calls) == 2, "one kernel call per direction"
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@requires_cuda
def test_cuda_masks_on_device_follow_the_rule():
    loss_a, loss_b = torch.randn(1000, device="cuda"), torch.randn(1000, device="cuda")
    generator = torch.Generator(device="cuda").manual_seed(3)
    ill, red = prune_candidates(loss_a, loss_b, generator=generator)
    assert ill.is_cuda and red.is_cuda
    ill_a, red_a = _expected_direction_sets(loss_a.cpu(), 0.35, 0.35)
    ill_b, red_b = _expected_direction_sets(loss_b.cpu(), 0.35, 0.35)
    _check_rule(ill_a, ill_b, ill.cpu().numpy())
    _check_rule(red_a, red_b, red.cpu().numpy())
