"""`train_clip(config)`: CLIP pre-training with SCAN (or a baseline) on an FFCV .beton."""
import os

import numpy as np

from scan_fast.train.clip_model import Clip
from scan_fast.train.config import ClipConfig
from scan_fast.train.run import check_epochs_fill_a_batch, fit, make_schedule, seed_everything, setup_runtime


def beton_context_length(path) -> int:
    """Token length stored in a CLIP .beton or part folder (the model's context length follows it)."""
    from scan_fast.data.dataset import open_dataset

    return int(open_dataset(path, ("tokens",)).handlers["tokens"].shape[0])


def _unpack(batch):
    return (batch.images, batch.tokens.long()), batch.ids


def train_clip(cfg: ClipConfig) -> dict:
    from scan_fast.data import check_beton, clip_loader

    cfg.validate()
    info = check_beton(cfg.train_data, ("image", "tokens", "id"))
    if cfg.val_data is not None:
        from scan_fast.train.evaluate import check_labelled

        check_labelled(cfg.val_data)
    runtime = setup_runtime(cfg.device, cfg.dist_timeout)
    seed_everything(cfg.seed)  # same seed on every rank: identical initial weights
    num_samples = info["num_samples"]
    schedule = make_schedule(cfg, num_samples, runtime.rank, runtime.world_size)
    check_epochs_fill_a_batch(cfg, schedule, num_samples, runtime.world_size)  # before the model is built
    model = Clip(cfg.model, context_length=beton_context_length(cfg.train_data), rank=runtime.rank,
                 world_size=runtime.world_size, loss=cfg.loss)
    # No flip, as open_clip's training transform (and the shapes captions name left and right).
    loader = clip_loader(cfg.train_data, cfg.batch_size, model.image_size, scan=schedule, seed=cfg.seed,
                         distributed=runtime.world_size > 1, rank=runtime.rank, world_size=runtime.world_size,
                         device=runtime.device, augment=cfg.augment, flip=False, num_workers=cfg.workers)
    evaluate = None
    if cfg.val_data is not None:
        evaluate = _zero_shot(cfg, model, runtime.device)
    truth = _mismatch_truth(cfg.train_data)
    return fit(cfg, kind="clip", model=model, loader=loader, schedule=schedule, unpack=_unpack,
               num_samples=num_samples, runtime=runtime, evaluate=evaluate,
               after_step=model.clamp_logit_scale, truth_mismatched=truth)


def _zero_shot(cfg, model, device):
    """The zero-shot evaluation of `cfg.val_data`; class names are checked against its labels here,
    before any training."""
    from scan_fast.data import labelled_loader
    from scan_fast.data.augment import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    from scan_fast.train.evaluate import zero_shot_accuracy, zero_shot_classes

    prompts = zero_shot_classes(cfg.val_data, cfg.zeroshot_classes, cfg.zeroshot_template)
    val_loader = labelled_loader(cfg.val_data, 256, model.image_size, device=device, mean=OPENAI_CLIP_MEAN,
                                 std=OPENAI_CLIP_STD, num_workers=cfg.workers)
    return lambda: zero_shot_accuracy(model, val_loader, prompts, device)


def _mismatch_truth(train_data):
    """Injected-mismatch flags of an embedded shapes set, or None for other data."""
    stem = train_data[: -len(".beton")] if train_data.endswith(".beton") else train_data
    if not os.path.isfile(f"{stem}.truth.npz"):
        return None
    from scan_fast.data import load_shapes_truth

    return np.asarray(load_shapes_truth(train_data)["mismatched"], dtype=bool)
