"""The .beton file layout (ffcv 1.0.2's format version 2), without importing ffcv.

Importing ffcv costs a process seconds (torch, and numba compiling ffcv's image-mode dictionary);
opening, checking and writing a .beton needs only the layout: the header, the field table (a
type id, a name and 1,024 bytes of arguments per field), one metadata row per sample (each field's
metadata type, in field order, aligned), the data pages and the allocation table. The loaders
still build ffcv's field objects (their decoders) from the same field table.
tests/test_beton_layout.py checks every name here against ffcv's own.
"""
import json
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

VERSION = 2  # ffcv.types.CURRENT_VERSION
MIN_PAGE_SIZE = 1 << 21  # ffcv.writer.MIN_PAGE_SIZE: the smallest page ffcv's readers take

HEADER = np.dtype([("version", "<u2"), ("num_fields", "<u2"), ("page_size", "<u4"), ("num_samples", "<u8"),
                   ("alloc_table_ptr", "<u8")], align=True)
ALLOC_TABLE = np.dtype([("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])
ARGUMENT_BYTES = 1024
FIELD_NAME_BYTES = 16
FIELD_DESC = np.dtype([("type_id", "<u1"), ("name", ("<u1", FIELD_NAME_BYTES)),
                       ("arguments", ("<u1", (ARGUMENT_BYTES,)))], align=True)

# Type ids of ffcv's fields (ffcv.types.TYPE_ID_HANDLER); 255 is a custom field.
FLOAT, INT, RGB_IMAGE, BYTES, NDARRAY, JSON, TORCH_TENSOR = range(7)
CUSTOM = 255

IMAGE_METADATA = np.dtype([("mode", "<u1"), ("width", "<u2"), ("height", "<u2"), ("data_ptr", "<u8")])
_REGION_METADATA = np.dtype([("ptr", "<u8"), ("size", "<u8")])
METADATA: Dict[int, np.dtype] = {FLOAT: np.dtype("<f8"), INT: np.dtype("<i8"), RGB_IMAGE: IMAGE_METADATA,
                                 BYTES: _REGION_METADATA, NDARRAY: np.dtype("<u8"), JSON: _REGION_METADATA,
                                 TORCH_TENSOR: np.dtype("<u8")}
# Where a field's metadata keeps the address of its stored bytes: a sub-field, "" when the metadata
# is the address itself (arrays); fields stored in the metadata have none.
POINTER: Dict[int, str] = {RGB_IMAGE: "data_ptr", BYTES: "ptr", JSON: "ptr", NDARRAY: "", TORCH_TENSOR: ""}
IMAGE_MODES = {"jpg": 0, "raw": 1}  # ffcv.fields.rgb_image.IMAGE_MODES

_NDARRAY_HEADER = np.dtype([("shape", "<u8", 32), ("type_length", "<u8")])


def pointer_of(type_id: int) -> Optional[str]:
    return POINTER.get(int(type_id))


def sample_dtype(type_ids: Sequence[int]) -> np.dtype:
    """One sample's metadata row: each field's metadata type, in field order (ffcv.types.get_metadata_type)."""
    return np.dtype([("", METADATA[int(t)]) for t in type_ids], align=True)


def no_arguments() -> np.ndarray:
    return np.zeros(ARGUMENT_BYTES, np.uint8)


def ndarray_arguments(dtype, shape: Tuple[int, ...]) -> np.ndarray:
    """An array field's 1,024 argument bytes (NDArrayField.to_binary): its shape, then its dtype as JSON."""
    header = np.zeros(1, _NDARRAY_HEADER)
    header["shape"][0][:len(shape)] = np.asarray(shape, dtype="<u8")
    encoded = json.dumps(np.dtype(dtype).descr).encode("ascii")
    header["type_length"][0] = len(encoded)
    body = np.concatenate([header.view(np.uint8), np.frombuffer(encoded, np.uint8)])
    out = no_arguments()
    out[:len(body)] = body
    return out


def field_table(fields: Sequence[Tuple[str, int, np.ndarray]]) -> np.ndarray:
    """The field table of (name, type id, argument bytes) triples, as ffcv's writer fills it."""
    table = np.zeros(len(fields), FIELD_DESC)
    for i, (name, type_id, arguments) in enumerate(fields):
        encoded = np.frombuffer(name.encode("ascii"), np.uint8)[:FIELD_NAME_BYTES]
        table[i]["type_id"] = type_id
        table[i]["name"][:len(encoded)] = encoded
        table[i]["arguments"][:] = arguments
    return table
