"""The trainers on a GPU: AMP (fp16 with loss scaling, and bf16), the CUDA data path and the Triton
losses inside a real run. Skipped without a GPU; bench/gpu_check.sh runs them (`-m requires_cuda`)."""
import os

import numpy as np
import pytest
import torch

from helpers import epoch_rows, requires_cuda

N_TRAIN, BATCH = 256, 64


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from scan_fast.data import write_shapes

    folder = tmp_path_factory.mktemp("cuda_data")
    paths = {"clip": str(folder / "clip.beton"), "clip_test": str(folder / "clip_test.beton"),
             "moco": str(folder / "moco.beton")}
    write_shapes(paths["clip"], num_samples=N_TRAIN, mismatch_fraction=0.2, context_length=16, progress=False)
    write_shapes(paths["clip_test"], num_samples=64, mismatch_fraction=0.0, duplicate_fraction=0.0, seed=1,
                 context_length=16, progress=False)
    write_shapes(paths["moco"], num_samples=N_TRAIN, kind="moco", progress=False)
    return paths


@requires_cuda
@pytest.mark.parametrize("precision", ["amp", "amp_bf16", "fp32"])
def test_clip_trains_on_cuda_with_each_precision(data, tmp_path, precision):
    pytest.importorskip("open_clip")
    from scan_fast.train.checkpoint import load_checkpoint
    from scan_fast.train.clip import train_clip
    from scan_fast.train.config import ClipConfig

    summary = train_clip(ClipConfig(train_data=data["clip"], val_data=data["clip_test"], batch_size=BATCH, epochs=4,
                                    lr=1e-3, warmup_epochs=0.5, workers=2, prune_threshold=1.0, augment=True,
                                    device="cuda", precision=precision, logs=str(tmp_path), progress=False,
                                    tensorboard=False))
    rows = epoch_rows(summary["folder"])
    assert [r["phase"] for r in rows] == ["warmup", "warmup", "preparation", "mutation"]
    assert int(rows[3]["pruned"]) > 0
    losses = [float(r["loss"]) for r in rows]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert 0.0 <= summary["eval"] <= 1.0
    state = load_checkpoint(os.path.join(summary["folder"], "checkpoints/latest.pt"))
    if precision == "amp":  # fp16 steps go through the loss scaler, whose state is checkpointed
        assert state["scaler"]["scale"] > 0
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@requires_cuda
def test_moco_trains_on_cuda_with_bf16(data, tmp_path):
    from scan_fast.train.config import MocoConfig
    from scan_fast.train.moco import train_moco

    summary = train_moco(MocoConfig(train_data=data["moco"], val_data=data["moco"], arch="vit_tiny_cpu",
                                    batch_size=BATCH, epochs=4, prune_threshold=1.0, workers=2, device="cuda",
                                    precision="amp_bf16", logs=str(tmp_path), progress=False, tensorboard=False))
    rows = epoch_rows(summary["folder"])
    assert [r["phase"] for r in rows] == ["warmup", "warmup", "preparation", "mutation"]
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    assert 0.0 <= summary["knn"] <= 1.0


@requires_cuda
def test_keyed_moco_views_on_cuda_match_the_cpu_ones(data):
    """Crops and flips are decoded on the CPU either way; the photometric ops then run on the GPU with
    the same keyed draws, so the two paths differ only by floating-point rounding."""
    from scan_fast.data import moco_loader

    def views(device):
        loader = moco_loader(data["moco"], 32, 32, seed=5, device=device, num_workers=2)
        loader.set_epoch(1)
        found = {}
        for batch in loader:
            for row, sample in enumerate(batch.ids.tolist()):
                found[sample] = (batch.images[row].float().cpu(), batch.view2[row].float().cpu())
        return found

    cpu, gpu = views("cpu"), views("cuda")
    assert cpu.keys() == gpu.keys()
    for sample in cpu:  # another crop or draw would differ by far more than TF32 convolutions do
        for on_gpu, on_cpu in zip(gpu[sample], cpu[sample]):
            difference = (on_gpu - on_cpu).abs()
            assert difference.max() < 0.05 and difference.mean() < 5e-3, sample
