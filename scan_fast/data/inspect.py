"""A plain, slow reader of scan-fast .beton files: no JIT, no pipelines.

For checks and inspection (the round-trip tests use it as the oracle the
loaders are compared with): returns stored images, tokens, labels and ids
exactly as written, JPEGs decoded with Pillow.
"""
import io
from typing import Dict, List, Optional, Sequence

import numpy as np
from ffcv.fields import IntField, NDArrayField, RGBImageField
from ffcv.reader import Reader
from PIL import Image

from .schema import check_beton


def read_samples(path, ids: Optional[Sequence[int]] = None) -> Dict[str, List]:
    """{field name: [value per requested id]} for the image, ndarray and int fields."""
    check_beton(path)
    reader = Reader(str(path))
    data = np.memmap(str(path), dtype=np.uint8, mode="r")
    ptrs = reader.alloc_table["ptr"]
    order = np.argsort(ptrs)
    sorted_ptrs, sorted_sizes = ptrs[order], reader.alloc_table["size"][order]

    def stored_bytes(ptr):
        k = np.searchsorted(sorted_ptrs, ptr)
        return data[int(ptr): int(ptr) + int(sorted_sizes[k])]

    ids = range(reader.num_samples) if ids is None else ids
    out = {}
    for f_ix, (name, field) in enumerate(reader.handlers.items()):
        column = reader.metadata[f"f{f_ix}"]
        values = []
        for i in ids:
            meta = column[int(i)]
            if isinstance(field, RGBImageField):
                raw = stored_bytes(meta["data_ptr"])
                if meta["mode"] == 0:  # jpg
                    values.append(np.asarray(Image.open(io.BytesIO(raw.tobytes())).convert("RGB")))
                else:
                    values.append(np.array(raw).reshape(meta["height"], meta["width"], 3))
            elif isinstance(field, NDArrayField):
                values.append(np.array(stored_bytes(meta)).view(field.dtype).reshape(field.shape))
            elif isinstance(field, IntField):
                values.append(int(meta))
        out[name] = values
    return out


def read_labels(path) -> np.ndarray:
    """The `label` column of a labelled .beton (from its metadata table: no image is read)."""
    check_beton(path, ("label",))
    reader = Reader(str(path))
    index = list(reader.handlers).index("label")
    return np.asarray(reader.metadata[f"f{index}"], dtype=np.int64)
