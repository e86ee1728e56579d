"""Converting a source to a part folder (dataset.py), parts written independently.

Part p holds the valid rows among source rows [p K, (p + 1) K) (K = --samples-per-part),
so the layout does not depend on how many processes write it. Which parts this process
writes: those in --part-range i:j (all when absent) with p % W == rank under torchrun
(W processes, a gloo group on CPU). A part is written under a temporary name and renamed
when finished and checked (rows.write_rows), so a part under its final name is never
rewritten: a killed conversion, run again with the same command, writes only the parts
that are missing. `conversion.json` in the folder records what is being converted (the
source, its row counts, the options) before any part is written; a rerun must match it.
The manifest is written last, by rank 0 after a barrier, or by the job that finds every
part finished (job arrays), or by `scan-fast data manifest FOLDER`.
"""
import datetime
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
from tqdm import tqdm

from scan_fast.flags import flag
from scan_fast.outputs import partial_path, partials_swept

from ..manifest import MANIFEST, read_json, read_manifest
from .parts import clear_folder, finished_parts, part_path, part_ranges, write_manifest
from ..regions import DataError
from ..source_ids import KINDS, UID_DTYPE, check_pinned, describe_repeat, find_repeat, load_ids

CONVERSION = "conversion.json"
CONVERSION_FORMAT = "scan-fast conversion"
# A rank that finished its parts waits at the barrier for the slowest rank's parts.
BARRIER_TIMEOUT = datetime.timedelta(days=7)


class Processes:
    """This process's rank and the number of processes (torchrun's RANK / WORLD_SIZE), with a
    gloo group for the barrier and the gathers when there are several."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self._owned = False
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
                self._owned = True

    def barrier(self):
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def all_gather(self, value) -> list:
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def close(self):
        if self._owned:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._owned = False


def part_workers(num_workers: Optional[int]) -> int:
    """Writer processes of each converting process: --num-workers, else the cores shared among
    torchrun's processes on this machine."""
    if num_workers is not None:
        return num_workers
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    return max(1, (os.cpu_count() or 1) // max(1, local))


def file_identity(path) -> dict:
    """A source file as conversion.json records it: a rerun must find the same path and size."""
    path = Path(path)
    return {"path": str(path.resolve()), "bytes": path.stat().st_size}


def parse_part_range(text: Optional[str]) -> Optional[Tuple[int, int]]:
    """--part-range "i:j" -> (i, j), parts i..j-1."""
    if text is None:
        return None
    if isinstance(text, tuple):
        start, stop = text
    else:
        try:
            start, stop = (int(x) for x in str(text).split(":"))
        except ValueError:
            raise ValueError(f"--part-range must be I:J (parts I to J-1), got {text!r}") from None
    if start < 0 or stop <= start:
        raise ValueError(f"--part-range {start}:{stop} is empty or negative; give I:J with 0 <= I < J")
    return start, stop


def read_conversion(folder) -> Optional[dict]:
    path = Path(folder) / CONVERSION
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is not readable JSON: {err}") from None
    if not isinstance(record, dict) or record.get("format") != CONVERSION_FORMAT:
        raise DataError(f"{path} is not a scan-fast conversion record")
    return record


def write_json(path: Path, value: dict) -> None:
    partial = partial_path(path)
    partial.write_text(json.dumps(value, indent=1))
    os.replace(partial, path)


def _differences(old: dict, new: dict) -> List[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def check_folder(out, what: dict, overwrite: bool, part_range) -> Path:
    """Before any work: may this conversion write to folder `out`? (see the module docstring)"""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; with --samples-per-part --out is a folder of parts")
    if overwrite:
        if part_range is not None:
            raise ValueError("--overwrite cannot be combined with --part-range (jobs of one conversion would "
                             "delete each other's parts): empty the folder once before starting the jobs")
        return out
    if (out / MANIFEST).is_file():
        raise ValueError(f"--out {out} already holds a finished data set ({MANIFEST}); pass --overwrite to "
                         f"replace it")
    record = read_conversion(out) if out.is_dir() else None
    if record is None:
        if out.is_dir() and any(out.iterdir()):
            raise ValueError(f"--out {out} is a folder that already holds files; pass --overwrite to replace "
                             f"them, or give an empty or new folder")
        return out
    differ = _differences(record["what"], what)
    if differ:
        raise ValueError(f"--out {out} holds an unfinished conversion of other input or options (differs in "
                         f"{', '.join(differ)}; see {out / CONVERSION}); pass --overwrite to start over")
    return out


def open_part_job(out, what: dict, overwrite: bool, part_range) -> Tuple[Path, Processes]:
    """Before the parts of a conversion or an index: whether it may write `out` (check_folder), this
    process among torchrun's, and `out` made (emptied first by rank 0 with --overwrite)."""
    out = check_folder(out, what, overwrite, part_range)
    processes = Processes()
    try:
        if overwrite and processes.rank == 0:
            clear_folder(out, names=(CONVERSION,))
        processes.barrier()
        out.mkdir(parents=True, exist_ok=True)
    except BaseException:
        processes.close()
        raise
    return out, processes


@dataclass
class PartsSummary:
    path: str
    num_parts: int
    written_now: int
    rows_read: int = 0
    rows_written: int = 0
    skipped: int = 0
    captions_truncated: int = 0
    jpegs_kept: int = 0
    pending: int = 0
    seconds: float = 0.0  # this process's time in the conversion (after start-up)

    def __str__(self) -> str:
        line = (f"{self.path}: {self.num_parts} parts ({self.written_now} written now in {self.seconds:.1f} s), "
                f"read {self.rows_read} "
                f"rows, wrote {self.rows_written}, skipped {self.skipped}, captions truncated "
                f"{self.captions_truncated}{f', {self.jpegs_kept} JPEGs stored as they are' if self.jpegs_kept else ''} "
                f"(each part's skipped rows are in part-NNNNN.beton.summary.json)")
        if self.pending:
            line += (f"\n{self.pending} part(s) are not written yet: the manifest is written by the job that "
                     f"finishes the last part, or by `scan-fast data manifest {self.path}`")
        return line


def _summaries(folder: Path, indices) -> PartsSummary:
    total = PartsSummary(str(folder), 0, 0)
    for i in indices:
        path = Path(f"{part_path(folder, i)}.summary.json")
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        total.rows_read += int(record.get("rows_read", 0))
        total.rows_written += int(record.get("rows_written", 0))
        total.skipped += len(record.get("skipped", []))
        total.captions_truncated += int(record.get("captions_truncated", 0))
        total.jpegs_kept += int(record.get("jpegs_kept", 0))
    return total


def convert_parts(out, *, what: dict, samples_per_part: int, count_rows: Callable[[Processes, Optional[dict]], dict],
                  write_part: Callable[[Path, int, int, int], object], part_range=None, overwrite: bool = False,
                  progress: bool = True) -> PartsSummary:
    """Write `out` as a part folder (see the module docstring).

    what: the source and options (compared with conversion.json on a rerun);
    count_rows(processes, previous conversion record or None) -> {"num_rows": N, ...}: the
    source's row count (and whatever the parts need, kept in conversion.json);
    write_part(path, part, start, stop) writes source rows [start, stop) as one part.
    """
    if isinstance(samples_per_part, bool) or not isinstance(samples_per_part, int) or samples_per_part < 1:
        raise ValueError(f"--samples-per-part must be a positive integer, got {samples_per_part!r}")
    part_range = parse_part_range(part_range)
    what = {**what, "samples_per_part": samples_per_part}
    began = time.perf_counter()
    out, processes = open_part_job(out, what, overwrite, part_range)
    try:
        previous = read_conversion(out)
        counted = count_rows(processes, previous if previous is not None and previous["what"] == what else None)
        num_rows = int(counted["num_rows"])
        ranges = part_ranges(num_rows, samples_per_part)
        record = {"format": CONVERSION_FORMAT, "what": what, "num_parts": len(ranges), **counted}
        if previous is not None and previous["what"] == what and previous.get("num_rows") != num_rows:
            raise ValueError(f"{out / CONVERSION} counted {previous.get('num_rows')} source rows, the source now "
                             f"has {num_rows}: it changed since the conversion began; pass --overwrite")
        if processes.rank == 0 and previous != record:
            write_json(out / CONVERSION, record)
        start, stop = part_range or (0, len(ranges))
        if start >= len(ranges):
            raise ValueError(f"--part-range {start}:{stop} starts past the last part: the source has "
                             f"{num_rows} rows, {len(ranges)} parts of {samples_per_part}")
        stop = min(stop, len(ranges))
        mine = [p for p in range(start, stop) if p % processes.world == processes.rank]
        finished = finished_parts(out, len(ranges))
        todo = [p for p in mine if not finished[p]]
        with tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"parts (rank {processes.rank})"
                  if processes.world > 1 else "parts", unit="part", disable=None if progress else True) as bar, \
                partials_swept(out):
            for p in todo:
                target = part_path(out, p)
                summary = write_part(target, p, *ranges[p])
                if summary is not None:  # each part's rows read, written and skipped, as the single-file writers print
                    tqdm.write(str(summary), file=sys.stdout)
                bar.update(1)
        processes.barrier()
        done = finished_parts(out, len(ranges))
        pending = len(done) - sum(done)
        if processes.rank == 0 and not pending and (processes.world > 1 or part_range is None
                                                    or not (out / MANIFEST).is_file()):
            write_manifest(out, len(ranges), extra={"source": what.get("source", {}).get("kind"),
                                                    "samples_per_part": samples_per_part})
        total = _summaries(out, range(len(ranges)))
        total.num_parts, total.written_now, total.pending = len(ranges), len(todo), pending
        total.seconds = time.perf_counter() - began
        return total
    finally:
        processes.close()


@dataclass(frozen=True)
class ManifestFlags:
    """`scan-fast data manifest`'s argument."""
    folder: str = flag(None, "the part folder (--out of data clip/labelled --samples-per-part) or index", "data",
                       positional=True)


def write_folder_manifest(folder) -> dict:
    """`scan-fast data manifest FOLDER`: the manifest of a folder whose parts are all written."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no part folder at {folder}")
    record = read_conversion(folder)
    from .index_shards import is_index_conversion, write_index_manifest

    if is_index_conversion(record):
        return write_index_manifest(folder, int(record["num_parts"]), record["what"])
    if record is not None:
        num_parts = int(record["num_parts"])
        extra = {"source": record["what"].get("source", {}).get("kind"),
                 "samples_per_part": record["what"].get("samples_per_part")}
    else:
        num_parts = 0
        while part_path(folder, num_parts).is_file():
            num_parts += 1
        if num_parts == 0:
            raise DataError(f"{folder} holds no part-00000.beton and no {CONVERSION}: not a part folder")
        extra = None
    return write_manifest(folder, num_parts, extra=extra)


# --------------------------------------------------------------------------- scan-fast data check

@dataclass(frozen=True)
class CheckFlags:
    """`scan-fast data check`'s arguments (check_path's)."""
    path: str = flag(None, "a .beton file, a part folder or an index", "data", positional=True)
    num_workers: int = flag(1, "threads decoding the images", "run")
    progress: bool = flag(True, "the progress bar", "run")


def check_path(path, progress: bool = True, workers: int = 1) -> List[str]:
    """Every problem of a .beton or a part folder, one line each naming the file: the full
    per-sample check of every file, and for a folder the manifest and every part against it;
    then, when the structure is sound, every stored image decoded (image_check.py, `workers`
    threads)."""
    from ..beton import BetonFile

    path = os.fspath(path)
    problems: List[str] = []
    if os.path.isdir(path):
        from ..index_format import INDEX_FORMAT
        from ..shard_index import check_index

        found = read_json(os.path.join(path, MANIFEST))
        if isinstance(found, dict) and found.get("format") == INDEX_FORMAT:
            with tqdm(total=int(found.get("num_samples", 0)), desc="checking", unit="sample",
                      disable=None if progress else True) as bar:
                problems = check_index(path, found, progress=bar.update)
            if not problems:
                files = [os.path.join(path, part["file"]) for part in found["parts"]]
                problems += _check_unique(files, [int(part["num_samples"]) for part in found["parts"]])
            return problems or _check_decodes(path, progress, workers)
        try:
            manifest = read_manifest(path)
        except (DataError, ValueError, KeyError, TypeError) as err:
            return [str(err)]
        files, records = [], []
        for entry in manifest["parts"]:
            file = os.path.join(path, entry["file"])
            try:
                beton = BetonFile(file, entry)
                if beton.fields_digest() != manifest["fields_digest"]:
                    raise DataError(f"{file} holds other fields than {os.path.join(path, MANIFEST)} lists")
                beton.close()
            except (DataError, KeyError, TypeError, ValueError) as err:
                problems.append(str(err))
                continue
            files.append(file)
            records.append(entry)
            try:
                check_pinned(file, entry.get("source_ids"))
            except ValueError as err:
                problems.append(str(err))
    elif os.path.isfile(path):
        files, records = [path], [None]
    else:
        return [f"no .beton file or part folder at {path}"]
    total = 0
    opened = []
    for file in files:
        try:
            beton = BetonFile(file)
            opened.append(beton)
            total += beton.num_samples
        except DataError as err:
            problems.append(str(err))
    with tqdm(total=total, desc="checking", unit="sample", disable=None if progress else True) as bar:
        for beton in opened:
            try:
                beton.check_all(progress=bar.update)
            except (DataError, ValueError) as err:
                problems.append(str(err))
            for kind in KINDS:
                try:
                    load_ids(beton.path, kind, beton.num_samples)
                except ValueError as err:
                    problems.append(str(err))
            beton.close()
    if not problems:
        problems += _check_unique(files, [b.num_samples for b in opened])
    if not problems:
        problems += _check_decodes(path, progress, workers)
    return problems


def _check_unique(files: List[str], counts: List[int]) -> List[str]:
    """A key or uid on two rows of the data set, as one line naming both."""
    problems = []
    for kind in KINDS:
        arrays = [load_ids(file, kind, count) for file, count in zip(files, counts)]
        if all(a is None for a in arrays):
            continue
        arrays = [a if a is not None else np.zeros(0, UID_DTYPE if kind == "uids" else "S1") for a in arrays]
        repeat = find_repeat(arrays, kind)
        if repeat is not None:
            problems.append(describe_repeat(files, kind, repeat, arrays))
    return problems


def _check_decodes(path, progress: bool, workers: int) -> List[str]:
    from ..dataset import open_dataset
    from ..read.image_check import check_images

    try:
        dataset = open_dataset(path, progress=False)
    except (DataError, ValueError) as err:
        return [str(err)]
    try:
        with tqdm(total=dataset.num_samples, desc="decoding", unit="sample",
                  disable=None if progress else True) as bar:
            return check_images(dataset, workers=workers, progress=bar.update)
    finally:
        dataset.close()
