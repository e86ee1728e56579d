"""The CLIP and SigLIP tasks (`ClipTask`, `SigLipTask`) and `train_clip(config)`: contrastive
image-text pre-training with SCAN (or a baseline) on an FFCV .beton or part folder."""
import numpy as np

from scan_fast.train.clip_model import Clip
from scan_fast.train.config import ClipConfig
from scan_fast.train.run import candidate_precision_recall, train
from scan_fast.train.task import Task, unwrapped


def beton_context_length(path) -> int:
    """Token length stored in a CLIP .beton or part folder (the model's context length follows it)."""
    from scan_fast.data.dataset import open_dataset

    return int(open_dataset(path, ("tokens",)).handlers["tokens"].shape[0])


class ClipTask(Task):
    """An open_clip model (random init) trained with the CLIP loss on image-text pairs.

    forward: the model's PairLoss of the batch's images and tokens, a = image-to-text, b = text-to-image
    losses of this rank's rows; evaluation: zero-shot accuracy on --val-data; summary: the precision and
    recall of SCAN's ill-matched candidates against the injected mismatches of an embedded shapes set.
    """
    kind = "clip"  # SigLIP runs are CLIP runs too: their folders and reports say clip
    loss = "clip"

    def check(self) -> int:
        from scan_fast.data import check_beton

        cfg = self.cfg.validate()
        info = check_beton(cfg.train_data, ("image", "tokens", "id"))
        if cfg.val_data is not None:
            from scan_fast.train.evaluate import check_labelled

            check_labelled(cfg.val_data)
        return info["num_samples"]

    def build_model(self, runtime) -> Clip:
        cfg = self.cfg
        self.model = Clip(cfg.model, context_length=beton_context_length(cfg.train_data), rank=runtime.rank,
                          world_size=runtime.world_size, loss=self.loss)
        return self.model

    def build_loader(self, schedule, runtime):
        """The loader at the model's image size (build_model first)."""
        from scan_fast.data import clip_loader

        cfg = self.cfg
        # No flip, as open_clip's training transform (and the shapes captions name left and right).
        return clip_loader(cfg.train_data, cfg.batch_size, self.model.image_size, scan=schedule, seed=cfg.seed,
                           distributed=runtime.world_size > 1, rank=runtime.rank, world_size=runtime.world_size,
                           device=runtime.device, augment=cfg.augment, flip=False, num_workers=cfg.workers,
                           direct_reads=cfg.direct_reads)

    def evaluation_loader(self, model, device):
        """The loader of `cfg.val_data` the evaluation reads (at the model's image size)."""
        from scan_fast.data import labelled_loader
        from scan_fast.data.read.augment import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

        return labelled_loader(self.cfg.val_data, 256, model.image_size, device=device, mean=OPENAI_CLIP_MEAN,
                               std=OPENAI_CLIP_STD, num_workers=self.cfg.workers)

    def evaluation(self, model, device):
        """Zero-shot accuracy on `cfg.val_data`; its class names are checked against its labels here,
        before any training."""
        if self.cfg.val_data is None:
            return None
        from scan_fast.train.evaluate import zero_shot_accuracy, zero_shot_classes

        cfg = self.cfg
        prompts = zero_shot_classes(cfg.val_data, cfg.zeroshot_classes, cfg.zeroshot_template)
        val_loader = self.evaluation_loader(model, device)
        return lambda: zero_shot_accuracy(model, val_loader, prompts, device)

    def forward(self, model, batch, epoch):
        return model(batch.images, batch.tokens.long())

    def after_step(self, model) -> None:
        unwrapped(model).clamp_logit_scale()

    def summarize(self, summary, schedule, history, runtime) -> None:
        """ill_precision / ill_recall: SCAN's last ill-matched candidates against the injected mismatches,
        for an embedded shapes set (whose truth file lies beside it) and a run with a preparation epoch."""
        if not schedule.finds_candidates() or not any(r["phase"] == "preparation" for r in history):
            return
        truth = mismatch_truth(self.cfg.train_data)
        if truth is not None:
            precision, recall = candidate_precision_recall(schedule.candidates("ill_matched"), truth)
            summary["ill_precision"], summary["ill_recall"] = precision, recall


class SigLipTask(ClipTask):
    """The same towers trained with the sigmoid loss: forward's PairLoss is a = the image losses (row sums),
    b = the text losses (column sums) of this rank's rows; the model has a learnt logit bias."""
    loss = "siglip"


def clip_task(cfg: ClipConfig) -> ClipTask:
    """The task of a CLIP config: SigLipTask for --loss siglip (the default of *-SigLIP* model configs)."""
    return SigLipTask(cfg) if cfg.pair_loss() == "siglip" else ClipTask(cfg)


def train_clip(cfg: ClipConfig) -> dict:
    return train(clip_task(cfg))


def mismatch_truth(train_data):
    """Injected-mismatch flags of an embedded shapes (or colour-digits) set, or None for other data."""
    from scan_fast.data.embedded import has_shapes_truth, load_shapes_truth

    if not has_shapes_truth(train_data):
        return None

    return np.asarray(load_shapes_truth(train_data)["mismatched"], dtype=bool)
