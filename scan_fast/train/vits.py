"""moco-v3's ViT (its `vits.py`) on top of timm: fixed 2-D sin-cos positions, its weight init,
and optionally a frozen random patch projection (`stop_grad_conv1`).

Kept apart from the MoCo builder so that importing the builder does not import timm.
"""
import math
from typing import Tuple

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import VisionTransformer
from torch import nn


def sincos_2d_position_embedding(grid_size: Tuple[int, int], embed_dim: int,
                                 temperature: float = 10000.0) -> torch.Tensor:
    """moco-v3's fixed 2-D sin-cos table, [grid_h * grid_w, embed_dim] (no class-token row).

    Channels are [sin(a w), cos(a w), sin(b w), cos(b w)] with w = temperature^(-k / (D/4)),
    k < D/4, where row m of the table has a = m // grid_h and b = m % grid_h: moco-v3 builds
    the grid as meshgrid(arange(grid_w), arange(grid_h)) ('ij') and flattens it. timm
    flattens patches row-major, so on the square grids used here `a` is the patch's row
    and `b` its column.
    """
    grid_h, grid_w = grid_size
    if embed_dim % 4:
        raise ValueError(f"the 2-D sin-cos position embedding needs embed_dim divisible by 4, got {embed_dim}")
    quarter = embed_dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    a, b = torch.meshgrid(torch.arange(grid_w, dtype=torch.float64), torch.arange(grid_h, dtype=torch.float64),
                          indexing="ij")
    out_a, out_b = torch.outer(a.flatten(), omega), torch.outer(b.flatten(), omega)
    return torch.cat([out_a.sin(), out_a.cos(), out_b.sin(), out_b.cos()], dim=1).float()


class VisionTransformerMoCo(VisionTransformer):
    """timm's ViT with moco-v3's stem: fixed sin-cos positions, its init, optionally a frozen patch projection."""

    def __init__(self, stop_grad_conv1: bool = False, **kwargs):
        super().__init__(**kwargs)
        if self.cls_token is None or self.num_prefix_tokens != 1 or self.no_embed_class or self.pos_embed is None:
            raise ValueError("VisionTransformerMoCo needs one class token with a position of its own")
        self._build_2d_sincos_position_embedding()
        with torch.no_grad():
            for name, module in self.named_modules():
                if isinstance(module, nn.Linear):
                    if "qkv" in name:  # xavier-uniform over each of Q, K, V separately
                        bound = math.sqrt(6.0 / (module.weight.shape[0] // 3 + module.weight.shape[1]))
                        nn.init.uniform_(module.weight, -bound, bound)
                    else:
                        nn.init.xavier_uniform_(module.weight)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
            nn.init.normal_(self.cls_token, std=1e-6)
            if isinstance(self.patch_embed, PatchEmbed):
                proj = self.patch_embed.proj
                # xavier-uniform on the weight seen as a [embed_dim, in_chans * patch area] matrix
                bound = math.sqrt(6.0 / (proj.weight[0].numel() + proj.weight.shape[0]))
                nn.init.uniform_(proj.weight, -bound, bound)
                if proj.bias is not None:
                    nn.init.zeros_(proj.bias)
                if stop_grad_conv1:
                    for param in proj.parameters():
                        param.requires_grad = False

    def _build_2d_sincos_position_embedding(self, temperature: float = 10000.0) -> None:
        table = sincos_2d_position_embedding(self.patch_embed.grid_size, self.embed_dim, temperature)
        with torch.no_grad():
            self.pos_embed.copy_(torch.cat([table.new_zeros(1, self.embed_dim), table])[None])
        self.pos_embed.requires_grad = False
