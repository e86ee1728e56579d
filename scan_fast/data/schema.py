"""What a scan-fast .beton holds, and a check that a file really is one.

CLIP:  image (RGB), tokens (int32 x context), id (int64)  [+ label for labelled data]
Labelled (MoCo training, and evaluation for both trainers):  image (RGB), label (int64), id (int64)

A labelled set's class names, in label order, are saved beside it (see classes.py).

`id` is the row index in the file; it is what pruning schedules keep or drop.
"""
from dataclasses import dataclass
from functools import cached_property
from typing import Dict, Iterable, Optional, Tuple

import numpy as np

from .beton_layout import IMAGE_MODES as _MODE_IDS
from .beton_layout import INT, NDARRAY, RGB_IMAGE, ndarray_arguments, no_arguments

IMAGE_MODES = tuple(_MODE_IDS)
# A field here is a description (its type id, argument bytes and how a value is stored), not ffcv's
# field object: importing ffcv costs seconds (torch, and numba compiling ffcv's image modes), which a
# job that writes only JPEGs as they are, or no .beton at all (`data index`), never pays. `to_ffcv()`
# builds ffcv's field for ffcv's writer and for encoding pixels.


def check_image_options(image_mode: str = "jpg", jpeg_quality: int = 90, max_resolution: Optional[int] = None):
    """ValueError naming the option that an image field cannot take."""
    if image_mode not in IMAGE_MODES:
        raise ValueError(f"image_mode must be one of {IMAGE_MODES}, got {image_mode!r}")
    if not 1 <= int(jpeg_quality) <= 100:
        raise ValueError(f"jpeg_quality must be in [1, 100], got {jpeg_quality!r}")
    if max_resolution is not None and not 8 <= int(max_resolution) <= 65535:
        raise ValueError(f"max_resolution must be in [8, 65535] or None, got {max_resolution!r}")


@dataclass(frozen=True)
class StoredJpeg:
    """A source JPEG kept as it is, with the size its frame header gives (what the .beton's image
    metadata records, as for a JPEG that ffcv encoded)."""
    data: bytes
    width: int
    height: int

    @property
    def nbytes(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class ImageSpec:
    """An RGB image field (ffcv's RGBImageField): pixels encoded as `write_mode`, or a source JPEG's
    bytes as they are (images.StoredJpeg), with the metadata ffcv writes for a JPEG it encoded."""
    write_mode: str = "jpg"
    jpeg_quality: int = 90
    max_resolution: Optional[int] = None
    type_id = RGB_IMAGE

    def arguments(self) -> np.ndarray:
        return no_arguments()

    @cached_property
    def ffcv_field(self):
        from ffcv.fields import RGBImageField

        return RGBImageField(write_mode=self.write_mode, jpeg_quality=self.jpeg_quality,
                             max_resolution=self.max_resolution)

    def encode(self, destination, value, malloc) -> None:
        if not isinstance(value, StoredJpeg):
            return self.ffcv_field.encode(destination, value, malloc)
        if self.write_mode != "jpg":
            raise ValueError(f"a JPEG's bytes cannot be stored in an image field with write_mode "
                             f"{self.write_mode!r}")
        destination["mode"] = _MODE_IDS["jpg"]
        destination["height"], destination["width"] = value.height, value.width
        destination["data_ptr"], storage = malloc(len(value.data))
        storage[:] = np.frombuffer(value.data, dtype=np.uint8)


@dataclass(frozen=True)
class ArraySpec:
    """A fixed-shape array field (ffcv's NDArrayField): the caption's tokens."""
    dtype: np.dtype
    shape: Tuple[int, ...]
    type_id = NDARRAY

    def arguments(self) -> np.ndarray:
        return ndarray_arguments(self.dtype, self.shape)

    @cached_property
    def ffcv_field(self):
        from ffcv.fields import NDArrayField

        return NDArrayField(np.dtype(self.dtype), tuple(self.shape))

    def encode(self, destination, value, malloc) -> None:
        destination[0], storage = malloc(np.dtype(self.dtype).itemsize * int(np.prod(self.shape)))
        storage[:] = np.ascontiguousarray(value).reshape(-1).view("<u1")


@dataclass(frozen=True)
class IntSpec:
    """An int64 field kept in the metadata (ffcv's IntField): id, label."""
    type_id = INT

    def arguments(self) -> np.ndarray:
        return no_arguments()

    @cached_property
    def ffcv_field(self):
        from ffcv.fields import IntField

        return IntField()

    def encode(self, destination, value, malloc) -> None:
        destination[0] = value


def image_field(image_mode: str = "jpg", jpeg_quality: int = 90, max_resolution: Optional[int] = None) -> ImageSpec:
    check_image_options(image_mode, jpeg_quality, max_resolution)
    return ImageSpec(image_mode, int(jpeg_quality), max_resolution)


def clip_fields(context_length: int, with_labels: bool = False, **image_kwargs) -> Dict[str, object]:
    fields = {"image": image_field(**image_kwargs), "tokens": ArraySpec(np.dtype("int32"), (context_length,)),
              "id": IntSpec()}
    if with_labels:
        fields["label"] = IntSpec()
    return fields


def labelled_fields(**image_kwargs) -> Dict[str, object]:
    """A labelled image set: MoCo's training data, and evaluation data for either trainer."""
    return {"image": image_field(**image_kwargs), "label": IntSpec(), "id": IntSpec()}


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
