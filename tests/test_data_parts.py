"""Part folders and the O(1)-per-sample open: a part folder and a single file with the same rows give
the same global batches on any number of ranks; missing, cut, replaced parts and edited manifests are
refused by name; a .beton written by ffcv's own DatasetWriter opens (its sorted table built once); the
epoch's shard computed in chunks equals the shard; each part stays a .beton ffcv's Loader opens."""
import gc
import json
import os
import shutil

import numpy as np
import pytest
from ffcv.fields.basics import IntDecoder
from ffcv.transforms import Squeeze, ToTensor
from hypothesis import given, settings
from hypothesis import strategies as st

from scan_fast.data import beton as beton_module
from scan_fast.data.beton import BetonFile, DataError
from scan_fast.data.beton_records import load_record
from scan_fast.data.dataset import open_dataset
from scan_fast.data.embedded import write_shapes
from scan_fast.data.read.inspect import read_samples
from scan_fast.data.read.loaders import build_loader, clip_loader
from scan_fast.data.read.order import KeptIdsSource
from scan_fast.schedule.shard import KeptSet
from scan_fast.schedule.random_pruning import RandomPruning

N, PER_PART, RES, BATCH = 150, 40, 16, 16

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module", autouse=True)
def _collect_compiled_pipelines():
    yield
    gc.collect()


@pytest.fixture(scope="module")
def same_rows(tmp_path_factory):
    """The same 150 shapes rows as one .beton and as a folder of 4 parts (40, 40, 40, 30)."""
    root = tmp_path_factory.mktemp("parts")
    single, folder = root / "single.beton", root / "folder"
    write_shapes(single, num_samples=N, resolution=RES, progress=False)
    write_shapes(folder, num_samples=N, resolution=RES, progress=False, samples_per_part=PER_PART)
    return single, folder


def _ids_loader(path, schedule, rank, world, epoch):
    pipelines = {"id": [IntDecoder(), ToTensor(), Squeeze(1)]}
    return build_loader(path, BATCH, pipelines, ("id",), scan=schedule, seed=5, distributed=world > 1,
                        rank=rank, world_size=world, num_workers=1, start_epoch=epoch)


def test_the_folder_is_the_single_file_split_in_parts(same_rows):
    single, folder = same_rows
    dataset = open_dataset(folder)
    assert dataset.num_parts == 4 and dataset.num_samples == N
    np.testing.assert_array_equal(dataset.offsets, [0, 40, 80, 120, 150])
    ids = [0, 39, 40, 121, 149]
    from_folder, from_file = read_samples(folder, ids), read_samples(single, ids)
    assert from_folder["id"] == from_file["id"] == ids
    for name in ("image", "tokens"):
        for a, b in zip(from_folder[name], from_file[name]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("world", [1, 2, pytest.param(3, marks=pytest.mark.slow)])  # 3 ranks: make bench
def test_part_folder_and_single_file_give_the_same_global_batches(same_rows, world):
    single, folder = same_rows
    schedule = RandomPruning(N, prune_counts={0: 40, 1: 55}, seed=2)
    for epoch in (0, 1):
        per_rank = {}
        for rank in range(world):
            batches = []
            for path in (single, folder):
                loader = _ids_loader(path, schedule, rank, world, epoch)
                batches.append([b.ids.numpy().copy() for b in loader])
            assert len(batches[0]) == len(batches[1]) > 0
            for a, b in zip(*batches):
                np.testing.assert_array_equal(a, b)
            per_rank[rank] = batches[0]
        # global batch i = the ranks' batch i: the same ids whatever the world size
        for i in range(len(per_rank[0])):
            ids = np.concatenate([per_rank[r][i] for r in range(world)])
            assert len(set(ids.tolist())) == len(ids)
        schedule.end_epoch(epoch, 1.0)


def test_images_and_tokens_agree_across_parts_with_keyed_augmentation(same_rows):
    single, folder = same_rows
    outputs = []
    for path in (single, folder):
        loader = clip_loader(path, BATCH, RES, seed=3, distributed=True, rank=1, world_size=2,
                             num_workers=1, flip=True, crop_scale=(0.5, 1.0))
        loader.set_epoch(2)
        outputs.append([(b.images.clone(), b.tokens.clone(), b.ids.clone()) for b in loader])
    assert len(outputs[0]) == len(outputs[1]) == (N // 2) // BATCH
    for (img_a, tok_a, id_a), (img_b, tok_b, id_b) in zip(*outputs):
        assert (id_a == id_b).all() and (tok_a == tok_b).all() and (img_a == img_b).all()
    # the crops are keyed by the global id: the same sample decoded alone gives the same pixels
    stored = read_samples(folder, [int(outputs[1][0][2][0])])
    assert stored["tokens"][0].tolist() == outputs[1][0][1][0].tolist()


def test_missing_cut_and_replaced_parts_and_edited_manifests_are_refused(same_rows, tmp_path):
    _, folder = same_rows
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    open_dataset(copy)
    os.remove(copy / "part-00002.beton")
    with pytest.raises(DataError, match=r"part .*part-00002\.beton listed in .*manifest\.json is missing"):
        clip_loader(copy, 8)
    shutil.copy(folder / "part-00002.beton", copy / "part-00002.beton")
    data = (copy / "part-00001.beton").read_bytes()
    (copy / "part-00001.beton").write_bytes(data[:-500])
    with pytest.raises(DataError, match=r"part .*part-00001\.beton has \d+ bytes, the manifest says"):
        open_dataset(copy)
    # replaced by another part of the same size: found when the part is first read
    shutil.copy(folder / "part-00000.beton", copy / "part-00001.beton")
    dataset = open_dataset(copy)
    with pytest.raises(DataError, match=r"part-00001\.beton does not match its record"):
        dataset.part(1)
    shutil.copy(folder / "part-00001.beton", copy / "part-00001.beton")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["parts"][3]["num_samples"] = 31
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="fails its checksum"):
        open_dataset(copy)
    os.remove(copy / "manifest.json")
    with pytest.raises(DataError, match="without manifest.json"):
        open_dataset(copy)


def test_a_cut_single_file_is_refused_at_open_by_the_allocation_count(same_rows, tmp_path):
    single, _ = same_rows
    data = single.read_bytes()
    (tmp_path / "cut.beton").write_bytes(data[:-24])  # one allocation entry short
    with pytest.raises(DataError, match=r"cut\.beton is truncated or corrupt: \d+ data regions for 150 samples"):
        open_dataset(tmp_path / "cut.beton")


def test_each_part_is_a_beton_ffcvs_own_loader_reads(same_rows):
    from ffcv.loader import Loader, OrderOption

    _, folder = same_rows
    loader = Loader(str(folder / "part-00001.beton"), batch_size=64, num_workers=1, order=OrderOption.SEQUENTIAL,
                    drop_last=False,
                    pipelines={"image": None, "tokens": None, "id": [IntDecoder(), ToTensor(), Squeeze(1)]})
    ids = np.concatenate([b[0].numpy().copy() for b in loader])
    np.testing.assert_array_equal(ids, np.arange(PER_PART))  # rows of the part; global = 40 + row


def test_a_beton_written_by_ffcvs_own_writer_opens(tmp_path, monkeypatch):
    """ffcv's DatasetWriter with several workers leaves the allocation table unsorted: the sorted copy is
    built once (out of core: small chunks here) and cached beside the file, and reads agree with it."""
    from ffcv.fields import IntField, NDArrayField
    from ffcv.writer import DatasetWriter

    class Rows:
        def __len__(self):
            return 400

        def __getitem__(self, i):
            return (np.full(5 + i % 7, i, np.int32)[:5], i)

    path = tmp_path / "foreign.beton"
    DatasetWriter(str(path), {"tokens": NDArrayField(np.dtype("int32"), (5,)), "id": IntField()},
                  num_workers=2).from_indexed_dataset(Rows(), chunksize=13)
    beton = BetonFile(path)
    monkeypatch.setattr(beton_module, "CHUNK_ROWS", 37)
    record = load_record(beton, progress=False)
    assert os.path.isfile(str(path) + ".index.json")
    if not record["ptr_sorted"]:
        assert os.path.isfile(str(path) + ".ptrs.npy")
    index = beton.pointer_index()
    np.testing.assert_array_equal(index, np.sort(np.array(beton.table), order="ptr"))
    beton.check_all()
    pipelines = {"tokens": None, "id": [IntDecoder(), ToTensor(), Squeeze(1)]}
    loader = build_loader(path, 64, {**pipelines, "tokens": None}, ("id",), shuffle=False, drop_last=False,
                          num_workers=1)
    assert sorted(np.concatenate([b.ids.numpy().copy() for b in loader]).tolist()) == list(range(400))
    assert [t[0] for t in read_samples(path, [3, 399])["tokens"]] == [3, 399]


@given(st.integers(1, 300), st.integers(1, 4), st.integers(1, 50), st.booleans(), st.booleans(), st.data())
@settings(max_examples=60, deadline=None)
def test_the_shard_computed_in_chunks_is_the_shard(n, world, chunk, pad, shuffle, data):
    world = min(world, n)
    kept = np.array(sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=world, max_size=n))))
    rank = data.draw(st.integers(0, world - 1))
    scan = type("Listed", (), {"epoch_indices": lambda self, epoch: kept})()
    source = KeptIdsSource(scan, n, seed=9, shuffle=shuffle, rank=rank, world_size=world, pad=pad)
    whole = source.order(4)
    assert source.length(4) == len(whole)
    count = data.draw(st.integers(0, len(whole)))
    first = data.draw(st.none() | st.integers(1, 60))
    parts = list(source.order_chunks(4, count, chunk, first=first))
    assert all(len(p) <= chunk for p in parts)
    np.testing.assert_array_equal(np.concatenate(parts) if parts else np.zeros(0, np.int64), whole[:count])
    assert isinstance(source.kept(4), KeptSet)
