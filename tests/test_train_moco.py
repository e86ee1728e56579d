"""End-to-end MoCo v3 trainer runs on a tiny shapes .beton (MoCo kind: image, label, id)."""
import os

import numpy as np
import pytest
import torch

from helpers import assert_resume_matches, epoch_rows
from scan_fast.train.config import MocoConfig
from scan_fast.train.moco import train_moco
from scan_fast.train.moco_model import build_moco

N_TRAIN, BATCH = 128, 32


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from scan_fast.data import write_shapes

    folder = tmp_path_factory.mktemp("moco_data")
    train, test = str(folder / "train.beton"), str(folder / "test.beton")
    write_shapes(train, num_samples=N_TRAIN, kind="moco", progress=False)
    write_shapes(test, num_samples=48, kind="moco", seed=1, progress=False)
    return {"train": train, "test": test}


def test_moco_vit_with_scan_end_to_end(data, tmp_path):
    cfg = MocoConfig(train_data=data["train"], val_data=data["test"], arch="vit_tiny_cpu", batch_size=BATCH,
                     epochs=4, prune_threshold=1.0, workers=1, logs=str(tmp_path), progress=False,
                     tensorboard=False, save_losses=True)
    summary = train_moco(cfg)
    rows = epoch_rows(summary["folder"])
    assert [r["phase"] for r in rows] == ["warmup", "warmup", "preparation", "mutation"]
    with np.load(os.path.join(summary["folder"], "candidates.npz")) as cand:
        pool = len(np.union1d(cand["ill"], cand["red"]))
    assert int(rows[3]["pruned"]) == pool // 4 > 0  # rate(1) = 0.25 of the candidates
    assert 0.0 <= summary["knn"] <= 1.0 and 0.0 <= summary["linear_probe"] <= 1.0
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    from scan_fast.train.evaluate import evaluate_checkpoint

    again = evaluate_checkpoint(os.path.join(summary["folder"], "checkpoints/latest.pt"), data["test"], workers=1)
    assert again["knn"] == pytest.approx(summary["knn"])
    assert again["linear_probe"] == pytest.approx(summary["linear_probe"])


def test_moco_resnet_momentum_encoder_follows_the_schedule(data, tmp_path):
    model = build_moco("resnet_tiny_cpu", 32, dim=16, mlp_dim=32, T=0.2)
    before = [p.clone() for p in model.momentum_encoder.parameters()]
    x1, x2 = torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)
    loss_a, loss_b = model(x1, x2, m=1.0)  # m = 1: the momentum encoder does not move
    assert loss_a.shape == (8,) and loss_b.shape == (8,)
    assert all(torch.equal(a, b) for a, b in zip(before, model.momentum_encoder.parameters()))
    (loss_a + loss_b).mean().backward()
    assert all(p.grad is None for p in model.momentum_encoder.parameters())
    model(x1, x2, m=0.0)  # m = 0: it becomes the base encoder
    for b, m in zip(model.base_encoder.parameters(), model.momentum_encoder.parameters()):
        torch.testing.assert_close(b, m)
    summary = train_moco(MocoConfig(train_data=data["train"], arch="resnet_tiny_cpu", batch_size=BATCH, epochs=1,
                                    prune="none", workers=1, logs=str(tmp_path), progress=False,
                                    tensorboard=False))
    assert summary["sample_steps"] == N_TRAIN


def test_moco_bad_arch_is_named(data, tmp_path):
    with pytest.raises(ValueError, match="--arch must be one of"):
        train_moco(MocoConfig(train_data=data["train"], arch="vit_huge", batch_size=BATCH, logs=str(tmp_path)))


def _sincos_reference(grid_h, grid_w, dim, temperature=10000.0):
    """moco-v3's table in plain numpy: a zero row for the class token, then its grid order, w outer, h inner."""
    quarter = dim // 4
    omega = 1.0 / temperature ** (np.arange(quarter) / quarter)
    rows = [np.zeros(dim)]
    for i in range(grid_w):  # moco-v3: meshgrid(arange(w), arange(h)) ('ij'), flattened
        for j in range(grid_h):
            rows.append(np.concatenate([np.sin(i * omega), np.cos(i * omega), np.sin(j * omega), np.cos(j * omega)]))
    return np.stack(rows)[None]


def test_moco_vit_position_embedding_is_moco_v3_fixed_sincos_table():
    model = build_moco("vit_tiny_cpu", 32, dim=16, mlp_dim=32, T=0.2)
    for encoder in (model.base_encoder, model.momentum_encoder):
        assert encoder.patch_embed.grid_size == (4, 4) and encoder.num_prefix_tokens == 1
        assert not encoder.no_embed_class and not encoder.pos_embed.requires_grad
        np.testing.assert_allclose(encoder.pos_embed.detach().numpy(), _sincos_reference(4, 4, 64), atol=1e-6)
    # timm flattens patches row-major: on a square grid the first half of the channels encodes the row
    table, omega = model.base_encoder.pos_embed[0, 1:].detach().numpy(), 1.0 / 10000 ** (np.arange(16) / 16)
    row, col = 2, 3
    np.testing.assert_allclose(table[row * 4 + col, :16], np.sin(row * omega), atol=1e-6)
    np.testing.assert_allclose(table[row * 4 + col, 32:48], np.sin(col * omega), atol=1e-6)
    # a non-square grid (2 x 4 patches) keeps moco-v3's order: w outer, h inner
    from scan_fast.train.vits import VisionTransformerMoCo

    wide = VisionTransformerMoCo(img_size=(16, 32), patch_size=8, embed_dim=32, depth=1, num_heads=2)
    assert wide.patch_embed.grid_size == (2, 4)
    np.testing.assert_allclose(wide.pos_embed.detach().numpy(), _sincos_reference(2, 4, 32), atol=1e-6)
    assert wide.patch_embed.proj.weight.requires_grad  # stop_grad_conv1 defaults to False, as in moco-v3
    with pytest.raises(ValueError, match="divisible by 4"):
        VisionTransformerMoCo(img_size=16, patch_size=8, embed_dim=30, depth=1, num_heads=2)


def test_moco_vit_init_follows_moco_v3():
    encoder = build_moco("vit_tiny_cpu", 32, dim=16, mlp_dim=32, T=0.2).base_encoder
    assert encoder.cls_token.abs().max() < 1e-4  # normal, std 1e-6
    proj = encoder.patch_embed.proj  # xavier-uniform on the [64, 3 * 8 * 8] flattened weight
    bound = np.sqrt(6.0 / (3 * 8 * 8 + 64))
    assert bound * 0.9 < proj.weight.abs().max() <= bound and not proj.bias.any()
    qkv = encoder.blocks[0].attn.qkv  # [3 * 64, 64]: each of Q, K, V as a 64 x 64 xavier-uniform matrix
    bound = np.sqrt(6.0 / (64 + 64))
    assert bound * 0.9 < qkv.weight.abs().max() <= bound and not qkv.bias.any()
    fc1 = encoder.blocks[0].mlp.fc1  # [128, 64]: plain xavier-uniform
    bound = np.sqrt(6.0 / (128 + 64))
    assert bound * 0.9 < fc1.weight.abs().max() <= bound and not fc1.bias.any()


def test_moco_vit_frozen_stem_survives_training_and_checkpoints():
    from scan_fast.train.run import param_groups

    torch.manual_seed(0)
    model = build_moco("vit_tiny_cpu", 32, dim=16, mlp_dim=32, T=0.2)
    frozen = ("pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias")
    base = dict(model.base_encoder.named_parameters())
    assert all(not base[name].requires_grad for name in frozen)
    assert all(p.requires_grad for name, p in base.items() if name not in frozen)
    trained = {id(p) for group in param_groups(model, 0.1) for p in group["params"]}
    assert not trained & {id(base[name]) for name in frozen}
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-2)
    x1, x2 = torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)
    for _ in range(3):
        loss_a, loss_b = model(x1, x2, m=0.9)
        assert loss_a.shape == (8,) and loss_b.shape == (8,) and torch.isfinite(loss_a + loss_b).all()
        optimizer.zero_grad()
        (loss_a + loss_b).mean().backward()
        assert all(base[name].grad is None for name in frozen)
        optimizer.step()
    after = model.state_dict()
    for encoder in ("base_encoder", "momentum_encoder"):
        for name in frozen:  # unchanged, in both encoders (bit for bit: the momentum update copies them)
            assert torch.equal(after[f"{encoder}.{name}"], before[f"{encoder}.{name}"]), (encoder, name)
    assert not torch.equal(after["base_encoder.cls_token"], before["base_encoder.cls_token"])
    assert not torch.equal(after["base_encoder.blocks.0.attn.qkv.weight"],
                           before["base_encoder.blocks.0.attn.qkv.weight"])
    assert not torch.equal(after["momentum_encoder.blocks.0.attn.qkv.weight"],
                           before["momentum_encoder.blocks.0.attn.qkv.weight"])
    model.eval()
    assert model.base_encoder(x1).shape == (8, 16) and model.predictor(model.base_encoder(x1)).shape == (8, 16)
    assert model.features(x1).shape == (8, 64)
    # a checkpoint round-trips, and the loaded stem stays frozen
    import io

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    again = build_moco("vit_tiny_cpu", 32, dim=16, mlp_dim=32, T=0.2)
    again.load_state_dict(torch.load(buffer, weights_only=True))
    again.eval()
    for name, value in again.state_dict().items():
        assert torch.equal(value, after[name]), name
    assert not again.base_encoder.pos_embed.requires_grad and not again.base_encoder.patch_embed.proj.weight.requires_grad
    torch.testing.assert_close(again.features(x1), model.features(x1))


def test_moco_vit_small_is_moco_v3_vit_small():
    from scan_fast.train.moco_model import build_backbone

    net = build_backbone("vit_small", 64)
    assert net.patch_embed.patch_size == (16, 16) and net.embed_dim == 384 and len(net.blocks) == 12
    assert net.blocks[0].attn.num_heads == 12 and net.blocks[0].mlp.fc1.out_features == 4 * 384
    assert net.blocks[0].attn.qkv.bias is not None and net.norm.eps == 1e-6
    assert net.pos_embed.shape == (1, 1 + 16, 384) and not net.pos_embed.requires_grad
    np.testing.assert_allclose(net.pos_embed.detach().numpy(), _sincos_reference(4, 4, 384), atol=1e-6)
    assert not net.patch_embed.proj.weight.requires_grad and not net.patch_embed.proj.bias.requires_grad
    assert net.forward_features(torch.randn(2, 3, 64, 64)).shape == (2, 17, 384)


@pytest.mark.slow  # the resume path of test_train_clip's augmented run; make bench runs it for MoCo
def test_moco_resume_after_a_kill_equals_an_uninterrupted_run(data, tmp_path):
    """With augmentation on: crops, flips and photometric draws are keyed by (seed, epoch, id),
    so the resumed run sees the same two views of every sample and ends bit-identical."""
    from scan_fast.train.checkpoint import load_checkpoint

    def config(**overrides):
        return MocoConfig(train_data=data["train"], arch="vit_tiny_cpu", batch_size=BATCH, epochs=4,
                          prune_threshold=1.0, workers=1, logs=str(tmp_path), progress=False,
                          tensorboard=False, **overrides)

    train_moco(config(name="full"))
    # killed inside epoch 2 (the preparation epoch), after two checkpointed epochs
    assert train_moco(config(name="resumed", stop_after_step=10))["stopped_at_step"] == 10
    assert load_checkpoint(os.path.join(tmp_path, "resumed/checkpoints/latest.pt"))["epoch"] == 2
    train_moco(config(name="resumed", resume="latest"))
    full, resumed = epoch_rows(os.path.join(tmp_path, "full")), epoch_rows(os.path.join(tmp_path, "resumed"))
    assert [r["phase"] for r in full] == ["warmup", "warmup", "preparation", "mutation"]
    assert [(r["kept"], r["samples"], r["loss"]) for r in full] == [(r["kept"], r["samples"], r["loss"])
                                                                    for r in resumed]
    assert_resume_matches(os.path.join(tmp_path, "full"), os.path.join(tmp_path, "resumed"))  # bit for bit
