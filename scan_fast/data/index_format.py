"""The files of an in-place index (described in shard_index.py): names, record layout and pins.

Imports nothing of ffcv: `data index` writes these files without loading the readers.
"""
import hashlib
import json
import os
from typing import Optional

import numpy as np

from .regions import DataError
from .source_ids import file_sha256

INDEX_FORMAT = "scan-fast webdataset index"
INDEX_VERSION = 1
PART_STEM = "part-{:05d}"
ROW_DTYPE = np.dtype([("offset", "<u8"), ("size", "<u4"), ("height", "<u2"), ("width", "<u2"), ("side", "<i4")])
# The files of a part, by role, as suffixes of its stem.
PART_FILES = {"rows": ".rows.npy", "tokens": ".tokens.npy", "side": ".side.beton"}
RECORD_SUFFIX = ".json"
# The fields an index reads as, in the order of a `data clip` conversion's (schema.clip_fields).
INDEX_FIELDS = ("image", "tokens", "id")
_FINGERPRINT_BLOCK = 4096
_FINGERPRINT_PROBES = 8


def shard_fingerprint(path: str, size: int) -> str:
    """A digest of a shard at O(1) cost: its size, its first and last 4 KiB and 4 KiB at 8 places
    between (a shard replaced, rewritten or cut differs here)."""
    digest = hashlib.sha256(str(size).encode())
    places = sorted({0, max(0, size - _FINGERPRINT_BLOCK),
                     *(size * k // (_FINGERPRINT_PROBES + 1) for k in range(1, _FINGERPRINT_PROBES + 1))})
    with open(path, "rb") as f:
        for place in places:
            f.seek(place)
            digest.update(f.read(_FINGERPRINT_BLOCK))
    return digest.hexdigest()[:32]


def npy_data_offset(path: str, dtype: np.dtype, shape: tuple) -> int:
    """Where the data of a .npy file starts; DataError unless it holds `dtype` arrays of `shape`
    (None in shape: any length)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            found_shape, fortran, found_dtype = read_header(f)
            offset = f.tell()
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is not a readable .npy array: {err}") from None
    want = tuple(len_ if len_ is not None else found_shape[i] for i, len_ in enumerate(shape))
    if found_dtype != dtype or fortran or found_shape != want:
        raise DataError(f"{path} holds {found_dtype} x {found_shape}, expected {dtype} x {want}")
    return offset


def file_entry(path: str) -> dict:
    """A part file as the manifest pins it: name, size and sha256."""
    return {"file": os.path.basename(path), "bytes": os.path.getsize(path), "sha256": file_sha256(path)}


def read_part_record(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
