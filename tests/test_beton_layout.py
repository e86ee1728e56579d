"""The .beton layout without ffcv (data/beton_layout.py) against ffcv's own definitions, and the
in-process writer (write/beton_writer.py) against ffcv's writer: the same bytes."""
import io
import subprocess
import sys

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers import write_tar
from scan_fast.data import beton_layout as layout
from scan_fast.data.beton import BetonFile
from scan_fast.data.schema import StoredJpeg, clip_fields
from scan_fast.data.write.rows import write_rows
from scan_fast.data.write.summary import WriteSummary


def test_the_layout_is_ffcvs():
    from ffcv.fields.rgb_image import IMAGE_MODES
    from ffcv.types import (ALLOC_TABLE_TYPE, CURRENT_VERSION, TYPE_ID_HANDLER, FieldDescType, HeaderType,
                            get_metadata_type)
    from ffcv.writer import MIN_PAGE_SIZE

    from scan_fast.data.beton import pointer_subfield

    assert (layout.HEADER, layout.ALLOC_TABLE, layout.FIELD_DESC) == (HeaderType, ALLOC_TABLE_TYPE, FieldDescType)
    assert (layout.VERSION, layout.MIN_PAGE_SIZE) == (CURRENT_VERSION, MIN_PAGE_SIZE)
    assert layout.IMAGE_MODES == dict(IMAGE_MODES)
    assert set(layout.METADATA) | {layout.CUSTOM} == set(TYPE_ID_HANDLER)
    made = {layout.NDARRAY: (np.dtype("int32"), (3,)), layout.TORCH_TENSOR: (__import__("torch").int32, (3,))}
    handlers = []
    for type_id, handler in TYPE_ID_HANDLER.items():
        if handler is None:
            continue
        field = handler(*made.get(type_id, ()))
        handlers.append(field)
        assert layout.METADATA[type_id] == field.metadata_type, handler.__name__
        assert pointer_subfield(field) == layout.pointer_of(type_id), handler.__name__
    type_ids = [t for t, h in TYPE_ID_HANDLER.items() if h is not None]
    assert layout.sample_dtype(type_ids) == get_metadata_type(handlers)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["int32", "int64", "float16", "float32", "uint8", "int16"]),
       st.lists(st.integers(1, 300), min_size=1, max_size=4))
def test_array_arguments_are_ndarray_fields(dtype, shape):
    from ffcv.fields import NDArrayField

    expected = NDArrayField(np.dtype(dtype), tuple(shape)).to_binary()[0]
    np.testing.assert_array_equal(layout.ndarray_arguments(np.dtype(dtype), tuple(shape)), expected)


def _jpeg(seed, side, quality=95):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side + seed % 7, 3), dtype=np.uint8)).save(
        buf, format="JPEG", quality=quality)
    return buf.getvalue()


def test_the_in_process_writer_writes_ffcvs_bytes(tmp_path):
    """JPEGs stored as they are, pixels that ffcv encodes, tokens and ids; over 2 MiB, so samples start
    again on fresh pages (ffcv's retry) and the pages' padding and the last page are compared too."""
    fields = clip_fields(8, max_resolution=128)
    rng = np.random.default_rng(0)
    samples = []
    for i in range(70):
        if i % 9 == 4:
            image = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)  # encoded to JPEG by ffcv's field
        else:
            data = _jpeg(i, 180 + i % 60)
            with Image.open(io.BytesIO(data)) as img:
                image = StoredJpeg(data, *img.size)
        samples.append((image, rng.integers(0, 49408, 8).astype(np.int32)))
    assert sum(len(s[0].data) for s in samples if isinstance(s[0], StoredJpeg)) > 1.2 * layout.MIN_PAGE_SIZE

    def make(i):
        return (samples[i][0], samples[i][1], i)

    largest = max(len(s[0].data) if isinstance(s[0], StoredJpeg) else 40 * 30 * 3 for s in samples)
    for name, in_process in (("ours.beton", True), ("ffcv.beton", False)):
        write_rows(tmp_path / name, fields, len(samples), make, WriteSummary(name), num_workers=1,
                   max_sample_bytes=largest, progress=False, in_process=in_process)
    ours, theirs = (tmp_path / "ours.beton").read_bytes(), (tmp_path / "ffcv.beton").read_bytes()
    assert len(ours) > 2 * layout.MIN_PAGE_SIZE  # more than one page of data
    assert ours == theirs
    beton = BetonFile(tmp_path / "ours.beton")
    beton.check_all()
    assert beton.num_samples == len(samples)


def test_a_passthrough_conversion_imports_neither_ffcv_nor_torch(tmp_path):
    members = []
    for k in range(6):
        members += [(f"{k:03d}.jpg", _jpeg(k, 40)), (f"{k:03d}.txt", f"picture {k}".encode())]
    write_tar(tmp_path / "shard.tar", members)
    script = (
        "import sys\n"
        "from scan_fast.data.write.from_webdataset import write_clip_from_webdataset\n"
        f"s = write_clip_from_webdataset({str(tmp_path / 'shard.tar')!r}, {str(tmp_path / 'out')!r}, "
        "samples_per_part=4, num_workers=2, progress=False)\n"
        "print(s.rows_written, sorted(m for m in ('ffcv', 'torch', 'numba', 'cv2') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[-2] == "6 []", result.stdout
