"""`scan-fast data`: one subcommand per writer or check, each built from the dataclass that defines its
flags (scan_fast/flags.py): the writers' options (write/options.py), each command's source and target,
and the embedded sets' arguments (embedded.py). Imports nothing of ffcv or torch, so `data index` starts
fast; each command imports its writer when it runs."""
import sys
from dataclasses import asdict

from scan_fast.flags import add_field_flags, config_from_args

from .write.options import ClipSource, ConversionFlags, ImageFolderSource, IndexOptions, IndexSource

CONVERSION_SECTIONS = ("source", "captions", "images", "writing", "part folders (conversion at scale)")

INDEX_TEXT = ("Index webdataset shards (<key>.jpg + <key>.txt, DataComp's <key>.json uid) in place: read each "
              "tar's headers and each JPEG's header only (no decode, no re-encode, no image copied), tokenize the "
              "captions, and write per-shard index files into --out. Training, evaluation and coreset commands take "
              "the index wherever they take a .beton or part folder, and read each kept image from its tar (pruned "
              "samples are never read). Images FFCV's JPEG decoder cannot read as they are (PNG, WebP, CMYK or "
              "grayscale JPEG, larger than --max-resolution) are converted into a small side .beton per shard. A "
              "rerun of a killed index indexes only the missing shards; under torchrun shard P is indexed by rank "
              "P %% WORLD_SIZE. Bad samples (no caption or image, unreadable image, repeated key, a shard cut short) "
              "are skipped rows, as in data clip; sample ids are those of a data clip conversion of the same shards.")
LABELLED_TEXT = ("labelled images from an ImageFolder tree (root/class/image): MoCo's training data, or an "
                 "evaluation set for CLIP zero-shot and MoCo")
LABELLED_MORE = (". Labels follow the sorted class folder names, saved beside --out as OUT.classes.json. Every file "
                 "with an image extension is a row; one that does not decode, or a broken symbolic link, is a "
                 "skipped row naming the file (--strict stops at it).")
CHECK_TEXT = ("The full per-sample check of a .beton or of every part of a part folder or index (and the folder's "
              "manifest, every part against it, and the key/uid arrays beside each file), then every stored image "
              "decoded: one line per problem naming the file (and the sample id of an image that does not decode); "
              "exit code 1 when there is one.")


def add_data_parser(sub):
    from .embedded import DigitsFlags, ShapesFlags
    from .write.convert import CheckFlags, ManifestFlags

    p = sub.add_parser("data", help="write datasets to .beton files for the FFCV loaders, or index shards in place",
                       description="Write CLIP or MoCo datasets, or the embedded ones, to .beton; index webdataset "
                                   "shards in place; check what was written.")
    kinds = p.add_subparsers(dest="data_command", metavar="KIND", required=True)

    clip = kinds.add_parser("clip", help="image-text pairs from a caption table or webdataset shards")
    add_field_flags(clip, ClipSource, CONVERSION_SECTIONS)
    add_field_flags(clip, ConversionFlags, CONVERSION_SECTIONS)
    clip.set_defaults(run=_run_clip)

    for name, text in (("labelled", LABELLED_TEXT), ("moco", "the same as 'labelled'")):
        labelled = kinds.add_parser(name, help=text, description=text[0].upper() + text[1:] + LABELLED_MORE)
        add_field_flags(labelled, ImageFolderSource, CONVERSION_SECTIONS)
        add_field_flags(labelled, ConversionFlags, CONVERSION_SECTIONS)
        labelled.set_defaults(run=_run_labelled)

    index = kinds.add_parser("index", help="index webdataset shards in place: train on them as they are, without "
                                           "converting", description=INDEX_TEXT)
    add_field_flags(index, IndexSource, CONVERSION_SECTIONS)
    add_field_flags(index, IndexOptions, CONVERSION_SECTIONS)
    index.set_defaults(run=_run_index)

    check = kinds.add_parser("check", help="check a .beton, part folder or index sample by sample",
                             description=CHECK_TEXT)
    add_field_flags(check, CheckFlags)
    check.set_defaults(run=_run_check)

    manifest = kinds.add_parser("manifest", help="write the manifest of a part folder or index whose parts are all "
                                                 "written",
                                description="Write FOLDER/manifest.json once every part is written (after "
                                            "--part-range jobs, if none of them wrote it).")
    add_field_flags(manifest, ManifestFlags)
    manifest.set_defaults(run=_run_manifest)

    digits = kinds.add_parser("digits", help="scikit-learn's bundled digits with a held-out split")
    add_field_flags(digits, DigitsFlags, ("data set", "captions", "images"))
    digits.set_defaults(run=_run_digits)

    shapes = kinds.add_parser("shapes", help="generated shape/caption pairs with known noise")
    add_field_flags(shapes, ShapesFlags, ("data set", "captions", "images"))
    shapes.set_defaults(run=_run_shapes)


def _run_clip(args):
    from .write.from_table import write_clip_from_table
    from .write.from_webdataset import write_clip_from_webdataset

    source, options = config_from_args(args, ClipSource), config_from_args(args, ConversionFlags)
    if source.table is not None:
        print(write_clip_from_table(source.table, source.out, image_root=source.image_root,
                                    image_column=source.image_column, caption_column=source.caption_column,
                                    label_column=source.label_column, uid_column=source.uid_column,
                                    context_length=source.context_length, options=options))
    else:
        print(write_clip_from_webdataset(source.webdataset, source.out, context_length=source.context_length,
                                         options=options))


def _run_labelled(args):
    from .write.from_image_folder import write_labelled_from_image_folder

    source = config_from_args(args, ImageFolderSource)
    print(write_labelled_from_image_folder(source.image_folder, source.out,
                                           options=config_from_args(args, ConversionFlags)))


def _run_index(args):
    from .write.index_shards import index_webdataset

    source = config_from_args(args, IndexSource)
    print(index_webdataset(source.webdataset, source.out, options=config_from_args(args, IndexOptions)))


def _run_check(args):
    from .write.convert import CheckFlags, check_path

    flags = config_from_args(args, CheckFlags)
    problems = check_path(flags.path, progress=flags.progress, workers=flags.num_workers)
    for line in problems:
        print(line)
    if problems:
        print(f"{flags.path}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{flags.path}: no problem found")
    return 0


def _run_manifest(args):
    from .write.convert import ManifestFlags, write_folder_manifest

    folder = config_from_args(args, ManifestFlags).folder
    manifest = write_folder_manifest(folder)
    print(f"wrote {folder}/manifest.json: {len(manifest['parts'])} parts, {manifest['num_samples']} samples")
    return 0


def _run_digits(args):
    from .embedded import DigitsFlags, write_digits

    flags = asdict(config_from_args(args, DigitsFlags))
    for summary in write_digits(flags.pop("out"), **flags).values():
        print(summary)


def _run_shapes(args):
    from scan_fast.outputs import check_output

    from .embedded import ShapesFlags, write_shapes

    flags = asdict(config_from_args(args, ShapesFlags))
    out = check_output(flags.pop("out"), overwrite=flags.pop("overwrite"))  # before any work
    print(write_shapes(out, **flags))
