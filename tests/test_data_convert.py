"""Conversion to part folders: parts independent of the number of processes, resumable, with the
source's own ids (keys, DataComp uids) kept beside each part; coreset export and --coreset through
them; `data check`."""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from scan_fast.cli import main
from scan_fast.data.dataset import open_dataset
from scan_fast.data.read.inspect import read_samples
from scan_fast.data.write.parts import part_path
from scan_fast.data.source_ids import UID_DTYPE, coreset_ids, export_kept, ids_path, load_ids

SHARDS, PER_SHARD, K = 2, 5, 4  # 10 rows -> parts of 4, 4, 2
QUIET = ["--no-progress", "--num-workers", "1"]


def _uid(k):
    return f"{(k * 7919) % 2**60:016x}{k + 1:016x}"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two shards of 5 samples: JPEG + caption + DataComp-style json; sample 3 has no caption
    (skipped) and sample 6 no uid."""
    root = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    k = 0
    for s in range(SHARDS):
        with wds.TarWriter(str(root / f"shard-{s:05d}.tar")) as sink:
            for _ in range(PER_SHARD):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(buf, format="JPEG")
                sample = {"__key__": f"s{k:04d}", "jpg": buf.getvalue(),
                          "json": json.dumps({"uid": _uid(k)} if k != 6 else {"other": 1}).encode()}
                if k != 3:
                    sample["txt"] = f"a photo number {k}"
                sink.write(sample)
                k += 1
    return root


def _convert(shards, out, *extra):
    code = main(["data", "clip", "--webdataset", str(shards), "--out", str(out), *QUIET, *extra])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def folder(shards, tmp_path_factory):
    return _convert(shards, tmp_path_factory.mktemp("one") / "parts", "--samples-per-part", str(K))


def _assert_same_rows(a, b):
    ra, rb = read_samples(a), read_samples(b)
    assert set(ra) == set(rb)
    for name in ra:
        assert len(ra[name]) == len(rb[name])
        for x, y in zip(ra[name], rb[name]):
            np.testing.assert_array_equal(x, y)


def test_part_layout_and_source_ids(folder, shards, tmp_path):
    dataset = open_dataset(folder)
    # part p holds the valid rows among source rows [pK, (p+1)K): row 3 (no caption) is skipped in part 0
    assert dataset.num_parts == 3 and list(np.diff(dataset.offsets)) == [3, 4, 2]
    summary = json.loads((folder / "part-00000.beton.summary.json").read_text())
    assert summary["rows_read"] == 4 and "s0003" in summary["skipped"][0][0]
    keys = np.concatenate([load_ids(dataset.files[p], "keys") for p in range(3)])
    kept_rows = [k for k in range(10) if k != 3]
    assert keys.tolist() == [f"s{k:04d}".encode() for k in kept_rows]
    uids = np.concatenate([load_ids(dataset.files[p], "uids") for p in range(3)])
    assert uids.dtype == UID_DTYPE == np.dtype("u8,u8")
    expected = [(int(_uid(k)[:16], 16), int(_uid(k)[16:], 16)) if k != 6 else (0, 0) for k in kept_rows]
    assert uids.tolist() == expected
    manifest = json.loads((folder / "manifest.json").read_text())
    pins = manifest["parts"][0]["source_ids"]  # each array pinned by name, size and digest
    assert {kind: pin["file"] for kind, pin in pins.items()} == {"keys": "part-00000.keys.npy",
                                                                  "uids": "part-00000.uids.npy"}
    for kind, pin in pins.items():
        path = folder / pin["file"]
        assert pin["bytes"] == path.stat().st_size and len(pin["sha256"]) == 64
    # a single file gets the same arrays beside it
    single = _convert(shards, tmp_path / "single.beton")
    assert load_ids(single, "keys").tolist() == keys.tolist()
    assert load_ids(single, "uids").tolist() == uids.tolist()


def test_two_part_ranges_equal_one_process_and_a_single_file(folder, shards, tmp_path):
    split = tmp_path / "split"
    _convert(shards, split, "--samples-per-part", str(K), "--part-range", "0:1")
    assert not (split / "manifest.json").exists(), "parts are missing: no manifest yet"
    _convert(shards, split, "--samples-per-part", str(K), "--part-range", "1:3")
    assert (split / "manifest.json").exists(), "the job that finishes the last part writes the manifest"
    _assert_same_rows(split, folder)
    _assert_same_rows(folder, _convert(shards, tmp_path / "single.beton"))


def test_a_rerun_skips_finished_parts_and_redoes_cut_ones(folder, shards, tmp_path):
    out = tmp_path / "resumed"
    _convert(shards, out, "--samples-per-part", str(K))
    before = {p: os.stat(part_path(out, p)) for p in range(3)}
    # as a killed run leaves it: part 1 never renamed (a leftover temporary file), part 2 missing
    os.rename(part_path(out, 1), out / f".part-00001.beton.partial-{2**22 + 12345}")
    os.unlink(part_path(out, 2))
    os.unlink(out / "manifest.json")
    _convert(shards, out, "--samples-per-part", str(K))
    after = os.stat(part_path(out, 0))
    assert (after.st_ino, after.st_mtime_ns) == (before[0].st_ino, before[0].st_mtime_ns)
    assert os.stat(part_path(out, 1)).st_mtime_ns > before[1].st_mtime_ns  # written again
    assert not [p for p in os.listdir(out) if ".partial-" in p]
    _assert_same_rows(out, folder)


def test_the_folder_is_refused_without_overwrite(shards, folder, tmp_path, capsys):
    assert main(["data", "clip", "--webdataset", str(shards), "--out", str(folder), "--samples-per-part", str(K),
                 *QUIET]) == 2
    assert "already holds a finished data set" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["data", "clip", "--webdataset", str(shards), "--out", str(other), "--samples-per-part", "3",
                 *QUIET]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "mine"
    # an unfinished conversion with other options is not resumed
    (tmp_path / "half").mkdir()
    _convert(shards, tmp_path / "half", "--samples-per-part", str(K), "--part-range", "0:1")
    assert main(["data", "clip", "--webdataset", str(shards), "--out", str(tmp_path / "half"),
                 "--samples-per-part", "3", *QUIET]) == 2
    assert "differs in samples_per_part" in capsys.readouterr().err


def _scan_checkpoint(path, num_samples, train_data):
    """A SCAN checkpoint after one preparation epoch (what coreset export reads)."""
    from scan_fast.schedule import Scan
    from scan_fast.train.checkpoint import FORMAT

    config = dict(rho_ill=0.25, rho_red=0.25, t_cos=2, prune_threshold=1.0, prune_target="both", seed=0)
    scan = Scan(num_samples, rho_ill=0.25, rho_red=0.25, t_cos=2, prune_threshold=1.0, mode="both", seed=0)
    rng = np.random.default_rng(1)
    epoch = 0
    while not len(scan.candidates()):
        ids = scan.epoch_kept_set(epoch).to_array().astype(np.int64)
        if scan.is_preparation(epoch):
            scan.observe(ids, rng.random(len(ids)).astype(np.float32), rng.random(len(ids)).astype(np.float32))
        scan.end_epoch(epoch, 1.0 / (epoch + 1))
        epoch += 1
    torch.save({"format": FORMAT, "schedule": scan.state_dict(),
                "config": {**config, "prune": "scan", "train_data": str(train_data)}}, path)
    return scan.coreset()


def test_datacomp_uids_and_keys_round_trip_through_coreset(shards, tmp_path):
    data = _convert(shards, tmp_path / "data", "--samples-per-part", str(K))
    n = open_dataset(data).num_samples
    ckpt = tmp_path / "latest.pt"
    kept = _scan_checkpoint(ckpt, n, data)
    assert 0 < len(kept) < n
    # sample 6 (id 5) has no uid: a coreset holding it cannot be written as uids
    ids_of = {int(i) for i in kept}
    uids_file, keys_file = tmp_path / "uids.npy", tmp_path / "keys.txt"
    if 5 in ids_of:
        assert main(["coreset", "export", str(ckpt), "--format", "datacomp", "--out", str(uids_file)]) == 2
    else:
        assert main(["coreset", "export", str(ckpt), "--format", "datacomp", "--out", str(uids_file)]) == 0
        uids = np.load(uids_file)
        assert uids.dtype == np.dtype("u8,u8") and np.all(uids[:-1] < uids[1:])
        np.testing.assert_array_equal(coreset_ids(uids_file, data), kept)
    assert main(["coreset", "export", str(ckpt), "--format", "keys", "--out", str(keys_file)]) == 0
    np.testing.assert_array_equal(coreset_ids(keys_file, data), kept)
    # the same through the library on a set without sample 5, so the uid path always runs
    bits = np.zeros((n + 7) // 8, np.uint8)
    chosen = np.array([0, 2, 3, 7, 8])
    np.bitwise_or.at(bits, chosen // 8, (1 << (chosen % 8)).astype(np.uint8))
    dataset = open_dataset(data)
    assert export_kept(dataset, bits, "datacomp", uids_file) == len(chosen)
    np.testing.assert_array_equal(coreset_ids(uids_file, data), chosen)


def test_unknown_uids_are_refused_with_a_count_and_an_example(folder, tmp_path):
    from scan_fast.train.run import make_schedule
    from scan_fast.train.config import ClipConfig

    dataset = open_dataset(folder)
    good = np.asarray(load_ids(dataset.files[0], "uids"))[:2]
    strangers = np.array([(1, 2), (3, 4)], dtype=UID_DTYPE)
    path = tmp_path / "uids.npy"
    np.save(path, np.sort(np.concatenate([good, strangers])))
    cfg = ClipConfig(train_data=str(folder), prune="static", coreset=str(path))
    with pytest.raises(ValueError, match=r"2 of its 4 uids are not in .*e\.g\. 00000000000000010000000000000002"):
        make_schedule(cfg, dataset.num_samples)
    np.save(path, good)
    assert make_schedule(cfg, dataset.num_samples).coreset().tolist() == [0, 1]


def test_data_check_passes_a_good_folder_and_finds_a_corrupt_byte(folder, tmp_path, capsys):
    import shutil

    from scan_fast.data.beton import BetonFile

    assert main(["data", "check", str(folder), "--no-progress"]) == 0
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    part = part_path(copy, 1)
    beton = BetonFile(part)
    image = beton.metadata_type.fields["f0"]  # the image field's metadata: its data pointer
    table_ptr = beton.table_ptr
    ptr_at = beton.metadata_offset + image[1] + image[0].fields["data_ptr"][1]
    beton.close()
    with open(part, "r+b") as f:  # a byte of the allocation table: the first entry's sample id
        f.seek(table_ptr)
        f.write(b"\x07")
    capsys.readouterr()
    assert main(["data", "check", str(copy), "--no-progress"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and str(part) in out[0]
    shutil.copy(part_path(folder, 1), part)
    with open(part, "r+b") as f:  # a byte of the metadata: sample 0's image pointer
        f.seek(ptr_at)
        byte = f.read(1)
        f.seek(ptr_at)
        f.write(bytes([byte[0] ^ 0x01]))
    assert main(["data", "check", str(copy), "--no-progress"]) == 1
    assert str(part) in capsys.readouterr().out
    # a single file passes too
    shutil.copy(part_path(folder, 0), tmp_path / "one.beton")
    assert main(["data", "check", str(tmp_path / "one.beton"), "--no-progress"]) == 0


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(shards, folder, tmp_path):
    out = tmp_path / "torchrun"
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "--", "scan_fast.cli",
            "data", "clip", "--webdataset", str(shards), "--out", str(out), "--samples-per-part", str(K), *QUIET]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    _assert_same_rows(out, folder)
    assert json.loads((out / "manifest.json").read_text())["num_samples"] == open_dataset(folder).num_samples


def test_table_parts_keep_the_uid_column_and_equal_a_single_file(tmp_path):
    rng = np.random.default_rng(3)
    lines = ["image,caption,uid"]
    for i in range(7):
        Image.fromarray(rng.integers(0, 255, (10, 14, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        uid = _uid(i) if i != 2 else "not-a-uid"
        lines.append(f"{i}.png,caption {i},{uid}")
    lines.insert(5, "missing.png,a row whose image is missing," + _uid(99))  # table line 6: a bad row
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n")
    common = ["data", "clip", "--table", str(tmp_path / "pairs.csv"), "--uid-column", "uid", *QUIET]
    assert main([*common, "--out", str(tmp_path / "parts"), "--samples-per-part", "3"]) == 0
    assert main([*common, "--out", str(tmp_path / "one.beton")]) == 0
    _assert_same_rows(tmp_path / "parts", tmp_path / "one.beton")
    dataset = open_dataset(tmp_path / "parts")
    # source rows 0-2: images 0, 1, 2 (bad uid: skipped); 3-5: 3, missing (skipped), 4; 6-7: 5, 6
    assert list(np.diff(dataset.offsets)) == [2, 2, 2]
    uids = np.concatenate([load_ids(f, "uids") for f in dataset.files])
    assert [uid_pair for uid_pair in uids.tolist()] == [(int(_uid(i)[:16], 16), int(_uid(i)[16:], 16))
                                                        for i in (0, 1, 3, 4, 5, 6)]
    np.testing.assert_array_equal(load_ids(tmp_path / "one.beton", "uids"), uids)
    assert ids_path(tmp_path / "one.beton", "uids").name == "one.uids.npy"


def test_image_folder_parts_equal_a_single_file_and_keep_the_class_names(tmp_path):
    from scan_fast.data.classes import load_class_names
    from scan_fast.data.read.inspect import read_labels

    rng = np.random.default_rng(5)
    for name, count in (("cat", 3), ("dog", 4)):
        (tmp_path / "tree" / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (9, 11, 3), dtype=np.uint8)).save(tmp_path / "tree" / name / f"{i}.png")
    common = ["data", "labelled", "--image-folder", str(tmp_path / "tree"), *QUIET]
    assert main([*common, "--out", str(tmp_path / "parts"), "--samples-per-part", "3", "--part-range", "1:3"]) == 0
    assert main([*common, "--out", str(tmp_path / "parts"), "--samples-per-part", "3", "--part-range", "0:1"]) == 0
    assert main([*common, "--out", str(tmp_path / "one.beton")]) == 0
    _assert_same_rows(tmp_path / "parts", tmp_path / "one.beton")
    assert read_labels(tmp_path / "parts").tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert load_class_names(tmp_path / "parts") == ["cat", "dog"]


@pytest.mark.parametrize("num_samples", [1, 7, 8, 9, 64, 131])
def test_kept_bits_list_each_schedules_coreset(num_samples):
    from scan_fast.data.source_ids import bits_to_ids, kept_bits
    from scan_fast.schedule.shard import KeptSet
    from scan_fast.schedule.infobatch import InfoBatch
    from scan_fast.schedule.no_pruning import NoPruning
    from scan_fast.schedule.static_coreset import StaticCoreset

    rng = np.random.default_rng(num_samples)
    chosen = np.unique(rng.integers(0, num_samples, max(1, num_samples // 3)))
    for schedule in (NoPruning(num_samples), InfoBatch(num_samples, 4), StaticCoreset(num_samples, chosen)):
        bits = kept_bits(schedule.coreset_set())
        assert bits.shape == ((num_samples + 7) // 8,)
        np.testing.assert_array_equal(bits_to_ids(bits), schedule.coreset())
    dropped = KeptSet(KeptSet.of(chosen, num_samples).ids, members=False)  # the complement, as Scan's
    np.testing.assert_array_equal(bits_to_ids(kept_bits(dropped)), np.setdiff1d(np.arange(num_samples), chosen))


def test_data_manifest_writes_the_manifest_once_every_part_is_there(folder, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    expected = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").unlink()
    assert main(["data", "manifest", str(copy)]) == 0
    assert json.loads((copy / "manifest.json").read_text()) == expected
    (copy / "manifest.json").unlink()
    part_path(copy, 2).unlink()
    assert main(["data", "manifest", str(copy)]) == 2
    assert "1 part(s) not written yet" in capsys.readouterr().err
