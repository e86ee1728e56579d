"""Write CLIP and MoCo datasets to .beton files.

Sources: a folder of images with a CSV/TSV/JSONL table of (image path, caption)
(img2dataset's layout), webdataset tar shards (jpg/png + txt), an ImageFolder
tree, or in-memory samples (the embedded datasets).

Every writer first checks all rows (the image decodes, the caption tokenizes),
skipping bad ones with a reason (or, with strict=True, stopping at the first),
then writes the good rows with ffcv's DatasetWriter into a temporary file that
is renamed onto the target only when complete. Row i of the file gets id i.
A `WriteSummary` (rows read, written, skipped and why, captions truncated) is
returned and saved as `<target>.summary.json`.
"""
import csv
import ctypes
import glob
import io
import json
import os
import queue
import tarfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import Process, Queue, Value
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from ffcv.memory_allocator import MemoryAllocator
from ffcv.writer import MIN_PAGE_SIZE, DatasetWriter
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from .schema import clip_fields, moco_fields
from .tokenize import DEFAULT_CONTEXT_LENGTH, CaptionTokenizer

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
IMAGE_COLUMNS = ("image", "image_path", "filepath", "file", "path", "filename", "img")
CAPTION_COLUMNS = ("caption", "text", "title", "txt")
DEFAULT_PAGE_SIZE = MIN_PAGE_SIZE  # grown to fit the largest sample


class BadRow(ValueError):
    """A row that cannot be written; `kind` is the short reason counted in the summary."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


@dataclass
class WriteSummary:
    path: str
    rows_read: int = 0
    rows_written: int = 0
    captions_truncated: int = 0
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (where, reason)

    def skip(self, where: str, err: BadRow) -> None:
        self.skipped.append((where, str(err)))

    @property
    def skip_counts(self) -> Dict[str, int]:
        return dict(Counter(reason.split(":")[0] for _, reason in self.skipped))

    def __str__(self) -> str:
        lines = [f"{self.path}: read {self.rows_read} rows, wrote {self.rows_written}, "
                 f"skipped {len(self.skipped)}, captions truncated {self.captions_truncated}"]
        lines += [f"  skipped {n} x {kind}" for kind, n in sorted(self.skip_counts.items())]
        lines += [f"    {where}: {reason}" for where, reason in self.skipped[:10]]
        if len(self.skipped) > 10:
            lines.append(f"    ... {len(self.skipped) - 10} more in the summary file")
        return "\n".join(lines)

    def save(self, path) -> None:
        payload = {**asdict(self), "skip_counts": self.skip_counts}
        Path(path).write_text(json.dumps(payload, indent=1))


# --------------------------------------------------------------------------- images

def decode_image(data: bytes) -> np.ndarray:
    """Bytes of an image file -> uint8 HxWx3 RGB; BadRow for empty or undecodable data."""
    if len(data) == 0:
        raise BadRow("zero-byte image")
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))
    except UnidentifiedImageError:
        raise BadRow("undecodable image", "not a recognised image format") from None
    except Exception as err:  # PIL raises a zoo of types for broken files
        raise BadRow("undecodable image", f"{type(err).__name__}: {err}") from None


@dataclass(frozen=True)
class FileImage:
    path: str

    def read(self) -> bytes:
        try:
            with open(self.path, "rb") as fp:
                return fp.read()
        except FileNotFoundError:
            raise BadRow("missing image file", self.path) from None
        except OSError as err:
            raise BadRow("unreadable image file", f"{self.path}: {err}") from None


@dataclass(frozen=True)
class TarImage:
    shard: str
    offset: int
    size: int

    def read(self) -> bytes:
        with open(self.shard, "rb") as fp:
            fp.seek(self.offset)
            return fp.read(self.size)


# --------------------------------------------------------------------------- the write itself

class _CheckedDatasetWriter(DatasetWriter):
    """ffcv's DatasetWriter, except that a worker that dies ends the write with its error.

    (ffcv's progress loop waits for a sample count that a dead worker never reaches.)
    """

    def __init__(self, fname, fields, page_size, num_workers, errors: Queue, progress: bool):
        super().__init__(fname, fields, page_size=page_size, num_workers=num_workers)
        self.errors = errors
        self.progress = progress

    def _write_common(self, num_samples, queue_content, work_fn, extra_worker_args):
        self.num_samples = num_samples
        self.prepare()
        work: Queue = Queue()
        for todo in queue_content:
            work.put(todo)
        for _ in range(self.num_workers):
            work.put(None)
        allocations_queue: Queue = Queue()
        done = Value(ctypes.c_uint64, 0)
        allocator = MemoryAllocator(self.fname, self.data_region_start, self.page_size)
        args = (work, self.metadata_sm, self.metadata_type, self.fields, allocator, done,
                allocations_queue, *extra_worker_args)
        workers = [Process(target=work_fn, args=args) for _ in range(self.num_workers)]
        allocations, finished = [], 0
        try:
            for w in workers:
                w.start()
            # disable=None: bars on a terminal only, so a log file does not fill with redrawn bars
            with tqdm(total=num_samples, desc="writing", disable=None if self.progress else True) as bar:
                while finished < len(workers):
                    try:
                        allocations.extend(allocations_queue.get(timeout=0.1))
                        finished += 1
                    except queue.Empty:
                        failed = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
                        if failed:
                            raise ValueError(self._worker_error(failed[0]))
                    bar.update(done.value - bar.n)
            for w in workers:
                w.join()
            self.finalize(allocations)
        finally:
            for w in workers:
                if w.is_alive():
                    w.terminate()
                    w.join()
            # Work the dead workers never took stays in the queue's pipe; without this the
            # interpreter would wait forever at exit for the queue's feeder thread to flush it.
            work.cancel_join_thread()
            self.metadata_sm.close()
            self.metadata_sm.unlink()

    def _worker_error(self, exitcode) -> str:
        try:
            return self.errors.get(timeout=1.0)
        except queue.Empty:
            return f"a writer process exited with code {exitcode} (its traceback is above)"


class _Rows:
    """Indexable view handed to ffcv's workers: sample i = make_sample(i), errors reported by row."""

    def __init__(self, n: int, make_sample: Callable[[int], tuple], describe: Callable[[int], str],
                 errors: Queue):
        self.n, self.make_sample, self.describe, self.errors = n, make_sample, describe, errors

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        try:
            return self.make_sample(i)
        except Exception as err:
            message = str(err)
            if len(message) > 2000:  # keep the report readable (and small enough for the pipe)
                message = message[:2000] + f"... ({len(message)} characters)"
            self.errors.put(f"row {i} ({self.describe(i)}): {message}")
            raise


def _page_size_for(max_sample_bytes: int) -> int:
    page = DEFAULT_PAGE_SIZE
    while page < 2 * max_sample_bytes + 4096:
        page *= 2
    return page


def write_rows(target, fields: Dict, num_rows: int, make_sample: Callable[[int], tuple],
               summary: WriteSummary, describe: Callable[[int], str] = str,
               num_workers: int = 1, max_sample_bytes: int = 0, progress: bool = True) -> WriteSummary:
    """Write samples 0..num_rows-1 to `target` via a temporary file renamed into place on success."""
    target = Path(target)
    if num_rows == 0:
        raise ValueError(f"nothing to write to {target}: no valid rows "
                         f"({len(summary.skipped)} skipped: {summary.skip_counts})")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    errors: Queue = Queue()
    writer = _CheckedDatasetWriter(str(partial), fields, _page_size_for(max_sample_bytes),
                                   max(1, min(num_workers, num_rows)), errors, progress)
    try:
        writer.from_indexed_dataset(_Rows(num_rows, make_sample, describe, errors),
                                    chunksize=max(1, min(256, num_rows // max(1, num_workers))))
        os.replace(partial, target)
    finally:
        if partial.exists():
            partial.unlink()
    summary.rows_written = num_rows
    summary.save(f"{target}.summary.json")
    return summary


def _default_workers(num_workers: Optional[int]) -> int:
    return num_workers if num_workers is not None else max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------- row checks

def _check_images(refs: Sequence, where: Sequence[str], summary: WriteSummary, strict: bool,
                  num_workers: int, progress: bool,
                  extra_check: Optional[Callable[[int], None]] = None) -> Tuple[List[int], int]:
    """Decode every image once; return (indices of good rows, largest decoded image in bytes)."""

    def check(i):
        try:
            if extra_check is not None:
                extra_check(i)
            return i, decode_image(refs[i].read()).nbytes, None
        except BadRow as err:
            return i, 0, err

    good, largest = [], 0
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        for i, nbytes, err in tqdm(pool.map(check, range(len(refs))), total=len(refs),
                                   desc="checking", disable=None if progress else True):
            if err is None:
                good.append(i)
                largest = max(largest, nbytes)
            elif strict:
                raise ValueError(f"{where[i]}: {err} (strict=True: nothing was written)")
            else:
                summary.skip(where[i], err)
    return good, largest


def _write_image_rows(target, fields, refs, where, extras: List[tuple], summary, strict,
                      num_workers, progress, extra_check=None) -> WriteSummary:
    """Common tail of the file-based writers: check, then write (image, *extras[i], id)."""
    num_workers = _default_workers(num_workers)
    good, largest = _check_images(refs, where, summary, strict, num_workers, progress, extra_check)

    def make_sample(i):  # fields: image, <extras>, id
        row = good[i]
        return (decode_image(refs[row].read()), *extras[row], i)

    return write_rows(target, fields, len(good), make_sample, summary,
                      describe=lambda i: where[good[i]], num_workers=num_workers,
                      max_sample_bytes=largest, progress=progress)


def _tokenize_captions(captions: List[Optional[str]], where: List[str], tokenizer, summary, strict):
    """Tokens per row (None for rows with an unusable caption, which are skipped)."""
    tokens = []
    for i, caption in enumerate(captions):
        try:
            if caption is None:
                raise BadRow("missing caption")
            ids, truncated = tokenizer(caption)
        except ValueError as err:
            err = err if isinstance(err, BadRow) else BadRow("empty caption", str(err))
            if strict:
                raise ValueError(f"{where[i]}: {err} (strict=True: nothing was written)") from None
            summary.skip(where[i], err)
            tokens.append(None)
            continue
        summary.captions_truncated += int(truncated)
        tokens.append(ids)
    return tokens


def _write_clip_rows(target, refs, captions, where, summary, context_length, strict, num_workers,
                     progress, image_kwargs):
    tokenizer = CaptionTokenizer(context_length)
    tokens = _tokenize_captions(captions, where, tokenizer, summary, strict)
    keep = [i for i, t in enumerate(tokens) if t is not None]
    return _write_image_rows(target, clip_fields(context_length, **image_kwargs),
                             [refs[i] for i in keep], [where[i] for i in keep],
                             [(tokens[i],) for i in keep], summary, strict, num_workers, progress)


# --------------------------------------------------------------------------- CLIP from a table

def _pick_column(wanted: Optional[str], candidates: Sequence[str], columns: Sequence[str],
                 role: str, source: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise ValueError(f"{source}: no {role} column {wanted!r}; columns are {list(columns)}")
        return wanted
    for name in candidates:
        if name in columns:
            return name
    raise ValueError(f"{source}: no {role} column (looked for {list(candidates)}); "
                     f"columns are {list(columns)}; pass the name explicitly")


def read_caption_table(table, image_column: Optional[str] = None,
                       caption_column: Optional[str] = None):
    """Parse a CSV/TSV/JSONL table -> (rows, bad) with rows = [(where, image, caption)].

    `where` is "file:line". Lines that are not JSON or lack a column go to `bad`
    as (where, BadRow); a header without the needed columns raises ValueError.
    """
    table = Path(table)
    if not table.is_file():
        raise FileNotFoundError(f"caption table {table} does not exist")
    suffix = table.suffix.lower()
    rows, bad = [], []
    with open(table, newline="", encoding="utf-8") as fp:
        if suffix in (".csv", ".tsv"):
            reader = csv.DictReader(fp, delimiter="\t" if suffix == ".tsv" else ",")
            columns = reader.fieldnames or []
            img_col = _pick_column(image_column, IMAGE_COLUMNS, columns, "image", str(table))
            cap_col = _pick_column(caption_column, CAPTION_COLUMNS, columns, "caption", str(table))
            for record in reader:
                where = f"{table}:{reader.line_num}"
                if record.get(img_col) is None or record.get(cap_col) is None:
                    bad.append((where, BadRow("missing column",
                                              f"row has {len(record) - (None in record)} fields")))
                    continue
                rows.append((where, record[img_col], record[cap_col]))
        elif suffix in (".jsonl", ".json"):
            img_col = cap_col = None
            for line_no, line in enumerate(fp, start=1):
                where = f"{table}:{line_no}"
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    if not isinstance(record, dict):
                        raise ValueError("not an object")
                except ValueError as err:
                    bad.append((where, BadRow("bad JSON line", str(err))))
                    continue
                if img_col is None:  # columns are fixed by the first object
                    img_col = _pick_column(image_column, IMAGE_COLUMNS, list(record), "image", where)
                    cap_col = _pick_column(caption_column, CAPTION_COLUMNS, list(record), "caption", where)
                missing = [c for c in (img_col, cap_col) if c not in record]
                if missing:
                    bad.append((where, BadRow("missing column", ", ".join(missing))))
                    continue
                rows.append((where, record[img_col], record[cap_col]))
        else:
            raise ValueError(f"caption table {table}: unknown format {suffix!r} "
                             f"(expected .csv, .tsv or .jsonl)")
    return rows, bad


def write_clip_from_table(table, target, image_root=None, image_column: Optional[str] = None,
                          caption_column: Optional[str] = None,
                          context_length: int = DEFAULT_CONTEXT_LENGTH, image_mode: str = "jpg",
                          jpeg_quality: int = 90, max_resolution: Optional[int] = 256,
                          strict: bool = False, num_workers: Optional[int] = None,
                          progress: bool = True) -> WriteSummary:
    """CLIP .beton from a folder of images and a CSV/TSV/JSONL of (image path, caption).

    Relative image paths are resolved against `image_root` (default: the table's folder).
    """
    root = Path(image_root) if image_root is not None else Path(table).parent
    rows, bad = read_caption_table(table, image_column, caption_column)
    summary = WriteSummary(path=str(target), rows_read=len(rows) + len(bad))
    for where, err in bad:
        if strict:
            raise ValueError(f"{where}: {err} (strict=True: nothing was written)")
        summary.skip(where, err)
    refs, captions, where_list = [], [], []
    for where, image, caption in rows:
        if not isinstance(image, str) or not image.strip():
            err = BadRow("missing image path", repr(image))
            if strict:
                raise ValueError(f"{where}: {err} (strict=True: nothing was written)")
            summary.skip(where, err)
            continue
        refs.append(FileImage(str(root / image)))
        captions.append(caption if isinstance(caption, str) else None)
        where_list.append(f"{where} ({image})")
    return _write_clip_rows(target, refs, captions, where_list, summary, context_length, strict,
                            num_workers, progress,
                            dict(image_mode=image_mode, jpeg_quality=jpeg_quality,
                                 max_resolution=max_resolution))


# --------------------------------------------------------------------------- CLIP from webdataset

def _expand_shards(shards) -> List[str]:
    if isinstance(shards, (str, os.PathLike)):
        shards = [shards]
    paths = []
    for item in shards:
        item = os.fspath(item)
        if os.path.isdir(item):
            paths += sorted(glob.glob(os.path.join(item, "*.tar")))
        elif any(ch in item for ch in "*?["):
            paths += sorted(glob.glob(item))
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise FileNotFoundError(f"webdataset shard {item} does not exist")
    if not paths:
        raise ValueError(f"no .tar shards found in {shards}")
    return paths


def read_webdataset_samples(shards):
    """Group tar members by key (webdataset convention: name up to the first dot of the basename).

    Returns [(where, TarImage or None, caption or None)], where = "shard:key".
    """
    samples = []
    for shard in _expand_shards(shards):
        try:
            tar = tarfile.open(shard, "r:")
        except tarfile.TarError as err:
            raise ValueError(f"webdataset shard {shard} is not a readable tar file: {err}") from None
        groups: Dict[str, Dict[str, tarfile.TarInfo]] = {}
        with tar:
            for member in tar:
                if not member.isfile():
                    continue
                folder, base = os.path.split(member.name)
                key, _, ext = base.partition(".")
                groups.setdefault(os.path.join(folder, key), {})[ext.lower()] = member
            for key, members in groups.items():
                image = next((members[e] for e in ("jpg", "jpeg", "png", "webp") if e in members), None)
                caption = None
                if "txt" in members:
                    caption = tar.extractfile(members["txt"]).read().decode("utf-8", "replace")
                ref = TarImage(shard, image.offset_data, image.size) if image is not None else None
                samples.append((f"{shard}:{key}", ref, caption))
    return samples


def write_clip_from_webdataset(shards, target, context_length: int = DEFAULT_CONTEXT_LENGTH,
                               image_mode: str = "jpg", jpeg_quality: int = 90,
                               max_resolution: Optional[int] = 256, strict: bool = False,
                               num_workers: Optional[int] = None, progress: bool = True) -> WriteSummary:
    """CLIP .beton from webdataset tar shards holding <key>.jpg/.png + <key>.txt."""
    samples = read_webdataset_samples(shards)
    summary = WriteSummary(path=str(target), rows_read=len(samples))
    refs, captions, where_list = [], [], []
    for where, ref, caption in samples:
        missing = "image" if ref is None else "text" if caption is None else None
        if missing:
            err = BadRow(f"no {missing} in sample")
            if strict:
                raise ValueError(f"{where}: {err} (strict=True: nothing was written)")
            summary.skip(where, err)
            continue
        refs.append(ref)
        captions.append(caption)
        where_list.append(where)
    return _write_clip_rows(target, refs, captions, where_list, summary, context_length, strict,
                            num_workers, progress,
                            dict(image_mode=image_mode, jpeg_quality=jpeg_quality,
                                 max_resolution=max_resolution))


# --------------------------------------------------------------------------- MoCo from ImageFolder

def write_moco_from_image_folder(root, target, image_mode: str = "jpg", jpeg_quality: int = 90,
                                 max_resolution: Optional[int] = 256, strict: bool = False,
                                 num_workers: Optional[int] = None, progress: bool = True) -> WriteSummary:
    """MoCo .beton from root/<class>/<image>; labels follow sorted class names
    (as torchvision's ImageFolder), saved to `<target>.classes.json`."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"image folder {root} has no class sub-folders")
    refs, labels, where = [], [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                refs.append(FileImage(str(path)))
                labels.append((label,))
                where.append(str(path))
    if not refs:
        raise ValueError(f"image folder {root} holds no images with extensions {IMAGE_EXTENSIONS}")
    summary = WriteSummary(path=str(target), rows_read=len(refs))
    summary = _write_image_rows(target, moco_fields(image_mode=image_mode, jpeg_quality=jpeg_quality,
                                                    max_resolution=max_resolution),
                                refs, where, labels, summary, strict, num_workers, progress)
    Path(f"{target}.classes.json").write_text(json.dumps(classes))
    return summary


# --------------------------------------------------------------------------- in-memory samples

def write_samples(target, fields: Dict, num_rows: int, make_sample: Callable[[int], tuple],
                  max_image_bytes: int, num_workers: int = 1, progress: bool = True,
                  summary: Optional[WriteSummary] = None) -> WriteSummary:
    """Write generated samples (already valid, in field order without the id) with id = row.

    With one worker the bytes are reproducible; several workers interleave pages.
    """
    summary = summary or WriteSummary(path=str(target), rows_read=num_rows)
    names = list(fields)
    id_pos = names.index("id")

    def with_id(i):
        sample = make_sample(i)
        return (*sample[:id_pos], i, *sample[id_pos:])

    return write_rows(target, fields, num_rows, with_id, summary, num_workers=num_workers,
                      max_sample_bytes=max_image_bytes, progress=progress)
