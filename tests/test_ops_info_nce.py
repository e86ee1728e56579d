"""info_nce_per_sample and MocoLoss against the reference and MoCo v3's contrastive_loss."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import scan_fast.ops.base as ops_base
from helpers import CHUNK_ROWS, DTYPE_PARAMS, requires_cuda, requires_triton_interpreter
from scan_fast.ops.info_nce import (
    MocoLoss,
    RowCrossEntropyChunked,
    info_nce_per_sample,
    info_nce_per_sample_reference,
    row_cross_entropy_reference,
)

_SHAPE_PARAMS = ("B, D", [(1, 8), (7, 33), (64, 64), (130, 8), (130, 33)])
_TEMPERATURE = 0.2


def _queries_keys(batch, dim, world, dtype=torch.float32, device="cpu"):
    q = F.normalize(torch.randn(batch, dim, device=device), dim=1).to(dtype).requires_grad_()
    k = F.normalize(torch.randn(world * batch, dim, device=device), dim=1).to(dtype).requires_grad_()
    return q, k


def _check(fn, q, k, offset, atol, rtol, weighted):
    grad_loss = torch.randn(q.shape[0], device=q.device) if weighted else None
    results = []
    for op in (fn, info_nce_per_sample_reference):
        loss = op(q, k, _TEMPERATURE, offset)
        total = (loss * grad_loss).sum() if weighted else loss.mean()
        (grad_q,) = torch.autograd.grad(total, [q])
        results.append((loss, grad_q))
    (loss, grad_q), (ref_loss, ref_grad_q) = results
    assert loss.dtype == torch.float32 and loss.shape == (q.shape[0],)
    torch.testing.assert_close(loss, ref_loss, atol=atol, rtol=rtol)
    torch.testing.assert_close(grad_q, ref_grad_q, atol=atol, rtol=rtol)


@pytest.mark.parametrize("weighted", [True, False], ids=["random_grads", "mean_loss"])
@pytest.mark.parametrize("world, rank", [(1, 0), (3, 2)])
@pytest.mark.parametrize(*DTYPE_PARAMS)
@pytest.mark.parametrize(*_SHAPE_PARAMS)
def test_chunked_matches_reference(B, D, dtype, atol, rtol, world, rank, weighted):
    q, k = _queries_keys(B, D, world, dtype)

    def chunked(q, k, temperature, offset):
        return info_nce_per_sample(q, k, temperature, offset, chunk_rows=CHUNK_ROWS)

    _check(chunked, q, k, rank * B, atol, rtol, weighted)


def test_no_gradient_through_keys():
    q, k = _queries_keys(9, 8, 2)
    info_nce_per_sample(q, k, _TEMPERATURE, offset=9).sum().backward()
    assert q.grad is not None and k.grad is None


def test_row_cross_entropy_gradcheck_float64():
    q = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    k = torch.randn(13, 5, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, s: RowCrossEntropyChunked.apply(q, k, s, 4, 4), (q, k, scale))


def test_row_cross_entropy_key_gradients_match_reference():
    q = torch.randn(20, 6, requires_grad=True)
    k = torch.randn(45, 6, requires_grad=True)
    scale = torch.tensor(2.5, requires_grad=True)
    weights = torch.randn(20)
    got = torch.autograd.grad((RowCrossEntropyChunked.apply(q, k, scale, 20, 8) * weights).sum(), [q, k, scale])
    want = torch.autograd.grad((row_cross_entropy_reference(q, k, scale, 20) * weights).sum(), [q, k, scale])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_mixed_dtypes_and_non_contiguous():
    q = torch.randn(12, 10, dtype=torch.float64).T.contiguous().T.requires_grad_()
    k = torch.randn(12, 10, dtype=torch.bfloat16)
    assert not q.is_contiguous()
    loss = info_nce_per_sample(q, k, 0.5)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, info_nce_per_sample_reference(q, k.double(), 0.5))


def _moco_v3_contrastive_loss(q, k, T):
    """MoCo v3's MoCo.contrastive_loss on one process (rank 0, concat_all_gather is the identity)."""
    q = nn.functional.normalize(q, dim=1)
    k = nn.functional.normalize(k, dim=1)
    logits = torch.einsum("nc,mc->nm", [q, k]) / T
    N = logits.shape[0]
    labels = torch.arange(N, dtype=torch.long)
    return nn.CrossEntropyLoss()(logits, labels) * (2 * T)


def test_moco_loss_is_a_drop_in_with_per_sample_pair():
    q1, q2, k1, k2 = (torch.randn(24, 16, requires_grad=True) for _ in range(4))
    seen = []
    loss_fn = MocoLoss(T=_TEMPERATURE, on_per_sample=seen.append)
    ours = loss_fn(q1, k2) + loss_fn(q2, k1)
    theirs = _moco_v3_contrastive_loss(q1, k2, _TEMPERATURE) + _moco_v3_contrastive_loss(q2, k1, _TEMPERATURE)
    torch.testing.assert_close(ours, theirs)
    got = torch.autograd.grad(ours, [q1, q2, k1, k2], allow_unused=True)
    want = torch.autograd.grad(theirs, [q1, q2, k1, k2], allow_unused=True)
    for g, w in zip(got[:2], want[:2]):
        torch.testing.assert_close(g, w)
    loss_a, loss_b = loss_fn.per_sample_pair
    assert len(seen) == 2 and seen[0] is loss_a and seen[1] is loss_b
    torch.testing.assert_close(loss_a, info_nce_per_sample_reference(
        F.normalize(q1, dim=1), F.normalize(k2, dim=1), _TEMPERATURE).detach())
    assert not loss_b.requires_grad


@pytest.mark.parametrize(
    "q, k, temperature, offset, error, match",
    [
        (torch.randn(4), torch.randn(4, 3), 0.2, None, ValueError, "q must be 2-D"),
        (torch.randn(4, 3), torch.randn(4, 2), 0.2, None, ValueError, "feature dims differ"),
        (torch.randn(0, 3), torch.randn(4, 3), 0.2, None, ValueError, "q is an empty batch"),
        (torch.randn(4, 3), torch.ones(4, 3, dtype=torch.int32), 0.2, None, TypeError, "k.*int32"),
        (torch.randn(4, 3), torch.randn(4, 3), 0.0, None, ValueError, "temperature must be finite and > 0"),
        (torch.randn(4, 3), torch.randn(4, 3), float("nan"), None, ValueError, "temperature"),
        (torch.randn(4, 3), torch.randn(4, 3), "0.2", None, TypeError, "temperature"),
        (torch.randn(4, 3), torch.randn(6, 3), 0.2, 3, ValueError, "offset=3"),
        (torch.randn(4, 3), torch.randn(6, 3), 0.2, -1, ValueError, "offset=-1"),
    ],
)
def test_bad_input(q, k, temperature, offset, error, match):
    with pytest.raises(error, match=match):
        info_nce_per_sample(q, k, temperature, offset)


def test_bad_chunk_rows_and_double_backward_are_named():
    q, k = _queries_keys(6, 4, 1)
    with pytest.raises(ValueError, match="chunk_rows must be >= 1, got -3"):
        info_nce_per_sample(q, k, _TEMPERATURE, chunk_rows=-3)
    loss = info_nce_per_sample(q, k, _TEMPERATURE)
    with pytest.raises(RuntimeError, match="info_nce_per_sample: double backward .* is not supported"):
        torch.autograd.grad(loss.sum(), q, create_graph=True)


def test_moco_loss_rejects_bad_temperature():
    with pytest.raises(ValueError, match="temperature must be finite and > 0, got -1"):
        MocoLoss(T=-1.0)


@requires_triton_interpreter
def test_dispatch_to_the_triton_kernel_in_the_interpreter(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setattr(ops_base, "use_kernels", lambda features, dtype: True)
    q, k = _queries_keys(7, 8, 2)
    assert type(info_nce_per_sample(q, k, _TEMPERATURE, 7).grad_fn.next_functions[0][0]).__name__ == (
        "InfoNCEFunctionBackward")
    _check(info_nce_per_sample, q, k, 7, 1e-5, 1e-5, weighted=True)


@requires_cuda
@pytest.mark.parametrize(*DTYPE_PARAMS)
@pytest.mark.parametrize("B, D", [(1, 8), (130, 33), (512, 256)])
def test_cuda_matches_reference(B, D, dtype, atol, rtol):
    q, k = _queries_keys(B, D, 2, dtype, device="cuda")
    _check(info_nce_per_sample, q, k, B, max(atol, 1e-4), max(rtol, 1e-4), weighted=True)
