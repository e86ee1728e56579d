"""Batched image augmentations FFCV 1.0.2 lacks, as torch ops on (B, 3, H, W) floats in [0, 1].

Each op takes per-sample parameters, so one call augments a whole batch with
independent draws; `tests/test_data_augment.py` checks every op against
torchvision's per-image functional version. Used after the keyed decode, crop
and flip (decoders.py) for MoCo v3's colour jitter, grayscale, blur and
solarise, and for normalising.
"""
from typing import Sequence, Tuple

import torch
from torch import Tensor, nn

# torchvision's (ITU-R 601-2) luma weights
_LUMA = (0.2989, 0.587, 0.114)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _per_sample(values: Tensor) -> Tensor:
    return values.view(-1, 1, 1, 1)


def grayscale(x: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma."""
    r, g, b = x.unbind(dim=1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _blend(a: Tensor, b: Tensor, factor: Tensor) -> Tensor:
    f = _per_sample(factor)
    return (f * a + (1.0 - f) * b).clamp(0.0, 1.0)


def _rgb_to_hsv(x: Tensor) -> Tensor:
    r, g, b = x.unbind(dim=1)
    maxc, minc = x.max(dim=1).values, x.min(dim=1).values
    flat = maxc == minc
    chroma = maxc - minc
    ones = torch.ones_like(maxc)
    s = chroma / torch.where(flat, ones, maxc)
    div = torch.where(flat, ones, chroma)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    h = ((maxc == r) * (bc - gc) + ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
         + ((maxc != g) & (maxc != r)) * (4.0 + gc - rc))
    return torch.stack((torch.fmod(h / 6.0 + 1.0, 1.0), s, maxc), dim=1)


def _hsv_to_rgb(x: Tensor) -> Tensor:
    h, s, v = x.unbind(dim=1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    sector = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    # For each of the six hue sectors, which of (v, q, p, t) is r, g and b.
    table = torch.stack([torch.stack(c, dim=1) for c in
                         ((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))], dim=1)
    return table.gather(2, sector[:, None, None].expand(-1, 3, 1, -1, -1)).squeeze(2)


def color_jitter(x: Tensor, brightness: Tensor, contrast: Tensor, saturation: Tensor,
                 hue: Tensor) -> Tensor:
    """Brightness, contrast, saturation, then hue, each with one factor per sample
    (torchvision's adjust_* semantics; torchvision also shuffles the order, this keeps it fixed)."""
    x = _blend(x, torch.zeros_like(x), brightness)
    mean_luma = grayscale(x).mean(dim=(1, 2, 3))
    x = _blend(x, _per_sample(mean_luma).expand_as(x), contrast)
    x = _blend(x, grayscale(x).expand_as(x), saturation)
    hsv = _rgb_to_hsv(x)
    h = torch.remainder(hsv[:, 0] + hue.view(-1, 1, 1), 1.0)
    return _hsv_to_rgb(torch.stack((h, hsv[:, 1], hsv[:, 2]), dim=1))


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Separable Gaussian blur with a per-sample sigma, reflect padding (as torchvision)."""
    b, c, h, w = x.shape
    half = (kernel_size - 1) * 0.5
    taps = torch.linspace(-half, half, kernel_size, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (taps[None, :] / sigma.to(x.dtype)[:, None]) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (B*C, k)
    pad = kernel_size // 2
    y = nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect").reshape(1, b * c, h + 2 * pad, w + 2 * pad)
    y = nn.functional.conv2d(y, kernel[:, None, None, :], groups=b * c)
    y = nn.functional.conv2d(y, kernel[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def solarize(x: Tensor, threshold: float = 0.5) -> Tensor:
    return torch.where(x >= threshold, 1.0 - x, x)


def _choose(mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
    return torch.where(_per_sample(mask), new, old)


class Normalize(nn.Module):
    """uint8 (B, 3, H, W) -> float32 normalised, on whatever device the batch is."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = x.float().div_(255.0)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


class MocoViewAugment(nn.Module):
    """MoCo v3's photometric augmentations of one view, each decided per sample:
    colour jitter (p), grayscale (p), Gaussian blur (p), solarise (p), then normalise.

    forward(x, draws): x uint8 (B, 3, H, W) after crop and flip; draws (B, NUM_DRAWS)
    uniforms in [0, 1) that decide every random choice (keyed per sample by
    `KeyedMocoViews`, so a sample's augmentation is reproducible). Output float32.
    """

    NUM_DRAWS = 9  # jitter coin, 4 jitter factors, grayscale coin, blur coin, blur sigma, solarise coin

    def __init__(self, jitter: Tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1),
                 jitter_p: float = 0.8, grayscale_p: float = 0.2, blur_p: float = 1.0,
                 blur_sigma: Tuple[float, float] = (0.1, 2.0), solarize_p: float = 0.0,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        self.jitter, self.jitter_p, self.grayscale_p = jitter, jitter_p, grayscale_p
        self.blur_p, self.blur_sigma, self.solarize_p = blur_p, blur_sigma, solarize_p
        self.normalize = Normalize(mean, std)

    def forward(self, x: Tensor, draws: Tensor) -> Tensor:
        if draws.shape != (x.shape[0], self.NUM_DRAWS):
            raise ValueError(f"draws must have shape ({x.shape[0]}, {self.NUM_DRAWS}), got {tuple(draws.shape)}")
        x = x.float().div_(255.0)
        draws = draws.to(device=x.device, dtype=x.dtype)

        def scaled(column, lo, hi):
            return lo + (hi - lo) * draws[:, column]

        bright, contrast, sat, hue = self.jitter
        jittered = color_jitter(x, scaled(1, max(0.0, 1 - bright), 1 + bright),
                                scaled(2, max(0.0, 1 - contrast), 1 + contrast),
                                scaled(3, max(0.0, 1 - sat), 1 + sat), scaled(4, -hue, hue))
        x = _choose(draws[:, 0] < self.jitter_p, jittered, x)
        x = _choose(draws[:, 5] < self.grayscale_p, grayscale(x).expand_as(x), x)
        if self.blur_p > 0:
            kernel_size = min(2 * int(3 * self.blur_sigma[1] + 0.5) + 1, 2 * (min(x.shape[-2:]) // 2) - 1)
            x = _choose(draws[:, 6] < self.blur_p, gaussian_blur(x, scaled(7, *self.blur_sigma), kernel_size), x)
        if self.solarize_p > 0:
            x = _choose(draws[:, 8] < self.solarize_p, solarize(x), x)
        return (x - self.normalize.mean.to(x.device)) / self.normalize.std.to(x.device)


class KeyedMocoViews:
    """Applies MoCo v3's two photometric view recipes to a loader `Batch`, with draws keyed by
    (seed, epoch, sample id, view): view 1 (batch.images) blur p 1.0 / solarise p 0, view 2
    (batch.view2) blur p 0.1 / solarise p 0.2. Batch in: both views uint8; out: the same batch
    with both views float."""

    def __init__(self, seed: int, blur_sigma: Tuple[float, float] = (0.1, 2.0),
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.seed = int(seed)
        self.views = (MocoViewAugment(blur_p=1.0, blur_sigma=blur_sigma, solarize_p=0.0, mean=mean, std=std),
                      MocoViewAugment(blur_p=0.1, blur_sigma=blur_sigma, solarize_p=0.2, mean=mean, std=std))

    def __call__(self, batch, epoch: int):
        from dataclasses import replace

        from .keyed_random import PHOTOMETRIC_DRAWS, keyed_uniforms

        sample_ids = batch.ids.cpu().numpy()

        def augmented(images, view):
            augment = self.views[view]
            draws = keyed_uniforms(self.seed, epoch, sample_ids, view, PHOTOMETRIC_DRAWS, augment.NUM_DRAWS)
            return augment(images, torch.from_numpy(draws))

        return replace(batch, images=augmented(batch.images, 0), view2=augmented(batch.view2, 1))
