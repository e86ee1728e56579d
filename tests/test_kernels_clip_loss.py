"""ClipLossFunction (Triton) against the materialised reference, in values and gradients.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (tests/conftest.py).
"""
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import (DEVICE, FP32_GRAD_TOL, HALF_DTYPE_PARAMS, LOSS_TOL, assert_grads_close, requires_cuda,
                     unit_features)
from hypothesis import given, settings
from hypothesis import strategies as st

from scan_fast.kernels.clip_loss import ClipLossFunction
from scan_fast.ops.clip_loss import clip_loss_per_sample_reference

OPEN_CLIP_INIT_SCALE = 1 / 0.07

_SHAPE_PARAMS = ("B, D", [(b, d) for b in (1, 7, 64, 130) for d in (8, 33, 64)])
_HALF_SHAPES = [(7, 33), (64, 8), (130, 64)]


def _features(batch, dim, dtype, device=DEVICE):
    image, text = unit_features(batch, dim, dtype, device)
    scale = torch.tensor(OPEN_CLIP_INIT_SCALE, device=device, requires_grad=True)
    return image, text, scale


_assert_grads_close = functools.partial(assert_grads_close, names=("d_image", "d_text", "d_scale"))


def _check_against_reference(batch, dim, dtype, grad_tol, weighted):
    image, text, scale = _features(batch, dim, dtype)
    loss_i2t, loss_t2i = ClipLossFunction.apply(image, text, scale)
    ref_i2t, ref_t2i = clip_loss_per_sample_reference(image, text, scale)
    assert loss_i2t.dtype == loss_t2i.dtype == torch.float32
    assert loss_i2t.shape == loss_t2i.shape == (batch,)
    torch.testing.assert_close(loss_i2t, ref_i2t, **LOSS_TOL)
    torch.testing.assert_close(loss_t2i, ref_t2i, **LOSS_TOL)

    inputs = (image, text, scale)
    if weighted:  # per-sample weights: the column direction mixes different samples' grads
        grads = (torch.randn(batch, device=DEVICE), torch.randn(batch, device=DEVICE))
        ours = torch.autograd.grad((loss_i2t, loss_t2i), inputs, grads)
        ref = torch.autograd.grad((ref_i2t, ref_t2i), inputs, grads)
    else:  # open_clip's mean loss, the loss-is-last path
        ours = torch.autograd.grad((loss_i2t.mean() + loss_t2i.mean()) / 2, inputs)
        ref = torch.autograd.grad((ref_i2t.mean() + ref_t2i.mean()) / 2, inputs)
    _assert_grads_close(ours, ref, grad_tol)


@pytest.mark.parametrize("weighted", [True, False], ids=["random_grad", "mean_loss"])
@pytest.mark.parametrize(*_SHAPE_PARAMS)
def test_fp32_matches_reference(B, D, weighted):
    _check_against_reference(B, D, torch.float32, FP32_GRAD_TOL, weighted)


@pytest.mark.parametrize("weighted", [True, False], ids=["random_grad", "mean_loss"])
@pytest.mark.parametrize(*HALF_DTYPE_PARAMS)
@pytest.mark.parametrize("B, D", _HALF_SHAPES)
def test_half_precision_matches_reference(B, D, dtype, grad_tol, weighted):
    _check_against_reference(B, D, dtype, grad_tol, weighted)


@settings(max_examples=12, deadline=None)
@given(batch=st.integers(1, 70), dim=st.integers(1, 70), scale=st.floats(0.01, 100.0),
       normalise=st.booleans(), seed=st.integers(0, 2**16))
def test_random_shapes_and_scales(batch, dim, scale, normalise, seed):
    # odd sizes straddle the 64-row tiles and the 32-wide K and D steps of the interpreter config
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, dim, generator=generator)
    text = torch.randn(batch, dim, generator=generator)
    if normalise:
        image, text = F.normalize(image, dim=1), F.normalize(text, dim=1)
    image = image.to(DEVICE).requires_grad_()
    text = text.to(DEVICE).requires_grad_()
    scale = torch.tensor(scale if normalise else scale / dim, device=DEVICE, requires_grad=True)
    ours = ClipLossFunction.apply(image, text, scale)
    ref = clip_loss_per_sample_reference(image, text, scale)
    for got, want in zip(ours, ref):
        torch.testing.assert_close(got, want, atol=LOSS_TOL["atol"], rtol=1e-4)
    grads = (torch.randn(batch, generator=generator).to(DEVICE), torch.randn(batch, generator=generator).to(DEVICE))
    _assert_grads_close(torch.autograd.grad(ours, (image, text, scale), grads),
                        torch.autograd.grad(ref, (image, text, scale), grads), max(1e-4, FP32_GRAD_TOL))


@pytest.mark.parametrize("used", ["i2t", "t2i"])
def test_one_direction_only(used):
    # The unused output's grad arrives as None and its term drops out of both sweeps.
    image, text, scale = _features(37, 33, torch.float32)
    ours = ClipLossFunction.apply(image, text, scale)
    ref = clip_loss_per_sample_reference(image, text, scale)
    index = 0 if used == "i2t" else 1
    weights = torch.rand(37, device=DEVICE)
    got = torch.autograd.grad((ours[index] * weights).sum(), (image, text, scale))
    want = torch.autograd.grad((ref[index] * weights).sum(), (image, text, scale))
    _assert_grads_close(got, want, FP32_GRAD_TOL)


def test_large_scale_and_identical_rows_stay_finite():
    # scale 100 (open_clip's clamp) with duplicated features: ties and large logits.
    base = F.normalize(torch.randn(5, 16, device=DEVICE), dim=1)
    image = base[torch.tensor([0, 0, 1, 2, 2, 3, 4, 4, 4], device=DEVICE)].requires_grad_()
    text = base[torch.tensor([0, 1, 1, 2, 3, 3, 4, 0, 4], device=DEVICE)].clone().requires_grad_()
    scale = torch.tensor(100.0, device=DEVICE, requires_grad=True)
    ours = ClipLossFunction.apply(image, text, scale)
    ref = clip_loss_per_sample_reference(image, text, scale)
    for got, want in zip(ours, ref):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, **LOSS_TOL)
    grads = (torch.randn(9, device=DEVICE), torch.randn(9, device=DEVICE))
    _assert_grads_close(torch.autograd.grad(ours, (image, text, scale), grads),
                        torch.autograd.grad(ref, (image, text, scale), grads), FP32_GRAD_TOL)


def test_non_contiguous_and_mixed_dtype_inputs():
    batch, dim = 19, 24
    image_t = torch.randn(dim, batch, device=DEVICE).requires_grad_()
    image = image_t.t()  # non-contiguous view
    text = torch.randn(batch, dim, device=DEVICE).to(torch.float16).requires_grad_()
    scale = torch.tensor(3.0, device=DEVICE, requires_grad=True)
    ours = ClipLossFunction.apply(image, text, scale)
    ref = clip_loss_per_sample_reference(image, text, scale)
    for got, want in zip(ours, ref):
        torch.testing.assert_close(got, want, **LOSS_TOL)
    grads = (torch.randn(batch, device=DEVICE), torch.randn(batch, device=DEVICE))
    got = torch.autograd.grad(ours, (image_t, text, scale), grads)
    want = torch.autograd.grad(ref, (image_t, text, scale), grads)
    assert got[1].dtype == torch.float16  # each gradient in its input's dtype
    _assert_grads_close(got, want, 4e-3)


def test_python_float_scale():
    image, text, _ = _features(10, 8, torch.float32)
    ours = ClipLossFunction.apply(image, text, 20.0)
    ref = clip_loss_per_sample_reference(image, text, 20.0)
    torch.testing.assert_close(ours[0], ref[0], **LOSS_TOL)
    torch.testing.assert_close(ours[1], ref[1], **LOSS_TOL)
    got = torch.autograd.grad(sum(ours).sum(), (image, text))
    want = torch.autograd.grad(sum(ref).sum(), (image, text))
    _assert_grads_close(got, want, FP32_GRAD_TOL)


@pytest.mark.parametrize("image, text, scale, error, match", [
    (torch.randn(4), torch.randn(4), 1.0, ValueError, "image_features must be 2-D"),
    (torch.randn(4, 8), torch.randn(5, 8), 1.0, ValueError, r"\(4, 8\).*\(5, 8\)"),
    (torch.randn(4, 8), torch.randn(4, 9), 1.0, ValueError, "same"),
    (torch.randn(0, 8), torch.randn(0, 8), 1.0, ValueError, "image_features is an empty batch"),
    (torch.ones(4, 8, dtype=torch.int64), torch.ones(4, 8), 1.0, TypeError, "image_features must have a floating"),
    (torch.randn(4, 8), torch.randn(4, 8, dtype=torch.float64), 1.0, TypeError,
     "text_features must be float32, bfloat16 or float16"),
    (torch.randn(4, 8), torch.randn(4, 8), torch.ones(2), ValueError, "logit_scale must be a scalar"),
    (torch.randn(4, 8), torch.randn(4, 8), "1", TypeError, "logit_scale must be a float"),
])
def test_bad_input(image, text, scale, error, match):
    with pytest.raises(error, match=match):
        ClipLossFunction.apply(image.to(DEVICE), text.to(DEVICE), scale)


@requires_cuda
@pytest.mark.parametrize("B, D", [(1000, 512), (4097, 768), (2048, 2048)])
@pytest.mark.parametrize("dtype, grad_tol", [(torch.float32, 1e-3), (torch.bfloat16, 3e-2), (torch.float16, 5e-3)])
def test_cuda_large_batches_match_reference(B, D, dtype, grad_tol):
    _check_against_reference(B, D, dtype, grad_tol, weighted=True)


@requires_cuda
def test_cuda_memory_is_linear_in_batch():
    batch, dim = 16384, 256
    image, text, scale = _features(batch, dim, torch.bfloat16)
    # warm-up: autotuning (when on) benchmarks with a large L2-flush buffer of its own
    loss_i2t, loss_t2i = ClipLossFunction.apply(image, text, scale)
    torch.autograd.grad((loss_i2t.mean() + loss_t2i.mean()) / 2, (image, text, scale))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    loss_i2t, loss_t2i = ClipLossFunction.apply(image, text, scale)
    torch.autograd.grad((loss_i2t.mean() + loss_t2i.mean()) / 2, (image, text, scale))
    extra = torch.cuda.max_memory_allocated() - start
    # inputs' gradients plus O(B) vectors; a B x B fp32 matrix alone would be 1 GiB
    assert extra < 4 * batch * dim * 2 + 64 * batch * 4, extra
    assert extra < batch * batch * 4 / 16
    assert math.isfinite(loss_i2t.sum().item())

