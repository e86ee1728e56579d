"""Damaged stored images, pinned side files, uid and key integrity: each a clear error, never a silent
wrong answer."""
import numpy as np
import pytest

from scan_fast.data.beton import BetonFile

RES = 32


def stored_image(path, row):
    """(byte offset, size) of the stored image of `row` in a .beton."""
    beton = BetonFile(path)
    column = f"f{list(beton.handlers).index('image')}"
    pointer = int(beton.metadata[row][column]["data_ptr"])
    index = beton.pointer_index()
    size = int(index["size"][np.searchsorted(index["ptr"], pointer)])
    beton.close()
    return pointer, size


def damage_jpeg(path, rows, how="middle"):
    """Overwrite 64 bytes inside (or the start marker of) the stored JPEG of each row, in place."""
    rng = np.random.default_rng(0)
    with open(path, "r+b") as f:
        for row in rows:
            pointer, size = stored_image(path, row)
            if how == "marker":
                f.seek(pointer)
                f.write(b"\0\0")
            else:
                f.seek(pointer + size // 2 - 32)
                f.write(rng.integers(0, 256, 64, dtype=np.uint8).tobytes())


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from scan_fast.data import write_shapes

    folder = tmp_path_factory.mktemp("integrity")
    path = str(folder / "clip.beton")
    write_shapes(path, num_samples=48, resolution=RES, context_length=16, progress=False)
    return path


@pytest.fixture
def damaged(shapes, tmp_path):
    import shutil

    path = str(tmp_path / "damaged.beton")
    shutil.copy(shapes, path)
    damage_jpeg(path, [20, 30])
    return path


@pytest.mark.parametrize("augment", [True, False])
def test_a_damaged_jpeg_stops_the_epoch_naming_its_sample_and_file(damaged, augment):
    from scan_fast.data import clip_loader
    from scan_fast.data.read.loaders import LoaderError

    loader = clip_loader(damaged, 16, RES, shuffle=False, augment=augment, num_workers=1)
    with pytest.raises(LoaderError, match=r"sample id 20 \(row 20 of .*damaged\.beton\) does not decode"):
        for _ in loader:
            pass
    loader.close()


def test_a_zeroed_start_marker_is_caught_too(shapes, tmp_path):
    import shutil

    from scan_fast.data import clip_loader
    from scan_fast.data.read.loaders import LoaderError

    path = str(tmp_path / "marker.beton")
    shutil.copy(shapes, path)
    damage_jpeg(path, [5], how="marker")
    loader = clip_loader(path, 16, RES, shuffle=False, num_workers=1)
    with pytest.raises(LoaderError, match="sample id 5 "):
        list(loader)
    loader.close()


def test_undamaged_images_read_as_before(shapes):
    from scan_fast.data import clip_loader

    loader = clip_loader(shapes, 16, RES, shuffle=False, num_workers=1)
    assert sum(len(batch.ids) for batch in loader) == 48
    loader.close()


def test_data_check_decodes_every_image_and_names_each_damaged_one(damaged, shapes):
    from scan_fast.data.write.convert import check_path

    assert check_path(shapes, progress=False) == []
    for workers in (1, 2):
        problems = check_path(damaged, progress=False, workers=workers)
        assert len(problems) == 2, problems
        assert "sample id 20 (row 20)" in problems[0] and "sample id 30 (row 30)" in problems[1]
        assert all("damaged.beton" in line and "does not decode" in line for line in problems)


def test_data_check_names_the_part_of_a_damaged_image(tmp_path):
    from scan_fast.data import write_shapes
    from scan_fast.data.write.convert import check_path

    folder = tmp_path / "parts"
    write_shapes(str(folder), num_samples=40, resolution=RES, context_length=16, progress=False,
                 samples_per_part=16)
    damage_jpeg(str(folder / "part-00001.beton"), [3])
    problems = check_path(str(folder), progress=False, workers=2)
    assert len(problems) == 1 and "part-00001.beton" in problems[0] and "sample id 19 (row 3)" in problems[0]


# ----------------------------------------------------------------- odd images, coreset files

@pytest.mark.parametrize("shape", [(10, 10000, 3), (10000, 10, 3)])
def test_an_extreme_aspect_image_is_stored_not_a_crash(tmp_path, shape):
    from PIL import Image

    from scan_fast.data.write.from_table import write_clip_from_table
    from scan_fast.data.read.inspect import read_samples

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(tmp_path / "long.png")
    Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(tmp_path / "plain.png")
    table = tmp_path / "pairs.csv"
    table.write_text("image,caption\nlong.png,a long one\nplain.png,a plain one\n")
    summary = write_clip_from_table(table, tmp_path / "t.beton", progress=False, num_workers=1)
    assert summary.rows_written == 2
    stored = read_samples(tmp_path / "t.beton", [0])["image"][0]
    assert max(stored.shape[:2]) == 256 and min(stored.shape[:2]) == 1


def test_a_bitset_of_another_length_is_refused_by_its_length(shapes, tmp_path):
    from scan_fast.data.source_ids import coreset_ids

    path = tmp_path / "coreset.bits.npy"
    np.save(path, np.full(8, 255, np.uint8))  # 64 samples; the data has 48
    with pytest.raises(ValueError, match="bitset of 8 bytes .* 48 samples"):
        coreset_ids(str(path), shapes)
    np.save(path, np.full(6, 255, np.uint8))
    assert len(coreset_ids(str(path), shapes)) == 48


# ----------------------------------------------------------------- webdataset sources: uids and keys

def make_shards(root, shards):
    """Write webdataset shards: `shards` is a list (one per shard) of (key, json bytes or None)."""
    import io

    import webdataset as wds
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for s, samples in enumerate(shards):
        path = root / f"shard-{s:05d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for key, record in samples:
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(buf, format="JPEG")
                sample = {"__key__": key, "jpg": buf.getvalue(), "txt": f"a photo {key}"}
                if record is not None:
                    sample["json"] = record
                sink.write(sample)
        paths.append(path)
    return paths


def uid_json(text):
    import json

    return json.dumps({"uid": text}).encode()


HEX = "0123456789abcdef" * 2


def test_parse_uid_is_32_hex_digits_of_either_case_and_nothing_else():
    from scan_fast.data.source_ids import parse_uid

    assert parse_uid(HEX) == parse_uid(HEX.upper()) == (0x0123456789ABCDEF, 0x0123456789ABCDEF)
    for bad in ["0x" + HEX[2:], " " + HEX[1:], HEX[:31] + "g", "+" + HEX[1:], HEX[:16] + "_" + HEX[17:],
                HEX[:31], "0" * 32, int(HEX, 16), None]:
        assert parse_uid(bad) is None, bad


def test_a_malformed_webdataset_uid_is_a_skipped_row_naming_shard_and_key(tmp_path):
    from scan_fast.data.write.from_webdataset import write_clip_from_webdataset
    from scan_fast.data.source_ids import load_ids, parse_uid

    (tmp_path / "src").mkdir()
    make_shards(tmp_path / "src", [[("a", uid_json(HEX.upper())), ("b", uid_json("0x" + HEX[2:])),
                                    ("c", b"{not json"), ("d", uid_json(12)), ("e", None),
                                    ("f", b'{"other": 1}')]])
    out = tmp_path / "w.beton"
    summary = write_clip_from_webdataset(str(tmp_path / "src"), str(out), progress=False, num_workers=1)
    skipped = {where.rsplit(":", 1)[1]: reason for where, reason in summary.skipped}
    assert set(skipped) == {"b", "c", "d"}, summary.skipped
    assert "bad uid" in skipped["b"] and "unreadable .json" in skipped["c"] and "bad uid" in skipped["d"]
    uids = load_ids(str(out), "uids")
    assert [tuple(map(int, u)) for u in uids] == [parse_uid(HEX), (0, 0), (0, 0)]  # a, e, f


@pytest.fixture(scope="module")
def wds_folder(tmp_path_factory):
    """12 webdataset samples with uids, as a part folder of 3 parts of 4 (two of equal length)."""
    from scan_fast.data.write.from_webdataset import write_clip_from_webdataset

    root = tmp_path_factory.mktemp("wds")
    (root / "src").mkdir()
    make_shards(root / "src", [[(f"k{s}{i}", uid_json(f"{s * 6 + i + 1:032x}")) for i in range(6)] for s in range(2)])
    write_clip_from_webdataset(str(root / "src"), str(root / "parts"), progress=False, num_workers=1,
                               samples_per_part=4)
    return root / "parts"


@pytest.fixture
def wds_copy(wds_folder, tmp_path):
    import shutil

    shutil.copytree(wds_folder, tmp_path / "parts")
    return tmp_path / "parts"


@pytest.mark.parametrize("kind", ["keys", "uids"])
def test_a_deleted_side_file_fails_data_check_and_export(wds_copy, kind):
    from scan_fast.data.write.convert import check_path
    from scan_fast.data.dataset import open_dataset
    from scan_fast.data.source_ids import export_kept

    assert check_path(str(wds_copy), progress=False) == []
    (wds_copy / f"part-00001.{kind}.npy").unlink()
    problems = check_path(str(wds_copy), progress=False)
    assert len(problems) == 1 and f"part-00001.{kind}.npy" in problems[0] and "missing" in problems[0]
    bits = np.full(2, 255, np.uint8)
    with pytest.raises(ValueError, match="missing"):
        export_kept(open_dataset(str(wds_copy)), bits, "keys" if kind == "keys" else "datacomp",
                    wds_copy.parent / "out")


def test_swapped_uid_arrays_fail_data_check_and_export(wds_copy):
    import os

    from scan_fast.data.write.convert import check_path
    from scan_fast.data.dataset import open_dataset
    from scan_fast.data.source_ids import export_kept

    a, b = wds_copy / "part-00000.uids.npy", wds_copy / "part-00001.uids.npy"
    os.replace(a, wds_copy / "tmp.npy")
    os.replace(b, a)
    os.replace(wds_copy / "tmp.npy", b)
    problems = check_path(str(wds_copy), progress=False)
    assert len(problems) == 2 and all("sha256 differs" in line for line in problems)
    with pytest.raises(ValueError, match="part-00000.uids.npy is not the file the manifest pins"):
        export_kept(open_dataset(str(wds_copy)), np.full(2, 255, np.uint8), "datacomp", wds_copy.parent / "out")


def test_a_key_and_a_uid_repeated_across_shards_are_reported_with_both_locations(tmp_path, capsys):
    from scan_fast.data.write.convert import check_path
    from scan_fast.data.dataset import open_dataset
    from scan_fast.data.write.from_webdataset import write_clip_from_webdataset
    from scan_fast.data.source_ids import coreset_ids

    (tmp_path / "src").mkdir()
    make_shards(tmp_path / "src", [[("a", uid_json(f"{1:032x}")), ("b", uid_json(f"{2:032x}"))],
                                   [("a", uid_json(f"{3:032x}")), ("c", uid_json(f"{2:032x}"))]])
    out = tmp_path / "parts"
    write_clip_from_webdataset(str(tmp_path / "src"), str(out), progress=False, num_workers=1, samples_per_part=3)
    err = capsys.readouterr().err
    assert "key a is on row 0 of" in err and "part-00000.beton and on row 2 of" in err
    assert f"uid {2:032x} is on row 1 of" in err and "part-00001.beton" in err
    problems = check_path(str(out), progress=False)
    assert len(problems) == 2 and "key a" in problems[0] and f"uid {2:032x}" in problems[1]
    keys = tmp_path / "two.txt"
    keys.write_text("# scan-fast keys\na\nb\n")
    with pytest.raises(ValueError, match="key a is on row 0"):  # it would select 3 samples
        coreset_ids(str(keys), open_dataset(str(out)))


def test_a_coreset_naming_a_key_or_uid_twice_is_refused(wds_folder, tmp_path):
    from scan_fast.data.source_ids import UID_DTYPE, coreset_ids

    keys = tmp_path / "keys.txt"
    keys.write_text("# scan-fast keys\nk00\nk01\nk00\n")
    with pytest.raises(ValueError, match="lists key k00 more than once"):
        coreset_ids(str(keys), str(wds_folder))
    uids = tmp_path / "uids.npy"
    np.save(uids, np.array([(0, 1), (0, 2), (0, 1)], UID_DTYPE))
    with pytest.raises(ValueError, match=f"lists uid {1:032x} more than once"):
        coreset_ids(str(uids), str(wds_folder))
    keys.write_text("# scan-fast keys\nk00\nk01\n")
    assert coreset_ids(str(keys), str(wds_folder)).tolist() == [0, 1]


@pytest.mark.parametrize("chunk", [1, 3, 1 << 20])
def test_find_repeat_matches_a_sort_oracle(chunk):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from scan_fast.data.source_ids import find_repeat, key_array

    @settings(max_examples=40, deadline=None)
    @given(st.lists(st.lists(st.sampled_from(["a", "b", "cc", "ddd", "e", "f", "g"]), max_size=5), max_size=4))
    def check(parts):
        arrays = [key_array(p) if p else np.zeros(0, "S1") for p in parts]
        flat = [(k, p, r) for p, keys in enumerate(parts) for r, k in enumerate(keys)]
        repeats = len(flat) - len({k for k, _, _ in flat})
        found = find_repeat(arrays, "keys", chunk=chunk)
        if repeats == 0:
            assert found is None
        else:
            count, (pa, ra), (pb, rb) = found
            assert count == repeats and parts[pa][ra] == parts[pb][rb] and (pa, ra) != (pb, rb)
    check()


def test_data_check_cli_names_the_damaged_images_and_exits_1(damaged, capsys):
    from scan_fast.cli import main

    assert main(["data", "check", damaged, "--no-progress", "--num-workers", "2"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and "sample id 20 (row 20)" in out[0] and "sample id 30 (row 30)" in out[1]


def test_the_checked_centre_crop_equals_ffcvs_on_good_images(shapes):
    """The evaluation decoder is ffcv's CenterCropRGBImageDecoder plus the decode check: same pixels."""
    import torch
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder
    from ffcv.transforms import ToTensor

    from scan_fast.data.read.decoders import CheckedCenterCropDecoder
    from scan_fast.data.read.loaders import build_loader

    def read(decoder):
        pipes = {"image": [decoder, ToTensor()], "tokens": None, "id": [IntDecoder(), ToTensor()]}
        loader = build_loader(shapes, 16, pipes, ("image", "id"), shuffle=False, drop_last=False, num_workers=1)
        images = torch.cat([batch.images.clone() for batch in loader])
        loader.close()
        return images

    ours, theirs = read(CheckedCenterCropDecoder((24, 24))), read(CenterCropRGBImageDecoder((24, 24), ratio=1.0))
    assert ours.shape == (48, 24, 24, 3)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
