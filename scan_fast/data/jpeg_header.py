"""What a JPEG's header says, read without decoding: its coding process, size and components.

Markers are walked from the start of image (SOI) to the first start-of-frame (SOF) segment, skipping
fill bytes and every other segment by its length, so only the header's bytes are read (an EXIF or
ICC segment is skipped, not read). FFCV's compiled decoder (libjpeg-turbo) reads baseline and
progressive Huffman JPEGs of 8-bit samples; `passes_through` says when stored bytes can be handed to
it as they are: 3 components (YCbCr or RGB: CMYK and grayscale are re-encoded as RGB instead, since
the decoder's output is always 3 channels) and the longer side within the data set's largest.
"""
from dataclasses import dataclass
from typing import Callable, Optional

# SOF markers: 0xC0 baseline, 0xC1 extended sequential, 0xC2 progressive (Huffman coded); the others
# are lossless, hierarchical or arithmetic coded.
_HUFFMAN_8BIT_SOF = (0xC0, 0xC1, 0xC2)
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM and RSTn carry no length
_FIRST_READ = 1024


@dataclass(frozen=True)
class JpegHeader:
    marker: int          # the SOF marker (0xC0 baseline, 0xC2 progressive, ...)
    precision: int       # bits per sample
    height: int
    width: int
    components: int      # 1 grayscale, 3 YCbCr/RGB, 4 CMYK/YCCK

    def passes_through(self, max_resolution: Optional[int]) -> bool:
        """Whether FFCV's JPEG decoder reads these bytes as the RGB image they hold, at most
        `max_resolution` pixels on the longer side (None: no limit)."""
        return (self.marker in _HUFFMAN_8BIT_SOF and self.precision == 8 and self.components == 3
                and self.height > 0 and self.width > 0
                and (max_resolution is None or max(self.height, self.width) <= max_resolution))


def read_jpeg_header(read_at: Callable[[int, int], bytes], size: int) -> Optional[JpegHeader]:
    """The header of the JPEG whose bytes `read_at(offset, count)` returns (`size` bytes in all); None
    when they are not a JPEG with a readable frame header (another format, or cut short)."""
    window_start, window = 0, read_at(0, min(size, _FIRST_READ))

    def byte_at(position: int) -> int:
        nonlocal window_start, window
        if not window_start <= position < window_start + len(window):
            if position >= size:
                raise EOFError
            window_start, window = position, read_at(position, min(size - position, 4 * _FIRST_READ))
            if not window:
                raise EOFError
        return window[position - window_start]

    try:
        if byte_at(0) != 0xFF or byte_at(1) != 0xD8:
            return None
        position = 2
        while True:
            if byte_at(position) != 0xFF:
                return None
            while byte_at(position) == 0xFF:  # fill bytes before a marker
                position += 1
            marker = byte_at(position)
            position += 1
            if marker in _STANDALONE:
                continue
            if marker in (0xD8, 0xD9, 0xDA, 0x00):  # a second SOI, end of image or scan data before any frame
                return None
            length = (byte_at(position) << 8) | byte_at(position + 1)
            if length < 2:
                return None
            if marker in _SOF_MARKERS:
                if length < 8:
                    return None
                fields = [byte_at(position + 2 + i) for i in range(6)]
                return JpegHeader(marker=marker, precision=fields[0], height=(fields[1] << 8) | fields[2],
                                  width=(fields[3] << 8) | fields[4], components=fields[5])
            position += length
    except EOFError:
        return None


def jpeg_header(data: bytes) -> Optional[JpegHeader]:
    """read_jpeg_header of bytes in memory."""
    return read_jpeg_header(lambda offset, count: data[offset:offset + count], len(data))
