"""A data set: one .beton file, or a folder of .beton parts with a manifest.

Part folder layout (written by `scan_fast.data.write.parts`):

    FOLDER/manifest.json          what the folder holds (see below)
    FOLDER/part-00000.beton       each part a complete .beton that ffcv's own Loader opens
    FOLDER/part-00001.beton ...

`manifest.json` lists the parts in order with, for each, its file name, sample
count, byte size, fingerprint and `BetonFile.describe()` record; the fields (their
names and a digest of the field table, equal in every part); the total sample
count; and a checksum over all of it. Global id = the part's offset (the samples
of the parts before it) + the row in the part, so a part folder and a single file
with the same rows in the same order are the same data set to every schedule,
shard and loader.

Opening costs O(parts), never O(samples): the manifest is read and checked, every
part's size is compared with it (a missing or cut part is refused here, by name),
and parts are mapped only when a batch first needs them, each checked against
its manifest entry then.
"""
import os
from typing import Dict, List, Optional

import numpy as np

from .beton import BetonFile
from .beton_records import load_record
from .manifest import MANIFEST, check_listed_file, read_json, read_manifest
from .regions import DataError


class Dataset:
    """Samples 0..N-1 over one or more .beton parts (see the module docstring)."""

    def __init__(self, path, files: List[str], records: List[Optional[dict]], first: BetonFile):
        self.path = os.fspath(path)
        self.files = files
        self.records = records
        counts = np.array([int(r["num_samples"]) if r is not None else first.num_samples for r in records],
                          dtype=np.int64)
        self.offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        self.num_samples = int(self.offsets[-1])
        self.handlers = first.handlers
        self.field_names = first.field_names
        self.metadata_type = first.metadata_type
        self._parts: Dict[int, BetonFile] = {0: first}
        self.pinned = False  # a part folder's manifest pins the key/uid arrays (source_ids.check_pinned)
        self.repeated_ids: Dict[str, str] = {}  # kind -> a line naming a key or uid on two rows

    @property
    def num_parts(self) -> int:
        return len(self.files)

    def part(self, index: int) -> BetonFile:
        """Part `index`, mapped on first use and checked against its record."""
        part = self._parts.get(index)
        if part is None:
            part = BetonFile(self.files[index], self.records[index])
            if part.field_names != self.field_names or part.metadata_type != self.metadata_type:
                raise DataError(f"{part.path} holds fields {part.field_names}, the data set "
                                f"{self.path} holds {self.field_names}")
            self._parts[index] = part
        return part

    def part_of(self, ids: np.ndarray) -> np.ndarray:
        """The part holding each global id."""
        return np.searchsorted(self.offsets, ids, side="right") - 1

    def image_bounds(self) -> Dict[str, List[int]]:
        """Largest stored (height, width) of each image field over every part (from the records)."""
        bounds: Dict[str, List[int]] = {}
        for index, record in enumerate(self.records):
            if record is None:
                record = load_record(self.part(index))
            for name, (height, width) in record["image_bounds"].items():
                old = bounds.get(name, [0, 0])
                bounds[name] = [max(old[0], height), max(old[1], width)]
        return bounds

    def require(self, fields) -> "Dataset":
        missing = [f for f in fields if f not in self.field_names]
        if missing:
            raise DataError(f"{self.path} lacks field(s) {missing}; it has {self.field_names}")
        return self

    def close(self):
        for part in self._parts.values():
            part.close()
        self._parts.clear()


def open_dataset(path, required_fields=(), progress: bool = True, direct_reads: bool = False) -> Dataset:
    """A .beton file, a part folder or an in-place index of webdataset shards (shard_index.py), opened at O(1) cost per sample; DataError/FileNotFoundError
    naming the file for anything that is not a complete data set. direct_reads: an index's shards are read
    with O_DIRECT (each image costs its own 512-byte blocks from storage, not 4 KiB pages, and fills no page
    cache: for data larger than memory); a .beton's reads are the same either way."""
    path = os.fspath(path)
    if os.path.isdir(path):
        dataset = _open_folder(path, direct_reads)
    elif os.path.isfile(path):
        beton = BetonFile(path)
        beton.record = load_record(beton, progress=progress)
        dataset = Dataset(path, [path], [beton.record], beton)
    else:
        raise FileNotFoundError(f"no .beton file or part folder at {path}")
    return dataset.require(required_fields)


def _open_folder(folder: str, direct_reads: bool = False) -> Dataset:
    from .index_format import INDEX_FORMAT
    from .shard_index import open_index

    found = read_json(os.path.join(folder, MANIFEST))
    if isinstance(found, dict) and found.get("format") == INDEX_FORMAT:
        return open_index(folder, found, direct_reads)
    manifest = read_manifest(folder)
    files, records = [], []
    for record in manifest["parts"]:
        file = os.path.join(folder, record["file"])
        check_listed_file(file, record["bytes"], f"part {file}", os.path.join(folder, MANIFEST), "the manifest says",
                          "it was cut or replaced")
        files.append(file)
        records.append(record)
    first = BetonFile(files[0], records[0])
    if first.fields_digest() != manifest["fields_digest"]:
        raise DataError(f"part {files[0]} holds other fields than {os.path.join(folder, MANIFEST)} lists")
    dataset = Dataset(folder, files, records, first)
    dataset.pinned, dataset.repeated_ids = True, dict(manifest.get("repeated_ids") or {})
    return dataset
