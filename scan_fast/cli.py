"""The `scan-fast` command line: one argparse subcommand per job.

Each subcommand registers its flags in `add_<name>_parser` and runs through a
function that takes the parsed namespace; library code never reads argv.
"""
import argparse
import sys


def add_demo_parser(sub):
    p = sub.add_parser(
        "demo",
        help="run the SCAN engine on a simulated loss stream and print the schedule",
        description="Run the SCAN schedule on a simulated per-sample loss stream.",
    )
    p.add_argument("--out", default="demo_out", help="folder for the demo's outputs")
    p.add_argument("--num-samples", type=int, default=200_000)
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_run_demo)


def _run_demo(args):
    from scan_fast.simulate import run_demo

    return run_demo(
        out=args.out,
        num_samples=args.num_samples,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scan-fast", description="Fast SCAN dataset pruning for contrastive pre-training."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_demo_parser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.run(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"scan-fast {args.command}: error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
