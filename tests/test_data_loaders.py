"""FFCV loaders: each epoch reads exactly the kept ids, len/drop_last follow the list, ranks are
disjoint, and what comes out matches what was written. One small .beton per module: the first
pass of each loader JIT-compiles its pipeline (seconds), so loaders are few and reused."""
import gc
import os

import numpy as np
import pytest
import torch
from ffcv.fields.basics import IntDecoder
from ffcv.transforms import Squeeze, ToTensor

from helpers import requires_cuda
from scan_fast.data.read.augment import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from scan_fast.data.embedded import write_shapes
from scan_fast.data.read.inspect import read_samples
from scan_fast.data.read.loaders import build_loader, clip_loader, moco_loader
from scan_fast.data.read.order import epoch_order
from scan_fast.data.read.sampler import ScanSampler

N, RES, BATCH = 300, 16, 32

# numba's dispatcher finalizers complain at interpreter exit about ffcv's compiled pipelines.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module", autouse=True)
def _collect_compiled_pipelines():
    yield
    gc.collect()  # let those finalizers run here, under the filter above


class ShrinkGrowScan:
    """Duck-typed schedule whose kept list shrinks and grows again (epoch 0 keeps everything)."""

    fractions = (1.0, 0.65, 0.35, 0.9, 0.5)

    def __init__(self, n, seed=0):
        self.n, self.seed = n, seed

    def epoch_indices(self, epoch):
        k = int(self.fractions[epoch % len(self.fractions)] * self.n)
        return np.sort(np.random.default_rng([self.seed, epoch]).choice(self.n, k, replace=False))


@pytest.fixture(scope="module")
def clip_beton(tmp_path_factory):
    path = tmp_path_factory.mktemp("loaders") / "shapes.beton"
    write_shapes(path, num_samples=N, resolution=RES, image_mode="raw", progress=False)
    return path, read_samples(path)


@pytest.fixture(scope="module")
def eval_loader(clip_beton):
    """Centre-crop loader at the stored size: images come back exactly (after normalisation)."""
    path, _ = clip_beton
    return clip_loader(path, BATCH, RES, scan=ShrinkGrowScan(N), seed=3, augment=False,
                       drop_last=False, with_labels=True, num_workers=2)


def _id_loader(path, scan, **kwargs):
    pipelines = {"image": None, "tokens": None, "label": None,
                 "id": [IntDecoder(), ToTensor(), Squeeze(1)]}
    return build_loader(path, BATCH, pipelines, ("id",), scan=scan, num_workers=1, **kwargs)


def _epoch_ids(loader):
    # ffcv reuses its output buffers a few batches later: copy what outlives the batch.
    return np.concatenate([batch.ids.numpy().copy() for batch in loader])


def test_round_trip_through_the_loader(clip_beton, eval_loader):
    _, stored = clip_beton
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    eval_loader.set_epoch(0)
    seen = []
    for batch in eval_loader:
        images, tokens, ids, labels = batch.images, batch.tokens, batch.ids, batch.labels
        assert images.dtype == torch.float32 and images.shape[1:] == (3, RES, RES)
        assert tokens.dtype == torch.int32 and ids.dtype == torch.int64
        pixels = ((images * std + mean) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for k, i in enumerate(ids.tolist()):
            np.testing.assert_array_equal(pixels[k], stored["image"][i])
            np.testing.assert_array_equal(tokens[k].numpy(), stored["tokens"][i])
            assert labels[k].item() == stored["label"][i]
        seen += ids.tolist()
    assert sorted(seen) == list(range(N))


def test_each_epoch_reads_exactly_the_kept_ids(eval_loader):
    scan = ShrinkGrowScan(N)
    sampler = ScanSampler(scan, N, seed=3, rank=0, world_size=1)
    for epoch in range(1, 6):  # 0.65, 0.35, 0.9, 0.5, 1.0 of the data: shrinks and grows
        kept = scan.epoch_indices(epoch)
        eval_loader.set_epoch(epoch)
        assert len(eval_loader) == -(-len(kept) // BATCH)
        ids = _epoch_ids(eval_loader)
        assert len(ids) == len(np.unique(ids)) == len(kept)
        np.testing.assert_array_equal(np.sort(ids), kept)
        np.testing.assert_array_equal(ids, epoch_order(kept, 3, epoch))  # seeded by (seed, epoch)
        sampler.set_epoch(epoch)
        assert list(sampler) == ids.tolist()  # the plain-PyTorch sampler reads the same ids


def test_iteration_without_set_epoch_advances_and_tracks_len(clip_beton):
    path, _ = clip_beton
    scan = ShrinkGrowScan(N, seed=1)
    loader = _id_loader(path, scan, seed=0, drop_last=True)
    for epoch in range(4):
        kept = scan.epoch_indices(epoch)
        ids = _epoch_ids(loader)  # iter() picks up the next epoch and its list
        assert len(loader) == len(kept) // BATCH == len(ids) // BATCH
        assert len(ids) == len(kept) // BATCH * BATCH and len(np.unique(ids)) == len(ids)
        np.testing.assert_array_equal(ids, epoch_order(kept, 0, epoch)[: len(ids)])
    assert loader.epoch == 4


def test_an_epoch_left_early_does_not_disturb_the_next(clip_beton):
    path, _ = clip_beton
    scan = ShrinkGrowScan(N, seed=4)
    loader = _id_loader(path, scan, seed=0, drop_last=False)
    for epoch in range(3):
        for k, _ in enumerate(loader):  # leave after two batches; buffers are reused next epoch
            if k == 1:
                break
    loader.set_epoch(3)
    ids = _epoch_ids(loader)
    np.testing.assert_array_equal(ids, epoch_order(scan.epoch_indices(3), 0, 3))


def test_distributed_ranks_get_equal_disjoint_shards(clip_beton):
    path, _ = clip_beton
    scan, world = ShrinkGrowScan(N, seed=2), 3
    loaders = [_id_loader(path, scan, seed=9, drop_last=False, distributed=True, rank=r,
                          world_size=world) for r in range(world)]
    for epoch in (0, 2, 3):
        kept = scan.epoch_indices(epoch)
        shards = []
        for rank, loader in enumerate(loaders):
            loader.set_epoch(epoch)
            shards.append(_epoch_ids(loader))
            sampler = ScanSampler(scan, N, seed=9, rank=rank, world_size=world, drop_last=True)
            sampler.set_epoch(epoch)
            assert list(sampler) == shards[-1].tolist()
        assert {len(s) for s in shards} == {len(kept) // world}
        union = np.concatenate(shards)
        assert len(np.unique(union)) == len(union) == len(kept) // world * world
        assert np.isin(union, kept).all()


def test_real_scan_schedule_drives_the_loader(clip_beton):
    from scan_fast import Scan

    path, _ = clip_beton
    scan = Scan(N, t_cos=3, seed=0)
    loader = _id_loader(path, scan, seed=0, drop_last=False)
    sizes = []
    for epoch in range(6):
        loader.set_epoch(epoch)
        kept = scan.epoch_indices(epoch)
        ids = []
        for batch in loader:
            batch_ids = batch.ids
            ids.append(batch_ids.numpy().copy())
            losses = torch.from_numpy(batch_ids.numpy() % 97).float()  # a fixed loss per id
            scan.observe(batch_ids, losses, losses.flip(0))
        ids = np.concatenate(ids)
        np.testing.assert_array_equal(np.sort(ids), np.sort(np.asarray(kept)))
        sizes.append(len(ids))
        scan.end_epoch(epoch, 1.0)
    assert min(sizes) < N  # the schedule pruned, and the loader followed it


def test_clip_training_pipeline_keeps_fields_aligned(clip_beton):
    path, stored = clip_beton
    loader = clip_loader(path, BATCH, 12, seed=0, num_workers=2)
    batch = next(iter(loader))
    images, tokens, ids = batch.images, batch.tokens, batch.ids
    assert images.shape == (BATCH, 3, 12, 12) and images.dtype == torch.float32
    assert len(loader) == N // BATCH
    for k, i in enumerate(ids.tolist()):
        np.testing.assert_array_equal(tokens[k].numpy(), stored["tokens"][i])


def test_moco_two_views(tmp_path):
    path = tmp_path / "moco.beton"
    write_shapes(path, num_samples=64, kind="moco", resolution=RES, image_mode="jpg", progress=False)
    loader = moco_loader(path, 16, RES, seed=0, num_workers=2)
    assert len(loader) == 4
    seen = []
    for batch in loader:
        view1, view2, ids = batch.images, batch.view2, batch.ids
        assert view1.shape == view2.shape == (16, 3, RES, RES) and view1.dtype == torch.float32
        assert not torch.allclose(view1, view2)  # independent crops and augmentations
        assert batch.labels is None  # training reads no label (an index has none)
        seen += ids.tolist()
    assert sorted(seen) == list(range(64))


@requires_cuda
def test_cuda_pipelines_round_trip(clip_beton):
    path, stored = clip_beton
    loader = clip_loader(path, BATCH, RES, device="cuda", augment=False, drop_last=False)
    mean = torch.tensor(OPENAI_CLIP_MEAN, device="cuda").view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD, device="cuda").view(1, 3, 1, 1)
    for batch in loader:
        images, tokens, ids = batch.images, batch.tokens, batch.ids
        assert images.is_cuda and tokens.is_cuda
        pixels = ((images * std + mean) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        for k, i in enumerate(ids.tolist()):
            np.testing.assert_array_equal(pixels[k], stored["image"][i])
    views = moco_loader(_moco_copy(path), 16, RES, device="cuda")
    batch = next(iter(views))
    view1, view2 = batch.images, batch.view2
    assert view1.is_cuda and view2.is_cuda and not torch.allclose(view1, view2)


def _moco_copy(path):
    moco = path.with_name("shapes_moco.beton")
    if not moco.exists():
        write_shapes(moco, num_samples=64, kind="moco", resolution=RES, progress=False)
    return moco


def test_loader_input_errors(clip_beton, tmp_path):
    path, _ = clip_beton
    data = path.read_bytes()
    (tmp_path / "cut.beton").write_bytes(data[: len(data) - 1000])
    with pytest.raises(ValueError, match=r"cut\.beton is truncated"):
        clip_loader(tmp_path / "cut.beton", 8)
    (tmp_path / "notes.beton").write_text("just some notes, not a dataset\n" * 10)
    with pytest.raises(ValueError, match=r"notes\.beton is not a \.beton"):
        clip_loader(tmp_path / "notes.beton", 8)
    with pytest.raises(FileNotFoundError, match="no .beton file"):
        moco_loader(tmp_path / "absent.beton", 8)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        build_loader(path, 0, {}, ("id",))

    class OutOfRange:
        def epoch_indices(self, epoch):
            return np.array([0, 1, N + 5])

    with pytest.raises(ValueError, match=f"kept id {N + 5} for epoch 0 is out of range"):
        _id_loader(path, OutOfRange())
    with pytest.raises(ValueError, match="without distributed=True"):
        _id_loader(path, None, rank=1, world_size=2)


def test_only_numbas_finalizer_key_error_is_silenced():
    import types

    from scan_fast.data.read.loaders import _is_numba_finalizer_key_error

    def unraisable(filename, name, exc_type):
        namespace = {}
        exec(compile(f"def {name}():\n    raise {exc_type.__name__}('k')\n", filename, "exec"), namespace)
        try:
            namespace[name]()
        except exc_type as err:
            return types.SimpleNamespace(exc_type=exc_type, exc_value=err, exc_traceback=err.__traceback__)

    numba_file = os.path.join("site-packages", "numba", "core", "dispatcher.py")
    assert _is_numba_finalizer_key_error(unraisable(numba_file, "finalizer", KeyError))
    assert not _is_numba_finalizer_key_error(unraisable(numba_file, "finalizer", ValueError))
    assert not _is_numba_finalizer_key_error(unraisable(numba_file, "other", KeyError))
    assert not _is_numba_finalizer_key_error(unraisable("mine.py", "finalizer", KeyError))


def test_an_error_in_the_loader_thread_is_raised_in_the_training_loop(tmp_path):
    """ffcv's epoch thread dies on an error and its reader would wait forever; ours raises it."""
    from ffcv.fields.basics import IntDecoder

    from scan_fast.data.read.loaders import LoaderError, build_loader

    path = str(tmp_path / "small.beton")
    write_shapes(path, num_samples=40, kind="moco", progress=False)

    class FailOnSample(torch.nn.Module):
        def forward(self, ids):
            if (ids == 33).any():
                raise ValueError("sample 33 is unreadable")
            return ids

    pipes = {"image": None, "label": None, "id": [IntDecoder(), ToTensor(), Squeeze(1), FailOnSample()]}
    loader = build_loader(path, 8, pipes, ("id",), shuffle=False, drop_last=False, num_workers=1)
    seen = []
    with pytest.raises(LoaderError, match=r"reading epoch 0 of .*small.beton failed: ValueError: sample 33"):
        for batch in loader:
            seen += batch.ids.tolist()
    assert seen == list(range(32))  # every batch before the bad one arrived
    loader.set_epoch(1)  # the loader stays usable
    with pytest.raises(LoaderError, match="reading epoch 1"):
        list(loader)


def _epochs_read(loader, epochs):
    """(ids, images) of each of `epochs` epochs, copied out of the loader's reused buffers."""
    read = []
    for _ in range(epochs):
        batches = [(b.ids.clone(), b.images.clone()) for b in loader]
        read.append((torch.cat([i for i, _ in batches]), torch.cat([x for _, x in batches])))
    return read


def test_a_reused_loader_reads_what_a_new_one_reads(tmp_path):
    from scan_fast.data import reuse_compiled_loaders

    path = tmp_path / "jpg.beton"
    write_shapes(path, num_samples=96, resolution=RES, image_mode="jpg", progress=False)
    expected = _epochs_read(clip_loader(path, 16, RES, scan=ShrinkGrowScan(96, seed=2), seed=5, start_epoch=1,
                                        num_workers=1), 2)
    with reuse_compiled_loaders():
        first = clip_loader(path, 16, RES, scan=ShrinkGrowScan(96, seed=1), seed=1, num_workers=1)
        next(iter(first))  # compiled, and left in the middle of an epoch
        again = clip_loader(path, 16, RES, scan=ShrinkGrowScan(96, seed=2), seed=5, start_epoch=1, num_workers=1)
        assert again is first  # not compiled again
        other = clip_loader(path, 16, RES + 8, num_workers=1)  # other pipelines: a loader of its own
        assert other is not first
        for (ids, images), (want_ids, want_images) in zip(_epochs_read(again, 2), expected):
            torch.testing.assert_close(ids, want_ids, rtol=0, atol=0)
            torch.testing.assert_close(images, want_images, rtol=0, atol=0)
    assert clip_loader(path, 16, RES, num_workers=1) is not first  # outside the block: built anew
