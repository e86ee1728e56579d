"""siglip_loss_per_sample (chunked CPU path, and the Triton kernel on CUDA) and SigLipLoss against the
materialised reference and open_clip's SigLipLoss, down to open_clip_train's own training loop."""
import datetime
import inspect

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

import scan_fast
import scan_fast.ops.base as ops_base
from helpers import (CHUNK_ROWS, DTYPE_PARAMS, FEATURE_SHAPE_PARAMS, SIGLIP_INIT_BIAS, SIGLIP_INIT_SCALE,
                     assert_open_clip_train_loop_matches, free_port, requires_cuda, requires_triton_interpreter,
                     unit_features)
from scan_fast.ops.siglip_loss import (
    SigLipLoss,
    SigmoidLossChunked,
    siglip_loss_per_sample,
    siglip_loss_per_sample_reference,
)


def _scalars(device="cpu", dtype=torch.float32, scale=SIGLIP_INIT_SCALE, bias=SIGLIP_INIT_BIAS):
    return (torch.tensor(scale, device=device, dtype=dtype, requires_grad=True),
            torch.tensor([bias], device=device, dtype=dtype, requires_grad=True))


def _losses_and_grads(fn, image, text, logit_scale, logit_bias, grad_image, grad_text):
    image_loss, text_loss = fn(image, text, logit_scale, logit_bias)
    if grad_image is None:  # the mean loss, as open_clip trains
        total = image_loss.mean()
    else:
        total = (image_loss * grad_image).sum() + (text_loss * grad_text).sum()
    return (image_loss, text_loss), torch.autograd.grad(total, [image, text, logit_scale, logit_bias])


def _check_against_reference(fn, image, text, atol, rtol, weighted, **scalars):
    logit_scale, logit_bias = _scalars(image.device, **scalars)
    batch = image.shape[0]
    grad_image = torch.randn(batch, device=image.device) if weighted else None
    grad_text = torch.randn(batch, device=image.device) if weighted else None
    ours, our_grads = _losses_and_grads(fn, image, text, logit_scale, logit_bias, grad_image, grad_text)
    ref, ref_grads = _losses_and_grads(siglip_loss_per_sample_reference, image, text, logit_scale, logit_bias,
                                       grad_image, grad_text)
    for got, want in zip(ours, ref):
        assert got.dtype == (torch.float64 if image.dtype == torch.float64 else torch.float32)
        assert got.shape == (batch,)
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
    for name, got, want in zip(("image", "text", "logit_scale", "logit_bias"), our_grads, ref_grads):
        assert got.dtype == want.dtype and got.shape == want.shape, name
        torch.testing.assert_close(got, want, atol=atol * max(1.0, want.abs().max().item()), rtol=rtol,
                                   msg=lambda m: f"grad {name}: {m}")


def _chunked(image, text, logit_scale, logit_bias):
    return siglip_loss_per_sample(image, text, logit_scale, logit_bias, chunk_rows=CHUNK_ROWS)


@pytest.mark.parametrize("weighted", [True, False], ids=["random_grads", "mean_loss"])
@pytest.mark.parametrize(*DTYPE_PARAMS)
@pytest.mark.parametrize(*FEATURE_SHAPE_PARAMS)
def test_chunked_matches_reference(B, D, dtype, atol, rtol, weighted):
    image, text = unit_features(B, D, dtype)
    _check_against_reference(_chunked, image, text, atol, rtol, weighted)


@pytest.mark.parametrize("B", [1, 130, 300])
def test_default_chunking_matches_reference(B):
    image, text = unit_features(B, 16)
    _check_against_reference(siglip_loss_per_sample, image, text, 1e-5, 1e-5, weighted=True)


def test_large_logits_keep_every_digit():
    # unnormalised features and a large scale: logits in the hundreds, where log(1 + exp(-|z|))
    # computed naively would lose the easy pairs' losses entirely
    image, text = unit_features(40, 8, torch.float64, scale=4.0)
    _check_against_reference(_chunked, image, text, 1e-9, 1e-9, weighted=True, dtype=torch.float64,
                             scale=30.0, bias=2.0)


def test_gradcheck_float64():
    image, text = unit_features(9, 5, torch.float64, scale=1.5)
    logit_scale, logit_bias = _scalars(dtype=torch.float64, scale=3.0, bias=-1.0)
    assert torch.autograd.gradcheck(lambda i, t, s, b: SigmoidLossChunked.apply(i, t, s, b.reshape(()), 0, 4),
                                    (image, text, logit_scale, logit_bias))


def test_one_direction_only():
    image, text = unit_features(33, 8)
    for pick in (0, 1):
        scalars = _scalars()
        got = torch.autograd.grad(_chunked(image, text, *scalars)[pick].sum(), [image, text, *scalars])
        want = torch.autograd.grad(siglip_loss_per_sample_reference(image, text, *scalars)[pick].sum(),
                                   [image, text, *scalars])
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_rows_and_columns_sum_to_open_clips_loss():
    image, text = unit_features(50, 12)
    image_loss, text_loss = siglip_loss_per_sample(image, text, SIGLIP_INIT_SCALE, SIGLIP_INIT_BIAS)
    torch.testing.assert_close(image_loss.sum(), text_loss.sum())


def test_non_contiguous_and_mixed_dtypes():
    base_image, base_text = unit_features(21, 12, torch.float64)
    image = base_image.detach().T.contiguous().T.float().requires_grad_()  # column-major
    assert not image.is_contiguous()
    text = base_text.detach().requires_grad_()  # float64: the wider dtype wins
    image_loss, text_loss = _chunked(image, text, 7.0, -2.0)
    assert image_loss.dtype == torch.float64
    ref_image, ref_text = siglip_loss_per_sample_reference(image.double(), text, 7.0, -2.0)
    torch.testing.assert_close(image_loss, ref_image)
    torch.testing.assert_close(text_loss, ref_text)
    (image_loss.sum() + text_loss.sum()).backward()
    assert image.grad.dtype == torch.float32 and text.grad.dtype == torch.float64


def test_scalar_forms():
    image, text = unit_features(10, 6)
    from_floats = siglip_loss_per_sample(image, text, 3.5, -1.0)
    scale, bias = torch.tensor([3.5], requires_grad=True), torch.tensor(-1.0, requires_grad=True)
    from_tensors = siglip_loss_per_sample(image, text, scale, bias)
    torch.testing.assert_close(from_floats, from_tensors)
    from_tensors[0].sum().backward()
    assert scale.grad.shape == (1,) and bias.grad.shape == () and torch.isfinite(scale.grad + bias.grad).all()


@pytest.mark.parametrize(
    "image, text, logit_scale, logit_bias, error, match",
    [
        (torch.randn(4), torch.randn(4), 1.0, 0.0, ValueError, "image_features must be 2-D"),
        (torch.randn(4, 3), torch.randn(5, 3), 1.0, 0.0, ValueError, r"\(4, 3\).*\(5, 3\)"),
        (torch.randn(0, 3), torch.randn(0, 3), 1.0, 0.0, ValueError, "empty batch"),
        (torch.ones(4, 3, dtype=torch.int64), torch.randn(4, 3), 1.0, 0.0, TypeError, "image_features.*int64"),
        (torch.randn(4, 3), torch.randn(4, 3), float("inf"), 0.0, ValueError, "logit_scale must be finite"),
        (torch.randn(4, 3), torch.randn(4, 3), 1.0, torch.ones(2), ValueError, "logit_bias must be a scalar"),
        (torch.randn(4, 3), torch.randn(4, 3), 1.0, None, TypeError, "logit_bias"),
        ([[1.0]], torch.randn(1, 1), 1.0, 0.0, TypeError, "image_features must be a torch.Tensor"),
    ],
)
def test_bad_input(image, text, logit_scale, logit_bias, error, match):
    with pytest.raises(error, match=match):
        siglip_loss_per_sample(image, text, logit_scale, logit_bias)


def test_tensor_scalars_are_not_read_back():
    """Tensor scale and bias are checked for shape only (reading them would stall a GPU step): NaN shows in the loss."""
    image, text = torch.randn(4, 3), torch.randn(4, 3)
    image_loss, text_loss = siglip_loss_per_sample(image, text, 1.0, torch.tensor(float("nan")))
    assert not torch.isfinite(image_loss).any() and not torch.isfinite(text_loss).any()


@pytest.mark.parametrize("on_kernel", [False, pytest.param(True, marks=requires_triton_interpreter)])
def test_double_backward_says_it_is_not_supported(monkeypatch, on_kernel):
    if on_kernel:
        monkeypatch.setattr(ops_base, "use_kernels", lambda features, dtype: True)
    image, text = unit_features(6, 4)
    image_loss, text_loss = siglip_loss_per_sample(image, text, 2.0, -1.0)
    with pytest.raises(RuntimeError, match="siglip_loss_per_sample.*double backward .* is not supported"):
        torch.autograd.grad((image_loss + text_loss).sum(), image, create_graph=True)
    (grad,) = torch.autograd.grad((image_loss + text_loss).sum(), image)  # first order still works
    assert torch.isfinite(grad).all()


@requires_triton_interpreter
def test_dispatch_to_the_triton_kernel_in_the_interpreter(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setattr(ops_base, "use_kernels", lambda features, dtype: True)
    image, text = unit_features(7, 8)
    image_loss, _ = siglip_loss_per_sample(image, text, 3.0, -1.0)
    assert type(image_loss.grad_fn).__name__ == "SigLipLossFunctionBackward"
    _check_against_reference(siglip_loss_per_sample, image, text, 1e-5, 1e-5, weighted=True)
    torch.testing.assert_close(SigLipLoss()(image, text, 3.0, -1.0), SigLipLoss(chunk_rows=4)(image, text, 3.0, -1.0))


@requires_cuda
@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize(*DTYPE_PARAMS)
@pytest.mark.parametrize("B, D", [(1, 8), (130, 33), (1000, 512)])
def test_cuda_matches_reference(B, D, dtype, atol, rtol, weighted):
    image, text = unit_features(B, D, dtype, device="cuda")
    _check_against_reference(siglip_loss_per_sample, image, text, max(atol, 1e-4), max(rtol, 1e-4), weighted)


# ----------------------------------------------------------------------------- the drop-in, next to open_clip's

open_clip_loss = pytest.importorskip("open_clip.loss")


def _model_output(batch=33, dim=24):
    return {
        "image_features": F.normalize(torch.randn(batch, dim), dim=1).requires_grad_(),
        "text_features": F.normalize(torch.randn(batch, dim), dim=1).requires_grad_(),
        "logit_scale": torch.tensor(2.3026, requires_grad=True).exp(),
        "logit_bias": torch.tensor([SIGLIP_INIT_BIAS], requires_grad=True),
    }


def _leaves(out):
    return [out["image_features"], out["text_features"], out["logit_scale"], out["logit_bias"]]


@pytest.mark.parametrize("output_dict", [False, True])
def test_same_loss_and_gradients_as_open_clip(output_dict):
    out = _model_output()
    ours = SigLipLoss(chunk_rows=8)(**out, output_dict=output_dict)
    theirs = open_clip_loss.SigLipLoss()(**out, output_dict=output_dict)
    if output_dict:
        assert list(ours) == list(theirs) == ["contrastive_loss"]
        ours, theirs = ours["contrastive_loss"], theirs["contrastive_loss"]
    torch.testing.assert_close(ours, theirs)
    for got, want in zip(torch.autograd.grad(ours, _leaves(out)), torch.autograd.grad(theirs, _leaves(out))):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_constructor_and_forward_match_open_clip():
    theirs = list(inspect.signature(open_clip_loss.SigLipLoss.__init__).parameters)
    ours = list(inspect.signature(SigLipLoss.__init__).parameters)
    assert ours[: len(theirs)] == theirs
    assert list(inspect.signature(SigLipLoss.forward).parameters) == \
        list(inspect.signature(open_clip_loss.SigLipLoss.forward).parameters)
    assert scan_fast.SigLipLoss is SigLipLoss and scan_fast.siglip_loss_per_sample is siglip_loss_per_sample


def test_per_sample_losses_of_the_last_call_and_callback():
    calls = []
    loss_fn = SigLipLoss(on_per_sample=lambda image_loss, text_loss: calls.append((image_loss, text_loss)))
    for _ in range(2):
        out = _model_output(batch=12)
        loss_fn(**out, output_dict=True)
    want = siglip_loss_per_sample_reference(*_leaves(out))
    assert len(calls) == 2 and all(a is b for a, b in zip(calls[-1], loss_fn.last_per_sample))
    for got, ref in zip(loss_fn.last_per_sample, want):
        assert not got.requires_grad
        torch.testing.assert_close(got, ref.detach())
    for got, ref in zip(loss_fn.per_sample(*_leaves(out)), want):
        torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_reductions(reduction):
    out = _model_output(batch=10)
    got = SigLipLoss(reduction=reduction)(**out)
    image_loss, text_loss = siglip_loss_per_sample_reference(*_leaves(out))
    torch.testing.assert_close(got, image_loss.sum() if reduction == "sum" else (image_loss + text_loss) / 2)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="reduction must be one of .* got 'avg'"):
        SigLipLoss(reduction="avg")
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        SigLipLoss(rank=2, world_size=2)
    with pytest.raises(ValueError, match="dist_impl must be one of .* got 'ring'"):
        SigLipLoss(dist_impl="ring")


# ----------------------------------------------------------------------------- 2 gloo ranks

_WORLD_SIZE, _LOCAL_BATCH, _DIM = 2, 13, 6


def _distributed_worker(rank, port):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=_WORLD_SIZE,
                            timeout=datetime.timedelta(seconds=60))
    try:
        generator = torch.Generator().manual_seed(123)
        batch = _WORLD_SIZE * _LOCAL_BATCH
        image = F.normalize(torch.randn(batch, _DIM, generator=generator), dim=1)
        text = F.normalize(torch.randn(batch, _DIM, generator=generator), dim=1)
        rows = slice(rank * _LOCAL_BATCH, (rank + 1) * _LOCAL_BATCH)
        for dist_impl in ("bidir", "gather"):
            config = dict(rank=rank, world_size=_WORLD_SIZE, dist_impl=dist_impl)
            ours = SigLipLoss(**config, chunk_rows=4)
            results = []
            for loss_fn in (ours, open_clip_loss.SigLipLoss(**config)):
                local_image = image[rows].clone().requires_grad_()
                local_text = text[rows].clone().requires_grad_()
                scale, bias = _scalars(scale=4.0, bias=-2.0)
                loss = loss_fn(local_image, local_text, scale, bias, output_dict=True)["contrastive_loss"]
                loss.backward()
                results.append((loss, local_image.grad, local_text.grad, scale.grad, bias.grad))
            for got, want in zip(*results):
                torch.testing.assert_close(got, want)
            # per-sample losses run over the texts and images of every rank: slices of the global reference
            ref_image, ref_text = siglip_loss_per_sample_reference(image, text, 4.0, -2.0)
            torch.testing.assert_close(ours.last_per_sample[0], ref_image[rows])
            torch.testing.assert_close(ours.last_per_sample[1], ref_text[rows])
        # weighted per-sample losses in both directions: gradients are slices of the global reference's
        weights = torch.rand(2, batch, generator=generator)
        local_image, local_text = image[rows].clone().requires_grad_(), text[rows].clone().requires_grad_()
        image_loss, text_loss = SigLipLoss(rank=rank, world_size=_WORLD_SIZE).per_sample(
            local_image, local_text, 4.0, -2.0)
        ((image_loss * weights[0, rows]).sum() + (text_loss * weights[1, rows]).sum()).backward()
        full_image, full_text = image.clone().requires_grad_(), text.clone().requires_grad_()
        ref_image, ref_text = siglip_loss_per_sample_reference(full_image, full_text, 4.0, -2.0)
        ((ref_image * weights[0]).sum() + (ref_text * weights[1]).sum()).backward()
        torch.testing.assert_close(local_image.grad, full_image.grad[rows])
        torch.testing.assert_close(local_text.grad, full_text.grad[rows])
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_open_clip_and_the_global_reference():
    mp.spawn(_distributed_worker, args=(free_port(),), nprocs=_WORLD_SIZE, join=True)


# ----------------------------------------------------------------------------- open_clip_train's loop


class _TinySigLip(nn.Module):
    """Two linear towers, a learnable temperature and bias, returning open_clip's model output dict."""

    def __init__(self):
        super().__init__()
        self.visual = nn.Linear(12, 8)
        self.text = nn.Embedding(50, 8)
        self.logit_scale = nn.Parameter(torch.tensor(2.3026))
        self.logit_bias = nn.Parameter(torch.tensor([SIGLIP_INIT_BIAS]))

    def forward(self, images, texts):
        return {
            "image_features": F.normalize(self.visual(images), dim=-1),
            "text_features": F.normalize(self.text(texts).mean(1), dim=-1),
            "logit_scale": self.logit_scale.exp(),
            "logit_bias": self.logit_bias,
        }


@pytest.mark.parametrize("accum_freq", [1, 2])
def test_runs_unchanged_in_open_clip_train_loop(accum_freq, caplog):
    torch.manual_seed(0)
    start = _TinySigLip()
    ours = SigLipLoss()
    assert_open_clip_train_loop_matches(ours, open_clip_loss.SigLipLoss(), start, accum_freq, caplog)
    image_loss, text_loss = ours.last_per_sample
    assert image_loss.shape == text_loss.shape == (16 * accum_freq,)
