"""The in-place index of webdataset shards (`scan-fast data index`): same samples and ids as a conversion,
images read from the tars as they are, only kept samples read, damaged or changed shards refused."""
import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from helpers import write_tar
from scan_fast.cli import main
from scan_fast.data import clip_loader, open_dataset, write_clip_from_webdataset
from scan_fast.data.write.convert import check_path
from scan_fast.data.write.index_shards import index_webdataset
from scan_fast.data.read.inspect import read_samples
from scan_fast.data.regions import DataError
from scan_fast.data.shard_index import IndexDataset
from scan_fast.data.source_ids import coreset_ids, export_kept, load_ids
from scan_fast.data.tokenize import CaptionTokenizer
from scan_fast.schedule.static_coreset import StaticCoreset

QUIET = dict(progress=False)


def _image_bytes(rng, height, width, mode="RGB", fmt="JPEG", **save):
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode).save(buffer, fmt, **save)
    return buffer.getvalue()


def _uid(shard, i):
    return f"{shard:016x}{i + 1:016x}"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Three shards: baseline and progressive RGB JPEGs, and what goes to a side part (a PNG, a grayscale
    and a CMYK JPEG, a JPEG larger than 64 px), with a sample without caption and a repeated key."""
    folder = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    for s in range(3):
        members = []
        for i in range(12):
            key = f"s{s}/{i:04d}"
            if i == 3:
                name, image = f"{key}.png", _image_bytes(rng, 20, 30, fmt="PNG")
            elif i == 5:
                name, image = f"{key}.jpg", _image_bytes(rng, 24, 24, mode="L")
            elif i == 6 and s == 1:
                name, image = f"{key}.jpg", _image_bytes(rng, 24, 24, mode="CMYK")
            elif i == 7:
                name, image = f"{key}.jpg", _image_bytes(rng, 100, 80)
            else:
                name, image = f"{key}.jpg", _image_bytes(rng, 28 + i, 40 - i, progressive=bool(i % 2))
            members.append((name, image))
            if not (s == 2 and i == 9):  # no caption: a skipped row
                members.append((f"{key}.txt", f"a picture number {i} of shard {s}".encode()))
            members.append((f"{key}.json", json.dumps({"uid": _uid(s, i)}).encode()))
        if s == 0:
            members.append(("s0/0002.jpg", _image_bytes(rng, 8, 8)))  # a repeated key
        write_tar(folder / f"{s:05d}.tar", members)
    return folder


@pytest.fixture(scope="module")
def index(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("index") / "idx"
    summary = index_webdataset(shards, out, max_resolution=64, **QUIET)
    return out, summary


def _member_bytes(shards, key):
    shard = shards / f"{int(key[1]):05d}.tar"
    with tarfile.open(shard) as tar:
        for member in tar:
            if member.name.startswith(key + "."):
                return tar.extractfile(member).read()
    raise KeyError(key)


def test_index_has_the_conversions_samples_ids_and_tokens(shards, index, tmp_path):
    out, summary = index
    converted = tmp_path / "conv.beton"
    conversion = write_clip_from_webdataset(shards, converted, max_resolution=64, **QUIET)
    dataset = open_dataset(out)
    assert isinstance(dataset, IndexDataset)
    assert dataset.num_samples == conversion.rows_written == summary.rows_written == 35
    assert summary.converted == 3 * 3 + 1  # PNG, grayscale and large JPEG per shard, one CMYK
    assert sorted(r for _, r in conversion.skipped) == sorted(
        r for p in range(3) for _, r in json.loads((out / f"part-{p:05d}.summary.json").read_text())["skipped"])
    keys = np.concatenate([load_ids(f, "keys") for f in dataset.files])
    np.testing.assert_array_equal(keys, load_ids(converted, "keys"))
    uids = np.concatenate([load_ids(f, "uids") for f in dataset.files])
    np.testing.assert_array_equal(uids, load_ids(converted, "uids"))
    stored = read_samples(converted)
    from scan_fast.data.read.staging import BatchStager

    stager = BatchStager(dataset)
    ids = np.arange(dataset.num_samples)
    metadata, (buffer, starts, sizes) = stager.stage(ids)
    # the conversion (JPEGs stored as they are) holds the same bytes for every value of every sample
    their_metadata, (theirs, their_starts, their_sizes) = BatchStager(open_dataset(converted)).stage(ids)
    for k in range(len(starts)):
        assert buffer[int(starts[k]):][:int(sizes[k])].tobytes() == \
            theirs[int(their_starts[k]):][:int(their_sizes[k])].tobytes(), k
    for column in ("height", "width", "mode"):
        np.testing.assert_array_equal(metadata["f0"][column], their_metadata["f0"][column])
    tokenizer = CaptionTokenizer()
    for i, key in enumerate(keys):
        key = key.decode()
        image = buffer[int(starts[2 * i]):int(starts[2 * i]) + int(sizes[2 * i])].tobytes()
        tokens = buffer[int(starts[2 * i + 1]):int(starts[2 * i + 1]) + int(sizes[2 * i + 1])].view(np.int32)
        shard, number = int(key[1]), int(key[3:])
        np.testing.assert_array_equal(tokens, tokenizer(f"a picture number {number} of shard {shard}")[0])
        np.testing.assert_array_equal(tokens, stored["tokens"][i])
        source = _member_bytes(shards, key)
        if number in (3, 5, 7) or (shard, number) == (1, 6):  # converted: the conversion's pixels
            assert image != source
            decoded = np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))
            np.testing.assert_array_equal(decoded, stored["image"][i])
        else:  # read from the tar as it is
            assert image == source
            height, width = Image.open(io.BytesIO(source)).size[::-1]
            assert (metadata["f0"]["height"][i], metadata["f0"]["width"][i]) == (height, width)
    assert check_path(out, progress=False) == []


def test_a_pruned_epoch_reads_only_the_kept_samples_bytes(index):
    out, _ = index
    dataset = open_dataset(out)
    kept = np.arange(0, dataset.num_samples, 2)
    loader = clip_loader(out, 4, 16, scan=StaticCoreset(dataset.num_samples, kept), augment=False,
                         num_workers=1, drop_last=False)
    seen = np.concatenate([batch.ids.numpy() for batch in loader])
    assert sorted(seen.tolist()) == kept.tolist()
    from scan_fast.data.read.staging import BatchStager

    located = BatchStager(dataset)
    expected = 0
    for i in kept:
        p = int(dataset.part_of(np.array([i]))[0])
        found = dataset.part(p).locate(np.array([i - dataset.offsets[p]]), located.pointer_fields)
        expected += int(found.sizes.sum())
    assert expected <= loader.stager.bytes_read <= 1.1 * expected


def test_resumed_and_split_runs_write_the_same_index(shards, index, tmp_path):
    out, _ = index
    split = tmp_path / "split"
    first = index_webdataset(shards, split, max_resolution=64, part_range="0:2", **QUIET)
    assert first.pending == 1 and not (split / "manifest.json").exists()
    second = index_webdataset(shards, split, max_resolution=64, part_range="2:3", **QUIET)
    assert second.pending == 0 and (split / "manifest.json").is_file()
    (split / "part-00001.json").unlink()  # a kill before the part's record was renamed into place
    (split / "manifest.json").unlink()
    again = index_webdataset(shards, split, max_resolution=64, **QUIET)
    assert again.written_now == 1
    for name in sorted(os.listdir(out)):
        if name.endswith(".npy") or name.endswith(".beton"):
            assert (split / name).read_bytes() == (out / name).read_bytes(), name


def _copy_index(shards, tmp_path):
    copied = tmp_path / "shards"
    copied.mkdir()
    for shard in sorted(shards.iterdir()):
        (copied / shard.name).write_bytes(shard.read_bytes())
    out = tmp_path / "idx"
    index_webdataset(copied, out, max_resolution=64, **QUIET)
    return copied, out


def test_changed_deleted_or_cut_shards_are_refused_by_name(shards, tmp_path):
    copied, out = _copy_index(shards, tmp_path)
    shard = copied / "00001.tar"
    data = bytearray(shard.read_bytes())
    data[:16] = b"\0" * 16  # same size, other bytes: the fingerprint differs at the first read
    shard.write_bytes(bytes(data))
    loader = clip_loader(out, 4, 16, augment=False, num_workers=1, drop_last=False, shuffle=False)
    with pytest.raises(Exception, match="00001.tar changed after it was indexed"):
        list(loader)
    with open(shard, "ab") as f:
        f.write(b"more")
    with pytest.raises(DataError, match="00001.tar has .* bytes, the index .* recorded"):
        open_dataset(out)
    shard.write_bytes(bytes(data[:len(data) // 2]))
    with pytest.raises(DataError, match="00001.tar has .* bytes"):
        open_dataset(out)
    shard.unlink()
    with pytest.raises(DataError, match="00001.tar listed in .* is missing"):
        open_dataset(out)
    assert any("00001.tar" in line for line in check_path(out, progress=False))


def test_data_check_finds_a_damaged_index_file(shards, tmp_path):
    _, out = _copy_index(shards, tmp_path)
    tokens = out / "part-00002.tokens.npy"
    data = bytearray(tokens.read_bytes())
    data[-5] ^= 0xFF
    tokens.write_bytes(bytes(data))
    problems = check_path(out, progress=False)
    assert any("part-00002.tokens.npy does not match its digest" in line for line in problems)
    rows = out / "part-00000.rows.npy"
    rows.write_bytes(rows.read_bytes()[:-7])
    with pytest.raises(DataError, match="part-00000.rows.npy has .* bytes, the index manifest says"):
        open_dataset(out).part(0)


def test_keys_and_uids_of_an_index_export_and_select(index, tmp_path):
    out, _ = index
    dataset = open_dataset(out)
    kept = np.zeros(dataset.num_samples, bool)
    kept[[0, 5, 13, 34]] = True
    bits = np.packbits(kept, bitorder="little")
    assert export_kept(dataset, bits, "keys", tmp_path / "keys.txt") == 4
    assert coreset_ids(tmp_path / "keys.txt", out).tolist() == [0, 5, 13, 34]
    assert export_kept(dataset, bits, "datacomp", tmp_path / "uids.npy") == 4
    assert coreset_ids(tmp_path / "uids.npy", out).tolist() == [0, 5, 13, 34]


def test_cli_indexes_and_lists_the_command(shards, tmp_path, capsys):
    assert main(["data", "index", "--webdataset", str(shards), "--out", str(tmp_path / "idx"),
                 "--max-resolution", "64", "--no-progress"]) == 0
    assert "3 shards indexed" in capsys.readouterr().out
    assert main(["data", "check", str(tmp_path / "idx"), "--no-progress"]) == 0
    with pytest.raises(SystemExit):
        main(["data", "--help"])
    assert "index" in capsys.readouterr().out
    assert main(["data", "index", "--webdataset", str(shards), "--out", str(tmp_path / "idx"),
                 "--no-progress"]) == 2
    assert "already holds a finished data set" in capsys.readouterr().err


def test_training_from_the_index_equals_training_from_a_passthrough_conversion(shards, index, tmp_path):
    from helpers import epoch_rows
    from scan_fast.train.clip import train_clip
    from scan_fast.train.config import ClipConfig

    out, _ = index
    parts = tmp_path / "parts"
    write_clip_from_webdataset(shards, parts, max_resolution=64, samples_per_part=16, **QUIET)
    rows = {}
    for name, data in (("index", out), ("parts", parts)):
        cfg = ClipConfig(train_data=str(data), batch_size=8, epochs=3, lr=1e-3, warmup_epochs=0.5, workers=1,
                         prune_threshold=1.0, augment=True, logs=str(tmp_path / "runs"), name=name,
                         progress=False, tensorboard=False)
        rows[name] = epoch_rows(train_clip(cfg)["folder"])
    keep = ("epoch", "phase", "kept", "pruned", "steps", "samples", "loss", "lr", "eval")
    assert [{k: r.get(k) for k in keep} for r in rows["index"]] == [{k: r.get(k) for k in keep} for r in rows["parts"]]
    assert all(np.isfinite(float(r["loss"])) for r in rows["index"])


def test_indexing_imports_no_ffcv_torch_or_opencv(tmp_path):
    """`data index` of shards of plain JPEGs starts in a fraction of a second: the job loads neither ffcv
    (with torch and numba's compiles) nor torch for the tokenizer nor OpenCV (a shard with images to
    convert loads ffcv for its side part), and its tokens are still open_clip's."""
    import subprocess
    import sys

    rng = np.random.default_rng(1)
    captions = ["a photo of a cat", "Two DOGS &amp; a ball", "café au lait, 日本", "don't  stop\tnow!"]
    members = []
    for i, caption in enumerate(captions):
        members += [(f"{i:04d}.jpg", _image_bytes(rng, 16, 16)), (f"{i:04d}.txt", caption.encode())]
    write_tar(tmp_path / "00000.tar", members)
    out = tmp_path / "idx"
    code = ("import sys\n"
            "from scan_fast.cli import main\n"
            f"main(['data', 'index', '--webdataset', {str(tmp_path / '00000.tar')!r}, '--out', {str(out)!r}, "
            "'--no-progress'])\n"
            "loaded = sorted(m for m in ('ffcv', 'torch', 'cv2', 'numba') if m in sys.modules)\n"
            "assert not loaded, f'data index loaded {loaded}'\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    tokenizer = CaptionTokenizer(77)
    np.testing.assert_array_equal(np.load(out / "part-00000.tokens.npy"), np.stack([tokenizer(c)[0] for c in captions]))


def test_moco_trains_from_an_index_and_asks_for_a_labelled_knn_bank(index, tmp_path):
    """MoCo's training reads images and ids only, so an index (no labels) is training data; the kNN
    evaluation's bank is the training data unless --probe-train-data names another, and it needs labels."""
    from scan_fast.data import moco_loader, write_shapes
    from scan_fast.train.config import MocoConfig
    from scan_fast.train.moco import MocoTask

    folder, _ = index
    seen = []
    for batch in moco_loader(folder, 8, 32, seed=0, num_workers=1, drop_last=False):
        assert batch.images.shape == batch.view2.shape == (len(batch.ids), 3, 32, 32) and batch.labels is None
        seen += batch.ids.tolist()
    assert sorted(seen) == list(range(open_dataset(folder).num_samples))
    assert MocoTask(MocoConfig(train_data=str(folder), arch="vit_tiny_cpu")).check() == len(seen)
    labelled = tmp_path / "labelled.beton"
    write_shapes(labelled, num_samples=16, kind="moco", resolution=32, progress=False)
    with pytest.raises(ValueError, match=r"lacks field.*label.*give a labelled --probe-train-data"):
        MocoTask(MocoConfig(train_data=str(folder), val_data=str(labelled), arch="vit_tiny_cpu")).check()
    assert MocoTask(MocoConfig(train_data=str(folder), val_data=str(labelled), probe_train_data=str(labelled),
                               arch="vit_tiny_cpu")).check() == len(seen)



def test_direct_reads_stage_the_same_bytes(index):
    """--direct-reads reads the shards with O_DIRECT (whole 512-byte blocks, no page cache): the same staged
    batch, metadata and bytes, as reads through the page cache."""
    from scan_fast.data.read.staging import BatchStager

    out, _ = index
    ids = np.random.default_rng(0).permutation(open_dataset(out).num_samples)[:9]
    staged = []
    for direct in (False, True):
        dataset = open_dataset(out, direct_reads=direct)
        metadata, (buffer, starts, sizes) = BatchStager(dataset).stage(ids)
        staged.append((metadata.copy(), buffer[:int(starts[-1] + sizes[-1])].copy()))
        dataset.close()
    np.testing.assert_array_equal(staged[0][0], staged[1][0])
    np.testing.assert_array_equal(staged[0][1], staged[1][1])
