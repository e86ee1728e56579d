"""SigLipLossFunction (Triton) against the materialised reference, in values and gradients.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (tests/conftest.py), which is
slow: the shapes here are few and small.
"""
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import (DEVICE, FP32_GRAD_TOL, HALF_DTYPE_PARAMS, LOSS_TOL, SIGLIP_INIT_BIAS, SIGLIP_INIT_SCALE,
                     assert_grads_close, requires_cuda, unit_features)
from hypothesis import given, settings
from hypothesis import strategies as st

from scan_fast.kernels.siglip_loss import SigLipLossFunction
from scan_fast.ops.siglip_loss import siglip_loss_per_sample_reference

# one power-of-two shape, odd ones straddling the interpreter's 64-row tiles and 32-wide K and D steps
_SHAPE_PARAMS = ("B, D", [(1, 8), (7, 33), (64, 64), (130, 33)])
_HALF_SHAPES = [(7, 33), (130, 64)]


def _inputs(batch, dim, dtype, device=DEVICE, scale=SIGLIP_INIT_SCALE, bias=SIGLIP_INIT_BIAS):
    image, text = unit_features(batch, dim, dtype, device)
    scale = torch.tensor(scale, device=device, requires_grad=True)
    bias = torch.tensor([bias], device=device, requires_grad=True)
    return image, text, scale, bias


_assert_grads_close = functools.partial(assert_grads_close, names=("d_image", "d_text", "d_scale", "d_bias"))


def _check_against_reference(batch, dim, dtype, grad_tol, weighted, **scalars):
    inputs = _inputs(batch, dim, dtype, **scalars)
    ours = SigLipLossFunction.apply(*inputs)
    ref = siglip_loss_per_sample_reference(*inputs)
    for got, want in zip(ours, ref):
        assert got.dtype == torch.float32 and got.shape == (batch,)
        torch.testing.assert_close(got, want, **LOSS_TOL)
    if weighted:  # per-sample weights: every logit's gradient mixes its row's and its column's
        grads = (torch.randn(batch, device=DEVICE), torch.randn(batch, device=DEVICE))
        got = torch.autograd.grad(ours, inputs, grads)
        want = torch.autograd.grad(ref, inputs, grads)
    else:  # open_clip's mean loss, the loss-is-last path (the text losses' grad arrives as None)
        got = torch.autograd.grad(ours[0].mean(), inputs)
        want = torch.autograd.grad(ref[0].mean(), inputs)
    _assert_grads_close(got, want, grad_tol)


@pytest.mark.parametrize("weighted", [True, False], ids=["random_grad", "mean_loss"])
@pytest.mark.parametrize(*_SHAPE_PARAMS)
def test_fp32_matches_reference(B, D, weighted):
    _check_against_reference(B, D, torch.float32, FP32_GRAD_TOL, weighted)


@pytest.mark.parametrize(*HALF_DTYPE_PARAMS)
@pytest.mark.parametrize("B, D", _HALF_SHAPES)
def test_half_precision_matches_reference(B, D, dtype, grad_tol):
    _check_against_reference(B, D, dtype, grad_tol, weighted=True)


@settings(max_examples=8, deadline=None)
@given(batch=st.integers(1, 70), dim=st.integers(1, 40), scale=st.floats(0.1, 100.0), bias=st.floats(-20.0, 5.0),
       seed=st.integers(0, 2**16))
def test_random_shapes_scales_and_biases(batch, dim, scale, bias, seed):
    generator = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(batch, dim, generator=generator), dim=1).to(DEVICE).requires_grad_()
    text = F.normalize(torch.randn(batch, dim, generator=generator), dim=1).to(DEVICE).requires_grad_()
    scalars = (torch.tensor(scale, device=DEVICE, requires_grad=True),
               torch.tensor(bias, device=DEVICE, requires_grad=True))
    ours = SigLipLossFunction.apply(image, text, *scalars)
    ref = siglip_loss_per_sample_reference(image, text, *scalars)
    for got, want in zip(ours, ref):
        torch.testing.assert_close(got, want, atol=LOSS_TOL["atol"], rtol=1e-4)
    grads = (torch.randn(batch, generator=generator).to(DEVICE), torch.randn(batch, generator=generator).to(DEVICE))
    _assert_grads_close(torch.autograd.grad(ours, (image, text, *scalars), grads),
                        torch.autograd.grad(ref, (image, text, *scalars), grads), max(1e-4, FP32_GRAD_TOL))


def test_easy_negatives_keep_their_small_losses():
    # Matched pairs at z = 20 and negatives at z = 40 * cos - 20 (cosines of random 128-d vectors,
    # |cos| < 0.4): every loss lies below 1e-3, where log(1 + x) computed in fp32 keeps only
    # the leading digits of x (and none below 6e-8); the sums must keep all of them.
    image, text, scale, bias = _inputs(70, 128, torch.float32, scale=40.0, bias=-20.0)
    with torch.no_grad():
        text.copy_(image)
    ours = SigLipLossFunction.apply(image, text, scale, bias)
    ref = siglip_loss_per_sample_reference(image.double(), text.double(), 40.0, -20.0)
    for got, want in zip(ours, ref):
        assert want.max() < 1e-2
        torch.testing.assert_close(got.double(), want, atol=0, rtol=2e-5)


def test_distributed_offset_rows_against_more_columns():
    # rows of one rank (offset 13) against the texts of three ranks, as SigLipLoss runs it
    image, _, scale, bias = _inputs(13, 24, torch.float32)
    all_text = F.normalize(torch.randn(39, 24, device=DEVICE), dim=1).requires_grad_()
    row_loss, col_loss = SigLipLossFunction.apply(image, all_text, scale, bias, 13)
    logits = scale * image @ all_text.T + bias
    labels = -torch.ones_like(logits)
    labels[:, 13:26] += 2 * torch.eye(13, device=DEVICE)
    losses = -F.logsigmoid(labels * logits)
    torch.testing.assert_close(row_loss, losses.sum(1), **LOSS_TOL)
    torch.testing.assert_close(col_loss, losses.sum(0), **LOSS_TOL)
    grads = (torch.randn(13, device=DEVICE), torch.randn(39, device=DEVICE))
    inputs = (image, all_text, scale, bias)
    _assert_grads_close(torch.autograd.grad((row_loss, col_loss), inputs, grads),
                        torch.autograd.grad((losses.sum(1), losses.sum(0)), inputs, grads), FP32_GRAD_TOL)


def test_python_float_scalars_and_mixed_dtypes():
    image, text, _, _ = _inputs(10, 8, torch.float32)
    text = text.detach().to(torch.float16).requires_grad_()
    ours = SigLipLossFunction.apply(image, text, 5.0, -3.0)
    ref = siglip_loss_per_sample_reference(image, text, 5.0, -3.0)
    for got, want in zip(ours, ref):
        torch.testing.assert_close(got, want, **LOSS_TOL)
    got = torch.autograd.grad(sum(ours).sum(), (image, text))
    want = torch.autograd.grad(sum(ref).sum(), (image, text))
    assert got[1].dtype == torch.float16  # each gradient in its input's dtype
    for a, e in zip(got, want):
        torch.testing.assert_close(a.float(), e.float(), atol=4e-3 * max(1.0, e.abs().max().item()), rtol=4e-3)


@pytest.mark.parametrize("image, text, scale, bias, error, match", [
    (torch.randn(4), torch.randn(4), 1.0, 0.0, ValueError, "image_features must be 2-D"),
    (torch.randn(4, 8), torch.randn(4, 9), 1.0, 0.0, ValueError, "same dim"),
    (torch.randn(0, 8), torch.randn(0, 8), 1.0, 0.0, ValueError, "image_features is an empty batch"),
    (torch.randn(4, 8), torch.randn(4, 8, dtype=torch.float64), 1.0, 0.0, TypeError,
     "text_features must be float32, bfloat16 or float16"),
    (torch.randn(4, 8), torch.randn(4, 8), 1.0, torch.ones(2), ValueError, "logit_bias must be a scalar"),
    (torch.randn(4, 8), torch.randn(4, 8), "1", 0.0, TypeError, "logit_scale must be a float"),
])
def test_bad_input(image, text, scale, bias, error, match):
    with pytest.raises(error, match=match):
        SigLipLossFunction.apply(image.to(DEVICE), text.to(DEVICE), scale, bias)


@requires_cuda
@pytest.mark.parametrize("B, D", [(1000, 512), (4097, 768), (2048, 2048)])
@pytest.mark.parametrize("dtype, grad_tol", [(torch.float32, 1e-3), (torch.bfloat16, 3e-2), (torch.float16, 5e-3)])
def test_cuda_large_batches_match_reference(B, D, dtype, grad_tol):
    _check_against_reference(B, D, dtype, grad_tol, weighted=True)


@requires_cuda
def test_cuda_memory_is_linear_in_batch():
    batch, dim = 16384, 256
    inputs = _inputs(batch, dim, torch.bfloat16)
    # warm-up: autotuning (when on) benchmarks with a large L2-flush buffer of its own
    image_loss, _ = SigLipLossFunction.apply(*inputs)
    torch.autograd.grad(image_loss.mean(), inputs)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    image_loss, _ = SigLipLossFunction.apply(*inputs)
    torch.autograd.grad(image_loss.mean(), inputs)
    extra = torch.cuda.max_memory_allocated() - start
    # inputs' gradients plus O(B) vectors; a B x B fp32 matrix alone would be 1 GiB
    assert extra < 4 * batch * dim * 2 + 64 * batch * 4, extra
    assert extra < batch * batch * 4 / 16
    assert math.isfinite(image_loss.sum().item())
