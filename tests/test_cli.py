"""The top-level `scan-fast` command: every subcommand is registered and answers --help."""
import pytest

from scan_fast.cli import BENCHMARKS, build_parser, main

SUBCOMMANDS = ["demo", "data", "train", "eval", "coreset", "simulate", "bench"]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: scan-fast " + command in capsys.readouterr().out


def test_simulate_runs_the_schedule(tmp_path, capsys):
    out = tmp_path / "sim"
    assert main(["simulate", "--out", str(out), "--num-samples", "4000", "--epochs", "8",
                 "--batch-size", "512"]) == 0
    assert (out / "schedule.csv").exists()
    assert "preparation" in capsys.readouterr().out


def test_bench_names_match_the_scripts():
    from pathlib import Path

    bench = Path(__file__).resolve().parent.parent / "bench"
    for name in BENCHMARKS:
        assert (bench / f"bench_{name}.py").exists(), name
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "no-such-benchmark"])


def test_bench_loader_refuses_an_unknown_suite(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "bench_loader.py"
    spec = importlib.util.spec_from_file_location("bench_loader_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as stop:
        module.main(["--suites", "throughput,swtich"])  # stops before any data is generated
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2
    assert "--suites: unknown suite(s) ['swtich']; choose from throughput,switch,fractions,parts" in err[-1]


_HEAVY = ("torch", "ffcv", "numba", "open_clip", "timm", "torchvision", "cv2", "scan_fast.train.run")


def _imported_after(code: str) -> list:
    """Which of _HEAVY a fresh interpreter has imported after running `code`."""
    import subprocess
    import sys

    probe = f"{code}\nimport sys\nprint(sorted(m for m in {_HEAVY!r} if m in sys.modules))"
    return eval(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout)


def test_the_parser_builds_without_the_heavy_libraries():
    """Every process starts by building the parser (and `--help` is nothing more): it imports none
    of torch, ffcv, numba or open_clip, which only the command that runs needs."""
    assert _imported_after("from scan_fast.cli import build_parser\nbuild_parser()") == []


def test_the_tokenizer_leaves_open_clips_models_alone():
    """A converting process tokenizes with open_clip's BPE without importing open_clip's package
    (its models, timm and torchvision), and gets the same ids as open_clip's SimpleTokenizer."""
    code = "from scan_fast.data.tokenize import CaptionTokenizer\nCaptionTokenizer()('a photo of a dog')"
    assert [m for m in _imported_after(code) if m in ("open_clip", "timm", "torchvision")] == []
    from open_clip.tokenizer import SimpleTokenizer

    from scan_fast.data.tokenize import CaptionTokenizer

    for caption in ("a photo of a dog", "Ünïcode &amp; <b>html</b>  spaces", "x " * 100):
        ids, _ = CaptionTokenizer(77)(caption)
        assert ids.tolist() == SimpleTokenizer()(caption, 77)[0].tolist()
