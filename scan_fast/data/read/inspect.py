"""A plain, slow reader of scan-fast .beton files: no JIT, no pipelines.

For checks and inspection (the round-trip tests use it as the oracle the
loaders are compared with): returns stored images, tokens, labels and ids
exactly as written, JPEGs decoded with Pillow.
"""
import io
from typing import Dict, List, Optional, Sequence

import numpy as np
from ffcv.fields import IntField, NDArrayField, RGBImageField
from PIL import Image

from ..beton import find_pointers
from ..dataset import open_dataset


def read_samples(path, ids: Optional[Sequence[int]] = None) -> Dict[str, List]:
    """{field name: [value per requested id]} for the image, ndarray and int fields of a .beton or
    part folder (global ids; an `id` field reads back as the global id)."""
    dataset = open_dataset(path)
    ids = range(dataset.num_samples) if ids is None else ids
    out = {name: [] for name, field in dataset.handlers.items()
           if isinstance(field, (RGBImageField, NDArrayField, IntField))}
    for i in ids:
        p = int(dataset.part_of(np.array([int(i)]))[0])
        part, row = dataset.part(p), int(i) - int(dataset.offsets[p])
        meta, index = part.metadata[row], part.pointer_index()

        def stored_bytes(ptr):
            k = int(find_pointers(index["ptr"], np.array([ptr], np.uint64))[0])
            return part.data[int(ptr): int(ptr) + int(index["size"][k])]

        for f_ix, (name, field) in enumerate(dataset.handlers.items()):
            value = meta[f"f{f_ix}"]
            if isinstance(field, RGBImageField):
                raw = stored_bytes(value["data_ptr"])
                if value["mode"] == 0:  # jpg
                    out[name].append(np.asarray(Image.open(io.BytesIO(raw.tobytes())).convert("RGB")))
                else:
                    out[name].append(np.array(raw).reshape(value["height"], value["width"], 3))
            elif isinstance(field, NDArrayField):
                out[name].append(np.array(stored_bytes(value)).view(field.dtype).reshape(field.shape))
            elif isinstance(field, IntField):
                out[name].append(int(i) if name == "id" else int(value))
    return out


def read_labels(path) -> np.ndarray:
    """The `label` column of a labelled .beton or part folder (from the metadata: no image is read)."""
    dataset = open_dataset(path, ("label",))
    column = f"f{list(dataset.handlers).index('label')}"
    return np.concatenate([np.asarray(dataset.part(p).metadata[column], dtype=np.int64)
                           for p in range(dataset.num_parts)])
