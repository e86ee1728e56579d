"""Images as the writers read them: references to an image's bytes, and what a .beton stores of them.

A reference (FileImage, TarImage, BrokenLink) is cheap to list and is read twice: once when the
row is checked, once in the writer process. A missing, unreadable or undecodable image is a
BadRow (a skipped row), not an error.

With passthrough (JPEG storage, the default of the writers), a source JPEG that ffcv's decoder
reads as it is and that fits --max-resolution (jpeg_header.reencode_reason) is stored byte for byte
as a StoredJpeg; every other image is decoded, shrunk and re-encoded by ffcv's RGBImageField.
"""
import io
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from scan_fast import _C

from .jpeg_header import JpegHeaderError, jpeg_info, reencode_reason
from ..schema import StoredJpeg
from .tables import BadRow

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _to_rgb(img: Image.Image) -> np.ndarray:
    """uint8 HxWx3. 16-bit grey (PNG mode I;16 or I) is scaled to 8 bits: PIL's convert("RGB")
    clips every value above 255, which turns a 16-bit image almost white."""
    if img.mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(img).astype(np.float64)
        grey = np.clip(np.rint(grey * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(img.convert("RGB"))


def decode_image(data: bytes) -> np.ndarray:
    """Bytes of an image file -> uint8 HxWx3 RGB; BadRow for empty or undecodable data."""
    if len(data) == 0:
        raise BadRow("zero-byte image")
    try:
        with Image.open(io.BytesIO(data)) as img:
            return _to_rgb(img)
    except UnidentifiedImageError:
        raise BadRow("undecodable image", "not a recognised image format") from None
    except Exception as err:  # PIL raises a zoo of types for broken files
        raise BadRow("undecodable image", f"{type(err).__name__}: {err}") from None


def shrink(image: np.ndarray, max_resolution: Optional[int]) -> np.ndarray:
    """ffcv's resizer (longer side to max_resolution, area interpolation, sizes rounded down), except
    that no side shrinks below one pixel: ffcv's gives a 10000 x 10 image a zero side and cv2 fails."""
    if max_resolution is None:
        return image
    size = np.array([image.shape[1], image.shape[0]])
    ratio = max_resolution / size.max()
    if ratio < 1:
        import cv2  # here, not at the top: `data index` and the loaders' start-up need no OpenCV

        image = cv2.resize(image, tuple(int(x) for x in np.maximum((ratio * size).astype(int), 1)),
                           interpolation=cv2.INTER_AREA)
    return image


def passthrough_jpeg(data: bytes, max_resolution: Optional[int]) -> Optional[StoredJpeg]:
    """data as a StoredJpeg when its header says it can be stored as is; None otherwise (a broken
    header too: decoding it then names the problem)."""
    try:
        info = jpeg_info(data)
    except JpegHeaderError:
        return None
    if reencode_reason(info, max_resolution) is not None:
        return None
    return StoredJpeg(data, info.width, info.height)


def stored_image(data: bytes, max_resolution: Optional[int],
                 passthrough: bool = False) -> Union[np.ndarray, StoredJpeg]:
    """What the .beton stores: with passthrough, a JPEG that can be stored as is (StoredJpeg);
    otherwise the pixels, decoded and shrunk to max_resolution (`shrink`)."""
    if passthrough:
        jpeg = passthrough_jpeg(data, max_resolution)
        if jpeg is not None:
            return jpeg
    return shrink(decode_image(data), max_resolution)


def check_jpeg_decodes(data: bytes) -> None:
    """BadRow unless a JPEG decodes to its end without a warning, as the loader's decoder needs
    (libjpeg-turbo at 1/8 scale, which reads every entropy-coded byte as a full decode does; the
    engine's jpeg_decode_error, csrc/jpeg_check.cpp): a file cut short or with corrupt data is
    refused here, not at its first epoch (bench_convert.py counts the broken files each check finds)."""
    error = _C.jpeg_decode_error(data)
    if error is not None:
        raise BadRow("undecodable image", error)


def checked_image(data: bytes, max_resolution: Optional[int], passthrough: bool = False) -> Union[np.ndarray, StoredJpeg]:
    """The row check of an image: what stored_image gives, a StoredJpeg checked to decode."""
    stored = stored_image(data, max_resolution, passthrough)
    if isinstance(stored, StoredJpeg):
        check_jpeg_decodes(stored.data)
    return stored


@dataclass(frozen=True)
class FileImage:
    path: str

    def read(self) -> bytes:
        try:
            with open(self.path, "rb") as fp:
                return fp.read()
        except FileNotFoundError:
            raise BadRow("missing image file", self.path) from None
        except OSError as err:
            raise BadRow("unreadable image file", f"{self.path}: {err}") from None


class _OpenShards(threading.local):
    """The shards this thread read last, kept open: rows come shard by shard, and opening a shard for
    each of its images cost as much as the row's other Python work. A few per thread; a file is closed
    when it leaves, or with its thread, and opened again when the path names another file or the file
    changed (a stat per read: a shard rewritten between two conversions of one process is read anew)."""
    KEEP = 4

    def __init__(self):
        self.files: "OrderedDict[str, Tuple[io.FileIO, tuple]]" = OrderedDict()

    def fd(self, path: str) -> int:
        st = os.stat(path)
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        held = self.files.pop(path, None)
        if held is not None and held[1] != identity:
            held[0].close()
            held = None
        if held is None:
            held = (io.FileIO(path, "r"), identity)
        self.files[path] = held  # the most recent last
        if len(self.files) > self.KEEP:
            self.files.popitem(last=False)[1][0].close()
        return held[0].fileno()


_OPEN_SHARDS = _OpenShards()


@dataclass(frozen=True)
class TarImage:
    shard: str
    offset: int
    size: int

    def read(self) -> bytes:
        return os.pread(_OPEN_SHARDS.fd(self.shard), self.size, self.offset)


@dataclass(frozen=True)
class BrokenLink:
    """A symbolic link with an image's name whose target cannot be opened: listed, so that it is a
    skipped row (or, with strict=True, the row that stops the write) instead of vanishing."""
    path: str

    def read(self) -> bytes:
        try:
            target = os.readlink(self.path)
        except OSError:
            target = "?"
        try:
            os.stat(self.path)
        except FileNotFoundError:
            raise BadRow("broken symbolic link", f"-> {target}, which does not exist") from None
        except OSError as err:
            raise BadRow("broken symbolic link", f"-> {target} ({err.strerror})") from None
        return FileImage(self.path).read()  # mended since it was listed
