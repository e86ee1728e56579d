"""The CLIP trainer with the sigmoid loss (--loss siglip) on the tiny shapes .beton."""
import math
import os

import numpy as np
import pytest
import torch

from helpers import CLIP_BATCH, CLIP_N_TRAIN, clip_config, epoch_rows
from scan_fast.ops import siglip_loss_per_sample_reference
from scan_fast.train.checkpoint import load_checkpoint
from scan_fast.train.clip import train_clip
from scan_fast.train.clip_model import TINY_CLIP, TINY_SIGLIP, Clip, default_loss
from scan_fast.train.config import ClipConfig


def test_loss_follows_the_model_config_unless_given():
    assert default_loss("ViT-B-16-SigLIP") == default_loss("ViT-SO400M-14-SigLIP2") == "siglip"
    assert default_loss(TINY_SIGLIP) == "siglip" and default_loss(TINY_CLIP) == default_loss("ViT-B-32") == "clip"
    torch.manual_seed(0)
    siglip = Clip(TINY_CLIP, context_length=16, loss="siglip")
    assert siglip.loss_name == "siglip" and type(siglip.loss).__name__ == "SigLipLoss"
    # open_clip_train --siglip's initialisation
    assert siglip.model.logit_scale.item() == pytest.approx(math.log(10))
    assert siglip.model.logit_bias.item() == -10.0
    with pytest.raises(ValueError, match="--loss must be one of .* got 'sigmoid'"):
        ClipConfig(train_data="x.beton", loss="sigmoid").validate()


def test_forward_returns_the_sigmoid_pair_whose_mean_is_open_clips_loss():
    open_clip_loss = pytest.importorskip("open_clip.loss")
    torch.manual_seed(0)
    model = Clip(TINY_SIGLIP, context_length=16)
    images, tokens = torch.randn(6, 3, 32, 32), torch.randint(0, 100, (6, 16))
    loss_a, loss_b = model(images, tokens)
    image_features, text_features = model.encode(images, tokens)
    scale, bias = model.model.logit_scale.exp(), model.model.logit_bias
    want_a, want_b = siglip_loss_per_sample_reference(image_features, text_features, scale, bias)
    torch.testing.assert_close(loss_a, want_a)
    torch.testing.assert_close(loss_b, want_b)
    # the loop minimises mean((a + b) / 2): open_clip's SigLipLoss, gradients included
    ours = ((loss_a + loss_b) / 2).mean()
    theirs = open_clip_loss.SigLipLoss()(image_features, text_features, scale, bias)
    torch.testing.assert_close(ours, theirs)
    params = [model.model.logit_bias, model.model.logit_scale, model.model.visual.conv1.weight]
    for got, want in zip(torch.autograd.grad(ours, params, retain_graph=True), torch.autograd.grad(theirs, params)):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_scan_run_with_the_sigmoid_loss(data, tmp_path):
    summary = train_clip(clip_config(data, tmp_path, epochs=4, model=TINY_SIGLIP, val_data=data["test"],
                                     save_losses=True))
    rows = epoch_rows(summary["folder"])
    assert [r["phase"] for r in rows] == ["warmup", "warmup", "preparation", "mutation"]
    with np.load(os.path.join(summary["folder"], "candidates.npz")) as cand:
        num_candidates = len(np.union1d(cand["ill"], cand["red"]))
    assert num_candidates > 0.5 * CLIP_N_TRAIN
    assert int(rows[3]["pruned"]) == num_candidates // 4  # rate(1) = 0.25 of the candidates
    assert 0.0 <= summary["eval"] <= 1.0
    state = load_checkpoint(os.path.join(summary["folder"], "checkpoints/latest.pt"))
    assert state["config"]["loss"] is None and state["model"]["model.logit_bias"].item() != -10.0  # trained
    from scan_fast.train.evaluate import evaluate_checkpoint

    again = evaluate_checkpoint(os.path.join(summary["folder"], "checkpoints/latest.pt"), data["test"], workers=1)
    assert again["zero_shot"] == pytest.approx(summary["eval"])


# `none` is the SCAN run's warm-up. Each baseline's trainer path is CLIP's per-mode test and the sigmoid loss's the
# SCAN run above, so these run with the slow tests (make bench): about 10 s of pytest on 2 cores
@pytest.mark.slow
@pytest.mark.parametrize("prune", ["random", "infobatch", "static"])
def test_every_baseline_trains_with_the_sigmoid_loss(data, tmp_path, prune):
    extra = {}
    if prune == "static":
        np.savetxt(tmp_path / "coreset.txt", np.arange(0, CLIP_N_TRAIN, 2), fmt="%d")
        extra["coreset"] = str(tmp_path / "coreset.txt")
    if prune == "random":
        (tmp_path / "scan_epochs.csv").write_text("epoch,pruned\n0,0\n1,20\n")
        extra["prune_counts"] = str(tmp_path / "scan_epochs.csv")
    if prune == "infobatch":
        extra.update(infobatch_ratio=0.5, infobatch_delta=1.0)
    summary = train_clip(clip_config(data, tmp_path, epochs=2, prune=prune, loss="siglip", **extra))
    rows = epoch_rows(summary["folder"])
    pruned = [int(r["pruned"]) for r in rows]
    assert pruned == {"static": [CLIP_N_TRAIN // 2] * 2, "random": [0, 20]}.get(prune, pruned)
    if prune == "infobatch":  # epoch 0 has no scores; epoch 1 prunes some below-mean samples
        assert pruned[0] == 0 and 0 < pruned[1] < CLIP_N_TRAIN
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    assert sum(int(r["samples"]) for r in rows) % CLIP_BATCH == 0


def test_main_job_takes_the_loss():
    from scan_fast.demo.main_job import MainJobConfig

    assert MainJobConfig().loss == "clip"  # `make demo` stays the CLIP job
    MainJobConfig(loss="siglip")
    with pytest.raises(ValueError, match="--loss must be one of .* got 'sigmoid'"):
        MainJobConfig(loss="sigmoid")


def test_registering_a_model_config_leaves_no_file_behind(tmp_path, monkeypatch):
    import tempfile

    import open_clip

    from scan_fast.train import clip_model

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(clip_model, "_REGISTERED", {})
    config = dict(clip_model.TINY_CLIP_CONFIG, embed_dim=48)
    clip_model.register_model_config("scan-test-tiny", config)
    assert "scan-test-tiny" in open_clip.list_models()
    assert open_clip.get_model_config("scan-test-tiny")["embed_dim"] == 48
    clip_model.register_model_config(TINY_SIGLIP, clip_model.TINY_SIGLIP_CONFIG)  # a later rescan keeps both
    assert "scan-test-tiny" in open_clip.list_models() and TINY_SIGLIP in open_clip.list_models()
    assert list(tmp_path.iterdir()) == []
