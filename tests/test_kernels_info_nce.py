"""InfoNCEFunction (Triton) against the materialised row cross-entropy, in values and gradients.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (tests/conftest.py).
"""
import functools

import pytest
import torch
import triton
import torch.nn.functional as F
from helpers import DEVICE, FP32_GRAD_TOL, HALF_DTYPE_PARAMS, LOSS_TOL, assert_grads_close, requires_cuda
from hypothesis import given, settings
from hypothesis import strategies as st

from scan_fast.kernels.info_nce import InfoNCEFunction
from scan_fast.ops.info_nce import row_cross_entropy_reference

MOCO_T = 0.2

# (B, M, offset): queries against M keys, positive of row i at key i + offset
# (offset = rank * B for keys gathered from world_size = M / B ranks).
_SHAPE_PARAMS = ("B, M, offset, D", [
    (b, m, o, d)
    for b, m, o in ((1, 1, 0), (1, 3, 2), (7, 7, 0), (7, 21, 14), (64, 128, 64), (130, 130, 0))
    for d in (8, 33, 64)
])
_HALF_SHAPES = [(7, 21, 7, 33), (130, 130, 0, 64)]


def _inputs(batch, keys, dim, dtype, key_grad=True, device=DEVICE):
    q = F.normalize(torch.randn(batch, dim, device=device), dim=1).to(dtype).requires_grad_()
    k = F.normalize(torch.randn(keys, dim, device=device), dim=1).to(dtype).requires_grad_(key_grad)
    scale = torch.tensor(1 / MOCO_T, device=device, requires_grad=True)
    return q, k, scale


_assert_grads_close = functools.partial(assert_grads_close, names=("dq", "dk", "d_scale"))


def _check_against_reference(batch, keys, offset, dim, dtype, grad_tol, weighted):
    q, k, scale = _inputs(batch, keys, dim, dtype)
    loss = InfoNCEFunction.apply(q, k, scale, offset)
    ref = row_cross_entropy_reference(q, k, scale, offset)
    assert loss.dtype == torch.float32 and loss.shape == (batch,)
    torch.testing.assert_close(loss, ref, **LOSS_TOL)
    if weighted:
        grad = torch.randn(batch, device=DEVICE)
        ours = torch.autograd.grad(loss, (q, k, scale), grad)
        want = torch.autograd.grad(ref, (q, k, scale), grad)
    else:
        ours = torch.autograd.grad(loss.mean(), (q, k, scale))
        want = torch.autograd.grad(ref.mean(), (q, k, scale))
    _assert_grads_close(ours, want, grad_tol)


@pytest.mark.parametrize("weighted", [True, False], ids=["random_grad", "mean_loss"])
@pytest.mark.parametrize(*_SHAPE_PARAMS)
def test_fp32_matches_reference(B, M, offset, D, weighted):
    _check_against_reference(B, M, offset, D, torch.float32, FP32_GRAD_TOL, weighted)


@pytest.mark.parametrize("weighted", [True, False], ids=["random_grad", "mean_loss"])
@pytest.mark.parametrize(*HALF_DTYPE_PARAMS)
@pytest.mark.parametrize("B, M, offset, D", _HALF_SHAPES)
def test_half_precision_matches_reference(B, M, offset, D, dtype, grad_tol, weighted):
    _check_against_reference(B, M, offset, D, dtype, grad_tol, weighted)


@settings(max_examples=12, deadline=None)
@given(batch=st.integers(1, 70), world=st.integers(1, 3), dim=st.integers(1, 70), data=st.data())
def test_random_shapes_and_offsets(batch, world, dim, data):
    # keys gathered from `world` ranks; this rank's positives start at rank * batch
    rank = data.draw(st.integers(0, world - 1), label="rank")
    scale_value = data.draw(st.floats(0.01, 100.0), label="scale")
    q, k, _ = _inputs(batch, world * batch, dim, torch.float32)
    scale = torch.tensor(scale_value, device=DEVICE, requires_grad=True)
    loss = InfoNCEFunction.apply(q, k, scale, rank * batch)
    ref = row_cross_entropy_reference(q, k, scale, rank * batch)
    torch.testing.assert_close(loss, ref, atol=LOSS_TOL["atol"], rtol=1e-4)
    grad = torch.randn(batch, device=DEVICE)
    _assert_grads_close(torch.autograd.grad(loss, (q, k, scale), grad),
                        torch.autograd.grad(ref, (q, k, scale), grad), max(1e-4, FP32_GRAD_TOL))


def test_keys_without_grad_as_in_moco():
    # MoCo v3: keys come from the momentum encoder, no gradient flows into them.
    q, k, scale = _inputs(33, 66, 16, torch.float32, key_grad=False)
    loss = InfoNCEFunction.apply(q, k, scale, 33) * (2 * MOCO_T)
    ref = row_cross_entropy_reference(q, k, scale, 33) * (2 * MOCO_T)
    torch.testing.assert_close(loss, ref, **LOSS_TOL)
    _assert_grads_close(torch.autograd.grad(loss.mean(), (q, scale)),
                        torch.autograd.grad(ref.mean(), (q, scale)), FP32_GRAD_TOL, names=("dq", "d_scale"))


def test_only_key_grad():
    # gather_with_grad on the text side: the loss may reach only the gathered keys.
    q, k, scale = _inputs(9, 27, 16, torch.float32)
    q.requires_grad_(False)
    weights = torch.rand(9, device=DEVICE)
    got = torch.autograd.grad((InfoNCEFunction.apply(q, k, scale, 9) * weights).sum(), (k,))
    want = torch.autograd.grad((row_cross_entropy_reference(q, k, scale, 9) * weights).sum(), (k,))
    _assert_grads_close(got, want, FP32_GRAD_TOL, names=("dk",))


def test_non_contiguous_and_mixed_dtype_inputs():
    q = torch.randn(40, 12, device=DEVICE)[::2].requires_grad_()  # every other row: strided
    k = torch.randn(12, 40, device=DEVICE).to(torch.bfloat16).t().requires_grad_()  # transposed view
    scale = torch.tensor(2.0, device=DEVICE, requires_grad=True)
    loss = InfoNCEFunction.apply(q, k, scale, 5)
    ref = row_cross_entropy_reference(q, k, scale, 5)
    torch.testing.assert_close(loss, ref, **LOSS_TOL)
    grad = torch.randn(20, device=DEVICE)
    got = torch.autograd.grad(loss, (q, k, scale), grad)
    want = torch.autograd.grad(ref, (q, k, scale), grad)
    assert got[1].dtype == torch.bfloat16
    _assert_grads_close(got, want, 2e-2)


@pytest.mark.parametrize("q, k, offset, error, match", [
    (torch.randn(4, 8, 1), torch.randn(4, 8), 0, ValueError, "q must be 2-D"),
    (torch.randn(4, 8), torch.randn(4, 6), 0, ValueError, "same feature dim"),
    (torch.randn(4, 8), torch.randn(0, 8), 0, ValueError, "k is an empty batch"),
    (torch.randn(4, 8), torch.randn(8, 8), 5, ValueError, "offset=5"),
    (torch.randn(4, 8), torch.randn(8, 8), -1, ValueError, "offset=-1"),
    (torch.randn(4, 8), torch.randn(8, 8), 1.0, TypeError, "offset must be an int"),
    (torch.randn(4, 8), torch.ones(8, 8, dtype=torch.int32), 0, TypeError, "k must have a floating dtype"),
    (torch.randn(4, 8, dtype=torch.float64), torch.randn(8, 8), 0, TypeError, "q must be float32, bfloat16"),
])
def test_bad_input(q, k, offset, error, match):
    with pytest.raises(error, match=match):
        InfoNCEFunction.apply(q.to(DEVICE), k.to(DEVICE), 1.0, offset)


@requires_cuda
@pytest.mark.parametrize("B, M, offset, D", [(1000, 4000, 3000, 256), (4097, 4097, 0, 512), (1024, 2048, 1024, 2048)])
@pytest.mark.parametrize("dtype, grad_tol", [(torch.float32, 1e-3), (torch.bfloat16, 3e-2), (torch.float16, 5e-3)])
def test_cuda_large_batches_match_reference(B, M, offset, D, dtype, grad_tol):
    _check_against_reference(B, M, offset, D, dtype, grad_tol, weighted=True)


@pytest.mark.parametrize("limit", [232448, 166912], ids=["H100", "A100"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim", [8, 512])
@pytest.mark.parametrize("autotune", [True, False])
def test_config_pruning_fits_shared_memory(monkeypatch, limit, dtype, dim, autotune):
    # The GPU config lists (not the interpreter's single config) pruned for a device's shared memory.
    import scan_fast.kernels.tiles as kernels

    monkeypatch.setattr(kernels, "max_shared_memory", lambda device: limit)
    monkeypatch.setattr(kernels, "AUTOTUNE", autotune)
    named_args = {"X_ptr": torch.empty(0, dtype=dtype), "D": dim}
    for config_fn, prune_fn, backward in ((kernels.forward_configs, kernels.prune_forward, False),
                                          (kernels.backward_configs, kernels.prune_backward, True)):
        monkeypatch.setattr(kernels, "INTERPRET", False)
        configs = config_fn()
        kept = prune_fn(configs, named_args)
        assert kept and (len(kept) == 1 or autotune)
        element = torch.empty(0, dtype=dtype).element_size()
        fitting = [c for c in configs if kernels.shared_memory_bytes(c, element, backward) <= limit]
        narrowest_k = min(c.kwargs["BLOCK_K"] for c in fitting)
        for config in kept:
            assert str(config) in set(map(str, fitting))
            # small D keeps only the narrowest K step that fits, never wider ones
            assert config.kwargs["BLOCK_K"] <= max(narrowest_k, triton.next_power_of_2(dim))
