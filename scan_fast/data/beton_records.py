"""Records kept beside a single .beton file, written once: its `describe()` record (`<file>.index.json`) and,
for a file whose allocation table is not sorted by pointer, the table sorted out of core (`<file>.ptrs.npy`);
in the user cache when the file's folder is read-only. Both are keyed by the file's fingerprint."""
import json
import os
import tempfile
from pathlib import Path
from typing import List

import numpy as np

from scan_fast.outputs import default_file_mode

from .beton import INDEX_SUFFIX, SORTED_TABLE_SUFFIX, BetonFile, DataError
from .beton_layout import ALLOC_TABLE
from .sorted_runs import merge_sorted_runs

def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "scan-fast" / "index"


def _beside_or_cache(path: str, suffix: str, fingerprint: str) -> List[Path]:
    """Where a cached file may live: beside the data, else in the user cache (read-only data)."""
    return [Path(path + suffix), _cache_dir() / f"{fingerprint}{suffix}"]


def _write_atomically(target: Path, write) -> bool:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    except OSError:
        return False
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(partial, default_file_mode())
        os.replace(partial, target)
        return True
    except OSError:
        if os.path.exists(partial):
            os.unlink(partial)
        return False


def save_record(path, record: dict) -> None:
    """Keep `describe()`'s record beside a single file (or in the user cache if its folder is read-only)."""
    payload = json.dumps(record, indent=1).encode()
    for target in _beside_or_cache(os.fspath(path), INDEX_SUFFIX, record["fingerprint"]):
        if _write_atomically(target, lambda f: f.write(payload)):
            return


def load_record(beton: BetonFile, progress: bool = True) -> dict:
    """The record of a single file: read from beside it, or built once (one chunked pass) and saved."""
    fingerprint = beton.fingerprint()
    for candidate in _beside_or_cache(beton.path, INDEX_SUFFIX, fingerprint):
        try:
            record = json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
        if record.get("fingerprint") == fingerprint and int(record.get("bytes", -1)) == beton.size:
            return record
    if progress:
        print(f"indexing {beton.path} once ({beton.num_samples} samples); the index is kept beside it",
              flush=True)
    record = beton.describe()
    if not record["ptr_sorted"]:
        _build_sorted_table(beton, fingerprint)
    save_record(beton.path, record)
    return record


def sorted_table_file(beton: BetonFile) -> Path:
    fingerprint = beton.fingerprint()
    for candidate in _beside_or_cache(beton.path, SORTED_TABLE_SUFFIX, fingerprint):
        if candidate.is_file():
            try:
                table = np.load(candidate, mmap_mode="r")
            except (OSError, ValueError):
                continue
            if table.dtype == ALLOC_TABLE and len(table) == beton.num_allocations:
                return candidate
    return _build_sorted_table(beton, fingerprint)


def _build_sorted_table(beton: BetonFile, fingerprint: str) -> Path:
    """Sort the allocation table by pointer out of core: sort chunks into runs, then merge the runs
    block by block. Memory: about two chunks, whatever the file's size."""
    table = beton.table
    for target in _beside_or_cache(beton.path, SORTED_TABLE_SUFFIX, fingerprint):
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent, prefix=".sorting.") as scratch:
                runs = []
                for k, (_, part) in enumerate(beton.chunks(table)):
                    run = os.path.join(scratch, f"run{k}.npy")
                    np.save(run, np.sort(np.array(part), order="ptr", kind="stable"))
                    runs.append(np.load(run, mmap_mode="r"))
                fd, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
                with os.fdopen(fd, "wb") as out:
                    np.lib.format.write_array_header_1_0(
                        out, {"descr": np.lib.format.dtype_to_descr(ALLOC_TABLE), "fortran_order": False,
                              "shape": (len(table),)})
                    for block in merge_sorted_runs(runs, "ptr"):
                        out.write(block.tobytes())
                os.chmod(partial, default_file_mode())
                os.replace(partial, target)
            return target
        except OSError:
            continue
    raise DataError(f"cannot write the sorted allocation table of {beton.path} beside it or in {_cache_dir()}")
