"""`train_moco(config)`: MoCo v3 pre-training with SCAN (or a baseline) on an FFCV .beton."""
from scan_fast.train.config import MocoConfig
from scan_fast.train.moco_model import build_moco, momentum_at
from scan_fast.train.run import check_epochs_fill_a_batch, fit, make_schedule, seed_everything, setup_runtime


def _unpack(batch):
    return (batch.images, batch.view2), batch.ids


def train_moco(cfg: MocoConfig) -> dict:
    from scan_fast.data import check_beton, moco_loader

    cfg.validate()
    info = check_beton(cfg.train_data, ("image", "label", "id"))
    for path in (cfg.val_data, cfg.probe_train_data):
        if path is not None:
            check_beton(path, ("image", "label", "id"))
    runtime = setup_runtime(cfg.device, cfg.dist_timeout)
    seed_everything(cfg.seed)
    num_samples = info["num_samples"]
    schedule = make_schedule(cfg, num_samples, runtime.rank, runtime.world_size)
    check_epochs_fill_a_batch(cfg, schedule, num_samples, runtime.world_size)  # before the model is built
    model = build_moco(cfg.arch, cfg.resolution, cfg.moco_dim, cfg.moco_mlp_dim, cfg.moco_t)
    if runtime.device.type == "cuda" and runtime.world_size > 1:
        model = torch_sync_bn(model)
    if not cfg.augment:
        raise ValueError("--no-augment: MoCo needs two augmented views of each image")
    loader = moco_loader(cfg.train_data, cfg.batch_size, cfg.resolution, scan=schedule, seed=cfg.seed,
                         distributed=runtime.world_size > 1, rank=runtime.rank, world_size=runtime.world_size,
                         device=runtime.device, augment=True, num_workers=cfg.workers)
    evaluate = _knn(cfg, model, runtime.device) if cfg.val_data is not None else None

    def momentum(fractional_epoch):
        return {"m": momentum_at(fractional_epoch, cfg.moco_m, cfg.epochs, cfg.moco_m_cos)}

    summary = fit(cfg, kind="moco", model=model, loader=loader, schedule=schedule, unpack=_unpack,
                  num_samples=num_samples, runtime=runtime, evaluate=evaluate, forward_kwargs=momentum,
                  pair_reduction="sum")
    if evaluate is not None and runtime.is_main and "stopped_at_step" not in summary:
        summary["knn"] = summary["eval"]
        summary["linear_probe"] = evaluate.linear_probe()
    return summary


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
