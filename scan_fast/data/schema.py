"""What a scan-fast .beton holds, and a check that a file really is one.

CLIP:  image (RGB), tokens (int32 x context), id (int64)  [+ label for labelled data]
Labelled (MoCo training, and evaluation for both trainers):  image (RGB), label (int64), id (int64)

A labelled set's class names, in label order, are saved beside it (see classes.py).

`id` is the row index in the file; it is what pruning schedules keep or drop.
"""
from typing import TYPE_CHECKING, Dict, Iterable, Optional

import numpy as np

if TYPE_CHECKING:
    from ffcv.fields import Field, RGBImageField

IMAGE_MODES = ("jpg", "raw")
# ffcv is imported in the functions that build its fields: importing it costs seconds (torch, and
# numba compiling ffcv's image modes), which a job that writes no .beton (`data index`) never pays.


def check_image_options(image_mode: str = "jpg", jpeg_quality: int = 90, max_resolution: Optional[int] = None):
    """ValueError naming the option that an image field cannot take."""
    if image_mode not in IMAGE_MODES:
        raise ValueError(f"image_mode must be one of {IMAGE_MODES}, got {image_mode!r}")
    if not 1 <= int(jpeg_quality) <= 100:
        raise ValueError(f"jpeg_quality must be in [1, 100], got {jpeg_quality!r}")
    if max_resolution is not None and not 8 <= int(max_resolution) <= 65535:
        raise ValueError(f"max_resolution must be in [8, 65535] or None, got {max_resolution!r}")


def image_field(image_mode: str = "jpg", jpeg_quality: int = 90,
                max_resolution: Optional[int] = None) -> "RGBImageField":
    from ffcv.fields import RGBImageField

    check_image_options(image_mode, jpeg_quality, max_resolution)
    return RGBImageField(write_mode=image_mode, jpeg_quality=jpeg_quality,
                         max_resolution=max_resolution)


def clip_fields(context_length: int, with_labels: bool = False, **image_kwargs) -> Dict[str, "Field"]:
    from ffcv.fields import IntField, NDArrayField

    fields = {
        "image": image_field(**image_kwargs),
        "tokens": NDArrayField(np.dtype("int32"), (context_length,)),
        "id": IntField(),
    }
    if with_labels:
        fields["label"] = IntField()
    return fields


def labelled_fields(**image_kwargs) -> Dict[str, "Field"]:
    """A labelled image set: MoCo's training data, and evaluation data for either trainer."""
    from ffcv.fields import IntField

    return {"image": image_field(**image_kwargs), "label": IntField(), "id": IntField()}


moco_fields = labelled_fields


def check_beton(path, required_fields: Iterable[str] = ()) -> Dict[str, int]:
    """Raise ValueError (DataError) unless `path` is a complete .beton, part folder or index holding
    `required_fields`; FileNotFoundError when there is nothing at `path`.

    Checks what costs O(1) per sample (beton.py, dataset.py): header, field table, that the
    tables lie inside the file and the allocation count, and for a folder its manifest and
    every part's size. `scan-fast data check` runs the full per-sample check. Returns
    {"num_samples": ..., "num_parts": ..., and "page_size" (of the first part) for .beton data}.
    """
    from .beton import BetonFile
    from .dataset import open_dataset

    dataset = open_dataset(path, tuple(required_fields))
    info = {"num_samples": dataset.num_samples, "num_parts": dataset.num_parts}
    first = dataset.part(0)
    if isinstance(first, BetonFile):  # an in-place index's images stay in their shards: no pages
        info["page_size"] = first.page_size
    return info
