"""Writing part folders (the layout is described in dataset.py): parts first, the manifest last.

Part i is `part-<i:05d>.beton`, a complete .beton written by `rows.write_rows`
(temporary file, full per-sample check, rename, record beside it as
`part-<i>.beton.index.json`). A part that exists under its final name is finished and
is never rewritten; the manifest is written (atomically) only when every part is,
from the parts' records, so a folder with a manifest is always complete.
"""
import json
import os
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from scan_fast.outputs import partial_path

from ..manifest import MANIFEST, MANIFEST_FORMAT, MANIFEST_VERSION, manifest_checksum
from ..regions import DataError
from ..source_ids import KINDS, UID_DTYPE, describe_repeat, find_repeat, load_ids, pin_ids

PART_PATTERN = "part-{:05d}.beton"


def part_path(folder, index: int) -> Path:
    return Path(folder) / PART_PATTERN.format(index)


def part_ranges(num_rows: int, rows_per_part: int) -> List[Tuple[int, int]]:
    """Source rows [start, stop) of each part: part i takes rows [i * K, (i + 1) * K)."""
    if isinstance(rows_per_part, bool) or not isinstance(rows_per_part, int) or rows_per_part < 1:
        raise ValueError(f"--samples-per-part must be a positive integer, got {rows_per_part!r}")
    return [(start, min(start + rows_per_part, num_rows)) for start in range(0, num_rows, rows_per_part)]


def finished_parts(folder, num_parts: int) -> List[bool]:
    """Which parts exist under their final name (written, checked and renamed: never redone)."""
    return [part_path(folder, i).is_file() for i in range(num_parts)]


def write_manifest(folder, num_parts: int, extra: Optional[Dict] = None) -> dict:
    """Write FOLDER/manifest.json from parts 0..num_parts-1 (each must be finished); returns it."""
    from ..beton import BetonFile  # only where .beton parts are read
    from ..beton_records import load_record

    folder = Path(folder)
    missing = [str(part_path(folder, i)) for i, done in enumerate(finished_parts(folder, num_parts)) if not done]
    if missing:
        raise DataError(f"cannot write {folder / MANIFEST}: {len(missing)} part(s) not written yet, "
                        f"e.g. {missing[0]}")
    records, digest = [], None
    for i in range(num_parts):
        beton = BetonFile(part_path(folder, i))
        record = {**load_record(beton, progress=False), "file": part_path(folder, i).name}
        beton.close()
        source_ids = pin_ids(part_path(folder, i))
        if source_ids:  # the source's own ids of each row (source_ids.py), pinned by size and digest
            record["source_ids"] = source_ids
        if digest is None:
            digest = record["fields_digest"]
        elif record["fields_digest"] != digest:
            raise DataError(f"{part_path(folder, i)} holds other fields than {part_path(folder, 0)}")
        records.append(record)
    first = BetonFile(part_path(folder, 0))
    manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
                "num_samples": sum(int(r["num_samples"]) for r in records),
                "fields": first.field_names, "fields_digest": digest, "parts": records, **(extra or {})}
    first.close()
    repeated = repeated_source_ids(folder, records)
    if repeated:  # kept usable for training; key/uid coresets and exports refuse it (source_ids.py)
        manifest["repeated_ids"] = repeated
        for line in repeated.values():
            print(f"warning: {folder}: {line}", file=sys.stderr)
    manifest["checksum"] = manifest_checksum(manifest)
    target = folder / MANIFEST
    partial = partial_path(target)
    partial.write_text(json.dumps(manifest, indent=1))
    os.replace(partial, target)
    return manifest


def repeated_source_ids(folder, records: List[dict]) -> Dict[str, str]:
    """{kind: one line naming a repeated key or uid and both its rows} for each kind of source id
    that is not unique over the parts (source_ids.find_repeat: memory independent of N)."""
    repeated = {}
    for kind in KINDS:
        if not any(kind in r.get("source_ids", {}) for r in records):
            continue
        files = [str(Path(folder) / r["file"]) for r in records]
        arrays = [load_ids(file, kind, int(r["num_samples"])) for file, r in zip(files, records)]
        arrays = [a if a is not None else _empty(kind) for a in arrays]
        repeat = find_repeat(arrays, kind)
        if repeat is not None:
            repeated[kind] = describe_repeat(files, kind, repeat, arrays)
    return repeated


def _empty(kind: str) -> np.ndarray:
    return np.zeros(0, UID_DTYPE) if kind == "uids" else np.zeros(0, "S1")


def write_sample_parts(folder, rows_per_part: int, num_rows: int,
                       write_part: Callable[[Path, int, int], object]) -> List:
    """Write rows 0..num_rows-1 as parts of `rows_per_part` (write_part(path, start, stop) writes
    one part), skip parts already written, then write the manifest. Returns write_part's results."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder} is a file; a part folder is written to a folder")
    folder.mkdir(parents=True, exist_ok=True)
    ranges = part_ranges(num_rows, rows_per_part)
    results = []
    for i, (start, stop) in enumerate(ranges):
        if not part_path(folder, i).is_file():
            results.append(write_part(part_path(folder, i), start, stop))
    write_manifest(folder, len(ranges))
    return results


def clear_folder(folder, names: Sequence[str] = ()) -> None:
    """Remove a part folder's parts, records and manifest (an --overwrite), leaving other files."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.name == MANIFEST or path.name.startswith(("part-", ".part-")) or path.name in names:
            path.unlink()
