"""argparse subcommands of the trainers: `scan-fast train clip|moco`, `scan-fast eval`, `scan-fast coreset export`.

Training flags are the config dataclasses' fields (scan_fast/train/flags.py: each field's help
text, choices and section are defined beside it); `--config FILE` (YAML or TOML) may hold any
of them, with the same names (dashes or underscores), and flags on the command line win.
`scan_fast/cli.py` registers these with `add_train_parsers(sub)`,
`add_coreset_parser(sub)` and `add_eval_parser(sub)`.
"""
import os
import sys
from dataclasses import fields

from scan_fast.train.config import (DEFAULT_ZEROSHOT_TEMPLATE, PRUNE_MODES, SECTIONS, ClipConfig, MocoConfig,
                                    TrainConfig)
from scan_fast.train.flags import add_config_flags, add_field_flag, config_from_args

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
    export.add_argument("checkpoint", help="a SCAN run's checkpoint (e.g. runs/NAME/checkpoints/latest.pt)")
    export.add_argument("--out", required=True, help="file to write")
    export.add_argument("--format", choices=("ids", "keys", "datacomp"), default="ids",
                        help="ids: the global sample ids, one a line (default); keys: the webdataset keys, one a "
                             "line, under a '# scan-fast keys' line; datacomp: the uids as a sorted .npy of "
                             "dtype u8,u8 (high, low 64 bits), what DataComp's resharder reads")
    export.add_argument("--data", help="the training data set whose keys or uids to write (default: the "
                                       "checkpoint's --train-data)")
    export.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    export.set_defaults(run=_run_coreset_export)


def export_coreset(checkpoint: str, out: str, overwrite: bool = True, fmt: str = "ids", data=None) -> int:
    """Write the coreset of a SCAN checkpoint as `fmt` (ids, keys, datacomp); returns how many
    samples were written."""
    import numpy as np

    from scan_fast.outputs import check_output, partial_path
    from scan_fast.train.checkpoint import load_checkpoint

    check_output(out, inputs=[checkpoint], overwrite=overwrite)
    state = load_checkpoint(checkpoint)
    schedule_state = state["schedule"]
    prune = state["config"].get("prune")
    mode = PRUNE_MODES.get(prune)  # a state without "kind" is taken for Scan's, as before schedules named it
    if mode is None or mode.coreset_state is None or schedule_state.get("kind", "Scan") != mode.coreset_state:
        raise ValueError(f"{checkpoint} is from a --prune {prune} run, not a SCAN run")
    # the schedule as the run built it (scan-epoch's coreset is Scan's, from the same two bitsets)
    saved = {f.name: state["config"][f.name] for f in fields(TrainConfig) if f.name in state["config"]}
    scan = mode.build(TrainConfig(**saved), int(schedule_state["num_samples"]), 0,
                      int(schedule_state.get("world_size", 1)))
    scan.load_state_dict(schedule_state)
    if not any(record.phase == "preparation" for record in scan.stats().records):
        raise ValueError(f"{checkpoint}: the run has not completed a preparation epoch (it holds "
                         f"{len(scan.stats().records)} epoch(s), all warm-up), so SCAN has chosen no candidates "
                         f"and its coreset would be every id; export from a checkpoint after a preparation epoch")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if fmt != "ids":
        from scan_fast.data.dataset import open_dataset
        from scan_fast.data.source_ids import export_kept, kept_bits

        data = data or state["config"].get("train_data")
        dataset = open_dataset(data, progress=False)
        if dataset.num_samples != scan.num_samples:
            raise ValueError(f"{data} holds {dataset.num_samples} samples, the run in {checkpoint} trained on "
                             f"{scan.num_samples}: not its training data (--data)")
        return export_kept(dataset, kept_bits(scan.coreset_set()), fmt, out)
    ids = scan.coreset()
    partial = partial_path(out)
    np.savetxt(partial, ids, fmt="%d", header=f"coreset of {checkpoint}: {len(ids)} of {scan.num_samples} ids")
    os.replace(partial, out)
    return len(ids)


def _run_coreset_export(args):
    count = export_coreset(args.checkpoint, args.out, overwrite=args.overwrite, fmt=args.format, data=args.data)
    print(f"wrote {count} {'ids' if args.format == 'ids' else 'keys' if args.format == 'keys' else 'uids'} "
          f"to {args.out}")
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


def evaluate_checkpoint(checkpoint, val_data, zeroshot_classes=None, zeroshot_template=DEFAULT_ZEROSHOT_TEMPLATE,
                        probe_train_data=None, workers=2) -> dict:
    """{"zero_shot": acc} for a CLIP checkpoint, {"knn": acc, "linear_probe": acc} for a MoCo one."""
    import torch

    from scan_fast.train.checkpoint import load_checkpoint
    from scan_fast.train.evaluate import check_labelled

    state = load_checkpoint(checkpoint)
    check_labelled(val_data)
    absent = [key for key in ("model", "config") if not isinstance(state.get(key), dict)]
    if absent:
        raise ValueError(f"{checkpoint}: not a complete scan-fast checkpoint (no {' or '.join(absent)} entry)")
    config = state["config"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if "model" in config:  # CLIP
        from scan_fast.train.clip import clip_task
        from scan_fast.train.clip_model import Clip
        from scan_fast.train.evaluate import zero_shot_classes

        zero_shot_classes(val_data, zeroshot_classes, zeroshot_template)  # before the model is built
        positions = state["model"].get("model.positional_embedding")
        if positions is None:
            raise ValueError(f"{checkpoint}: not a CLIP checkpoint of scan-fast (its model has no "
                             f"model.positional_embedding)")
        model = Clip(config["model"], context_length=positions.shape[0], loss=config.get("loss"))
        _load_weights(model, state["model"], checkpoint)
        model.to(device)
        cfg = ClipConfig(train_data=config["train_data"], val_data=val_data, zeroshot_classes=zeroshot_classes,
                         zeroshot_template=zeroshot_template, workers=workers, model=config["model"],
                         loss=config.get("loss"))
        return {"zero_shot": clip_task(cfg).evaluation(model, device)()}
    from scan_fast.train.moco import MocoTask
    from scan_fast.train.moco_model import build_moco

    model = build_moco(config["arch"], config["resolution"], config["moco_dim"], config["moco_mlp_dim"],
                       config["moco_t"])
    _load_weights(model, state["model"], checkpoint)
    model.to(device)
    cfg = MocoConfig(train_data=config["train_data"], val_data=val_data, probe_train_data=probe_train_data,
                     resolution=config["resolution"], knn_k=config["knn_k"], workers=workers)
    knn = MocoTask(cfg).evaluation(model, device)
    return {"knn": knn(), "linear_probe": knn.linear_probe()}


def _load_weights(model, weights, checkpoint) -> None:
    """load_state_dict, with a one-line error naming the checkpoint and the keys or sizes that differ."""
    if not isinstance(weights, dict):
        raise ValueError(f"{checkpoint}: its 'model' entry is not a state dict")
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise ValueError(f"{checkpoint}: its weights do not fit the model its config names "
                         f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                         f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})")
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        sizes = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
        raise ValueError(f"{checkpoint}: its weights do not fit the model its config names "
                         f"({sizes[0] if sizes else err})") from None


def _run_eval(args):
    results = evaluate_checkpoint(args.checkpoint, args.val_data, args.zeroshot_classes, args.zeroshot_template,
                                  args.probe_train_data, args.workers)
    for key, value in results.items():
        print(f"{key}: {value:.4f}")
    return 0
