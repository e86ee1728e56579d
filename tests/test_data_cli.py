"""`scan-fast data ...`: writes through the library and reports errors as exit code 2."""
import json

import numpy as np
import pytest
from PIL import Image

from scan_fast.cli import main
from scan_fast.data.read.inspect import read_samples
from scan_fast.data.write.from_table import write_clip_from_table
from scan_fast.data.write.options import ConversionFlags, IndexOptions, WriteOptions


def test_data_shapes_command(tmp_path, capsys):
    out = tmp_path / "s.beton"
    assert main(["data", "shapes", "--out", str(out), "--num-samples", "40", "--resolution", "16",
                 "--mismatch-fraction", "0.25", "--image-mode", "raw", "--no-progress"]) == 0
    assert "wrote 40" in capsys.readouterr().out
    assert read_samples(out, [39])["id"] == [39]
    assert json.loads((tmp_path / "s.truth.json").read_text())["mismatch_fraction"] == 0.25


def test_data_clip_command_reports_bad_input(tmp_path, capsys):
    (tmp_path / "t.csv").write_text("filepath,label\nx.png,1\n")
    code = main(["data", "clip", "--table", str(tmp_path / "t.csv"), "--out", str(tmp_path / "t.beton"),
                 "--no-progress"])
    assert code == 2
    assert "no caption column" in capsys.readouterr().err
    assert not (tmp_path / "t.beton").exists()


def test_a_flag_that_does_not_apply_or_a_missing_source_is_one_line(tmp_path, capsys):
    out = str(tmp_path / "w.beton")
    assert main(["data", "clip", "--webdataset", str(tmp_path), "--image-column", "img", "--out", out]) == 2
    assert capsys.readouterr().err == "scan-fast data: error: --image-column applies to --table only\n"
    assert main(["data", "clip", "--out", out]) == 2
    assert capsys.readouterr().err == "scan-fast data: error: give one source: --table or --webdataset\n"
    assert main(["data", "labelled", "--image-folder", str(tmp_path), "--out", out, "--part-range", "0:1"]) == 2
    assert capsys.readouterr().err == "scan-fast data: error: --part-range needs --samples-per-part\n"


def test_the_writers_take_one_options_object_or_its_fields(tmp_path):
    given = WriteOptions(image_mode="raw", max_resolution=32, progress=False, num_workers=1)
    assert WriteOptions.of(given, strict=True) == WriteOptions(image_mode="raw", max_resolution=32, progress=False,
                                                               num_workers=1, strict=True)
    assert WriteOptions.of(ConversionFlags()).overwrite is False  # the command line's default survives
    assert WriteOptions().overwrite is True and IndexOptions().overwrite is False
    with pytest.raises(TypeError, match=r"unknown writer option\(s\) \['jpeg_qualty'\]"):
        WriteOptions.of(None, jpeg_qualty=80)
    with pytest.raises(ValueError, match="--image-mode must be one of"):
        WriteOptions(image_mode="png")
    with pytest.raises(ValueError, match="jpeg_quality must be in"):
        IndexOptions(jpeg_quality=0)
    # the same options as an object and as keywords write the same file
    table = tmp_path / "t.csv"
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    table.write_text("filepath,caption\n" + "".join(f"{i}.png,picture {i}\n" for i in range(3)))
    write_clip_from_table(table, tmp_path / "a.beton", options=given)
    write_clip_from_table(table, tmp_path / "b.beton", image_mode="raw", max_resolution=32, progress=False,
                          num_workers=1)
    assert (tmp_path / "a.beton").read_bytes() == (tmp_path / "b.beton").read_bytes()
