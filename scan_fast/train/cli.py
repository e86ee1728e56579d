"""argparse subcommands of the trainers: `scan-fast train clip|moco`, `scan-fast coreset export`.

Flags come from the config dataclasses (one flag per field, grouped by
section: `add_config_flags`, which the demo's parser in main_job.py uses too);
`--config FILE` (YAML or TOML) may hold any of them, with the same names
(dashes or underscores), and flags on the command line win.
`scan_fast/cli.py` registers these with `add_train_parsers(sub)`,
`add_coreset_parser(sub)` and `add_eval_parser(sub)`.
"""
import argparse
import collections.abc
import os
import sys
import typing
from dataclasses import MISSING, fields

from scan_fast.train.config import PRECISIONS, PRUNE_MODES, SCAN_TARGETS, ClipConfig, MocoConfig, TrainConfig

SECTIONS = {
    "data": ("train_data", "val_data", "batch_size", "workers", "augment", "resolution", "seed", "device"),
    "model": ("model", "loss", "arch", "moco_dim", "moco_mlp_dim", "moco_m", "moco_m_cos", "moco_t"),
    "optimisation": ("epochs", "lr", "wd", "beta1", "beta2", "eps", "warmup_epochs", "grad_clip_norm",
                     "precision"),
    "pruning": ("prune", "rho_ill", "rho_red", "t_cos", "prune_threshold", "prune_target", "abs_ill", "abs_red",
                "coreset", "prune_counts", "infobatch_ratio", "infobatch_delta", "seta_ratio", "seta_groups",
                "seta_window", "seta_delta"),
    "evaluation": ("eval_frequency", "zeroshot_classes", "zeroshot_template", "knn_k",
                   "probe_train_data"),
    "run": ("logs", "name", "resume", "overwrite", "save_frequency", "tensorboard", "progress", "log_every",
            "save_losses", "stop_after_step", "dist_timeout"),
}
HELP = {
    "train_data": "the training data: a .beton or a part folder (scan-fast data ...)",
    "val_data": "labelled .beton or part folder for evaluation (zero-shot for CLIP, kNN/linear probe for MoCo): "
                "scan-fast data labelled, or data clip --label-column",
    "batch_size": "batch size per process", "workers": "FFCV decoding threads",
    "augment": "random-resized-crop augmentation (crops are keyed by seed, epoch and sample id, so a resumed "
               "run sees the same images)",
    "device": "auto, cpu or cuda[:N]", "model": "open_clip model config name (random init, no download)",
    "loss": "CLIP loss: clip (InfoNCE) or siglip (sigmoid, learnt bias); default: the model config's, siglip "
            "for open_clip's *-SigLIP* names and scan-tiny-vit-siglip",
    "arch": "MoCo backbone: vit_small, resnet50, vit_tiny_cpu or resnet_tiny_cpu",
    "epochs": "epochs to train", "lr": "peak learning rate", "wd": "AdamW weight decay",
    "warmup_epochs": "linear LR warm-up, in (fractional) epochs",
    "grad_clip_norm": "clip the gradients' total norm to this value, a number > 0 (not given: no clipping)",
    "precision": f"one of {PRECISIONS} (GPU only)",
    "prune": f"pruning strategy, one of {tuple(PRUNE_MODES)}", "prune_target": f"SCAN candidates, one of {SCAN_TARGETS}",
    "rho_ill": "SCAN: share of each batch taken as ill-matched candidates (scan-epoch: the most of the epoch)",
    "rho_red": "SCAN: share of each batch taken as redundant candidates (scan-epoch: share of the epoch)",
    "t_cos": "SCAN: mutation epochs per cycle",
    "prune_threshold": "SCAN: warm-up ends when the epoch loss drops by less than this share, in [0, 1]",
    "abs_ill": "SCAN: ill-matched candidates are the losses above this value (> 0) instead of --rho-ill's share",
    "abs_red": "SCAN: redundant candidates are the losses below this value (> 0) instead of --rho-red's share",
    "coreset": "--prune static: the samples to train on: sample ids (.txt, one a line, or .npy), a DataComp uid "
               ".npy (u8,u8) or a key list (coreset export --format datacomp|keys: matched to --train-data's "
               "uids or keys), or a run's coreset.bits.npy",
    "prune_counts": "--prune random: epochs.csv of a SCAN run whose per-epoch counts to match; --prune "
                    "none-matched: epochs.csv of a run whose total sample-steps to train on all the data, spread "
                    "evenly over --epochs (the demo sets the fewest that hold them)",
    "infobatch_ratio": "InfoBatch: pruning probability of below-mean samples",
    "infobatch_delta": "InfoBatch: share of the epochs that may prune (the rest use all data)",
    "seta_ratio": "SeTa: share of all samples dropped at random each epoch",
    "seta_groups": "SeTa: k-means clusters of the per-sample losses",
    "seta_window": "SeTa: share of the clusters, easy to hard, that the sliding window keeps",
    "seta_delta": "SeTa: share of the epochs that prune with the window (the rest anneal: random drop only)",
    "resolution": "MoCo input size in pixels", "knn_k": "MoCo kNN eval: neighbours",
    "probe_train_data": ("MoCo eval: labelled .beton or part folder for the kNN bank and the linear probe "
                         "(default --train-data)"),
    "eval_frequency": "evaluate every N epochs (0: after the last only)",
    "zeroshot_classes": "file of class names, one a line in label order, one per label (default: the names "
                        "saved beside --val-data)",
    "zeroshot_template": "prompt for each class name, with one {} where the name goes",
    "logs": "folder of all runs",
    "name": "run folder name (default <kind>-<prune>-seed<seed>-<digest of the training flags>)",
    "resume": "checkpoint to resume, or 'latest' for this run's last one; the training flags must be the "
              "checkpoint's (docs/architecture.md lists those that may change)",
    "overwrite": "replace the run folder if it already holds a run (without it, a new run refuses it)",
    "dist_timeout": "seconds a collective waits for the other processes before the run fails (the other ranks "
                    "wait while rank 0 evaluates: keep it above the evaluation's time); a rank that loses "
                    "another stops with one line naming the collective and the last checkpoint (exit code 4)",
    "progress": "a progress bar within each epoch, drawn on a terminal only (the line that sums up each epoch "
                "is always printed)",
    "save_frequency": "checkpoint every N epochs (and after the last), before evaluating",
    "stop_after_step": "stop after this global step without saving (tests of resume)",
    "log_every": "steps between the loop's host reads: the non-finite loss check, progress, and moving "
                 "the candidates found on the device to the host",
    "save_losses": "save each preparation epoch's per-sample losses (float16) as candidates.npz and plot "
                   "their histogram in the report (memory and disk grow with the epoch)",
}


def _field_type(tp):
    """(argparse type, is_bool, is_sequence) of a dataclass field annotation; a Sequence[X] field is a
    flag that takes one or more X."""
    args = typing.get_args(tp)
    if args and type(None) in args:  # Optional[X]
        tp = next(a for a in args if a is not type(None))
    if typing.get_origin(tp) in (collections.abc.Sequence, list, tuple):
        return typing.get_args(tp)[0], False, True
    return tp, tp is bool, False


def add_config_flags(parser, config_cls, sections=SECTIONS, help_texts=HELP, choices=None):
    """One flag per field of the dataclass `config_cls`, in argument groups by `sections` (section -> field
    names; every field must be in one), with help texts from `help_texts` and argparse choices from `choices`
    (field -> allowed values). Every flag defaults to None ("not given"), so that `config_from_args` keeps
    the dataclass's default, or a --config file's value, for the flags not given."""
    by_name = {f.name: f for f in fields(config_cls)}
    choices = choices or {}
    for section, names in sections.items():
        present = [n for n in names if n in by_name]
        if not present:
            continue
        group = parser.add_argument_group(section)
        for name in present:
            f = by_name[name]
            tp, is_bool, many = _field_type(f.type)
            default = f.default if f.default is not MISSING else None
            if many and default is not None:
                default = " ".join(map(str, default))
            help_text = help_texts.get(name, "") + (f" (default: {default})" if default not in (None, "") else "")
            flag = "--" + name.replace("_", "-")
            if is_bool:
                group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            elif name in choices:
                group.add_argument(flag, type=tp, default=None, help=help_text, choices=choices[name],
                                   nargs="+" if many else None)
            else:
                group.add_argument(flag, type=tp, default=None, help=help_text, metavar=name.upper(),
                                   nargs="+" if many else None)
    missing = set(by_name) - {n for names in sections.values() for n in names}
    assert not missing, f"config fields without a section: {missing}"


def read_config_file(path) -> dict:
    """Flag values from a YAML or TOML file: {field_name: value}."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config: no file at {path}")
    with open(path, "rb") as f:
        raw = f.read()
    if path.endswith(".toml"):
        import tomllib

        try:
            values = tomllib.loads(raw.decode())
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"--config {path}: not valid TOML ({err})") from None
    else:
        import yaml

        try:
            values = yaml.safe_load(raw) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"--config {path}: not valid YAML ({err})") from None
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a mapping of flag names to values")
    return {str(k).replace("-", "_"): v for k, v in values.items()}


def _config_value(path, name, value, annotation):
    """A config file's value as the field's type, or a TypeError naming the key."""
    tp, is_bool, many = _field_type(annotation)
    if value is None and type(None) in typing.get_args(annotation):
        return None
    if many:
        if not isinstance(value, list):
            raise TypeError(f"--config {path}: {name} must be a list of {tp.__name__}, got {value!r}")
        return tuple(_config_value(path, name, item, tp) for item in value)
    if is_bool == isinstance(value, bool):  # true/false is neither a number nor a name
        if isinstance(value, tp):
            return value
        if tp is float and isinstance(value, int):
            return float(value)
        if tp is float and isinstance(value, str):
            try:  # PyYAML reads 5e-4 as a string (YAML 1.1 floats need a dot: 5.0e-4)
                return float(value)
            except ValueError:
                pass
    raise TypeError(f"--config {path}: {name} must be {tp.__name__}, got {value!r}")


def config_from_args(args, config_cls):
    """The config dataclass from parsed flags over the --config file's values."""
    by_name = {f.name: f for f in fields(config_cls)}
    values = {}
    if getattr(args, "config", None):
        from_file = read_config_file(args.config)
        unknown = sorted(set(from_file) - set(by_name))
        if unknown:
            raise ValueError(f"--config {args.config}: unknown key(s) {unknown}")
        for name, value in from_file.items():
            values[name] = _config_value(args.config, name, value, by_name[name].type)
    for name in by_name:
        if getattr(args, name, None) is not None:  # given on the command line
            value = getattr(args, name)
            values[name] = tuple(value) if isinstance(value, list) else value  # nargs="+" gives a list
    return config_cls(**values)


def add_train_parsers(sub) -> None:
    train = sub.add_parser("train", help="pre-train CLIP or MoCo v3 with SCAN or a baseline pruning strategy",
                           description="Pre-train on an FFCV .beton or part folder with dataset pruning.")
    kinds = train.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind, config_cls, text in (("clip", ClipConfig, "CLIP (open_clip model) on image-text pairs"),
                                   ("moco", MocoConfig, "MoCo v3 (ViT or ResNet) on images")):
        p = kinds.add_parser(kind, help=text, description=f"Train {text}.")
        p.add_argument("--config", help="YAML or TOML file holding any of the flags below")
        add_config_flags(p, config_cls)
        p.set_defaults(run=_run_train, config_cls=config_cls)


def _run_train(args):
    from scan_fast.train.run import PeerLost, TrainingDiverged

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
    p.add_argument("--val-data", required=True, help="labelled .beton or part folder to evaluate on "
                   "(scan-fast data labelled, or data clip --label-column)")
    p.add_argument("--zeroshot-classes", help="CLIP: class names file, one a line in label order, one per label "
                                              "(default: the names saved beside --val-data)")
    p.add_argument("--zeroshot-template", default="a photo of a {}.",
                   help="CLIP: prompt for each class name, with one {} where the name goes")
    p.add_argument("--probe-train-data", help="MoCo: labelled .beton or part folder for the kNN bank and probe "
                   "(default: the checkpoint's --train-data)")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(run=_run_eval)


def evaluate_checkpoint(checkpoint, val_data, zeroshot_classes=None, zeroshot_template="a photo of a {}.",
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
