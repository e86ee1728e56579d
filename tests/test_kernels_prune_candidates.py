"""direction_masks_triton against the numpy oracle of SCAN's per-direction rule.

Without a GPU the kernel runs in Triton's interpreter on CPU tensors (tests/conftest.py).
"""
import numpy as np
import pytest
import torch
from helpers import DEVICE, requires_cuda
from hypothesis import given, settings
from hypothesis import strategies as st

from scan_fast.schedule.candidates import candidate_count, direction_set
from scan_fast.kernels.prune_candidates import direction_masks_triton


def _oracle(loss: torch.Tensor, k_ill: int, k_red: int):
    values = loss.detach().cpu().double().numpy()
    return direction_set(values, k_ill, None, highest=True), direction_set(values, k_red, None, highest=False)


def _check(loss: torch.Tensor, k_ill: int, k_red: int):
    ill, red = direction_masks_triton(loss, k_ill, k_red)
    assert ill.dtype == red.dtype == torch.bool
    assert ill.device == red.device == loss.device
    want_ill, want_red = _oracle(loss, k_ill, k_red)
    np.testing.assert_array_equal(ill.cpu().numpy(), want_ill)
    np.testing.assert_array_equal(red.cpu().numpy(), want_red)
    assert int(ill.sum()) == k_ill and int(red.sum()) == k_red


# Few distinct values, so ties (broken by position) are the common case; NaN ranks last.
_losses = st.lists(
    st.sampled_from([0.0, -0.0, 0.5, 1.0, 2.5, -3.0, float("inf"), float("-inf"), float("nan")]),
    min_size=1, max_size=200)


@settings(max_examples=60, deadline=None)
@given(values=_losses, data=st.data())
def test_matches_oracle_with_ties(values, data):
    n = len(values)
    k_ill = data.draw(st.integers(0, n), label="k_ill")
    k_red = data.draw(st.integers(0, n), label="k_red")
    _check(torch.tensor(values, dtype=torch.float32, device=DEVICE), k_ill, k_red)


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.floats(allow_nan=False, width=32), min_size=1, max_size=300), rho=st.floats(0, 1))
def test_matches_oracle_at_scan_fractions(values, rho):
    loss = torch.tensor(values, dtype=torch.float32, device=DEVICE)
    k = candidate_count(len(values), rho)
    _check(loss, k, k)


@pytest.mark.parametrize("n", [1, 7, 64, 130, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_dtypes_and_sizes(n, dtype):
    loss = torch.randn(n, device=DEVICE).to(dtype)  # half precision: many ties
    _check(loss, candidate_count(n, 0.35), candidate_count(n, 0.35))


def test_all_equal_picks_lowest_positions():
    ill, red = direction_masks_triton(torch.ones(10, device=DEVICE), 3, 4)
    assert ill.cpu().tolist() == [True] * 3 + [False] * 7
    assert red.cpu().tolist() == [True] * 4 + [False] * 6


def test_deterministic_and_input_untouched():
    loss = torch.randn(257, device=DEVICE).round(decimals=1)
    before = loss.clone()
    first = direction_masks_triton(loss, 90, 90)
    second = direction_masks_triton(loss, 90, 90)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert torch.equal(loss, before)


def test_requires_grad_input():
    loss = torch.randn(20, device=DEVICE, requires_grad=True)
    _check(loss, 7, 7)


@pytest.mark.parametrize("loss, k_ill, k_red, error, match", [
    (torch.randn(3, 2), 1, 1, ValueError, "loss must be 1-D"),
    (torch.arange(5), 1, 1, TypeError, "loss must be floating point"),
    (torch.randn(5), 6, 1, ValueError, r"k_ill=6 must lie in \[0, 5\]"),
    (torch.randn(5), 1, -1, ValueError, r"k_red=-1 must lie in \[0, 5\]"),
    (torch.randn(5), 1.5, 1, TypeError, "k_ill must be an int"),
    ([1.0, 2.0], 1, 1, TypeError, "loss must be a torch.Tensor"),
])
def test_bad_input(loss, k_ill, k_red, error, match):
    if isinstance(loss, torch.Tensor):
        loss = loss.to(DEVICE)
    with pytest.raises(error, match=match):
        direction_masks_triton(loss, k_ill, k_red)


@requires_cuda
@pytest.mark.parametrize("n", [4096, 65537])
def test_cuda_large_batches_match_oracle(n):
    loss = torch.randn(n, device="cuda").round(decimals=2)  # ties at this size too
    _check(loss, candidate_count(n, 0.35), candidate_count(n, 0.35))
