"""A JPEG's frame header (SOF) without decoding: its size, components and coding process.

Conversion stores a source JPEG's bytes unchanged when ffcv's decoder (libjpeg-turbo, RGB output)
reads it and it is no larger than --max-resolution; reencode_reason() is that rule. jpeg_info()
walks the marker segments from SOI to the first SOF (ITU-T T.81, B.1.1), reading only the bytes it
needs: an APPn segment (EXIF with a thumbnail can be 64 KiB) is skipped by its length, and bytes
past `head` come from `read_at(position, count)` when given (a file read at an offset, os.pread).
"""
import os
from dataclasses import dataclass
from typing import Callable, Optional

# SOF markers: 0xC0-0xCF, except DHT (0xC4), JPG (0xC8, reserved) and DAC (0xCC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
BASELINE, EXTENDED, PROGRESSIVE = 0xC0, 0xC1, 0xC2  # the Huffman-coded DCT processes ffcv reads
_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM and RST0-7 carry no length
_SOI, _EOI, _SOS = 0xD8, 0xD9, 0xDA
READ_CHUNK = 4096  # bytes asked of read_at at a time: most headers end within the first 1-2 KiB
MAX_SIDE = 65535  # the .beton's image metadata holds width and height as uint16


class JpegHeaderError(ValueError):
    """A file that starts like a JPEG (SOI) but whose header up to the frame header is broken."""


@dataclass(frozen=True)
class JpegInfo:
    width: int
    height: int  # 0: given later by a DNL marker (T.81 B.2.5)
    components: int  # 1 grey, 3 YCbCr (or RGB), 4 CMYK/YCCK
    precision: int  # bits per sample: 8, or 12 (and 16 for lossless)
    sof: int  # the frame marker: 0xC0 baseline, 0xC1 extended, 0xC2 progressive, others

    @property
    def progressive(self) -> bool:
        return self.sof in (0xC2, 0xC6, 0xCA, 0xCE)


def jpeg_info(head: bytes, read_at: Optional[Callable[[int, int], bytes]] = None) -> Optional[JpegInfo]:
    """The frame header of the JPEG whose first bytes are `head`; None when it is no JPEG (no SOI).

    read_at(position, count): up to `count` bytes of the file from `position` (relative to its
    first byte), asked for when the header runs past `head`; without it such a header is cut
    short. Raises JpegHeaderError for a JPEG cut short or broken before its frame header."""
    reader = _Window(bytes(head), read_at)
    if reader.get(0, 2, required=False) != b"\xff\xd8":
        return None
    pos, byte = 2, reader.byte
    while True:
        if byte(pos) != 0xFF:
            raise JpegHeaderError(f"no marker at byte {pos} (found 0x{byte(pos):02x})")
        while byte(pos + 1) == 0xFF:  # fill bytes before a marker (B.1.1.2)
            pos += 1
        marker = byte(pos + 1)
        pos += 2
        if marker in _STANDALONE:
            continue
        if marker in (_SOI, _EOI, _SOS, 0x00):
            name = {_SOI: "a second SOI", _EOI: "EOI", _SOS: "SOS (scan data)", 0x00: "a stuffed 0xFF00"}[marker]
            raise JpegHeaderError(f"{name} at byte {pos - 2} before any frame header (SOF)")
        length = byte(pos) << 8 | byte(pos + 1)
        if length < 2:
            raise JpegHeaderError(f"segment 0xff{marker:02x} at byte {pos - 2} has length {length} (< 2)")
        if marker in _SOF_MARKERS:
            if length < 8:
                raise JpegHeaderError(f"frame header at byte {pos - 2} has length {length} (< 8)")
            frame = reader.get(pos + 2, 6)
            return JpegInfo(width=int.from_bytes(frame[3:5], "big"), height=int.from_bytes(frame[1:3], "big"),
                            components=frame[5], precision=frame[0], sof=marker)
        pos += length


def reencode_reason(info: Optional[JpegInfo], max_resolution: Optional[int]) -> Optional[str]:
    """None when a JPEG with frame header `info` can be stored as is: an 8-bit baseline, extended
    or progressive Huffman JPEG with 3 components (YCbCr or RGB, which ffcv's decoder turns into
    RGB), a known height and its longer side at most max_resolution; otherwise why it must be
    decoded and re-encoded (None for info: not a JPEG)."""
    if info is None:
        return "not a JPEG"
    if info.sof not in (BASELINE, EXTENDED, PROGRESSIVE):
        return f"JPEG process 0x{info.sof:02x} (lossless, hierarchical or arithmetic-coded)"
    if info.precision != 8:
        return f"{info.precision}-bit JPEG"
    if info.components != 3:
        return {1: "greyscale JPEG", 4: "CMYK JPEG"}.get(info.components, f"{info.components}-component JPEG")
    if info.width == 0 or info.height == 0:
        return f"JPEG of size {info.width}x{info.height} (height given by a DNL marker)"
    limit = MAX_SIDE if max_resolution is None else min(MAX_SIDE, max_resolution)
    if max(info.width, info.height) > limit:
        return f"{info.width}x{info.height} is larger than {limit}"
    return None


def jpeg_info_at(fd: int, offset: int, size: int, first: int = READ_CHUNK) -> Optional[JpegInfo]:
    """jpeg_info of the `size` bytes at `offset` of open file descriptor `fd` (a tar member),
    read with os.pread: `first` bytes, then more only for a long header."""

    def read_at(position: int, count: int) -> bytes:
        count = min(count, size - position)
        return os.pread(fd, count, offset + position) if count > 0 else b""

    return jpeg_info(read_at(0, first), read_at)


class _Window:
    """The bytes of a file seen through `head` and then read_at, one chunk held at a time."""

    def __init__(self, head: bytes, read_at):
        self.start, self.data, self.read_at = 0, head, read_at

    def byte(self, pos: int) -> int:
        """The byte at `pos` (the common case, inside the chunk held, without a slice)."""
        lo = pos - self.start
        if 0 <= lo < len(self.data):
            return self.data[lo]
        return self.get(pos, 1)[0]

    def get(self, pos: int, count: int, required: bool = True) -> bytes:
        lo = pos - self.start
        if 0 <= lo and lo + count <= len(self.data):
            return self.data[lo:lo + count]
        if self.read_at is not None:
            self.start, self.data = pos, bytes(self.read_at(pos, max(count, READ_CHUNK)))
            if len(self.data) >= count:
                return self.data[:count]
        if not required:
            return b""
        raise JpegHeaderError(f"cut short: the header needs bytes {pos}..{pos + count - 1}")
