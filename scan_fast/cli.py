"""The `scan-fast` command line: one argparse subcommand per job.

Each subcommand registers its flags in `add_<name>_parser` and runs through a
function that takes the parsed namespace; library code never reads argv.
"""
import argparse
import sys


def add_simulate_parser(sub):
    p = sub.add_parser(
        "simulate",
        help="run the SCAN engine on a simulated loss stream and print the schedule",
        description="Run the SCAN schedule on a simulated per-sample loss stream.",
    )
    from scan_fast.flags import add_field_flags
    from scan_fast.simulate import SimulateFlags

    add_field_flags(p, SimulateFlags)
    p.set_defaults(run=_run_simulate)


def _run_simulate(args):
    from dataclasses import asdict

    from scan_fast.flags import config_from_args
    from scan_fast.simulate import SimulateFlags, run_demo

    return run_demo(**asdict(config_from_args(args, SimulateFlags)))


BENCHMARKS = ("mutation", "index", "loss", "loader", "kernels_gpu", "scale", "convert")


def add_bench_parser(sub):
    p = sub.add_parser("bench", help="run one of the benchmarks in bench/ (source checkout)",
                       description="Run bench/bench_<name>.py; arguments after the name go to the script.")
    p.add_argument("name", choices=BENCHMARKS)
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for the benchmark script")
    p.set_defaults(run=_run_bench)


def _run_bench(args):
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "bench" / f"bench_{args.name}.py"
    if not script.exists():
        raise FileNotFoundError(f"{script} not found: benchmarks ship with the source checkout, not the wheel")
    return subprocess.run([sys.executable, str(script), *args.bench_args]).returncode


def build_parser() -> argparse.ArgumentParser:
    from scan_fast.train.cli import add_coreset_parser, add_eval_parser, add_losses_parser, add_train_parsers
    from scan_fast.data.cli import add_data_parser
    from scan_fast.demo.main_job import add_main_job_parser

    parser = argparse.ArgumentParser(
        prog="scan-fast", description="Fast SCAN dataset pruning for contrastive pre-training."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_main_job_parser(sub, name="demo")
    add_data_parser(sub)
    add_train_parsers(sub)
    add_eval_parser(sub)
    add_coreset_parser(sub)
    add_losses_parser(sub)
    add_simulate_parser(sub)
    add_bench_parser(sub)
    return parser


def _reported_errors() -> tuple:
    """Errors that are the user's to fix, printed as one line: bad values and files, and a data
    file that fails while an epoch reads it (the loader's LoaderError names the file)."""
    loaders = sys.modules.get("scan_fast.data.read.loaders")
    return (ValueError, TypeError, FileNotFoundError) + ((loaders.LoaderError,) if loaders else ())


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.run(args)
    except _reported_errors() as err:
        print(f"scan-fast {args.command}: error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
