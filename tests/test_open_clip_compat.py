"""scan_fast.ClipLoss as a drop-in for open_clip's ClipLoss, down to open_clip_train's own training loop."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import scan_fast
from helpers import assert_open_clip_train_loop_matches
from scan_fast.ops.clip_loss import clip_loss_per_sample_reference

open_clip_loss = pytest.importorskip("open_clip.loss")


def _model_output(batch=33, dim=24, with_bias=False):
    out = {
        "image_features": F.normalize(torch.randn(batch, dim), dim=1).requires_grad_(),
        "text_features": F.normalize(torch.randn(batch, dim), dim=1).requires_grad_(),
        "logit_scale": torch.tensor(2.6593, requires_grad=True).exp(),
    }
    if with_bias:
        out["logit_bias"] = torch.tensor([-10.0], requires_grad=True)
    return out


def _leaves(out):
    return [out["image_features"], out["text_features"], out["logit_scale"]]


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("output_dict", [False, True])
def test_same_loss_and_gradients_as_open_clip(output_dict, with_bias):
    out = _model_output(with_bias=with_bias)
    ours = scan_fast.ClipLoss(chunk_rows=8)(**out, output_dict=output_dict)
    theirs = open_clip_loss.ClipLoss()(**out, output_dict=output_dict)
    if output_dict:
        assert list(ours) == list(theirs) == ["contrastive_loss"]
        ours, theirs = ours["contrastive_loss"], theirs["contrastive_loss"]
    torch.testing.assert_close(ours, theirs)
    inputs = _leaves(out) + ([out["logit_bias"]] if with_bias else [])
    for got, want in zip(torch.autograd.grad(ours, inputs), torch.autograd.grad(theirs, inputs)):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_constructor_arguments_match_open_clip():
    import inspect

    theirs = list(inspect.signature(open_clip_loss.ClipLoss.__init__).parameters)
    ours = list(inspect.signature(scan_fast.ClipLoss.__init__).parameters)
    assert ours[: len(theirs)] == theirs
    theirs = list(inspect.signature(open_clip_loss.ClipLoss.forward).parameters)
    assert list(inspect.signature(scan_fast.ClipLoss.forward).parameters) == theirs


def test_per_sample_losses_of_the_last_call_and_callback():
    calls = []
    loss_fn = scan_fast.ClipLoss(on_per_sample=lambda i2t, t2i: calls.append((i2t, t2i)))
    for _ in range(2):
        out = _model_output(batch=12)
        loss_fn(**out, output_dict=True)
    want = clip_loss_per_sample_reference(out["image_features"], out["text_features"], out["logit_scale"])
    assert len(calls) == 2 and all(a is b for a, b in zip(calls[-1], loss_fn.last_per_sample))
    for got, ref in zip(loss_fn.last_per_sample, want):
        assert not got.requires_grad
        torch.testing.assert_close(got, ref.detach())


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_reductions(reduction):
    out = _model_output(batch=10)
    got = scan_fast.ClipLoss(reduction=reduction)(**out)
    loss_i2t, loss_t2i = clip_loss_per_sample_reference(out["image_features"], out["text_features"], out["logit_scale"])
    want = (loss_i2t + loss_t2i) / 2
    torch.testing.assert_close(got, want.sum() if reduction == "sum" else want)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="reduction must be one of .* got 'avg'"):
        scan_fast.ClipLoss(reduction="avg")
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        scan_fast.ClipLoss(rank=2, world_size=2)


# ----------------------------------------------------------------------------- open_clip_train's loop


class _TinyClip(nn.Module):
    """Two linear towers and a learnable temperature, returning open_clip's model output dict."""

    def __init__(self):
        super().__init__()
        self.visual = nn.Linear(12, 8)
        self.text = nn.Embedding(50, 8)
        self.logit_scale = nn.Parameter(torch.tensor(2.6593))

    def forward(self, images, texts):
        return {
            "image_features": F.normalize(self.visual(images), dim=-1),
            "text_features": F.normalize(self.text(texts).mean(1), dim=-1),
            "logit_scale": self.logit_scale.exp(),
        }


@pytest.mark.parametrize("accum_freq", [1, 2])
def test_runs_unchanged_in_open_clip_train_loop(accum_freq, caplog):
    torch.manual_seed(0)
    start = _TinyClip()
    ours = scan_fast.ClipLoss()
    assert_open_clip_train_loop_matches(ours, open_clip_loss.ClipLoss(), start, accum_freq, caplog)
    loss_i2t, loss_t2i = ours.last_per_sample
    assert loss_i2t.shape == loss_t2i.shape == (16 * accum_freq,)
