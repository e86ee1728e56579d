"""jpeg_header: frame headers read from the marker segments alone, checked against PIL's decoder."""
import io
import os
import struct

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from scan_fast.data.write.jpeg_header import (READ_CHUNK, JpegHeaderError, JpegInfo, jpeg_info, jpeg_info_at,
                                        reencode_reason)


def _jpeg(w=37, h=23, mode="RGB", **save):
    rng = np.random.default_rng(w * 1000 + h)
    channels = {"RGB": 3, "L": 1, "CMYK": 4}[mode]
    pixels = rng.integers(0, 256, (h, w, channels) if channels > 1 else (h, w), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buf, format="JPEG", **save)
    return buf.getvalue()


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _insert_after_soi(jpeg: bytes, extra: bytes) -> bytes:
    return jpeg[:2] + extra + jpeg[2:]


def _sof_offset(jpeg: bytes) -> int:
    return next(i for i in range(2, len(jpeg) - 1) if jpeg[i] == 0xFF and jpeg[i + 1] in (0xC0, 0xC1, 0xC2))


def _frame_end(jpeg: bytes) -> int:
    """The end of what jpeg_info needs: SOF's marker, length, precision, height, width, components."""
    return _sof_offset(jpeg) + 10


def _pil_info(data: bytes):
    with Image.open(io.BytesIO(data)) as img:
        return img.size, len(img.getbands()), bool(img.info.get("progressive", img.info.get("progression")))


@pytest.mark.parametrize("w, h, mode, save", [
    (37, 23, "RGB", {}),
    (256, 256, "RGB", {"quality": 95}),
    (64, 300, "RGB", {"progressive": True}),
    (41, 17, "RGB", {"optimize": True, "subsampling": 0}),
    (33, 9, "L", {}),
    (20, 30, "CMYK", {}),
])
def test_matches_pil(w, h, mode, save):
    data = _jpeg(w, h, mode, **save)
    info = jpeg_info(data)
    (pil_w, pil_h), bands, progressive = _pil_info(data)
    assert (info.width, info.height, info.components, info.progressive) == (pil_w, pil_h, bands, progressive)
    assert info.precision == 8
    assert (reencode_reason(info, None) is None) == (mode == "RGB")


def test_cv2_jpeg_and_exif():
    ok, encoded = cv2.imencode(".jpg", np.zeros((19, 51, 3), np.uint8))
    assert ok
    assert jpeg_info(encoded.tobytes()) == JpegInfo(51, 19, 3, 8, 0xC0)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotated; the stored size is still the frame's
    data = _jpeg(70, 30, exif=exif.tobytes())
    assert b"Exif" in data[:64]
    assert (jpeg_info(data).width, jpeg_info(data).height) == (70, 30)


def test_not_a_jpeg():
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    for data in (png.getvalue(), b"", b"\xff", b"GIF89a", b"\x00\xd8\xff"):
        assert jpeg_info(data) is None
    assert reencode_reason(None, 256) == "not a JPEG"


def test_rules():
    ok = JpegInfo(200, 100, 3, 8, 0xC2)
    assert reencode_reason(ok, 256) is None and reencode_reason(ok, None) is None
    assert reencode_reason(ok, 199) == "200x100 is larger than 199"
    assert reencode_reason(JpegInfo(200, 100, 3, 8, 0xC1), 200) is None
    for sof in (0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
        assert "process" in reencode_reason(JpegInfo(20, 10, 3, 8, sof), 256)
    assert reencode_reason(JpegInfo(20, 10, 3, 12, 0xC1), 256) == "12-bit JPEG"
    assert reencode_reason(JpegInfo(20, 10, 1, 8, 0xC0), 256) == "greyscale JPEG"
    assert reencode_reason(JpegInfo(20, 10, 4, 8, 0xC0), 256) == "CMYK JPEG"
    assert "DNL" in reencode_reason(JpegInfo(20, 0, 3, 8, 0xC0), 256)
    assert reencode_reason(JpegInfo(70000, 10, 3, 8, 0xC0), None) == "70000x10 is larger than 65535"


@pytest.mark.parametrize("marker", [0xC3, 0xC9, 0xCA])
def test_other_processes_are_read_and_refused(marker):
    data = bytearray(_jpeg())
    data[_sof_offset(bytes(data)) + 1] = marker
    info = jpeg_info(bytes(data))
    assert (info.sof, info.width, info.height) == (marker, 37, 23)
    assert reencode_reason(info, 256) is not None


def test_12_bit_precision_is_refused():
    data = bytearray(_jpeg())
    data[_sof_offset(bytes(data)) + 4] = 12
    assert reencode_reason(jpeg_info(bytes(data)), 256) == "12-bit JPEG"


def test_broken_headers():
    data = _jpeg()
    with pytest.raises(JpegHeaderError, match="no marker at byte 2"):
        jpeg_info(b"\xff\xd8\x00\x00" + data[2:])
    with pytest.raises(JpegHeaderError, match="EOI"):
        jpeg_info(b"\xff\xd8\xff\xd9")
    with pytest.raises(JpegHeaderError, match="SOS"):
        jpeg_info(b"\xff\xd8" + _segment(0xDA, b"\x01\x02"))
    with pytest.raises(JpegHeaderError, match="length 1"):
        jpeg_info(b"\xff\xd8\xff\xe0\x00\x01" + data[2:])
    with pytest.raises(JpegHeaderError, match="length 4"):
        jpeg_info(b"\xff\xd8" + _segment(0xC0, b"\x08\x00"))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_cut_short_headers_raise(data):
    jpeg = _jpeg(progressive=data.draw(st.booleans()))
    cut = data.draw(st.integers(2, _frame_end(jpeg) - 1))  # 0..1 bytes: no SOI, not a JPEG
    with pytest.raises(JpegHeaderError, match="cut short"):
        jpeg_info(jpeg[:cut])
    with pytest.raises(JpegHeaderError, match="cut short"):  # read_at finds the end of the file too
        jpeg_info(jpeg[:1], lambda pos, n: jpeg[:cut][pos:pos + n])
    assert jpeg_info(jpeg[:_frame_end(jpeg)]) == jpeg_info(jpeg)


_APP_SEGMENTS = st.lists(st.tuples(st.integers(0xE0, 0xEF), st.integers(0, 70_000)), max_size=4)


@settings(max_examples=40, deadline=None)
@given(apps=_APP_SEGMENTS, fill=st.integers(0, 5), standalone=st.lists(st.sampled_from([0x01, 0xD0, 0xD3, 0xD7]),
                                                                       max_size=3),
       head=st.integers(1, 600), progressive=st.booleans())
def test_segments_before_the_frame_header(apps, fill, standalone, head, progressive):
    """APPn segments of any size (each at most 65533 bytes of payload, so long ones are split), fill
    bytes and standalone markers before SOF: the same frame header, read through read_at without
    reading the segments' payloads."""
    jpeg = _jpeg(53, 29, progressive=progressive)
    extra = b""
    for marker, size in apps:
        while True:
            chunk = min(size, 65533)
            extra += b"\xff" * fill + _segment(marker, bytes([marker]) * chunk)
            size -= chunk
            if size <= 0:
                break
    extra += b"".join(b"\xff" * fill + bytes([0xFF, m]) for m in standalone)
    data = _insert_after_soi(jpeg, extra)
    reads = []

    def read_at(pos, count):
        reads.append(count)
        return data[pos:pos + count]

    info = jpeg_info(data[:head], read_at)
    assert info == jpeg_info(jpeg) == JpegInfo(53, 29, 3, 8, 0xC2 if progressive else 0xC0)
    assert sum(reads) <= (len(extra) // 65535 + len(apps) + 2) * READ_CHUNK  # segment headers only
    assert (jpeg_info(data).width, jpeg_info(data).height) == (53, 29)


def test_jpeg_info_at_reads_a_member_in_place(tmp_path):
    jpeg = _insert_after_soi(_jpeg(61, 45), _segment(0xE1, b"x" * 50_000))
    path = tmp_path / "shard.bin"
    path.write_bytes(b"\x00" * 777 + jpeg + b"\xff\xd8" * 10)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert jpeg_info_at(fd, 777, len(jpeg), first=64) == JpegInfo(61, 45, 3, 8, 0xC0)
        with pytest.raises(JpegHeaderError, match="cut short"):  # the member's size bounds the reads
            jpeg_info_at(fd, 777, 5000)
        assert jpeg_info_at(fd, 0, 700) is None
    finally:
        os.close(fd)
