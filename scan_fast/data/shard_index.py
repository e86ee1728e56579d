"""The in-place index of webdataset shards: a data set whose images stay in the user's tar files.

`scan-fast data index --webdataset SHARDS --out IDX` (index_shards.py) writes, for shard p (in the
order given; a folder's `*.tar` sorted by name), these files in IDX:

    part-<p>.rows.npy     one record per sample (ROW_DTYPE): the image member's offset and size in the
                          shard, the image's height and width (from the JPEG header), and `side`: -1, or
                          the sample's row in the side part when its image is not stored as it is
    part-<p>.tokens.npy   the caption's tokens, int32 x context length (open_clip's BPE)
    part-<p>.keys.npy     the webdataset keys; part-<p>.uids.npy the DataComp uids (source_ids.py),
                          pinned by size and digest in the record like the rest
    part-<p>.side.beton   images that FFCV's JPEG decoder cannot read as they are (PNG, WebP, CMYK or
                          grayscale JPEG, JPEGs larger than --max-resolution), converted as `data clip`
                          converts them; absent when the shard has none
    part-<p>.json         the part's record (written last: a part with it is finished)
    manifest.json         written when every part is: the parts' records and a checksum

Sample i of part p has global id offset(p) + i (offset: the samples of the parts before), the
same ids as a `data clip` conversion of the same shards, so one data set can be read either way.

Opening costs O(parts): the manifest is checked, every shard's size is compared with it (a deleted
or cut shard is refused here, by name). A part is opened when a batch first reads it: its shard's
fingerprint (size, first and last bytes and a few blocks between) and its files' sizes are checked
then. A batch's images are read from the shards with pread (regions.py): pruned samples are never
read, and nothing is mapped.
"""
import os
from typing import Dict, List, Optional

import numpy as np
from ffcv.fields import IntField, NDArrayField, RGBImageField
from ffcv.fields.rgb_image import IMAGE_MODES
from ffcv.types import get_metadata_type

from .beton import BetonFile
from .dataset import Dataset
from .index_format import (INDEX_FIELDS, INDEX_VERSION, PART_FILES, ROW_DTYPE, file_entry, npy_data_offset,
                           shard_fingerprint)
from .manifest import MANIFEST, check_listed_file, check_manifest
from .regions import DataError, Located, open_for_reads, read_rows

def index_fields(context_length: int) -> Dict[str, object]:
    """The fields an index reads as, in the order of a `data clip` conversion's (schema.clip_fields)."""
    return dict(zip(INDEX_FIELDS, (RGBImageField(), NDArrayField(np.dtype("int32"), (context_length,)), IntField())))


class IndexPart:
    """One indexed shard: its rows table, tokens and side part, and the shard itself, read with pread."""

    def __init__(self, folder: str, record: dict, field_names: List[str], metadata_type: np.dtype,
                 context_length: int, direct_reads: bool = False):
        self.folder, self.record, self.direct_reads = folder, record, direct_reads
        self.path = os.path.join(folder, record["file"])  # the stem: messages and the key/uid arrays are named by it
        self.shard = record["shard"]
        self.num_samples = int(record["num_samples"])
        self.metadata_type = metadata_type
        self.columns = {name: f"f{i}" for i, name in enumerate(field_names)}
        self.token_bytes = 4 * context_length
        self._check_shard()
        self.rows_path = self._file("rows")
        self.rows_offset = npy_data_offset(self.rows_path, ROW_DTYPE, (self.num_samples,))
        self.tokens_path = self._file("tokens")
        self.tokens_offset = npy_data_offset(self.tokens_path, np.dtype("<i4"), (self.num_samples, context_length))
        self._fds: Dict[str, int] = {}
        self._side: Optional[BetonFile] = None

    def _check_shard(self):
        try:
            size = os.path.getsize(self.shard)
        except OSError:
            raise DataError(f"shard {self.shard} of the index {self.folder} is missing") from None
        if size != int(self.record["shard_bytes"]) or shard_fingerprint(self.shard, size) != self.record["shard_fingerprint"]:
            raise DataError(f"shard {self.shard} changed after it was indexed ({size} bytes, the index "
                            f"{self.folder} recorded {self.record['shard_bytes']} and another fingerprint): "
                            f"index it again (scan-fast data index --overwrite)")

    def _file(self, role: str) -> str:
        entry = self.record["files"][role]
        path = os.path.join(self.folder, entry["file"])
        check_listed_file(path, entry["bytes"], path, os.path.join(self.folder, MANIFEST), "the index manifest says",
                          "it was cut or replaced")
        return path

    def _fd(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is None:  # the shard's images with direct reads when asked; the small tables through the cache
            fd = self._fds[path] = open_for_reads(path, direct=self.direct_reads and path == self.shard)
        return fd

    def side(self) -> BetonFile:
        if self._side is None:
            entry = self.record["files"]["side"]
            self._side = BetonFile(self._file("side"), entry["record"])
        return self._side

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """The ROW_DTYPE records of `rows` (read with pread)."""
        return read_rows(self._fd(self.rows_path), self.rows_offset, ROW_DTYPE, rows, self.rows_path)

    def locate(self, rows: np.ndarray, fields) -> Located:
        """Where the values of `rows` lie: images in the shard (or the side part), tokens in the tokens
        table; metadata rows as a .beton's would be (JPEG mode, height, width)."""
        records = self.rows(rows)
        n = len(rows)
        metadata = np.zeros(n, self.metadata_type)
        fds = np.empty((n, len(fields)), np.int32)
        offsets = np.empty((n, len(fields)), np.uint64)
        sizes = np.empty((n, len(fields)), np.uint64)
        image, tokens = self.columns["image"], self.columns["tokens"]
        table_bytes = records.nbytes
        for k, (column, _) in enumerate(fields):
            if column == image:
                metadata[image]["mode"] = IMAGE_MODES["jpg"]
                metadata[image]["height"], metadata[image]["width"] = records["height"], records["width"]
                fds[:, k] = self._fd(self.shard)
                offsets[:, k], sizes[:, k] = records["offset"], records["size"]
                converted = np.flatnonzero(records["side"] >= 0)
                if converted.size:
                    side = self.side()
                    located = side.locate(records["side"][converted].astype(np.int64), [("f0", "data_ptr")])
                    metadata[image][converted] = located.metadata["f0"]
                    fds[converted, k], offsets[converted, k] = located.fds[:, 0], located.offsets[:, 0]
                    sizes[converted, k] = located.sizes[:, 0]
                    table_bytes += located.table_bytes
            elif column == tokens:
                fds[:, k] = self._fd(self.tokens_path)
                offsets[:, k] = self.tokens_offset + np.asarray(rows, np.uint64) * np.uint64(self.token_bytes)
                sizes[:, k] = self.token_bytes
            else:
                raise DataError(f"{self.folder}: an index has no stored field {column}")
        return Located(metadata, fds, offsets, sizes, table_bytes)

    def close(self):
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self._side is not None:
            self._side.close()
            self._side = None


class IndexDataset(Dataset):
    """Samples 0..N-1 of an in-place index (see the module docstring), read like a part folder."""

    def __init__(self, folder: str, manifest: dict, direct_reads: bool = False):
        self.path = folder
        self.manifest, self.direct_reads = manifest, direct_reads
        self.context_length = int(manifest["context_length"])
        fields = index_fields(self.context_length)
        self.handlers = fields
        self.field_names = list(fields)
        self.metadata_type = get_metadata_type(list(fields.values()))
        self.records = manifest["parts"]
        self.files = [os.path.join(folder, r["file"]) for r in self.records]
        counts = np.array([int(r["num_samples"]) for r in self.records], dtype=np.int64)
        self.offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        self.num_samples = int(self.offsets[-1])
        self.pinned = True  # the key/uid arrays are pinned in the manifest (source_ids.check_pinned)
        self.repeated_ids: Dict[str, str] = dict(manifest.get("repeated_ids") or {})
        self._parts: Dict[int, IndexPart] = {}

    def part(self, index: int) -> IndexPart:
        part = self._parts.get(index)
        if part is None:
            part = self._parts[index] = IndexPart(self.path, self.records[index], self.field_names,
                                                  self.metadata_type, self.context_length, self.direct_reads)
        return part

    def image_bounds(self) -> Dict[str, List[int]]:
        height = max(int(r["image_bounds"][0]) for r in self.records)
        width = max(int(r["image_bounds"][1]) for r in self.records)
        return {"image": [height, width]}


def read_index_manifest(folder: str, manifest: dict) -> dict:
    """An index manifest (already read as JSON), checked for version, checksum and sample counts."""
    return check_manifest(os.path.join(folder, MANIFEST), manifest, INDEX_VERSION)


def open_index(folder: str, manifest: dict, direct_reads: bool = False) -> IndexDataset:
    """An in-place index, opened at O(parts) cost: every shard must exist with its recorded size.
    direct_reads: the shards' images are read with O_DIRECT (regions.open_for_reads)."""
    manifest = read_index_manifest(folder, manifest)
    for record in manifest["parts"]:
        shard = record["shard"]
        check_listed_file(shard, record["shard_bytes"], f"shard {shard}", os.path.join(folder, MANIFEST),
                          f"the index {folder} recorded", "it was cut or changed after indexing")
    return IndexDataset(folder, manifest, direct_reads)


def check_index(folder: str, manifest: dict, progress=None) -> List[str]:
    """`scan-fast data check` of an index: every problem, one line each naming the file. The manifest;
    every shard against it (present, size, fingerprint); every part file's size and sha256; each row's
    image inside its shard (or its side part, whose own full check runs) and starting with a JPEG's
    start-of-image marker; the key and uid arrays' lengths."""
    from .source_ids import check_pinned

    try:
        manifest = read_index_manifest(folder, manifest)
    except (DataError, KeyError, TypeError, ValueError) as err:
        return [str(err)]
    dataset = IndexDataset(folder, manifest)
    problems: List[str] = []
    for p, record in enumerate(manifest["parts"]):
        try:
            part = dataset.part(p)
            for role, entry in record["files"].items():
                path = os.path.join(folder, entry["file"])
                if file_entry(path)["sha256"] != entry["sha256"]:
                    problems.append(f"{path} does not match its digest in {os.path.join(folder, MANIFEST)}: "
                                    f"it was edited or damaged")
            if "side" in record["files"]:
                part.side().check_all()
            rows = np.arange(part.num_samples)
            for start in range(0, len(rows), 1 << 16):
                chunk = part.rows(rows[start:start + (1 << 16)])
                in_tar = chunk[chunk["side"] < 0]
                beyond = np.flatnonzero(in_tar["offset"] + in_tar["size"] > np.uint64(record["shard_bytes"]))
                if beyond.size:
                    problems.append(f"{part.path}: an image lies past the end of shard {part.shard}")
                side = chunk["side"][chunk["side"] >= 0]
                if side.size and int(side.max()) >= int(record.get("converted", 0)):
                    problems.append(f"{part.path}: a row points past the side part's samples")
                heads = _jpeg_starts(part, in_tar)
                if heads.size:
                    problems.append(f"{part.path}: sample {int(dataset.offsets[p]) + start + int(heads[0])}'s image "
                                    f"in {part.shard} does not start like a JPEG: the shard changed after indexing")
                if progress is not None:
                    progress(len(chunk))
            check_pinned(part.path, record.get("source_ids"))
        except (DataError, KeyError, TypeError, ValueError, OSError) as err:
            problems.append(str(err))
    dataset.close()
    return problems


def _jpeg_starts(part: IndexPart, rows: np.ndarray) -> np.ndarray:
    """Positions in `rows` whose image does not begin with a JPEG's start-of-image marker (FF D8)."""
    n = len(rows)
    if n == 0:
        return np.zeros(0, np.int64)
    heads = np.zeros(2 * n, np.uint8)
    from .regions import read_regions

    read_regions(np.full(n, part._fd(part.shard), np.int32), rows["offset"], np.minimum(rows["size"], 2),
                 heads, np.arange(n, dtype=np.uint64) * 2,
                 lambda k: f"{part.shard} is cut short: an image ends past its end")
    return np.flatnonzero((heads[0::2] != 0xFF) | (heads[1::2] != 0xD8))
