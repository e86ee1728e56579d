"""Writers: round trips through .beton, bad rows skipped and reported, nothing partial left behind."""
import functools
import io
import json
import os
import tarfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image

from helpers import write_tar
from scan_fast.data.write.from_image_folder import write_moco_from_image_folder
from scan_fast.data.write.from_table import write_clip_from_table
from scan_fast.data.write.from_webdataset import write_clip_from_webdataset
from scan_fast.data.read.inspect import read_samples
from scan_fast.data.schema import check_beton, clip_fields
from scan_fast.data.write.summary import WriteSummary
from scan_fast.data.tokenize import CaptionTokenizer
from scan_fast.data.write.rows import write_rows

LONG_CAPTION = " ".join(["a very long caption about a dog"] * 20)
QUIET = dict(progress=False, num_workers=1)


def _random_image(rng, h, w):
    """Random colour gradient: smooth, so JPEG's error is small and the test can bound it."""
    yy, xx = np.mgrid[0:h, 0:w]
    slope = rng.uniform(-6, 6, (2, 3))
    image = rng.uniform(60, 190, 3) + yy[..., None] * slope[0] + xx[..., None] * slope[1]
    return np.clip(image, 0, 255).astype(np.uint8)


def _png_bytes(image):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Six valid PNGs of different sizes plus one zero-byte and one undecodable file."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    images = {}
    for i in range(6):
        images[f"img{i}.png"] = _random_image(rng, 12 + i, 20 - i)
        (root / f"img{i}.png").write_bytes(_png_bytes(images[f"img{i}.png"]))
    (root / "zero.jpg").write_bytes(b"")
    (root / "junk.jpg").write_bytes(b"this is not an image")
    return root, images


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize("context_length", [77, 8])
def test_tokenizer_matches_open_clip(context_length):
    ours = CaptionTokenizer(context_length)
    theirs = SimpleTokenizer()
    for caption in ["a photo of the digit seven", "A  Red CIRCLE, top-left!", LONG_CAPTION, "ok"]:
        tokens, truncated = ours(caption)
        assert tokens.dtype == np.int32 and tokens.shape == (context_length,)
        np.testing.assert_array_equal(tokens, theirs(caption, context_length)[0].numpy())
        assert truncated == (len(theirs.encode(caption)) + 2 > context_length)
    for empty in ["", "   ", "\n\t"]:
        with pytest.raises(ValueError, match="empty"):
            ours(empty)
    with pytest.raises(TypeError, match="caption must be str"):
        ours(None)


@functools.lru_cache(maxsize=1)
def _tokenizers():
    return SimpleTokenizer(), CaptionTokenizer(77)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from([*" \t\n\r\x0b\x0c\x1f\x7f&<;#", *"aAzZ09.,'!?-_/:@$%()", "é", "ü", "日", "\u00a0",
                                         "\u2019", "ﬁ", "Ａ"]), min_size=1, max_size=40),
       st.sampled_from(["amp;", "lt;", "#39;", "'s", "'LL", "don't", "x2", "12.5"]))
def test_tokenizer_fast_path_matches_open_clip(text, piece):
    """Plain captions skip open_clip's cleaning and reuse word ids: the ids must be open_clip's for any
    text, plain or not (HTML entities, control characters, curly quotes, ligatures, full-width forms)."""
    theirs, ours = _tokenizers()
    for caption in (text, text + piece, piece + " " + text, text.upper()):
        expected = theirs.encode(caption)
        assert ours._encode(caption) == expected
        assert ours._encode(caption) == expected  # the second time from the word cache


def test_table_round_trip_raw_is_exact(image_dir, tmp_path):
    root, images = image_dir
    names = ["img0.png", "img3.png", "img5.png", "img1.png"]
    captions = ["a cat", "two dogs", LONG_CAPTION, "a red car"]
    table = tmp_path / "pairs.csv"
    table.write_text("filepath,caption\n" + "".join(f"{n},{c}\n" for n, c in zip(names, captions)))
    target = tmp_path / "out" / "pairs.beton"
    summary = write_clip_from_table(table, target, image_root=root, image_mode="raw",
                                    max_resolution=None, context_length=16, **QUIET)
    assert (summary.rows_read, summary.rows_written, summary.skipped) == (4, 4, [])
    assert summary.captions_truncated == 1
    back = read_samples(target)
    assert back["id"] == [0, 1, 2, 3]
    tokenizer = SimpleTokenizer()
    for i, (name, caption) in enumerate(zip(names, captions)):
        np.testing.assert_array_equal(back["image"][i], images[name])
        np.testing.assert_array_equal(back["tokens"][i], tokenizer(caption, 16)[0].numpy())
    saved = json.loads((tmp_path / "out" / "pairs.beton.summary.json").read_text())
    assert saved["rows_written"] == 4 and saved["captions_truncated"] == 1
    assert _leftovers(tmp_path / "out") == []


@pytest.mark.parametrize("fmt", ["tsv", "jsonl"])
def test_table_round_trip_jpeg_within_tolerance(image_dir, tmp_path, fmt):
    root, images = image_dir
    names = [f"img{i}.png" for i in range(6)]
    table = tmp_path / f"pairs.{fmt}"
    if fmt == "tsv":
        table.write_text("image\ttext\n" + "".join(f"{root / n}\tcaption {i}\n" for i, n in enumerate(names)))
    else:
        table.write_text("".join(json.dumps({"path": str(root / n), "caption": f"caption {i}"}) + "\n"
                                 for i, n in enumerate(names)))
    target = tmp_path / "pairs.beton"
    summary = write_clip_from_table(table, target, image_mode="jpg", jpeg_quality=95,
                                    progress=False, num_workers=2)
    assert summary.rows_written == 6
    back = read_samples(target)
    assert back["id"] == list(range(6))
    for i, name in enumerate(names):
        assert back["image"][i].shape == images[name].shape
        assert np.abs(back["image"][i].astype(int) - images[name]).mean() < 3


def test_max_resolution_shrinks_the_longer_side(tmp_path):
    image = _random_image(np.random.default_rng(1), 40, 64)
    (tmp_path / "big.png").write_bytes(_png_bytes(image))
    (tmp_path / "t.csv").write_text("file,caption\nbig.png,big\n")
    write_clip_from_table(tmp_path / "t.csv", tmp_path / "t.beton", image_mode="raw",
                          max_resolution=32, **QUIET)
    assert read_samples(tmp_path / "t.beton")["image"][0].shape == (20, 32, 3)


def test_bad_rows_are_skipped_with_reasons(image_dir, tmp_path):
    root, images = image_dir
    table = tmp_path / "mixed.csv"
    table.write_text("filepath,caption\n"
                     "img0.png,good one\n"          # line 2
                     "missing.png,no file\n"        # line 3
                     "zero.jpg,zero bytes\n"        # line 4
                     "junk.jpg,not an image\n"      # line 5
                     "img1.png,\n"                  # line 6: empty caption
                     ",no path\n"                   # line 7
                     "img2.png\n"                   # line 8: a column short
                     f"img4.png,{LONG_CAPTION}\n")  # line 9: truncated, still written
    target = tmp_path / "mixed.beton"
    summary = write_clip_from_table(table, target, image_root=root, image_mode="raw",
                                    max_resolution=None, **QUIET)
    assert (summary.rows_read, summary.rows_written) == (8, 2)
    assert summary.captions_truncated == 1
    reasons = dict(summary.skipped)
    assert reasons[f"{table}:3 (missing.png)"].startswith("missing image file")
    assert reasons[f"{table}:4 (zero.jpg)"] == "zero-byte image"
    assert reasons[f"{table}:5 (junk.jpg)"].startswith("undecodable image")
    assert reasons[f"{table}:6 (img1.png)"].startswith("empty caption")
    assert reasons[f"{table}:7"].startswith("missing image path")
    assert reasons[f"{table}:8"] == "wrong field count: row has 1 fields, the header has 2"
    assert summary.skip_counts == {"missing image file": 1, "zero-byte image": 1, "undecodable image": 1,
                                   "empty caption": 1, "missing image path": 1, "wrong field count": 1}
    back = read_samples(target)
    np.testing.assert_array_equal(back["image"][0], images["img0.png"])
    np.testing.assert_array_equal(back["image"][1], images["img4.png"])
    assert back["id"] == [0, 1]
    assert "skipped 6" in str(summary)


def test_strict_stops_before_anything_is_written(image_dir, tmp_path):
    root, _ = image_dir
    table = tmp_path / "t.csv"
    table.write_text("filepath,caption\nimg0.png,fine\njunk.jpg,broken\n")
    target = tmp_path / "t.beton"
    with pytest.raises(ValueError, match=r"t\.csv:3 \(junk\.jpg\): undecodable image.*strict"):
        write_clip_from_table(table, target, image_root=root, strict=True, **QUIET)
    assert not target.exists() and _leftovers(tmp_path) == []


def test_all_rows_bad_is_an_error(image_dir, tmp_path):
    root, _ = image_dir
    (tmp_path / "t.csv").write_text("filepath,caption\nzero.jpg,x\n")
    with pytest.raises(ValueError, match="no valid rows"):
        write_clip_from_table(tmp_path / "t.csv", tmp_path / "t.beton", image_root=root, **QUIET)
    assert not (tmp_path / "t.beton").exists()


def test_table_column_errors(tmp_path):
    (tmp_path / "a.csv").write_text("filepath,label\nx.png,3\n")
    with pytest.raises(ValueError, match=r"a\.csv: no caption column .*columns are \['filepath', 'label'\]"):
        write_clip_from_table(tmp_path / "a.csv", tmp_path / "a.beton", **QUIET)
    (tmp_path / "b.csv").write_text("filepath,caption\nx.png,hi\n")
    with pytest.raises(ValueError, match="no image column 'url'"):
        write_clip_from_table(tmp_path / "b.csv", tmp_path / "b.beton", image_column="url", **QUIET)
    (tmp_path / "c.parquet").write_text("")
    with pytest.raises(ValueError, match="unknown format"):
        write_clip_from_table(tmp_path / "c.parquet", tmp_path / "c.beton", **QUIET)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_clip_from_table(tmp_path / "none.csv", tmp_path / "n.beton", **QUIET)


def test_jsonl_bad_lines_are_skipped(image_dir, tmp_path):
    root, images = image_dir
    table = tmp_path / "t.jsonl"
    table.write_text('{"image": "img0.png", "caption": "fine"}\n'
                     "{not json\n"
                     '{"image": "img1.png"}\n'
                     '{"image": "img2.png", "caption": "also fine"}\n')
    summary = write_clip_from_table(table, tmp_path / "t.beton", image_root=root, image_mode="raw",
                                    max_resolution=None, **QUIET)
    assert summary.rows_written == 2
    assert summary.skip_counts == {"bad JSON line": 1, "missing column": 1}
    assert dict(summary.skipped)[f"{table}:3"] == "missing column: caption"


def test_webdataset_round_trip_and_incomplete_samples(image_dir, tmp_path):
    _, images = image_dir
    shards = tmp_path / "shards"
    shards.mkdir()
    write_tar(shards / "000000.tar", [
        ("s/000.jpg", _png_bytes(images["img0.png"])), ("s/000.txt", b"first caption"),
        ("s/001.png", _png_bytes(images["img1.png"])),  # no text
        ("s/002.txt", b"no image here"),
    ])
    write_tar(shards / "000001.tar", [
        ("s/003.txt", b"third caption"), ("s/003.png", _png_bytes(images["img3.png"])),
        ("s/004.png", b""), ("s/004.txt", b"zero-byte image"),
    ])
    target = tmp_path / "wds.beton"
    summary = write_clip_from_webdataset(shards, target, image_mode="raw", max_resolution=None, **QUIET)
    assert (summary.rows_read, summary.rows_written) == (5, 2)
    reasons = dict(summary.skipped)
    assert reasons[f"{shards / '000000.tar'}:s/001"] == "no text in sample"
    assert reasons[f"{shards / '000000.tar'}:s/002"] == "no image in sample"
    assert reasons[f"{shards / '000001.tar'}:s/004"] == "zero-byte image"
    back = read_samples(target)
    np.testing.assert_array_equal(back["image"][0], images["img0.png"])
    np.testing.assert_array_equal(back["image"][1], images["img3.png"])
    np.testing.assert_array_equal(back["tokens"][1], CaptionTokenizer()("third caption")[0])


def _pairs(images, keys):
    """(name, payload) members of one image-caption sample per key, in order."""
    members = []
    for i, key in enumerate(keys):
        members += [(f"{key}.png", _png_bytes(images[f"img{i % 4}.png"])), (f"{key}.txt", f"caption {i}".encode())]
    return members


def test_webdataset_duplicate_keys_are_skipped_rows_naming_shard_and_key(image_dir, tmp_path):
    _, images = image_dir
    shard = tmp_path / "dup.tar"
    write_tar(shard, _pairs(images, ["a", "b", "c", "a", "b", "a"]))  # a three times, b twice
    summary = write_clip_from_webdataset(shard, tmp_path / "dup.beton", image_mode="raw", max_resolution=None,
                                         **QUIET)
    assert summary.rows_written == 3 and summary.skip_counts == {"duplicate key": 3}
    where = [w for w, _ in summary.skipped]
    assert sorted(where) == [f"{shard}:a", f"{shard}:a", f"{shard}:b"]
    assert "a.png, a.png, a.txt, a.txt repeat(s) the key of an earlier sample" in dict(summary.skipped)[f"{shard}:a"]
    back = read_samples(tmp_path / "dup.beton")  # the first sample of each key is the one written
    np.testing.assert_array_equal(back["image"][0], images["img0.png"])
    np.testing.assert_array_equal(back["tokens"][1], CaptionTokenizer()("caption 1")[0])
    with pytest.raises(ValueError, match=r"dup.tar:a: duplicate key: .*\(strict=True: nothing was written\)"):
        write_clip_from_webdataset(shard, tmp_path / "strict.beton", strict=True, **QUIET)


@pytest.mark.parametrize("cut, reason", [
    ("boundary", r"no end-of-archive marker at byte 3072 \(the file has 3072 bytes\)"),
    ("header", r"a member header cut short at byte 3072 \(the file has 3172 bytes\)"),
    ("marker", r"no end-of-archive marker at byte 4096 \(the file has 4608 bytes\)"),  # one zero block of two
])
def test_webdataset_shard_cut_without_its_end_marker_is_truncated(image_dir, tmp_path, cut, reason):
    _, images = image_dir
    write_tar(tmp_path / "whole.tar", _pairs(images, ["k0", "k1"]))
    data = (tmp_path / "whole.tar").read_bytes()
    with tarfile.open(tmp_path / "whole.tar") as tar:
        offsets = [m.offset for m in tar.getmembers()]  # 512-byte header + one block of data each; the PNGs fit
    end = {"boundary": offsets[3], "header": offsets[3] + 100, "marker": 4096 + 512}[cut]
    shard = tmp_path / f"{cut}.tar"
    shard.write_bytes(data[:end])
    summary = write_clip_from_webdataset(shard, tmp_path / f"{cut}.beton", image_mode="raw", max_resolution=None,
                                         **QUIET)
    import re
    truncated = [r for w, r in summary.skipped if w == str(shard)]
    assert len(truncated) == 1 and re.search(reason, truncated[0]), summary.skipped
    assert summary.skip_counts["truncated shard"] == 1
    with pytest.raises(ValueError, match=rf"{cut}.tar: truncated shard: .*strict=True"):
        write_clip_from_webdataset(shard, tmp_path / "strict.beton", strict=True, **QUIET)


def test_webdataset_input_errors(tmp_path):
    (tmp_path / "bad.tar").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match=r"bad\.tar is not a readable tar file"):
        write_clip_from_webdataset(tmp_path / "bad.tar", tmp_path / "x.beton", **QUIET)
    with pytest.raises(FileNotFoundError, match="nothere.tar does not exist"):
        write_clip_from_webdataset(tmp_path / "nothere.tar", tmp_path / "x.beton", **QUIET)


def test_moco_from_image_folder(image_dir, tmp_path):
    _, images = image_dir
    for cls, names in (("cats", ["img0.png", "img1.png"]), ("dogs", ["img2.png"])):
        (tmp_path / "tree" / cls).mkdir(parents=True)
        for n in names:
            (tmp_path / "tree" / cls / n).write_bytes(_png_bytes(images[n]))
    (tmp_path / "tree" / "dogs" / "broken.jpg").write_bytes(b"")
    (tmp_path / "tree" / "dogs" / "notes.txt").write_text("not an image, ignored")
    target = tmp_path / "moco.beton"
    summary = write_moco_from_image_folder(tmp_path / "tree", target, image_mode="raw",
                                           max_resolution=None, **QUIET)
    assert (summary.rows_read, summary.rows_written) == (4, 3)
    assert summary.skip_counts == {"zero-byte image": 1}
    back = read_samples(target)
    assert back["label"] == [0, 0, 1] and back["id"] == [0, 1, 2]
    np.testing.assert_array_equal(back["image"][2], images["img2.png"])
    assert json.loads((tmp_path / "moco.beton.classes.json").read_text()) == ["cats", "dogs"]
    with pytest.raises(ValueError, match="no class sub-folders"):
        write_moco_from_image_folder(tmp_path / "tree" / "cats", tmp_path / "x.beton", **QUIET)


def test_failing_write_leaves_the_old_target_untouched(tmp_path):
    target = tmp_path / "keep.beton"
    target.write_bytes(b"previous good file")
    tokens = np.zeros(77, dtype=np.int32)

    def make_sample(i):
        if i == 5:
            raise RuntimeError("disk gremlin")
        return np.zeros((8, 8, 3), np.uint8), tokens, i

    with pytest.raises(ValueError, match=r"row 5 \(sample five\): disk gremlin"):
        write_rows(target, clip_fields(77, image_mode="raw"), 10, make_sample,
                   WriteSummary(str(target)), describe=lambda i: "sample five" if i == 5 else str(i),
                   num_workers=2, progress=False)
    assert target.read_bytes() == b"previous good file"
    assert _leftovers(tmp_path) == []


def test_check_beton_rejects_truncated_and_foreign_files(image_dir, tmp_path):
    root, _ = image_dir
    (tmp_path / "t.csv").write_text("filepath,caption\nimg0.png,a\nimg1.png,b\n")
    good = tmp_path / "good.beton"
    write_clip_from_table(tmp_path / "t.csv", good, image_root=root, **QUIET)
    assert check_beton(good, ("image", "tokens", "id"))["num_samples"] == 2
    data = good.read_bytes()
    for name, payload, message in [
        ("short.beton", data[: len(data) // 2], "truncated"),
        ("tail.beton", data[:-24], "truncated"),
        ("tiny.beton", data[:10], "shorter than the header"),
        ("text.beton", b"hello, I am a text file" * 100, "is not a .beton"),
        ("empty.beton", b"", "shorter than the header"),
    ]:
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(ValueError, match=f"{name}.*{message}|{message}"):
            check_beton(tmp_path / name)
    with pytest.raises(ValueError, match=r"lacks field\(s\) \['label'\]"):
        check_beton(good, ("image", "label"))
    with pytest.raises(FileNotFoundError, match="no .beton file"):
        check_beton(tmp_path / "absent.beton")


def test_a_write_whose_every_row_fails_ends_the_process(tmp_path):
    """The rows the dead workers never took must not keep the interpreter waiting at exit."""
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "fail.py"
    script.write_text(textwrap.dedent(f"""
        from scan_fast.data.schema import moco_fields
        from scan_fast.data.write.summary import WriteSummary
        from scan_fast.data.write.rows import write_rows

        def make(i):
            raise ValueError("x" * 100_000)

        try:
            write_rows({str(tmp_path / 'out.beton')!r}, moco_fields(), 4000, make, WriteSummary("t"),
                       num_workers=2, progress=False)
        except ValueError as err:
            print("raised:", str(err)[:40], len(str(err)))
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    raised = done.stdout.split()
    assert raised[:3] == ["raised:", "row", "0"] and int(raised[-1]) < 2100  # long messages are cut
    assert not (tmp_path / "out.beton").exists()


def test_stale_partials_are_swept_once_for_a_folder_of_parts(tmp_path, monkeypatch):
    """A killed writer's temporary files go (any file's, once, at the start), a running writer's stay, and
    the files written inside the block list the folder no more (it was quadratic in the parts)."""
    import os

    from scan_fast import outputs

    dead, alive = 2**22 + 12345, os.getppid()
    names = [f".part-00001.beton.partial-{dead}", f".part-00002.keys.npy.partial-{dead}",
             f".part-00003.beton.partial-{alive}", "part-00000.beton", ".hidden", "x.partial-12"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    listings = []
    real_scandir = os.scandir
    monkeypatch.setattr(outputs.os, "scandir", lambda path: listings.append(path) or real_scandir(path))
    with outputs.partials_swept(tmp_path):
        assert sorted(os.listdir(tmp_path)) == sorted(names[2:])
        for p in range(50):
            assert outputs.remove_stale_partials(tmp_path / f"part-{p:05d}.beton") == []
    assert len(listings) == 1
    (tmp_path / names[0]).write_bytes(b"")  # outside the block a single file's own partials go again
    assert outputs.remove_stale_partials(tmp_path / "part-00001.beton") == [tmp_path / names[0]]
