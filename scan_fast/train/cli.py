"""argparse subcommands of the trainers: `scan-fast train clip|moco`, `scan-fast eval`, `scan-fast coreset export`,
`scan-fast losses`.

Training flags are the config dataclasses' fields (scan_fast/flags.py: each field's help
text, choices and section are defined beside it); `--config FILE` (YAML or TOML) may hold any
of them, with the same names (dashes or underscores), and flags on the command line win.
`scan_fast/cli.py` registers these with `add_train_parsers(sub)`, `add_coreset_parser(sub)`,
`add_eval_parser(sub)` and `add_losses_parser(sub)`; what `eval`, `coreset export` and `losses` run lives in
evaluate.py (`evaluate_checkpoint`), coreset.py (`export_coreset`) and loss_modes.py (`replay_run`).
"""
import sys

from scan_fast.train.config import SECTIONS, ClipConfig, MocoConfig, TrainConfig
from scan_fast.flags import add_config_flags, add_field_flag, add_field_flags, config_from_args
from scan_fast.train.coreset import CoresetExport

def add_train_parsers(sub) -> None:
    train = sub.add_parser("train", help="pre-train CLIP or MoCo v3 with SCAN or a baseline pruning strategy",
                           description="Pre-train on an FFCV .beton or part folder with dataset pruning.")
    kinds = train.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind, config_cls, text in (("clip", ClipConfig, "CLIP (open_clip model) on image-text pairs"),
                                   ("moco", MocoConfig, "MoCo v3 (ViT or ResNet) on images")):
        p = kinds.add_parser(kind, help=text, description=f"Train {text}.")
        add_config_flags(p, config_cls, SECTIONS)
        p.set_defaults(run=_run_train, config_cls=config_cls)


def _run_train(args):
    from scan_fast.train.run import TrainingDiverged
    from scan_fast.train.runtime import PeerLost

    cfg = config_from_args(args, args.config_cls)
    if args.kind == "clip":
        from scan_fast.train.clip import train_clip as train
    else:
        from scan_fast.train.moco import train_moco as train
    try:
        summary = train(cfg)
    except TrainingDiverged as err:
        print(f"scan-fast train {args.kind}: error: {err}", file=sys.stderr)
        return 3
    except PeerLost as err:
        print(f"scan-fast train {args.kind}: error: {err}", file=sys.stderr, flush=True)
        return 4
    for key, value in summary.items():
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    return 0


def add_coreset_parser(sub) -> None:
    coreset = sub.add_parser("coreset", help="coreset files of a SCAN run")
    actions = coreset.add_subparsers(dest="action", metavar="ACTION", required=True)
    export = actions.add_parser("export", help="write the coreset of a run's checkpoint as an id, key or uid list",
                                description="Write the samples SCAN keeps (all but the last preparation's "
                                            "candidates) for --prune static --coreset, or for DataComp's "
                                            "resharder. A checkpoint from before the run's first completed "
                                            "preparation epoch is refused.")
    add_field_flags(export, CoresetExport)
    export.set_defaults(run=_run_coreset_export)


def _run_coreset_export(args):
    export = config_from_args(args, CoresetExport)
    count = export.run()
    print(f"wrote {count} {dict(ids='ids', keys='keys', datacomp='uids')[export.format]} to {export.out}")
    return 0


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint: zero-shot (CLIP) or kNN + linear probe (MoCo)",
                       description="Evaluate a trained checkpoint on a labelled .beton or part folder.")
    p.add_argument("checkpoint", help="a checkpoint written by scan-fast train")
    add_field_flag(p, TrainConfig, "val_data", required=True)
    add_field_flag(p, ClipConfig, "zeroshot_classes")
    add_field_flag(p, ClipConfig, "zeroshot_template")
    add_field_flag(p, MocoConfig, "probe_train_data")
    add_field_flag(p, TrainConfig, "workers")
    p.set_defaults(run=_run_eval)


def _run_eval(args):
    from scan_fast.train.evaluate import evaluate_checkpoint

    results = evaluate_checkpoint(args.checkpoint, args.val_data, args.zeroshot_classes, args.zeroshot_template,
                                  args.probe_train_data, args.workers)
    for key, value in results.items():
        print(f"{key}: {value:.4f}")
    return 0


def add_losses_parser(sub) -> None:
    p = sub.add_parser("losses", help="replay the wrong-pair tests on a run's saved per-epoch losses",
                       description="For every epoch a run saved with --save-epoch-losses: the samples' recent "
                                   "losses as scan-epoch's rules keep them, the valley cut, the separation of two "
                                   "fitted normals and the overlap cut, and the share above each; with --data, "
                                   "each cut's precision and recall against the wrong captions and the best any "
                                   "cut reaches. Prints a table and writes losses/modes.csv and losses/modes.png "
                                   "(each epoch's histogram with its cuts) in the run folder.")
    p.add_argument("run_folder", help="a run folder (logs/NAME) trained with --save-epoch-losses")
    p.add_argument("--data", metavar="DATA", help="the run's training data, an embedded data set whose truth "
                                                  "file lies beside it (scan-fast data shapes, or the demo's)")
    add_field_flag(p, TrainConfig, "rho_ill")
    p.set_defaults(run=_run_losses)


def _run_losses(args):
    from scan_fast.train.loss_modes import replay_run

    print(replay_run(args.run_folder, args.rho_ill, args.data))
    return 0
