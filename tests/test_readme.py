"""The README's shell examples run: the own-data walkthrough as written, on a small made-up data set,
the `scan-fast data` lines of the command list at tiny sizes, and docs/scale.md's part-folder jobs.
Each command goes through the CLI's main() with the argv the shell would give it."""
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
SCALE = (REPO / "docs" / "scale.md").read_text()


def _bash_blocks(text):
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def _walkthrough():
    marker = README.index("<!-- walkthrough:")
    return _bash_blocks(README[marker:])[0]


def _commands(block):
    """Commands of a block, backslash continuations joined and trailing comments dropped."""
    joined = block.replace("\\\n", " ")
    return [re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _run(commands, cwd, monkeypatch, capsys):
    """Run each `scan-fast ...` command through the CLI's main() in this process (a fresh
    interpreter per command would spend most of the test importing torch and ffcv)."""
    from scan_fast.cli import main

    monkeypatch.chdir(cwd)
    out = []
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "scan-fast", command
        try:
            code = main(argv[1:])
        except SystemExit as stop:  # --help
            code = stop.code
        captured = capsys.readouterr()
        assert code == 0, f"{command}\n{captured.out[-3000:]}\n{captured.err[-3000:]}"
        out.append(captured.out)
    return "\n".join(out)


def _user_data(root, pairs=64, classes=("circle", "square"), per_class=4):
    """What the walkthrough assumes: my_data/pairs.csv over my_data/images/, and my_data/test/<class>/."""
    rng = np.random.default_rng(0)
    data = root / "my_data"
    (data / "images").mkdir(parents=True)
    rows = ["image,caption"]
    for i in range(pairs):
        colour = rng.integers(0, 256, 3)
        image = np.zeros((24, 24, 3), np.uint8) + colour.astype(np.uint8)
        Image.fromarray(image).save(data / "images" / f"{i:04d}.jpg")
        rows.append(f"images/{i:04d}.jpg,a picture in colour {' '.join(map(str, colour))}")
    (data / "pairs.csv").write_text("\n".join(rows) + "\n")
    for name in classes:
        (data / "test" / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(data / "test" / name / f"{i}.png")


def test_the_own_data_walkthrough_runs_as_written(tmp_path, monkeypatch, capsys):
    commands = _commands(_walkthrough())
    assert [c.split()[1] for c in commands] == ["data", "data", "train", "eval", "coreset"]
    _user_data(tmp_path)
    out = _run(commands, tmp_path, monkeypatch, capsys)
    assert "zero_shot:" in out and "wrote" in out
    assert (tmp_path / "my_data" / "test.beton.classes.json").read_text() == '["circle", "square"]'
    ids = np.loadtxt(tmp_path / "my_data" / "coreset.txt", dtype=np.int64)
    assert 0 < len(ids) <= 64 and len(set(ids.tolist())) == len(ids)


def test_the_data_lines_of_the_command_list_run_at_tiny_sizes(tmp_path, monkeypatch, capsys):
    block = _bash_blocks(README[README.index("## Command line"):])[0]
    commands = [c for c in _commands(block) if c.startswith(("scan-fast data shapes", "scan-fast data digits"))]
    assert len(commands) == 3
    tiny = [re.sub(r"--num-samples \d+", "--num-samples 48", c) + " --no-progress" for c in commands]
    _run(tiny, tmp_path, monkeypatch, capsys)
    for name in ("shapes_train.beton", "shapes_test.beton", "digits_train.beton", "digits_test.beton"):
        assert (tmp_path / "data" / name).is_file(), name


def _jpeg_shards(folder, per_shard: int, side: int, num_shards: int = 2):
    """Webdataset shards of random side x side JPEGs with captions (keys s0000...), in `folder` (made)."""
    import io

    import webdataset as wds

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for s in range(num_shards):
        with wds.TarWriter(str(folder / f"{s:05d}.tar")) as sink:
            for k in range(per_shard):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, format="JPEG")
                sink.write({"__key__": f"{s}{k:04d}", "jpg": buf.getvalue(), "txt": f"sample {s} {k}"})
    return folder


def test_the_part_folder_block_of_docs_scale_runs_as_written(tmp_path, monkeypatch, capsys):
    """Two --part-range jobs over made-up shards (parts of 4 instead of 100,000), then data check."""
    from scan_fast.data.read.inspect import read_samples

    marker = SCALE.index("<!-- at-scale:")
    commands = _commands(_bash_blocks(SCALE[marker:])[0])
    assert [c.split()[1:3] for c in commands] == [["data", "clip"], ["data", "clip"], ["data", "check"]]
    shards = _jpeg_shards(tmp_path / "my_data" / "shards", per_shard=7, side=20)
    tiny = [re.sub(r"--samples-per-part \d+", "--samples-per-part 4", c) + (" --no-progress --num-workers 1"
            if " clip " in c else " --no-progress") for c in commands]
    out = _run(tiny, tmp_path, monkeypatch, capsys)
    assert "no problem found" in out
    folder = tmp_path / "my_data" / "train"
    assert len(list(folder.glob("part-*.beton"))) == 4 and (folder / "manifest.json").is_file()
    from scan_fast.cli import main

    assert main(["data", "clip", "--webdataset", str(shards), "--out", str(tmp_path / "one.beton"),
                 "--no-progress", "--num-workers", "1"]) == 0
    a, b = read_samples(folder), read_samples(tmp_path / "one.beton")
    assert len(a["id"]) == 14 and a["id"] == b["id"]
    for x, y in zip(a["image"], b["image"]):
        np.testing.assert_array_equal(x, y)


def test_the_index_block_runs_as_written(tmp_path, monkeypatch, capsys):
    """data index over made-up JPEG shards, then a short CLIP run from the index."""
    marker = README.index("<!-- index:")
    commands = _commands(_bash_blocks(README[marker:])[0])
    assert [c.split()[1:3] for c in commands] == [["data", "index"], ["train", "clip"]]
    _jpeg_shards(tmp_path / "my_data" / "shards", per_shard=12, side=24)
    out = _run([commands[0] + " --no-progress", commands[1] + " --workers 1 --no-progress --logs runs"],
               tmp_path, monkeypatch, capsys)
    assert "2 shards indexed" in out and (tmp_path / "runs" / "from_shards" / "epochs.csv").is_file()


@pytest.mark.parametrize("command", ["train clip", "eval", "coreset export", "data labelled", "data index"])
def test_every_command_the_readme_names_has_help(command, tmp_path, monkeypatch, capsys):
    assert f"scan-fast {command}" in README
    assert "usage: scan-fast" in _run([f"scan-fast {command} --help"], tmp_path, monkeypatch, capsys)


def test_the_readme_stays_short_and_links_every_topic_page():
    assert len(README.splitlines()) <= 250
    for page in ("scan-method", "training", "architecture", "data-formats", "scale", "results", "benchmarks"):
        assert f"(docs/{page}.md)" in README, page
