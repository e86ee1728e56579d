"""What a scan-fast .beton holds, and a check that a file really is one.

CLIP:  image (RGB), tokens (int32 x context), id (int64)  [+ label for labelled data]
Labelled (MoCo training, and evaluation for both trainers):  image (RGB), label (int64), id (int64)

A labelled set's class names, in label order, are saved beside it (see classes.py).

`id` is the row index in the file; it is what pruning schedules keep or drop.
"""
import os
from typing import Dict, Iterable, Optional

import numpy as np
from ffcv.fields import Field, IntField, NDArrayField, RGBImageField
from ffcv.types import ALLOC_TABLE_TYPE, CURRENT_VERSION, FieldDescType, HeaderType

IMAGE_MODES = ("jpg", "raw")
# ffcv type ids (ffcv.types.TYPE_ID_HANDLER) of fields stored outside the metadata table:
# RGBImageField, BytesField, NDArrayField, JSONField, TorchTensorField.
_VARIABLE_SIZE_TYPE_IDS = (2, 3, 4, 5, 6)


def image_field(image_mode: str = "jpg", jpeg_quality: int = 90,
                max_resolution: Optional[int] = None) -> RGBImageField:
    if image_mode not in IMAGE_MODES:
        raise ValueError(f"image_mode must be one of {IMAGE_MODES}, got {image_mode!r}")
    if not 1 <= int(jpeg_quality) <= 100:
        raise ValueError(f"jpeg_quality must be in [1, 100], got {jpeg_quality!r}")
    if max_resolution is not None and not 8 <= int(max_resolution) <= 65535:
        raise ValueError(f"max_resolution must be in [8, 65535] or None, got {max_resolution!r}")
    return RGBImageField(write_mode=image_mode, jpeg_quality=jpeg_quality,
                         max_resolution=max_resolution)


def clip_fields(context_length: int, with_labels: bool = False, **image_kwargs) -> Dict[str, Field]:
    fields = {
        "image": image_field(**image_kwargs),
        "tokens": NDArrayField(np.dtype("int32"), (context_length,)),
        "id": IntField(),
    }
    if with_labels:
        fields["label"] = IntField()
    return fields


def labelled_fields(**image_kwargs) -> Dict[str, Field]:
    """A labelled image set: MoCo's training data, and evaluation data for either trainer."""
    return {"image": image_field(**image_kwargs), "label": IntField(), "id": IntField()}


moco_fields = labelled_fields


def check_beton(path, required_fields: Iterable[str] = ()) -> Dict[str, int]:
    """Raise ValueError unless `path` is a complete .beton holding `required_fields`.

    Checks the header, that every region it points to lies inside the file (a
    truncated copy fails here), and the field names. Returns
    {"num_samples": ..., "page_size": ...}.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no .beton file at {path}")
    size = os.path.getsize(path)
    if size < HeaderType.itemsize:
        raise ValueError(f"{path} is not a .beton: {size} bytes, shorter than the header")
    header = np.fromfile(path, dtype=HeaderType, count=1)[0]
    if int(header["version"]) != CURRENT_VERSION:
        raise ValueError(f"{path} is not a .beton (format version {int(header['version'])}, "
                         f"expected {CURRENT_VERSION})")
    num_fields, num_samples = int(header["num_fields"]), int(header["num_samples"])
    page_size, table_ptr = int(header["page_size"]), int(header["alloc_table_ptr"])
    if not 0 < num_fields <= 64 or page_size <= 0 or page_size & (page_size - 1):
        raise ValueError(f"{path} is not a .beton (implausible header: {num_fields} fields, "
                         f"page size {page_size})")
    descriptors_end = HeaderType.itemsize + num_fields * FieldDescType.itemsize
    if descriptors_end > size:
        raise ValueError(f"{path} is truncated: {size} bytes, field table ends at {descriptors_end}")
    descriptors = np.fromfile(path, dtype=FieldDescType, count=num_fields, offset=HeaderType.itemsize)
    names = [bytes(d["name"]).rstrip(b"\0").decode("ascii", "replace") for d in descriptors]
    if table_ptr == 0 or table_ptr > size or (size - table_ptr) % ALLOC_TABLE_TYPE.itemsize:
        raise ValueError(f"{path} is truncated or unfinished: allocation table at byte {table_ptr}, "
                         f"file has {size} bytes")
    table = np.fromfile(path, dtype=ALLOC_TABLE_TYPE, offset=table_ptr)
    if len(table):
        end = int((table["ptr"] + table["size"]).max())
        if end > table_ptr:
            raise ValueError(f"{path} is truncated: sample data reaches byte {end}, "
                             f"past the allocation table at {table_ptr}")
        worst = int(table["sample_id"].max())
        if worst >= num_samples:
            raise ValueError(f"{path} is corrupt: allocation for sample {worst} of {num_samples}")
    # Each sample holds one allocation per variable-size field (image, array, bytes), so a
    # table cut short or a sample written only in part shows up as a missing allocation.
    per_sample = int(np.isin(descriptors["type_id"], _VARIABLE_SIZE_TYPE_IDS).sum())
    if per_sample and num_samples:
        counts = np.bincount(table["sample_id"].astype(np.int64), minlength=num_samples)
        bad = np.flatnonzero(counts != per_sample)
        if bad.size:
            raise ValueError(f"{path} is truncated or corrupt: sample {int(bad[0])} has "
                             f"{int(counts[bad[0]])} of {per_sample} data regions "
                             f"({bad.size} of {num_samples} samples affected)")
    missing = [f for f in required_fields if f not in names]
    if missing:
        raise ValueError(f"{path} lacks field(s) {missing}; it has {names}")
    return {"num_samples": num_samples, "page_size": page_size}
