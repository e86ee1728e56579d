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
