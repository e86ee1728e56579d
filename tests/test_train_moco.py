"""End-to-end MoCo v3 trainer runs on a tiny shapes .beton (MoCo kind: image, label, id)."""
import csv
import os

import numpy as np
import pytest
import torch

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


def _rows(folder):
    with open(os.path.join(folder, "epochs.csv")) as f:
        return list(csv.DictReader(f))


def test_moco_vit_with_scan_end_to_end(data, tmp_path):
    cfg = MocoConfig(train_data=data["train"], val_data=data["test"], arch="vit_tiny_cpu", batch_size=BATCH,
                     epochs=4, prune_threshold=1.0, workers=1, logs=str(tmp_path), progress=False,
                     tensorboard=False)
    summary = train_moco(cfg)
    rows = _rows(summary["folder"])
    assert [r["phase"] for r in rows] == ["warmup", "warmup", "preparation", "mutation"]
    with np.load(os.path.join(summary["folder"], "candidates.npz")) as cand:
        pool = len(np.union1d(cand["ill"], cand["red"]))
    assert int(rows[3]["pruned"]) == pool // 4 > 0  # rate(1) = 0.25 of the candidates
    assert 0.0 <= summary["knn"] <= 1.0 and 0.0 <= summary["linear_probe"] <= 1.0
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    from scan_fast.train.cli import evaluate_checkpoint

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
