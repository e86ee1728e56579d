"""The MoCo v3 task (`MocoTask`) and `train_moco(config)`: self-supervised pre-training of a ViT or
ResNet with SCAN (or a baseline) on an FFCV .beton or part folder."""
from scan_fast.train.config import MocoConfig
from scan_fast.train.moco_model import build_moco, momentum_at
from scan_fast.train.run import train
from scan_fast.train.task import Task


class MocoTask(Task):
    """MoCo v3 (moco-v3's builder, scan_fast/train/moco_model.py) on two augmented views of each image.

    forward: the model's PairLoss, a = view 1's queries against view 2's keys, b = view 2's queries against
    view 1's keys, at the momentum of the fractional epoch; the step minimises their sum (pair_weight 1,
    MoCo v3's symmetric loss). Evaluation: kNN accuracy of the backbone's features on --val-data (bank:
    --probe-train-data or --train-data); the summary adds the last kNN score and a linear probe's.
    """
    kind = "moco"
    pair_weight = 1.0

    def __init__(self, cfg: MocoConfig):
        super().__init__(cfg)
        self._knn = None

    def check(self) -> int:
        from scan_fast.data import check_beton

        cfg = self.cfg.validate()
        info = check_beton(cfg.train_data, ("image", "id"))  # training reads no label
        # the kNN bank (--probe-train-data, else the training data) and --val-data need labels
        bank = cfg.probe_train_data or (cfg.train_data if cfg.val_data is not None else None)
        for path, flag in ((cfg.val_data, "--val-data"), (bank, "--probe-train-data")):
            if path is not None:
                try:
                    check_beton(path, ("image", "label", "id"))
                except ValueError as err:
                    if path == cfg.train_data and cfg.probe_train_data is None:
                        raise ValueError(f"{err}: the kNN evaluation takes its bank from --train-data; give a "
                                         f"labelled {flag}") from None
                    raise
        if not cfg.augment:
            raise ValueError("--no-augment: MoCo needs two augmented views of each image")
        return info["num_samples"]

    def build_model(self, runtime):
        cfg = self.cfg
        model = build_moco(cfg.arch, cfg.resolution, cfg.moco_dim, cfg.moco_mlp_dim, cfg.moco_t)
        if runtime.device.type == "cuda" and runtime.world_size > 1:
            model = torch_sync_bn(model)
        self.model = model
        return model

    def build_loader(self, schedule, runtime):
        from scan_fast.data import moco_loader

        cfg = self.cfg
        return moco_loader(cfg.train_data, cfg.batch_size, cfg.resolution, scan=schedule, seed=cfg.seed,
                           distributed=runtime.world_size > 1, rank=runtime.rank, world_size=runtime.world_size,
                           device=runtime.device, augment=True, num_workers=cfg.workers,
                           direct_reads=cfg.direct_reads)

    def evaluation(self, model, device):
        if self.cfg.val_data is None:
            return None
        self._knn = _knn(self.cfg, model, device)
        return self._knn

    def forward(self, model, batch, epoch):
        cfg = self.cfg
        return model(batch.images, batch.view2, m=momentum_at(epoch, cfg.moco_m, cfg.epochs, cfg.moco_m_cos))

    def summarize(self, summary, schedule, history, runtime) -> None:
        """knn (the last epoch's evaluation) and linear_probe, on rank 0 of a run with --val-data."""
        if self._knn is not None and runtime.is_main:
            summary["knn"] = summary["eval"]
            summary["linear_probe"] = self._knn.linear_probe()


def train_moco(cfg: MocoConfig) -> dict:
    return train(MocoTask(cfg))


def torch_sync_bn(model):
    import torch

    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


class _knn:
    """kNN accuracy of the base encoder's backbone features (bank: probe_train_data or train_data)."""

    def __init__(self, cfg, model, device):
        from scan_fast.data import moco_loader

        def plain(path):
            return moco_loader(path, 256, cfg.resolution, shuffle=False, drop_last=False, device=device,
                               augment=False, num_workers=cfg.workers)

        self.bank, self.test = plain(cfg.probe_train_data or cfg.train_data), plain(cfg.val_data)
        self.model, self.device, self.k, self.seed = model, device, cfg.knn_k, cfg.seed

    def _features(self):
        from scan_fast.train.evaluate import extract_features

        encoder = _Features(self.model)
        return extract_features(encoder, self.bank, self.device) + extract_features(encoder, self.test, self.device)

    def __call__(self) -> float:
        from scan_fast.train.evaluate import knn_accuracy

        return knn_accuracy(*self._features(), k=self.k)

    def linear_probe(self) -> float:
        from scan_fast.train.evaluate import linear_probe_accuracy

        return linear_probe_accuracy(*self._features(), seed=self.seed)


class _Features:
    """encoder(images) -> backbone features, with train()/eval() passed to the MoCo model."""

    def __init__(self, moco):
        self.moco = moco

    @property
    def training(self):
        return self.moco.training

    def train(self, mode=True):
        self.moco.train(mode)

    def eval(self):
        self.moco.eval()

    def __call__(self, images):
        return self.moco.features(images)
