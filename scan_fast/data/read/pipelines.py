"""Per-field FFCV pipelines for CLIP and MoCo v3 (one list of operations per output).

CLIP:  image -> keyed random-resized-crop (+ flip) decode, to tensor/device, CHW,
       normalise; tokens -> int32 (B, context) on device; id (and label) -> int64
       (B,) on CPU
MoCo:  two outputs read the same stored image with independent keyed crops
       (scale 0.08-1) and flips, as uint8 (B, 3, R, R) on device; label; id. The
       photometric half of the recipe (colour jitter p 0.8, grayscale p 0.2, blur
       p 1.0 / 0.1, solarise p 0 / 0.2, normalise) runs on the loader's batches
       (augment.KeyedMocoViews), because its draws are keyed by sample id, which
       ffcv's transforms never see. Left out versus MoCo v3's torchvision recipe:
       colour jitter applies its four factors in a fixed order (torchvision
       shuffles it), and blur is a true Gaussian (PIL's GaussianBlur is an
       iterated box filter).
Every crop and flip is a function of (loader seed, epoch, sample id, view)
(decoders.py), so runs repeat exactly and a resumed run sees the same images.
With augment=False images are centre-cropped and resized only (evaluation, and
the exact read-back path used by the round-trip tests).
"""
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from ffcv.fields.basics import IntDecoder
from ffcv.fields.ndarray import NDArrayDecoder
from ffcv.pipeline import PipelineSpec
from ffcv.pipeline.operation import Operation
from ffcv.transforms import NormalizeImage, Squeeze, ToDevice, ToTensor, ToTorchImage

from .augment import IMAGENET_MEAN, IMAGENET_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Normalize
from .decoders import CheckedCenterCropDecoder, KeyedRandomResizedCropDecoder
from ..tokenize import vocab_size


def _check_resolution(resolution):
    if not isinstance(resolution, int) or resolution < 8:
        raise ValueError(f"resolution must be an int >= 8, got {resolution!r}")


def _image_decoder(resolution: int, augment: bool, crop_scale: Tuple[float, float], flip: bool, view: int = 0):
    if augment:
        return KeyedRandomResizedCropDecoder((resolution, resolution), scale=crop_scale,
                                             flip_prob=0.5 if flip else 0.0, view=view)
    return CheckedCenterCropDecoder((resolution, resolution), ratio=1.0)


def _uint8_image_ops(decoder, device) -> List:
    return [decoder, ToTensor(), ToDevice(torch.device(device), non_blocking=True), ToTorchImage()]


def _normalized_image_ops(resolution, augment, crop_scale, flip, device, mean, std) -> List:
    """Decode/crop/flip then normalise: on CPU in ffcv's JIT-compiled lookup table (2.5x the
    torch ops at 224 px on 2 cores); on a GPU after the uint8 copy (4x fewer bytes moved)."""
    device = torch.device(device)
    decoder = _image_decoder(resolution, augment, crop_scale, flip)
    if device.type != "cpu":
        return _uint8_image_ops(decoder, device) + [Normalize(mean, std)]
    table = NormalizeImage(np.array(mean) * 255, np.array(std) * 255, np.float32)
    return [decoder, table, ToTensor(), ToTorchImage()]


class CheckTokens(Operation):
    """Stops the epoch when a batch holds token ids the tokenizer cannot give (a .beton whose
    bytes were damaged): in the loader thread, on the CPU copy, so the training step waits on
    nothing, instead of an index error deep in the model's embedding lookup."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = int(vocab_size)

    def generate_code(self):
        vocab_size = self.vocab_size

        def check_tokens(tokens, _dst):
            if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
                raise ValueError(f"token ids outside the vocabulary [0, {vocab_size}) (found "
                                 f"{int(tokens.min())}..{int(tokens.max())}): the file is damaged; "
                                 f"write it again with scan-fast data clip")
            return tokens

        return check_tokens

    def declare_state_and_memory(self, previous_state):
        return previous_state, None


def _int_ops() -> List:
    return [IntDecoder(), ToTensor(), Squeeze(1)]


def clip_pipelines(resolution: int = 224, device="cpu", augment: bool = True, flip: bool = True,
                   crop_scale: Tuple[float, float] = (0.9, 1.0), with_labels: bool = False,
                   mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD) -> Dict[str, Optional[List]]:
    """Pipelines for (image, tokens, id[, label]). open_clip's crop scale is (0.9, 1.0);
    pass flip=False for captions that name left and right (the shapes dataset)."""
    _check_resolution(resolution)
    return {
        "image": _normalized_image_ops(resolution, augment, crop_scale, flip, device, mean, std),
        "tokens": [NDArrayDecoder(), ToTensor(), CheckTokens(vocab_size()),
                   ToDevice(torch.device(device), non_blocking=True)],
        "id": _int_ops(),
        "label": _int_ops() if with_labels else None,
    }


def moco_pipelines(resolution: int = 224, device="cpu", augment: bool = True,
                   crop_scale: Tuple[float, float] = (0.08, 1.0),
                   mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Dict[str, Optional[object]]:
    """Pipelines for (view1 uint8, id, view2 uint8) with augment, both views reading the stored
    `image` (training reads no label, so data without one, an in-place index, trains too);
    (image normalised, label, id) without."""
    _check_resolution(resolution)
    if not augment:
        plain = _normalized_image_ops(resolution, False, crop_scale, False, device, mean, std)
        return {"image": plain, "label": _int_ops(), "id": _int_ops()}
    views = {}
    for view, name in enumerate(("image", "view2")):
        ops = _uint8_image_ops(_image_decoder(resolution, True, crop_scale, True, view), device)
        views[name] = PipelineSpec("image", decoder=ops[0], transforms=ops[1:])
    # ffcv emits stored fields in file order, then extra outputs: (view1, id, view2).
    return {"image": views["image"], "id": _int_ops(), "view2": views["view2"]}
