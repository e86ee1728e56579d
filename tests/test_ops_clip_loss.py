"""clip_loss_per_sample (chunked CPU path, and the Triton kernel on CUDA) against the materialised reference."""
import pytest
import torch

import scan_fast.ops.base as ops_base
from helpers import (CHUNK_ROWS, DTYPE_PARAMS, FEATURE_SHAPE_PARAMS, requires_cuda, requires_triton_interpreter,
                     unit_features)
from scan_fast.ops.clip_loss import ClipLoss, ClipLossChunked, clip_loss_per_sample, clip_loss_per_sample_reference


def _losses_and_grads(fn, image, text, logit_scale, grad_i2t, grad_t2i):
    loss_i2t, loss_t2i = fn(image, text, logit_scale)
    if grad_i2t is None:  # the mean loss, as open_clip trains
        total = (loss_i2t.mean() + loss_t2i.mean()) / 2
    else:
        total = (loss_i2t * grad_i2t).sum() + (loss_t2i * grad_t2i).sum()
    grads = torch.autograd.grad(total, [image, text, logit_scale])
    return (loss_i2t, loss_t2i), grads


def _check_against_reference(fn, image, text, atol, rtol, weighted):
    logit_scale = torch.tensor(14.0, device=image.device, requires_grad=True)
    batch = image.shape[0]
    grad_i2t = torch.randn(batch, device=image.device) if weighted else None
    grad_t2i = torch.randn(batch, device=image.device) if weighted else None
    ours, our_grads = _losses_and_grads(fn, image, text, logit_scale, grad_i2t, grad_t2i)
    ref, ref_grads = _losses_and_grads(clip_loss_per_sample_reference, image, text, logit_scale, grad_i2t, grad_t2i)
    for got, want in zip(ours, ref):
        assert got.dtype == (torch.float64 if image.dtype == torch.float64 else torch.float32)
        assert got.shape == (batch,)
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
    for name, got, want in zip(("image", "text", "logit_scale"), our_grads, ref_grads):
        assert got.dtype == want.dtype, name
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol, msg=lambda m: f"grad {name}: {m}")


def _chunked(image, text, logit_scale):
    return clip_loss_per_sample(image, text, logit_scale, chunk_rows=CHUNK_ROWS)


@pytest.mark.parametrize("weighted", [True, False], ids=["random_grads", "mean_loss"])
@pytest.mark.parametrize(*DTYPE_PARAMS)
@pytest.mark.parametrize(*FEATURE_SHAPE_PARAMS)
def test_chunked_matches_reference(B, D, dtype, atol, rtol, weighted):
    image, text = unit_features(B, D, dtype)
    _check_against_reference(_chunked, image, text, atol, rtol, weighted)


@pytest.mark.parametrize("B", [1, 130, 300])
def test_default_chunking_matches_reference(B):
    image, text = unit_features(B, 16)
    _check_against_reference(clip_loss_per_sample, image, text, 1e-5, 1e-5, weighted=True)


def test_wide_logit_range_takes_the_two_exp_path():
    # unnormalised features: logits spread over hundreds, beyond the one-exp fast path's safe range
    image, text = unit_features(40, 8, torch.float64, scale=12.0)
    _check_against_reference(_chunked, image, text, 1e-9, 1e-9, weighted=True)


def test_chunks_on_both_paths_in_one_batch():
    # the first chunk's rows are long vectors (wide logits, two-exp path), the others unit ones
    image, text = unit_features(50, 8, torch.float64)
    with torch.no_grad():
        image[:CHUNK_ROWS] *= 15.0
    _check_against_reference(_chunked, image, text, 1e-9, 1e-9, weighted=True)


def test_gradcheck_float64():
    image, text = unit_features(9, 5, torch.float64, scale=1.5)
    logit_scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda i, t, s: ClipLossChunked.apply(i, t, s, 4), (image, text, logit_scale))


def test_one_direction_only():
    image, text = unit_features(33, 8)
    for pick in (0, 1):
        got = torch.autograd.grad(_chunked(image, text, 5.0)[pick].sum(), [image, text])
        want = torch.autograd.grad(clip_loss_per_sample_reference(image, text, 5.0)[pick].sum(), [image, text])
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_non_contiguous_and_mixed_dtypes():
    base_image, base_text = unit_features(21, 12, torch.float64)
    image = base_image.detach().T.contiguous().T.float().requires_grad_()  # column-major
    assert not image.is_contiguous()
    text = base_text.detach().requires_grad_()  # float64: the wider dtype wins
    loss_i2t, loss_t2i = _chunked(image, text, 7.0)
    assert loss_i2t.dtype == torch.float64
    ref_i2t, ref_t2i = clip_loss_per_sample_reference(image.double(), text, 7.0)
    torch.testing.assert_close(loss_i2t, ref_i2t)
    torch.testing.assert_close(loss_t2i, ref_t2i)
    (loss_i2t.sum() + loss_t2i.sum()).backward()
    assert image.grad.dtype == torch.float32 and text.grad.dtype == torch.float64


def test_logit_scale_forms():
    image, text = unit_features(10, 6)
    from_float = clip_loss_per_sample(image, text, 3.5)
    shaped = torch.tensor([3.5], requires_grad=True)  # open_clip keeps logit_scale as a parameter
    from_tensor = clip_loss_per_sample(image, text, shaped)
    torch.testing.assert_close(from_float, from_tensor)
    from_tensor[0].sum().backward()
    assert shaped.grad.shape == (1,) and torch.isfinite(shaped.grad).all()


@pytest.mark.parametrize(
    "image, text, logit_scale, error, match",
    [
        (torch.randn(4), torch.randn(4), 1.0, ValueError, "image_features must be 2-D"),
        (torch.randn(4, 3), torch.randn(5, 3), 1.0, ValueError, r"\(4, 3\).*\(5, 3\)"),
        (torch.randn(4, 3), torch.randn(4, 2), 1.0, ValueError, "same"),
        (torch.randn(0, 3), torch.randn(0, 3), 1.0, ValueError, "empty batch"),
        (torch.ones(4, 3, dtype=torch.int64), torch.randn(4, 3), 1.0, TypeError, "image_features.*int64"),
        (torch.randn(4, 3), torch.randn(4, 3), float("inf"), ValueError, "logit_scale must be finite"),
        (torch.randn(4, 3), torch.randn(4, 3), torch.ones(2), ValueError, "logit_scale must be a scalar"),
        (torch.randn(4, 3), torch.randn(4, 3), "1", TypeError, "logit_scale"),
        ([[1.0]], torch.randn(1, 1), 1.0, TypeError, "image_features must be a torch.Tensor"),
    ],
)
def test_bad_input(image, text, logit_scale, error, match):
    with pytest.raises(error, match=match):
        clip_loss_per_sample(image, text, logit_scale)


def test_a_tensor_scale_is_not_read_back():
    """A tensor scale is checked for shape only (reading it would stall a GPU step): NaN shows in the loss."""
    from host_reads import count_host_reads

    with count_host_reads() as reads:
        got = clip_loss_per_sample(torch.randn(4, 3), torch.randn(4, 3), torch.tensor(float("nan")))
    assert reads.count == 0, reads.where
    assert not torch.isfinite(got[0]).any() and not torch.isfinite(got[1]).any()


@pytest.mark.parametrize("chunk_rows, error, match", [(-3, ValueError, "chunk_rows must be >= 1, got -3"),
                                                      (0, ValueError, "chunk_rows must be >= 1, got 0"),
                                                      (2.5, TypeError, "chunk_rows must be a positive int")])
def test_bad_chunk_rows_is_named(chunk_rows, error, match):
    image, text = unit_features(6, 4)
    with pytest.raises(error, match=match):
        clip_loss_per_sample(image, text, 2.0, chunk_rows=chunk_rows)
    with pytest.raises(error, match=match):
        ClipLoss(chunk_rows=chunk_rows)(image, text, 2.0)


@pytest.mark.parametrize("on_kernel", [False, pytest.param(True, marks=requires_triton_interpreter)])
def test_double_backward_says_it_is_not_supported(monkeypatch, on_kernel):
    if on_kernel:
        monkeypatch.setattr(ops_base, "use_kernels", lambda features, dtype: True)
    image, text = unit_features(6, 4)
    loss_i2t, loss_t2i = clip_loss_per_sample(image, text, 2.0)
    with pytest.raises(RuntimeError, match="clip_loss_per_sample.*double backward .* is not supported"):
        torch.autograd.grad((loss_i2t + loss_t2i).sum(), image, create_graph=True)
    (grad,) = torch.autograd.grad((loss_i2t + loss_t2i).sum(), image)  # first order still works
    assert torch.isfinite(grad).all()


@requires_triton_interpreter
def test_dispatch_to_the_triton_kernel_in_the_interpreter(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setattr(ops_base, "use_kernels", lambda features, dtype: True)
    image, text = unit_features(7, 8)
    loss_i2t, _ = clip_loss_per_sample(image, text, 3.0)
    assert type(loss_i2t.grad_fn).__name__ == "ClipLossFunctionBackward"
    _check_against_reference(clip_loss_per_sample, image, text, 1e-5, 1e-5, weighted=True)
    torch.testing.assert_close(ClipLoss()(image, text, 3.0), ClipLoss(chunk_rows=4)(image, text, 3.0))


@requires_cuda
@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize(*DTYPE_PARAMS)
@pytest.mark.parametrize("B, D", [(1, 8), (130, 33), (1000, 512)])
def test_cuda_matches_reference(B, D, dtype, atol, rtol, weighted):
    image, text = unit_features(B, D, dtype, device="cuda")
    _check_against_reference(clip_loss_per_sample, image, text, max(atol, 1e-4), max(rtol, 1e-4), weighted)
