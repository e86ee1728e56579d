"""MoCo v3 builder after facebookresearch/moco-v3 `moco/builder.py`, with per-sample losses.

`MoCo` holds the base encoder (backbone + projector), the predictor and the
momentum encoder; forward(x1, x2, m) updates the momentum encoder and returns
the `PairLoss` of the two per-sample loss vectors (a: q1 against k2, b: q2 against
k1) from `scan_fast.MocoLoss`, which the pruning schedule observes. Backbones come
from timm (ViT) and torchvision (ResNet), plus tiny variants for CPU runs.
The ViTs are moco-v3's `VisionTransformerMoCo` (`scan_fast/train/vits.py`): a
fixed 2-D sin-cos position embedding, moco-v3's weight init, and a frozen
random patch projection (`stop_grad_conv1`), on top of timm's `VisionTransformer`.
"""
import math

import torch
from torch import nn

from scan_fast.ops import MocoLoss, PairLoss

ARCHS = ("vit_small", "resnet50", "vit_tiny_cpu", "resnet_tiny_cpu")


def build_backbone(arch: str, image_size: int) -> nn.Module:
    """A backbone whose classifier (`head` for ViT, `fc` for ResNet) the builder replaces."""
    if arch in ("vit_small", "vit_tiny_cpu"):
        from scan_fast.train.vits import VisionTransformerMoCo

        if arch == "vit_small":  # moco-v3's vit_small (ViT-S/16 with 12 heads), --stop-grad-conv1
            return VisionTransformerMoCo(img_size=image_size, patch_size=16, embed_dim=384, depth=12,
                                         num_heads=12, mlp_ratio=4.0, qkv_bias=True, stop_grad_conv1=True)
        return VisionTransformerMoCo(img_size=image_size, patch_size=8, embed_dim=64, depth=2, num_heads=2,
                                     mlp_ratio=2.0, qkv_bias=True, stop_grad_conv1=True)
    if arch == "resnet50":
        from torchvision.models import resnet50

        return resnet50(zero_init_residual=True)
    if arch == "resnet_tiny_cpu":
        from torchvision.models.resnet import BasicBlock, ResNet

        return ResNet(BasicBlock, [1, 1, 1, 1], zero_init_residual=True)
    raise ValueError(f"--arch must be one of {ARCHS}, got {arch!r}")


class MoCo(nn.Module):
    def __init__(self, arch: str, image_size: int, dim: int = 256, mlp_dim: int = 4096, T: float = 1.0):
        super().__init__()
        self.T = T
        self.base_encoder = build_backbone(arch, image_size)
        self.momentum_encoder = build_backbone(arch, image_size)
        self._build_projector_and_predictor_mlps(dim, mlp_dim)
        for param_b, param_m in zip(self.base_encoder.parameters(), self.momentum_encoder.parameters()):
            param_m.data.copy_(param_b.data)
            param_m.requires_grad = False
        self.loss = MocoLoss(T=T, gather=True, reduction="none")

    @staticmethod
    def _build_mlp(num_layers, input_dim, mlp_dim, output_dim, last_bn=True):
        mlp = []
        for layer in range(num_layers):
            dim1 = input_dim if layer == 0 else mlp_dim
            dim2 = output_dim if layer == num_layers - 1 else mlp_dim
            mlp.append(nn.Linear(dim1, dim2, bias=False))
            if layer < num_layers - 1:
                mlp.append(nn.BatchNorm1d(dim2))
                mlp.append(nn.ReLU(inplace=True))
            elif last_bn:
                # as in SimCLR / moco-v3: BN without affine after the last projector layer
                mlp.append(nn.BatchNorm1d(dim2, affine=False))
        return nn.Sequential(*mlp)

    def _build_projector_and_predictor_mlps(self, dim, mlp_dim):
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features before the projector (for kNN / linear probe)."""
        raise NotImplementedError

    @torch.no_grad()
    def _update_momentum_encoder(self, m: float) -> None:
        for param_b, param_m in zip(self.base_encoder.parameters(), self.momentum_encoder.parameters()):
            if param_b.requires_grad:
                param_m.data = param_m.data * m + param_b.data * (1.0 - m)
            else:  # frozen (the ViT's patch projection and positions): the average of a constant is itself,
                param_m.data.copy_(param_b.data)  # copied so rounding in m * x + (1 - m) * x cannot drift

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, m: float) -> PairLoss:
        q1 = self.predictor(self.base_encoder(x1))
        q2 = self.predictor(self.base_encoder(x2))
        with torch.no_grad():
            self._update_momentum_encoder(m)
            k1 = self.momentum_encoder(x1)
            k2 = self.momentum_encoder(x2)
        return PairLoss(self.loss(q1, k2), self.loss(q2, k1))


class MoCo_ResNet(MoCo):  # noqa: N801 (moco-v3's name)
    def _build_projector_and_predictor_mlps(self, dim, mlp_dim):
        hidden_dim = self.base_encoder.fc.weight.shape[1]
        del self.base_encoder.fc, self.momentum_encoder.fc
        self.base_encoder.fc = self._build_mlp(2, hidden_dim, mlp_dim, dim)
        self.momentum_encoder.fc = self._build_mlp(2, hidden_dim, mlp_dim, dim)
        self.predictor = self._build_mlp(2, dim, mlp_dim, dim, False)

    def features(self, x):
        net = self.base_encoder
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
        return torch.flatten(net.avgpool(x), 1)


class MoCo_ViT(MoCo):  # noqa: N801 (moco-v3's name)
    def _build_projector_and_predictor_mlps(self, dim, mlp_dim):
        hidden_dim = self.base_encoder.head.weight.shape[1]
        del self.base_encoder.head, self.momentum_encoder.head
        self.base_encoder.head = self._build_mlp(3, hidden_dim, mlp_dim, dim)
        self.momentum_encoder.head = self._build_mlp(3, hidden_dim, mlp_dim, dim)
        self.predictor = self._build_mlp(2, dim, mlp_dim, dim)

    def features(self, x):
        net = self.base_encoder
        return net.forward_head(net.forward_features(x), pre_logits=True)


def build_moco(arch: str, image_size: int, dim: int, mlp_dim: int, T: float) -> MoCo:
    cls = MoCo_ViT if arch.startswith("vit") else MoCo_ResNet
    if arch not in ARCHS:
        raise ValueError(f"--arch must be one of {ARCHS}, got {arch!r}")
    return cls(arch, image_size, dim=dim, mlp_dim=mlp_dim, T=T)


def momentum_at(epoch: float, base_m: float, epochs: int, cosine: bool = True) -> float:
    """moco-v3's adjust_moco_momentum: m rises from base_m to 1 along a half cosine."""
    if not cosine:
        return base_m
    return 1.0 - 0.5 * (1.0 + math.cos(math.pi * epoch / epochs)) * (1.0 - base_m)
