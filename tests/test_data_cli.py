"""`scan-fast data ...`: writes through the library and reports errors as exit code 2."""
import json

from scan_fast.cli import main
from scan_fast.data.read.inspect import read_samples


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
