"""CLIP for SCAN: any open_clip model by name, randomly initialised, with per-sample losses.

`Clip` wraps the open_clip model and `scan_fast.ClipLoss` (or `scan_fast.SigLipLoss`
for the sigmoid loss); its forward returns the `PairLoss` of this rank's rows
(image-to-text and text-to-image, or SigLIP's image and text losses), which the
loop reduces (with per-sample weights for InfoBatch) and hands to the pruning
schedule. Nothing is downloaded: weights start random.
"""
import json
import math
import os
import tempfile
from typing import Optional, Tuple

import torch
from torch import nn

from scan_fast.ops import ClipLoss, PairLoss, SigLipLoss
from scan_fast.train.config import LOSSES

# A ViT + text transformer small enough to train in minutes on 2 CPU cores
# (32 px images, 16 tokens); registered with open_clip under this name.
TINY_CLIP = "scan-tiny-vit"
TINY_CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "mlp_ratio": 2.0,
                   "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2,
                 "mlp_ratio": 2.0},
}
# The same towers trained with the sigmoid loss (its name selects it, as open_clip's *-SigLIP* names do).
TINY_SIGLIP = "scan-tiny-vit-siglip"
TINY_SIGLIP_CONFIG = {**TINY_CLIP_CONFIG, "init_logit_bias": -10}
# open_clip_train's --siglip initialisation: logit_scale = log 10 (a scale of 10), logit_bias = -10
SIGLIP_INIT = {"init_logit_scale": math.log(10), "init_logit_bias": -10.0}


def _clip_loss(rank: int, world_size: int) -> ClipLoss:
    # local_loss + gather_with_grad: each rank's rows against all columns, as
    # open_clip_train recommends for DDP; per-sample losses stay per rank.
    return ClipLoss(local_loss=world_size > 1, gather_with_grad=world_size > 1, rank=rank, world_size=world_size)


def _siglip_loss(rank: int, world_size: int) -> SigLipLoss:
    return SigLipLoss(rank=rank, world_size=world_size)


# --loss name -> (the loss module for rank, world_size; the model's constructor arguments)
LOSS_MODULES = {"clip": (_clip_loss, {}), "siglip": (_siglip_loss, SIGLIP_INIT)}
_REGISTERED = {}


def default_loss(model_name: str) -> str:
    """The loss a model config is made for: "siglip" for open_clip's *-SigLIP* configs and
    TINY_SIGLIP, "clip" for every other one."""
    return "siglip" if "siglip" in model_name.lower() else "clip"


def register_model_config(name: str, config: dict) -> None:
    """Make `name` known to open_clip (through its public add_model_config)."""
    import open_clip

    if _REGISTERED.get(name) == config and name in open_clip.list_models():
        return
    # open_clip reads the file at once and keeps what it read, so no file outlives the call (a folder per process
    # left in the temp directory would pile up over runs)
    with tempfile.TemporaryDirectory(prefix="scan_fast_model_config_") as folder:
        path = os.path.join(folder, f"{name}.json")
        with open(path, "w") as f:
            json.dump(config, f)
        open_clip.add_model_config(path)
    _REGISTERED[name] = config


def known_models():
    import open_clip

    register_model_config(TINY_CLIP, TINY_CLIP_CONFIG)
    register_model_config(TINY_SIGLIP, TINY_SIGLIP_CONFIG)
    return open_clip.list_models()


def create_open_clip(model_name: str, context_length: Optional[int] = None, image_size: Optional[int] = None,
                     **model_kwargs):
    """open_clip model `model_name` with random weights; ValueError naming close matches if unknown.
    `model_kwargs` override the config's constructor arguments (e.g. SIGLIP_INIT)."""
    import open_clip

    names = known_models()
    if model_name not in names:
        close = [n for n in names if model_name.lower()[:4] in n.lower()][:8]
        hint = f"; similar: {', '.join(close)}" if close else f"; e.g. {TINY_CLIP}, ViT-B-32, RN50"
        raise ValueError(f"--model {model_name!r} is not an open_clip model config{hint}")
    return open_clip.create_model(model_name, pretrained=None, load_weights=False,
                                  force_context_length=context_length, force_image_size=image_size, **model_kwargs)


class Clip(nn.Module):
    """open_clip model + per-sample contrastive loss. forward -> PairLoss of this rank's rows.

    loss "clip": PairLoss(loss_i2t, loss_t2i), cross-entropy of the rows and columns of the logits;
    "siglip": PairLoss(image loss, text loss), the row and column sums of the sigmoid loss, with a
    learnt logit_bias (initialised as open_clip_train --siglip). Their mean over the batch,
    (a + b) / 2, is open_clip's ClipLoss / SigLipLoss. Default: default_loss(model_name).
    """

    def __init__(self, model_name: str = TINY_CLIP, context_length: Optional[int] = None,
                 image_size: Optional[int] = None, rank: int = 0, world_size: int = 1, loss: Optional[str] = None):
        super().__init__()
        self.loss_name = loss or default_loss(model_name)
        if self.loss_name not in LOSSES:
            raise ValueError(f"--loss must be one of {LOSSES}, got {loss!r}")
        make_loss, init = LOSS_MODULES[self.loss_name]
        self.model = create_open_clip(model_name, context_length, image_size, **init)
        self.context_length = self.model.context_length
        self.image_size = _image_size(self.model)
        self.loss = make_loss(rank, world_size)

    def encode(self, images: torch.Tensor, tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode_image(images, normalize=True), self.model.encode_text(tokens, normalize=True)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> PairLoss:
        image_features, text_features = self.encode(images, tokens)
        # logit_bias: SigLIP's learnt bias; None for CLIP models, whose loss ignores a bias
        return self.loss.per_sample(image_features, text_features, self.model.logit_scale.exp(),
                                    self.model.logit_bias)

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """As open_clip_train: keep the temperature at most 100 (logit_scale <= ln 100)."""
        self.model.logit_scale.clamp_(0, 4.6052)


def _image_size(model) -> int:
    size = getattr(model.visual, "image_size", None)
    if isinstance(size, (tuple, list)):
        size = size[0]
    return int(size) if size is not None else 224
