"""A user's own files through `scan-fast data ...`: nothing they had is replaced, odd images keep
their content, bad rows and cut files give one-line reasons, and a killed writer leaves nothing behind."""
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time

import numpy as np
import psutil
import pytest
from PIL import Image

from scan_fast.cli import main
from scan_fast.data.write.from_image_folder import write_labelled_from_image_folder
from scan_fast.data.write.from_table import write_clip_from_table
from scan_fast.data.read.inspect import read_samples
from scan_fast.data.schema import check_beton
from scan_fast.data.write.summary import WriteSummary
from scan_fast.data.write.rows import write_rows

QUIET = dict(progress=False, num_workers=1)


def _png(path, array):
    Image.fromarray(array).save(path, format="PNG")


@pytest.fixture()
def pairs(tmp_path):
    """Three 10 x 12 PNGs and a caption CSV beside them."""
    rng = np.random.default_rng(1)
    for i in range(3):
        _png(tmp_path / f"im{i}.png", rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))
    table = tmp_path / "pairs.csv"
    table.write_text("image,caption\n" + "".join(f"im{i}.png,picture number {i}\n" for i in range(3)))
    return table


def _cli(*args):
    return main(["data", *map(str, args), "--no-progress"])


# ----------------------------------------------------------------- nothing the user had is replaced

def test_out_may_not_be_the_input_table(pairs, capsys):
    before = pairs.read_bytes()
    assert _cli("clip", "--table", pairs, "--out", pairs, "--overwrite") == 2
    assert "is also an input" in capsys.readouterr().err
    assert pairs.read_bytes() == before


def test_an_existing_out_is_replaced_only_with_overwrite(pairs, capsys):
    out = pairs.parent / "pairs.beton"
    assert _cli("clip", "--table", pairs, "--out", out) == 0
    written = out.read_bytes()
    assert _cli("clip", "--table", pairs, "--out", out, "--max-resolution", "8") == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == written
    assert _cli("clip", "--table", pairs, "--out", out, "--max-resolution", "8", "--overwrite") == 0
    assert max(read_samples(out, [0])["image"][0].shape) == 8


@pytest.mark.parametrize("command", [
    ["clip", "--table", "pairs.csv"],
    ["shapes", "--num-samples", "20"],   # the README once said `data shapes --out data/`
    ["labelled", "--image-folder", "tree"],
])
def test_out_naming_a_folder_is_refused_before_any_work(pairs, capsys, monkeypatch, command):
    monkeypatch.chdir(pairs.parent)
    (pairs.parent / "tree" / "a").mkdir(parents=True)
    _png(pairs.parent / "tree" / "a" / "x.png", np.zeros((4, 4, 3), np.uint8))
    (pairs.parent / "data").mkdir()
    assert _cli(*command, "--out", "data/") == 2
    err = capsys.readouterr().err
    assert "--out data/ is a folder" in err and "Traceback" not in err
    assert os.listdir(pairs.parent / "data") == []


def test_coreset_export_refuses_a_folder_and_its_own_checkpoint(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    ckpt = tmp_path / "latest.pt"
    ckpt.write_bytes(b"a checkpoint the user keeps")
    assert main(["coreset", "export", str(ckpt), "--out", str(tmp_path / "out")]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["coreset", "export", str(ckpt), "--out", str(ckpt), "--overwrite"]) == 2
    assert "is also an input" in capsys.readouterr().err
    assert ckpt.read_bytes() == b"a checkpoint the user keeps"


# ----------------------------------------------------------------- images

def test_16_bit_png_keeps_its_tones(tmp_path):
    """PIL's convert("RGB") clips 16-bit values above 255: the image came out almost white."""
    grey16 = (np.linspace(0, 65535, 16 * 16).reshape(16, 16)).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    (tmp_path / "t.csv").write_text("image,caption\ndeep.png,a grey ramp\n")
    write_clip_from_table(tmp_path / "t.csv", tmp_path / "t.beton", image_mode="raw", max_resolution=None,
                          **QUIET)
    stored = read_samples(tmp_path / "t.beton")["image"][0]
    expected = np.rint(grey16 / 257.0).astype(np.uint8)
    for channel in range(3):
        np.testing.assert_array_equal(stored[..., channel], expected)


def test_page_size_follows_the_shrunk_image_not_the_original(tmp_path):
    """One huge image used to size every page (and the file) for its full-resolution pixels."""
    _png(tmp_path / "huge.png", np.full((1100, 1100, 3), 90, np.uint8))
    _png(tmp_path / "small.png", np.full((20, 20, 3), 30, np.uint8))
    (tmp_path / "t.csv").write_text("image,caption\nhuge.png,big\nsmall.png,small\n")
    write_clip_from_table(tmp_path / "t.csv", tmp_path / "t.beton", image_mode="raw", max_resolution=32,
                          **QUIET)
    info = check_beton(tmp_path / "t.beton")
    assert info["page_size"] <= 4 << 20
    assert os.path.getsize(tmp_path / "t.beton") < 6 << 20
    assert read_samples(tmp_path / "t.beton", [0])["image"][0].shape == (32, 32, 3)


# ----------------------------------------------------------------- tables

def test_a_bad_byte_costs_one_row_and_names_its_line(pairs):
    pairs.write_bytes(pairs.read_bytes() + b"im0.png,caf\xe9 au lait\n")
    summary = write_clip_from_table(pairs, pairs.with_suffix(".beton"), **QUIET)
    assert summary.rows_written == 3
    assert summary.skipped == [(f"{pairs}:5", "not UTF-8: byte 0xe9 in this row")]


def test_a_csv_with_a_byte_order_mark_is_read(pairs):
    pairs.write_bytes(b"\xef\xbb\xbf" + pairs.read_bytes())
    assert write_clip_from_table(pairs, pairs.with_suffix(".beton"), **QUIET).rows_written == 3


def test_a_row_with_an_unquoted_comma_is_not_cut_silently(pairs):
    pairs.write_text(pairs.read_text() + "im1.png,a dog, a cat\n")
    summary = write_clip_from_table(pairs, pairs.with_suffix(".beton"), **QUIET)
    assert summary.rows_written == 3
    assert summary.skipped[0][1].startswith("wrong field count: row has 3 fields, the header has 2")


def test_a_jsonl_caption_that_is_a_number_says_so(pairs):
    table = pairs.with_suffix(".jsonl")
    table.write_text('{"image": "im0.png", "caption": "fine"}\n{"image": "im1.png", "caption": 42}\n')
    summary = write_clip_from_table(table, pairs.with_suffix(".beton"), **QUIET)
    assert summary.skipped == [(f"{table}:2 (im1.png)", "caption is not text: int 42")]


def test_an_empty_class_folder_is_an_error_not_a_label(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / "tree" / name).mkdir(parents=True)
    _png(tmp_path / "tree" / "cat" / "a.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"class folder\(s\) \['dog'\] hold no images"):
        write_labelled_from_image_folder(tmp_path / "tree", tmp_path / "t.beton", **QUIET)


def test_a_broken_symbolic_link_is_a_skipped_row_naming_its_target(tmp_path, capsys):
    for name in ("cat", "dog"):
        (tmp_path / "tree" / name).mkdir(parents=True)
        _png(tmp_path / "tree" / name / "a.png", np.zeros((4, 4, 3), np.uint8))
    link = tmp_path / "tree" / "dog" / "b.png"
    link.symlink_to(tmp_path / "gone.png")
    (tmp_path / "tree" / "dog" / "loop.jpg").symlink_to("loop.jpg")
    out = tmp_path / "t.beton"
    assert _cli("labelled", "--image-folder", tmp_path / "tree", "--out", out) == 0
    printed = capsys.readouterr().out
    assert "read 4 rows, wrote 2, skipped 2" in printed and "skipped 2 x broken symbolic link" in printed
    assert f"{link}: broken symbolic link: -> {tmp_path / 'gone.png'}, which does not exist" in printed
    assert "loop.jpg: broken symbolic link: -> loop.jpg (Too many levels of symbolic links)" in printed
    assert read_samples(out)["label"] == [0, 1]
    assert _cli("labelled", "--image-folder", tmp_path / "tree", "--out", out, "--overwrite", "--strict") == 2
    err = capsys.readouterr().err
    assert err == (f"scan-fast data: error: {link}: broken symbolic link: -> {tmp_path / 'gone.png'}, "
                   "which does not exist (strict=True: nothing was written)\n")


def test_num_workers_zero_names_the_flag(pairs, capsys):
    assert _cli("clip", "--table", pairs, "--out", pairs.with_suffix(".beton"), "--num-workers", "0") == 2
    assert capsys.readouterr().err == ("scan-fast data: error: num_workers (--num-workers) must be a positive "
                                       "integer, got 0\n")
    with pytest.raises(ValueError, match=r"num_workers \(--num-workers\) must be a positive integer, got 0"):
        write_clip_from_table(pairs, pairs.with_suffix(".beton"), num_workers=0, progress=False)


# ----------------------------------------------------------------- webdataset

def test_a_truncated_shard_keeps_its_whole_samples_and_says_where_it_ends(tmp_path, capsys):
    good = tmp_path / "good.tar"
    with tarfile.open(good, "w") as tar:
        for i in range(6):
            for ext, payload in (("png", _png_bytes(i)), ("txt", f"caption {i}".encode())):
                info = tarfile.TarInfo(f"{i:04d}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    (tmp_path / "trunc.tar").write_bytes(good.read_bytes()[:3000])
    out = tmp_path / "w.beton"
    assert _cli("clip", "--webdataset", tmp_path / "trunc.tar", "--out", out) == 0
    text = capsys.readouterr().out
    assert "truncated shard" in text and "trunc.tar" in text
    assert 1 <= check_beton(out)["num_samples"] < 6
    summary = json.loads(open(f"{out}.summary.json").read())
    assert summary["skip_counts"]["truncated shard"] == 1


def _png_bytes(seed):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


# ----------------------------------------------------------------- a killed writer

_SLOW_WRITER = """
import sys, time
import numpy as np
from scan_fast.data.schema import labelled_fields
from scan_fast.data.write.summary import WriteSummary
from scan_fast.data.write.rows import write_rows

def make(i):
    time.sleep(0.05)
    return np.zeros((8, 8, 3), np.uint8), i % 3, i

write_rows(sys.argv[1], labelled_fields(image_mode="raw"), 4000, make, WriteSummary("t"), num_workers=2,
           progress=False)
"""


def _shm():
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def _gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_for_workers(proc, folder, deadline):
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        children = psutil.Process(proc.pid).children()
        if [p for p in os.listdir(folder) if ".partial-" in p] and len(children) >= 2:
            return children
        time.sleep(0.1)
    raise AssertionError(f"the writer in {folder} never started its workers")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_a_killed_writer_leaves_no_workers_segment_or_temporary_file(tmp_path):
    """SIGTERM and SIGKILL, one writer each, run side by side (their start-up is the slow part)."""
    from scan_fast.data.schema import labelled_fields

    script = tmp_path / "slow.py"
    script.write_text(textwrap.dedent(_SLOW_WRITER))
    signals = {"term": signal.SIGTERM, "kill": signal.SIGKILL}
    shm_before = _shm()
    procs = {}
    try:
        for name in signals:
            (tmp_path / name).mkdir()
            procs[name] = subprocess.Popen([sys.executable, str(script), str(tmp_path / name / "out.beton")],
                                           stderr=subprocess.PIPE)
        deadline = time.time() + 240
        children = {name: _wait_for_workers(proc, tmp_path / name, deadline) for name, proc in procs.items()}
        time.sleep(0.5)
        ours = _shm() - shm_before
        for name, proc in procs.items():
            proc.send_signal(signals[name])
        for proc in procs.values():
            proc.wait(timeout=30)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    everyone = [c.pid for found in children.values() for c in found]
    deadline = time.time() + 20
    while time.time() < deadline and not (all(map(_gone, everyone)) and not (ours & _shm())):
        time.sleep(0.2)
    left = [pid for pid in everyone if not _gone(pid)]
    for pid in left:  # a failing run must not leave them behind either
        os.kill(pid, signal.SIGKILL)
    assert not left, "writer processes outlived their parent"
    assert not (ours & _shm()), f"shared memory left behind: {ours & _shm()}"
    assert procs["term"].returncode != 0
    for name in signals:
        assert not (tmp_path / name / "out.beton").exists()
    # SIGTERM unwinds: the temporary file goes at once
    assert [p for p in os.listdir(tmp_path / "term") if ".partial-" in p] == []
    # after SIGKILL nothing can run in the writer; the next write to that target removes the leftover
    target = tmp_path / "kill" / "out.beton"
    write_rows(target, labelled_fields(image_mode="raw"), 2, lambda i: (np.zeros((8, 8, 3), np.uint8), 0, i),
               WriteSummary("t"), progress=False)
    assert [p for p in os.listdir(tmp_path / "kill") if ".partial-" in p] == []
    assert check_beton(target)["num_samples"] == 2


def test_damaged_token_bytes_stop_training_with_one_line(pairs, tmp_path, capsys):
    """Token ids beyond the vocabulary used to end in an IndexError traceback inside the model."""
    from scan_fast.data.tokenize import CaptionTokenizer

    beton = pairs.with_suffix(".beton")
    write_clip_from_table(pairs, beton, context_length=16, image_mode="raw", **QUIET)
    data = bytearray(beton.read_bytes())
    stored = CaptionTokenizer(16)("picture number 1")[0].tobytes()
    at = data.find(stored)
    assert at > 0
    data[at:at + len(stored)] = b"\xff" * len(stored)
    beton.write_bytes(bytes(data))
    code = main(["train", "clip", "--train-data", str(beton), "--batch-size", "3", "--epochs", "1",
                 "--workers", "1", "--logs", str(tmp_path / "runs"), "--no-progress", "--no-tensorboard"])
    assert code == 2
    err = capsys.readouterr().err
    assert "token ids outside the vocabulary" in err and str(beton) in err and "Traceback" not in err
