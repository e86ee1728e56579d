"""SCAN's candidate rule (scan_fast.schedule.candidates): the numpy oracle, the C++ engine and the
torch/Triton op give the same masks bit for bit, top-ups and thresholds included."""
import numpy as np
import pytest
import torch
from helpers import requires_cuda, requires_triton_interpreter
from hypothesis import given, settings
from hypothesis import strategies as st

from scan_fast import keyed_hash
from scan_fast.schedule import candidates
from scan_fast.schedule.candidates import (batch_candidates, batch_candidates_reference, candidate_count,
                                           direction_set, prune_candidates, prune_candidates_reference)

# few distinct values so that ties are common, or any float32
_losses = st.integers(1, 80).flatmap(
    lambda n: st.one_of(
        st.tuples(st.lists(st.integers(0, 6).map(float), min_size=n, max_size=n),
                  st.lists(st.integers(0, 6).map(float), min_size=n, max_size=n)),
        st.tuples(st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=n, max_size=n),
                  st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=n, max_size=n))))
_rho_pair = st.floats(0.0, 1.0).flatmap(lambda ill: st.tuples(st.just(ill), st.floats(0.0, 1.0 - ill)))
_u64 = st.integers(0, 2**64 - 1)


def _tensors(losses, device="cpu"):
    return (torch.tensor(losses[0], dtype=torch.float32, device=device),
            torch.tensor(losses[1], dtype=torch.float32, device=device))


def _assert_masks_equal(got, want):
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.cpu().numpy() if isinstance(g, torch.Tensor) else g,
                                      w.cpu().numpy() if isinstance(w, torch.Tensor) else w)


def test_hash_is_the_engines_counter_rng():
    """The Python hash (numpy and torch) is the C++ engine's splitmix64 stream."""
    key = keyed_hash.stream_key(7, 11, 1)
    counters = np.arange(1000, dtype=np.int64)
    as_numpy = keyed_hash.counter_hashes(key, counters).view(np.uint64)
    as_torch = keyed_hash.counter_hashes(key, torch.from_numpy(counters)).numpy().view(np.uint64)
    as_ints = [keyed_hash.mix64_int(key + c * keyed_hash.GOLDEN) for c in range(1000)]
    np.testing.assert_array_equal(as_numpy, as_torch)
    assert as_numpy.tolist() == as_ints
    # splitmix64's published first output for state 0 (Vigna's reference implementation)
    assert keyed_hash.mix64_int(keyed_hash.GOLDEN) == 0xE220A8397B1DCDAF


@settings(max_examples=150, deadline=None)
@given(_losses, _rho_pair, _u64, _u64)
def test_op_engine_and_oracle_agree_with_top_up(losses, rhos, seed, stream):
    loss_a, loss_b = _tensors(losses)
    rho_ill, rho_red = rhos
    n = loss_a.shape[0]
    k_ill, k_red = candidate_count(n, rho_ill), candidate_count(n, rho_red)
    want = batch_candidates_reference(loss_a.numpy(), loss_b.numpy(), k_ill=k_ill, k_red=k_red, seed=seed,
                                      stream=stream)
    _assert_masks_equal(prune_candidates(loss_a, loss_b, rho_ill, rho_red, seed=seed, stream=stream), want)
    _assert_masks_equal(batch_candidates(loss_a.numpy(), loss_b.numpy(), k_ill=k_ill, k_red=k_red, seed=seed,
                                         stream=stream), want)


@settings(max_examples=100, deadline=None)
@given(_losses, st.floats(0, 6, exclude_min=True), st.floats(0, 6, exclude_min=True), _u64)
def test_op_engine_and_oracle_agree_with_thresholds(losses, abs_ill, abs_red, stream):
    loss_a, loss_b = _tensors(losses)
    want = batch_candidates_reference(loss_a.numpy(), loss_b.numpy(), abs_ill=abs_ill, abs_red=abs_red, seed=5,
                                      stream=stream)
    _assert_masks_equal(prune_candidates(loss_a, loss_b, seed=5, stream=stream, abs_ill=abs_ill, abs_red=abs_red),
                        want)
    _assert_masks_equal(batch_candidates(loss_a.numpy(), loss_b.numpy(), abs_ill=abs_ill, abs_red=abs_red, seed=5,
                                         stream=stream), want)


def _rule_holds(x_a, x_b, got):
    common = x_a & x_b
    if common.sum() * 10 >= 9 * x_a.sum():
        np.testing.assert_array_equal(got, common)
    else:
        assert got.sum() == x_a.sum()
        assert not (common & ~got).any(), "the intersection is always kept"
        assert not (got & ~(x_a | x_b)).any(), "top-up only from X_a | X_b"


def test_top_up_takes_the_smallest_hashes_of_the_pool():
    loss_a = torch.arange(10, dtype=torch.float32)
    loss_b = -loss_a  # X_a = {7, 8, 9}, X_b = {0, 1, 2}: no overlap, 3 of the 6 are added
    ill, _ = prune_candidates(loss_a, loss_b, rho_ill=0.3, rho_red=0.0, seed=4, stream=9)
    pool = np.array([0, 1, 2, 7, 8, 9])
    hashes = keyed_hash.counter_hashes(keyed_hash.stream_key(4, 9, candidates.TOP_UP_ILL), pool).view(np.uint64)
    assert sorted(np.flatnonzero(ill.numpy()).tolist()) == sorted(pool[np.argsort(hashes)[:3]].tolist())


def test_top_up_is_uniform_over_the_pool():
    loss_a = torch.arange(10, dtype=torch.float32)
    loss_b = -loss_a
    picks = torch.zeros(10)
    trials = 2000
    for stream in range(trials):
        ill, _ = prune_candidates(loss_a, loss_b, rho_ill=0.3, rho_red=0.0, seed=0, stream=stream)
        picks += ill.float()
    frequency = picks / trials
    assert torch.all(frequency[3:7] == 0)
    torch.testing.assert_close(frequency[[0, 1, 2, 7, 8, 9]], torch.full((6,), 0.5), atol=0.05, rtol=0)


def test_top_up_depends_on_seed_and_stream_only():
    loss_a, loss_b = torch.rand(2, 500)
    first = prune_candidates(loss_a, loss_b, seed=1, stream=2)
    _assert_masks_equal(prune_candidates(loss_a.clone(), loss_b.clone(), seed=1, stream=2), first)
    assert not torch.equal(prune_candidates(loss_a, loss_b, seed=1, stream=3)[0], first[0])
    assert not torch.equal(prune_candidates(loss_a, loss_b, seed=2, stream=2)[0], first[0])


def test_ties_go_to_the_lower_position():
    loss = torch.tensor([1.0, 2.0, 2.0, 2.0, 0.0, 0.0, 5.0])
    ill, red = prune_candidates(loss, loss, rho_ill=3 / 7, rho_red=3 / 7)
    assert ill.tolist() == [False, True, True, False, False, False, True]
    assert red.tolist() == [True, False, False, False, True, True, False]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_agree_with_the_oracle(dtype):
    loss_a, loss_b = torch.randn(2, 300).to(dtype)  # half precision: many ties
    want = prune_candidates_reference(loss_a, loss_b, seed=3, stream=4)
    _assert_masks_equal(prune_candidates(loss_a, loss_b, seed=3, stream=4), want)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(rho_ill=1.5), ValueError, r"rho_ill must be in \[0, 1\], got 1.5"),
        (dict(rho_red=-0.1), ValueError, "rho_red must be in"),
        (dict(rho_ill=0.7, rho_red=0.5), ValueError, r"rho_ill \+ rho_red must be <= 1"),
        (dict(loss_a=torch.arange(5)), TypeError, "loss_a must have a floating dtype"),
        (dict(loss_b=torch.randn(5, 1)), ValueError, "loss_b must be 1-D"),
        (dict(loss_b=torch.randn(6)), ValueError, "same length"),
        (dict(loss_a=torch.empty(0), loss_b=torch.empty(0)), ValueError, "empty batch"),
        (dict(abs_ill="high"), TypeError, "abs_ill must be a real number"),
        (dict(abs_red=float("nan")), ValueError, "abs_red must be finite, got nan"),
        (dict(seed=-1), ValueError, "seed must be >= 0"),
        (dict(stream=2**64), ValueError, "stream must be <="),
    ],
)
def test_bad_input(kwargs, error, match):
    args = dict(loss_a=torch.randn(5), loss_b=torch.randn(5))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        prune_candidates(**args)


@requires_triton_interpreter
@settings(max_examples=15, deadline=None)
@given(_losses, _rho_pair, _u64)
def test_triton_path_equals_the_oracle_in_the_interpreter(losses, rhos, stream):
    """The kernel path (Triton direction masks + device combine), top-ups included, bit for bit."""
    pytest.importorskip("triton")
    loss_a, loss_b = _tensors(losses)
    n = loss_a.shape[0]
    k_ill, k_red = candidate_count(n, rhos[0]), candidate_count(n, rhos[1])
    got = candidates.masks_on_device(loss_a, loss_b, k_ill=k_ill, k_red=k_red, abs_ill=None, abs_red=None,
                                     seed=9, stream=stream, use_kernel=True)
    _assert_masks_equal(got, batch_candidates_reference(loss_a.numpy(), loss_b.numpy(), k_ill=k_ill, k_red=k_red,
                                                        seed=9, stream=stream))


@requires_triton_interpreter
def test_triton_path_with_thresholds_in_the_interpreter():
    loss_a, loss_b = torch.randint(0, 5, (2, 70)).float()
    got = candidates.masks_on_device(loss_a, loss_b, k_ill=None, k_red=20, abs_ill=2.5, abs_red=None, seed=1,
                                     stream=2, use_kernel=True)
    _assert_masks_equal(got, batch_candidates_reference(loss_a.numpy(), loss_b.numpy(), abs_ill=2.5, k_red=20,
                                                        seed=1, stream=2))


@requires_cuda
@pytest.mark.parametrize("n", [1000, 65537])
def test_cuda_masks_equal_the_engine(n):
    loss_a, loss_b = torch.randn(n, device="cuda"), torch.randn(n, device="cuda")
    ill, red = prune_candidates(loss_a, loss_b, seed=3, stream=8)
    assert ill.is_cuda and red.is_cuda
    k = candidate_count(n, 0.35)
    _assert_masks_equal((ill, red), batch_candidates(loss_a.cpu().numpy(), loss_b.cpu().numpy(), k_ill=k, k_red=k,
                                                     seed=3, stream=8))


def test_rule_holds_for_direction_sets():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.random(50), rng.random(50)
        ill, red = batch_candidates_reference(a, b, k_ill=17, k_red=10, seed=0, stream=1)
        _rule_holds(direction_set(a, 17, None, True), direction_set(b, 17, None, True), ill)
        _rule_holds(direction_set(a, 10, None, False), direction_set(b, 10, None, False), red)
