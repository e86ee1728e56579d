"""The `scan-fast` command line: one argparse subcommand per job.

Each subcommand registers its flags in `add_<name>_parser` and runs through a
function that takes the parsed namespace; library code never reads argv.
"""
import argparse
import sys

from scan_fast.data.tokenize import DEFAULT_CONTEXT_LENGTH


def add_simulate_parser(sub):
    p = sub.add_parser(
        "simulate",
        help="run the SCAN engine on a simulated loss stream and print the schedule",
        description="Run the SCAN schedule on a simulated per-sample loss stream.",
    )
    p.add_argument("--out", default="simulate_out", help="folder for the outputs")
    p.add_argument("--num-samples", type=int, default=200_000)
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_run_simulate)


def _run_simulate(args):
    from scan_fast.simulate import run_demo

    return run_demo(
        out=args.out,
        num_samples=args.num_samples,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
    )


def _add_image_flags(p, mode="jpg", max_resolution=256, from_files=False):
    g = p.add_argument_group("images")
    g.add_argument("--image-mode", choices=("jpg", "raw"), default=mode,
                   help="store images as JPEG or raw pixels")
    g.add_argument("--jpeg-quality", type=int, default=90)
    if max_resolution is not False:
        g.add_argument("--max-resolution", type=int, default=max_resolution,
                       help="resize so the longer side is at most this many pixels")
    if from_files:
        g.add_argument("--reencode", action="store_true",
                       help="decode and re-encode every image. By default a source JPEG that FFCV decodes as it is "
                            "(8-bit baseline or progressive, 3 colour components) and whose longer side is at most "
                            "--max-resolution is stored byte for byte, checked by a decode at 1/8 scale")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse names the flag in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_write_flags(p):
    g = p.add_argument_group("writing")
    g.add_argument("--strict", action="store_true",
                   help="stop at the first bad row instead of skipping it (nothing is written)")
    g.add_argument("--num-workers", type=positive_int, default=None,
                   help="writer processes of each converting process (default: all cores, shared among "
                        "torchrun's processes on the machine)")
    g.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_part_flags(p):
    g = p.add_argument_group("part folders (conversion at scale)")
    g.add_argument("--samples-per-part", type=positive_int, default=None, metavar="K",
                   help="write --out as a folder of .beton parts: part P holds the valid rows among source rows "
                        "[P*K, (P+1)*K). Parts are written independently (under torchrun each process writes "
                        "parts P %% WORLD_SIZE == RANK); a rerun of a killed conversion writes only the missing "
                        "parts; the manifest is written last")
    g.add_argument("--part-range", metavar="I:J", default=None,
                   help="with --samples-per-part: write only parts I..J-1 (one job of a job array); the job that "
                        "finds every part written writes the manifest (or run scan-fast data manifest FOLDER)")


def add_data_parser(sub):
    p = sub.add_parser("data", help="write datasets to .beton files for the FFCV loaders",
                       description="Write CLIP or MoCo datasets, or the embedded ones, to .beton.")
    kinds = p.add_subparsers(dest="data_command", metavar="KIND", required=True)

    clip = kinds.add_parser("clip", help="image-text pairs from a caption table or webdataset shards")
    src = clip.add_mutually_exclusive_group(required=True)
    src.add_argument("--table", help="CSV/TSV/JSONL with an image path and a caption per row")
    src.add_argument("--webdataset", nargs="+", help="tar shards, a folder of them, or a glob (a repeated key, or a "
                                                     "shard cut short, is a skipped row: --strict stops)")
    clip.add_argument("--out", required=True, help="target .beton, or the part folder with --samples-per-part")
    clip.add_argument("--image-root", help="folder that table image paths are relative to")
    clip.add_argument("--image-column", help="table column holding the image path")
    clip.add_argument("--caption-column", help="table column holding the caption")
    clip.add_argument("--label-column", help="table column holding a class name: also writes labels (and the "
                                             "class names beside --out), so the set can be a zero-shot --val-data")
    clip.add_argument("--uid-column", help="table column holding each row's uid (32 hex digits, DataComp's): "
                                           "kept beside --out for coreset export --format datacomp")
    clip.add_argument("--context-length", type=int, default=DEFAULT_CONTEXT_LENGTH, help="caption tokens per sample")
    _add_image_flags(clip, from_files=True)
    _add_write_flags(clip)
    _add_part_flags(clip)
    clip.set_defaults(run=_run_data_clip)

    for name, text in (("labelled", "labelled images from an ImageFolder tree (root/class/image): MoCo's "
                                    "training data, or an evaluation set for CLIP zero-shot and MoCo"),
                       ("moco", "the same as 'labelled'")):
        labelled = kinds.add_parser(name, help=text, description=text[0].upper() + text[1:] + ". Labels follow the "
                                    "sorted class folder names, saved beside --out as OUT.classes.json. Every file "
                                    "with an image extension is a row; one that does not decode, or a broken "
                                    "symbolic link, is a skipped row naming the file (--strict stops at it).")
        labelled.add_argument("--image-folder", required=True, help="root folder: one sub-folder per class")
        labelled.add_argument("--out", required=True, help="target .beton, or the part folder with "
                                                           "--samples-per-part")
        _add_image_flags(labelled, from_files=True)
        _add_write_flags(labelled)
        _add_part_flags(labelled)
        labelled.set_defaults(run=_run_data_labelled)

    index = kinds.add_parser(
        "index", help="index webdataset shards in place: train on them as they are, without converting",
        description="Index webdataset shards (<key>.jpg + <key>.txt, DataComp's <key>.json uid) in place: read "
                    "each tar's headers and each JPEG's header only (no decode, no re-encode, no image copied), "
                    "tokenize the captions, and write per-shard index files into --out. Training, evaluation and "
                    "coreset commands take the index wherever they take a .beton or part folder, and read each "
                    "kept image from its tar (pruned samples are never read). Images FFCV's JPEG decoder cannot "
                    "read as they are (PNG, WebP, CMYK or grayscale JPEG, larger than --max-resolution) are "
                    "converted into a small side .beton per shard. A rerun of a killed index indexes only the "
                    "missing shards; under torchrun shard P is indexed by rank P %% WORLD_SIZE. Bad samples "
                    "(no caption or image, unreadable image, repeated key, a shard cut short) are skipped rows, "
                    "as in data clip; sample ids are those of a data clip conversion of the same shards.")
    index.add_argument("--webdataset", nargs="+", required=True,
                       help="tar shards, a folder of them, or a glob (indexed in the order given; a folder's "
                            "*.tar sorted by name)")
    index.add_argument("--out", required=True, help="the index folder to write")
    index.add_argument("--context-length", type=int, default=DEFAULT_CONTEXT_LENGTH, help="caption tokens per sample")
    index.add_argument("--max-resolution", type=int, default=256,
                       help="a JPEG whose longer side is larger is converted into the side part, resized to this")
    index.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of the side part's images")
    index.add_argument("--part-range", metavar="I:J", default=None,
                       help="index only shards I..J-1 (one job of a job array); the job that finds every shard "
                            "indexed writes the manifest (or run scan-fast data manifest FOLDER)")
    index.add_argument("--strict", action="store_true",
                       help="stop at the first bad sample instead of skipping it")
    index.add_argument("--overwrite", action="store_true", help="replace --out if it holds an index")
    index.add_argument("--no-progress", action="store_true", help="hide progress bars")
    index.set_defaults(run=_run_data_index)

    check = kinds.add_parser("check", help="check a .beton or part folder sample by sample",
                             description="The full per-sample check of a .beton or of every part of a part "
                                         "folder (and the folder's manifest, every part against it, and the "
                                         "key/uid arrays beside each file), then every stored image decoded: "
                                         "one line per problem naming the file (and the sample id of an image "
                                         "that does not decode); exit code 1 when there is one.")
    check.add_argument("path", help="a .beton file or a part folder")
    check.add_argument("--num-workers", type=int, default=1,
                       help="threads decoding the images (default 1)")
    check.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    check.set_defaults(run=_run_data_check)

    manifest = kinds.add_parser("manifest", help="write the manifest of a part folder or index whose parts are "
                                                 "all written",
                                description="Write FOLDER/manifest.json once every part is written (after "
                                            "--part-range jobs, if none of them wrote it).")
    manifest.add_argument("folder", help="the part folder (--out of data clip/labelled --samples-per-part)")
    manifest.set_defaults(run=_run_data_manifest)

    digits = kinds.add_parser("digits", help="scikit-learn's bundled digits with a held-out split")
    digits.add_argument("--out", required=True, help="folder for digits_{train,test}.beton")
    digits.add_argument("--kind", choices=("clip", "moco"), default="clip")
    digits.add_argument("--resolution", type=int, default=32)
    digits.add_argument("--test-fraction", type=float, default=0.2)
    digits.add_argument("--seed", type=int, default=0)
    digits.add_argument("--context-length", type=int, default=DEFAULT_CONTEXT_LENGTH, help="caption tokens per sample")
    digits.add_argument("--no-progress", action="store_true")
    _add_image_flags(digits, mode="raw", max_resolution=False)
    digits.set_defaults(run=_run_data_digits)

    shapes = kinds.add_parser("shapes", help="generated shape/caption pairs with known noise")
    shapes.add_argument("--out", required=True, help="target .beton file (ground truth goes beside it)")
    shapes.add_argument("--kind", choices=("clip", "moco"), default="clip")
    shapes.add_argument("--num-samples", type=int, default=10_000)
    shapes.add_argument("--resolution", type=int, default=32)
    shapes.add_argument("--mismatch-fraction", type=float, default=0.1)
    shapes.add_argument("--duplicate-fraction", type=float, default=0.1)
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument("--context-length", type=int, default=DEFAULT_CONTEXT_LENGTH, help="caption tokens per sample")
    shapes.add_argument("--num-workers", type=int, default=1,
                        help="writer processes; 1 keeps the bytes reproducible")
    shapes.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    shapes.add_argument("--no-progress", action="store_true")
    _add_image_flags(shapes, max_resolution=False)
    shapes.set_defaults(run=_run_data_shapes)


def _image_kwargs(args):
    kwargs = dict(image_mode=args.image_mode, jpeg_quality=args.jpeg_quality)
    if hasattr(args, "max_resolution"):
        kwargs["max_resolution"] = args.max_resolution
    if hasattr(args, "reencode"):
        kwargs["reencode"] = args.reencode
    return kwargs


def _part_kwargs(args):
    if args.part_range is not None and args.samples_per_part is None:
        raise ValueError("--part-range needs --samples-per-part")
    return dict(samples_per_part=args.samples_per_part, part_range=args.part_range)


def _run_data_clip(args):
    from scan_fast.data import write_clip_from_table, write_clip_from_webdataset

    common = dict(context_length=args.context_length, strict=args.strict, overwrite=args.overwrite,
                  num_workers=args.num_workers, progress=not args.no_progress, **_image_kwargs(args),
                  **_part_kwargs(args))
    if args.table:
        summary = write_clip_from_table(args.table, args.out, image_root=args.image_root,
                                        image_column=args.image_column, caption_column=args.caption_column,
                                        label_column=args.label_column, uid_column=args.uid_column, **common)
    else:
        for flag, value in (("--label-column", args.label_column), ("--uid-column", args.uid_column)):
            if value:
                raise ValueError(f"{flag} applies to --table only")
        summary = write_clip_from_webdataset(args.webdataset, args.out, **common)
    print(summary)


def _run_data_index(args):
    from scan_fast.data.write.index_shards import index_webdataset

    print(index_webdataset(args.webdataset, args.out, context_length=args.context_length,
                           max_resolution=args.max_resolution, jpeg_quality=args.jpeg_quality, strict=args.strict,
                           progress=not args.no_progress, overwrite=args.overwrite, part_range=args.part_range))


def _run_data_check(args):
    from scan_fast.data.write.convert import check_path

    problems = check_path(args.path, progress=not args.no_progress, workers=args.num_workers)
    for line in problems:
        print(line)
    if problems:
        print(f"{args.path}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.path}: no problem found")
    return 0


def _run_data_manifest(args):
    from scan_fast.data.write.convert import write_folder_manifest

    manifest = write_folder_manifest(args.folder)
    print(f"wrote {args.folder}/manifest.json: {len(manifest['parts'])} parts, {manifest['num_samples']} samples")
    return 0


def _run_data_labelled(args):
    from scan_fast.data import write_labelled_from_image_folder

    print(write_labelled_from_image_folder(args.image_folder, args.out, strict=args.strict,
                                           num_workers=args.num_workers, overwrite=args.overwrite,
                                           progress=not args.no_progress, **_image_kwargs(args),
                                           **_part_kwargs(args)))


def _run_data_digits(args):
    from scan_fast.data import write_digits

    summaries = write_digits(args.out, kind=args.kind, resolution=args.resolution,
                             test_fraction=args.test_fraction, seed=args.seed,
                             context_length=args.context_length, progress=not args.no_progress,
                             **_image_kwargs(args))
    for summary in summaries.values():
        print(summary)


def _run_data_shapes(args):
    from scan_fast.data import write_shapes
    from scan_fast.outputs import check_output

    check_output(args.out, overwrite=args.overwrite)  # before any work
    print(write_shapes(args.out, num_samples=args.num_samples, kind=args.kind,
                       resolution=args.resolution, mismatch_fraction=args.mismatch_fraction,
                       duplicate_fraction=args.duplicate_fraction, seed=args.seed,
                       context_length=args.context_length, num_workers=args.num_workers,
                       progress=not args.no_progress, **_image_kwargs(args)))


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
    from scan_fast.train.cli import add_coreset_parser, add_eval_parser, add_train_parsers
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
