import os
import random
import shutil
import subprocess

# Without a GPU, Triton kernels run in its interpreter on CPU tensors. The flag is
# read when kernels are decorated, so it must be set before anything imports them.
if "TRITON_INTERPRET" not in os.environ:
    _has_gpu = shutil.which("nvidia-smi") is not None and subprocess.run(
        ["nvidia-smi", "-L"], capture_output=True).returncode == 0
    if not _has_gpu:
        os.environ["TRITON_INTERPRET"] = "1"

# Imported before any test starts a thread: CPython 3.11's AST builder keeps its recursion
# count per interpreter, not per thread (python/cpython#106905), so hypothesis's plugin
# importing it lazily at session end, beside a loader thread, could fail with
# "SystemError: AST constructor recursion depth mismatch".
import hypothesis  # noqa: F401
import hypothesis.internal.observability  # noqa: F401
import numpy as np
import pytest

try:
    import torch
except ImportError:  # pragma: no cover - torch is a hard dependency, kept soft here for collection
    torch = None

# The marks and plain helpers the test modules share are in helpers.py, its asserts rewritten as theirs are.
pytest.register_assert_rewrite("helpers")
from helpers import CLIP_N_TRAIN, requires_cuda


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    if torch is not None:
        torch.manual_seed(0)
    yield
    if torch is not None:
        # A trainer run in this process flushes CPU denormals (its own process's setting); the
        # tests after it generate and compare subnormal floats, so the default comes back.
        torch.set_flush_denormal(False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The tiny CLIP runs' shapes .betons (test_train_clip.py, test_train_siglip.py): train, test and a MoCo-kind
    one. Modules that train on other data define a `data` fixture of their own."""
    from scan_fast.data import write_shapes

    folder = tmp_path_factory.mktemp("clip_data")
    train = str(folder / "shapes.beton")
    test = str(folder / "shapes_test.beton")
    write_shapes(train, num_samples=CLIP_N_TRAIN, mismatch_fraction=0.2, context_length=16, progress=False)
    write_shapes(test, num_samples=48, mismatch_fraction=0.0, duplicate_fraction=0.0, seed=1, context_length=16,
                 progress=False)
    moco = str(folder / "moco.beton")  # images without captions: the wrong kind for CLIP
    write_shapes(moco, num_samples=16, kind="moco", progress=False)
    return {"train": train, "test": test, "moco": moco, "folder": folder}


def pytest_collection_modifyitems(config, items):
    # `requires_cuda` is a skipif; also mark those tests so `pytest -m requires_cuda`
    # (bench/gpu_check.sh) selects every CUDA test in the project.
    for item in items:
        if any(m.kwargs.get("reason") == requires_cuda.kwargs["reason"] for m in item.iter_markers("skipif")):
            item.add_marker(pytest.mark.requires_cuda)


def pytest_configure(config):
    # Two cores: keep torch from oversubscribing when tests run beside each other.
    if torch is not None and not os.environ.get("SCAN_FAST_TEST_THREADS_SET"):
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
