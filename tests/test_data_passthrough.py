"""JPEG passthrough: a source JPEG that ffcv reads as it is goes into the .beton byte for byte."""
import io

import numpy as np
import torch
from PIL import Image

from helpers import write_tar
from scan_fast.data.beton import BetonFile, find_pointers
from scan_fast.data.beton_layout import IMAGE_MODES
from scan_fast.data.write.from_image_folder import write_labelled_from_image_folder
from scan_fast.data.write.from_webdataset import write_clip_from_webdataset
from scan_fast.data.read.loaders import labelled_loader

QUIET = dict(progress=False, num_workers=1)
SIDE = 48  # the image folder's images: one size, so a centre crop at it gives back every pixel


def _pixels(seed, h, w):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    slope = rng.uniform(-3, 3, (2, 3))
    image = rng.uniform(60, 190, 3) + yy[..., None] * slope[0] + xx[..., None] * slope[1]
    return np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)


def _encoded(pixels, fmt="JPEG", mode="RGB", **save):
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, format=fmt, **save)
    return buf.getvalue()


def _stored(path):
    """(mode, width, height, bytes) of each sample's image, as written."""
    beton = BetonFile(path)
    index, rows = beton.pointer_index(), []
    for meta in beton.metadata:
        image = meta["f0"]
        k = int(find_pointers(index["ptr"], np.array([image["data_ptr"]], np.uint64))[0])
        raw = beton.data[int(image["data_ptr"]): int(image["data_ptr"]) + int(index["size"][k])].tobytes()
        rows.append((int(image["mode"]), int(image["width"]), int(image["height"]), raw))
    beton.close()
    return rows


# name -> (source bytes, stored as they are?)
def _sources():
    big = _pixels(3, 300, 200)
    return {
        "baseline": (_encoded(_pixels(1, 40, 56), quality=85), True),
        "progressive": (_encoded(_pixels(2, 64, 30), progressive=True), True),
        "too_large": (_encoded(big), False),  # 300 px > --max-resolution 256: shrunk
        "grey": (_encoded(_pixels(4, 20, 20), mode="L"), False),
        "cmyk": (_encoded(_pixels(5, 20, 20), mode="CMYK"), False),
        "png_named_jpg": (_encoded(_pixels(6, 16, 24), fmt="PNG"), False),
    }


def test_webdataset_jpegs_stored_as_they_are(tmp_path):
    sources = _sources()
    truncated = sources["baseline"][0][:len(sources["baseline"][0]) // 2]
    members = []
    for k, (name, (data, _)) in enumerate(sources.items()):
        members += [(f"{k:03d}.jpg", data), (f"{k:03d}.txt", f"a {name} picture".encode())]
    members += [("cut.jpg", truncated), ("cut.txt", b"a picture cut short")]
    write_tar(tmp_path / "shard.tar", members)

    summary = write_clip_from_webdataset(tmp_path / "shard.tar", tmp_path / "pass.beton", **QUIET)
    assert summary.jpegs_kept == 2 and "2 JPEGs stored as they are" in str(summary)
    assert [where for where, _ in summary.skipped] == [f"{tmp_path / 'shard.tar'}:cut"]
    assert summary.skipped[0][1].startswith("undecodable image")  # found by the 1/8-scale decode
    stored = _stored(tmp_path / "pass.beton")
    assert len(stored) == len(sources)
    for (name, (data, kept)), (mode, width, height, raw) in zip(sources.items(), stored):
        assert mode == IMAGE_MODES["jpg"]
        with Image.open(io.BytesIO(data)) as img:
            size = img.size
        assert (raw == data) == kept, name
        if kept:
            assert (width, height) == size
        elif name == "too_large":
            assert (width, height) == (170, 256)  # ffcv's resizer: longer side to 256
        with Image.open(io.BytesIO(raw)) as img:  # what the metadata says is what the bytes hold
            assert img.size == (width, height) and img.format == "JPEG"

    forced = write_clip_from_webdataset(tmp_path / "shard.tar", tmp_path / "reencoded.beton", reencode=True,
                                        **QUIET)
    assert forced.jpegs_kept == 0 and "stored as they are" not in str(forced)
    assert not any(raw == data for (data, _), (*_, raw) in zip(sources.values(), _stored(tmp_path / "reencoded.beton")))
    raw_mode = write_clip_from_webdataset(tmp_path / "shard.tar", tmp_path / "raw.beton", image_mode="raw", **QUIET)
    assert raw_mode.jpegs_kept == 0


def test_loader_decodes_stored_jpegs_as_pil_does(tmp_path):
    """The labelled writer keeps the folder's JPEGs; the loader gives exactly the pixels ffcv's
    decoder (libjpeg-turbo, fast IDCT) gives for the source file, and those PIL gives within the
    two decoders' rounding (measured: at most 3 levels, 1 on average; JPEG's own error here is 4.6)."""
    from ffcv.libffcv import imdecode

    root = tmp_path / "folder"
    sources = {}
    for c in range(2):
        (root / f"class{c}").mkdir(parents=True)
        for k in range(3):
            data = _encoded(_pixels(10 * c + k, SIDE, SIDE), quality=90, progressive=bool(k % 2))
            (root / f"class{c}" / f"{k}.jpg").write_bytes(data)
            sources[len(sources)] = data
    summary = write_labelled_from_image_folder(root, tmp_path / "folder.beton", **QUIET)
    assert summary.jpegs_kept == len(sources)
    assert [raw for *_, raw in _stored(tmp_path / "folder.beton")] == list(sources.values())

    loader = labelled_loader(tmp_path / "folder.beton", 4, SIDE, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                             num_workers=1)
    loader.set_epoch(0)
    seen = 0
    for batch in loader:
        images = batch.images.permute(0, 2, 3, 1).numpy() * 255  # mean 0, std 1: pixels / 255
        for k, i in enumerate(batch.ids.tolist()):
            ffcv_pixels = np.zeros((SIDE, SIDE, 3), np.uint8)
            imdecode(np.frombuffer(sources[i], np.uint8), ffcv_pixels, SIDE, SIDE, SIDE, SIDE, 0, 0, 1, 1, False, False)
            np.testing.assert_allclose(images[k], ffcv_pixels, atol=1e-3)
            pil_pixels = np.asarray(Image.open(io.BytesIO(sources[i])).convert("RGB"), dtype=np.float32)
            diff = np.abs(images[k] - pil_pixels)
            assert diff.max() <= 4 and diff.mean() < 1.5, (i, diff.max(), diff.mean())
            seen += 1
    assert seen == len(sources)
    assert torch.is_tensor(batch.images)


def test_rgb_jpegs_pass_through_and_decode_as_rgb():
    """A JPEG coded in RGB (Adobe marker, no YCbCr transform) is stored as it is: ffcv's decoder
    turns it into the source's colours, not into colours read as YCbCr."""
    from ffcv.libffcv import imdecode

    from scan_fast.data.write.images import StoredJpeg, stored_image

    source = _pixels(7, 32, 40)
    data = _encoded(source, quality=95, keep_rgb=True)
    assert b"Adobe" in data[:200]
    assert stored_image(data, 256, passthrough=True) == StoredJpeg(data, 40, 32)
    pixels = np.zeros((32, 40, 3), np.uint8)
    imdecode(np.frombuffer(data, np.uint8), pixels, 32, 40, 32, 40, 0, 0, 1, 1, False, False)
    assert np.abs(pixels.astype(int) - source).mean() < 3


def test_a_repeated_keys_uid_is_the_kept_samples(tmp_path):
    """The shard's one pass gives each sample the uid of its own .json: for a repeated key, the
    first sample's (the one kept), not the repeat's."""
    import json

    from scan_fast.data.source_ids import load_ids, uid_array

    first, repeat = "0" * 31 + "1", "f" * 32
    jpeg = _encoded(_pixels(8, 16, 16))
    write_tar(tmp_path / "dup.tar", [("a.jpg", jpeg), ("a.txt", b"first"), ("a.json", json.dumps({"uid": first}).encode()),
                                ("a.jpg", jpeg), ("a.txt", b"again"), ("a.json", json.dumps({"uid": repeat}).encode())])
    summary = write_clip_from_webdataset(tmp_path / "dup.tar", tmp_path / "dup.beton", **QUIET)
    assert summary.rows_written == 1 and summary.skip_counts == {"duplicate key": 1}
    np.testing.assert_array_equal(load_ids(tmp_path / "dup.beton", "uids", 1),
                                  uid_array([(int(first[:16], 16), int(first[16:], 16))]))


def test_the_row_check_refuses_exactly_what_the_loaders_decoder_refuses():
    """The writers' check of a JPEG stored as it is (libjpeg-turbo at 1/8 scale) against the loader's own
    decode of it (ffcv's imdecode at full size, any error or warning a failed image): intact JPEGs pass
    both, and of copies cut short or with bytes overwritten each refuses the same ones, so a stored JPEG
    does not fail at its first epoch; PIL's full decode (the check before) lets some of those through."""
    import numba
    from ffcv.libffcv import imdecode

    from scan_fast.data.write.images import check_jpeg_decodes
    from scan_fast.data.write.jpeg_header import JpegHeaderError, jpeg_info
    from scan_fast.data.write.tables import BadRow

    loader_decode = numba.njit(imdecode)
    rng = np.random.default_rng(0)
    originals = [_encoded(_pixels(s, int(rng.integers(24, 80)), int(rng.integers(24, 80))),
                          quality=int(rng.integers(50, 95)), progressive=bool(s % 2)) for s in range(12)]
    copies = list(originals)
    for data in originals:
        for _ in range(8):
            copies.append(data[:int(rng.integers(len(data) // 4, len(data) - 1))])
            spoilt = bytearray(data)
            at = int(rng.integers(len(data) // 4, len(data) - 4))
            spoilt[at:at + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
            copies.append(bytes(spoilt))

    def loader_refuses(data):
        try:
            header = jpeg_info(data)
        except JpegHeaderError:  # no size to decode at: the writers re-encode such a file (and fail)
            return True
        height, width = header.height, header.width
        out = np.zeros(height * width * 3, np.uint8)
        return loader_decode(np.frombuffer(data, np.uint8), out, height, width, height, width, 0, 0, 1, 1,
                             False, False) != 0

    def check_refuses(data):
        try:
            check_jpeg_decodes(data)
        except BadRow:
            return True
        return False

    def pil_refuses(data):
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
        except Exception:
            return True
        return False

    loader = [loader_refuses(data) for data in copies]
    check = [check_refuses(data) for data in copies]
    assert not any(check[:len(originals)]) and sum(loader) > len(copies) // 3
    assert [k for k in range(len(copies)) if loader[k] != check[k]] == []
    assert not any(check_refuses(data) for data in originals)  # a refusal leaves the next check sound
    assert any(refused and not pil_refuses(data) for data, refused in zip(copies, loader))


def test_images_read_from_many_shards_keep_few_open_and_follow_a_replaced_shard(tmp_path):
    import os

    from scan_fast.data.write.tar_shards import shard_samples

    def member_bytes(k, version):
        return f"shard {k} version {version}".encode() * (k + 1)

    shards = [tmp_path / f"{k}.tar" for k in range(12)]
    for k, shard in enumerate(shards):
        write_tar(shard, [("000.jpg", member_bytes(k, 0)), ("000.txt", b"a caption")])
    refs = [shard_samples(str(shard))[0][0][1] for shard in shards]
    open_before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        assert [ref.read() for ref in refs] == [member_bytes(k, 0) for k in range(12)]
    assert len(os.listdir("/proc/self/fd")) <= open_before + 4  # a few kept open, not one per shard

    replaced = tmp_path / "new.tar"  # the same path then names another file, as after temp + rename
    write_tar(replaced, [("000.jpg", member_bytes(11, 1)), ("000.txt", b"a caption")])
    os.replace(replaced, shards[11])
    assert refs[11].read() == member_bytes(11, 1)
