"""Write CLIP and MoCo datasets to .beton files.

Sources: a folder of images with a CSV/TSV/JSONL table of (image path, caption[, label])
(img2dataset's layout), webdataset tar shards (jpg/png + txt), an ImageFolder
tree, or in-memory samples (the embedded datasets).

Every writer first checks all rows (the image decodes, the caption tokenizes),
skipping bad ones with a reason (or, with strict=True, stopping at the first),
then writes the good rows with ffcv's DatasetWriter into a temporary file that
is renamed onto the target only when complete. Row i of the file gets id i.
A `WriteSummary` (rows read, written, skipped and why, captions truncated) is
returned and saved as `<target>.summary.json`.
"""
import glob
import json
import os
import signal
import tarfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from ffcv.writer import MIN_PAGE_SIZE
from tqdm import tqdm

from scan_fast.outputs import check_output, partial_path, remove_stale_partials

from .beton import BetonFile, save_record
from .classes import save_class_names
from .ffcv_writer import CheckedDatasetWriter
from .images import BrokenLink, FileImage, TarImage, stored_image
from .row_checks import (check_images, check_num_workers, check_table_rows, check_webdataset_samples, label_given,
                         tokenize_captions)
from .schema import clip_fields, labelled_fields
from .source_ids import parse_uid, stage_ids
from .summary import WriteSummary
from .tables import BadRow, label_names, read_caption_table  # noqa: F401 - read_caption_table re-exported
from .tokenize import DEFAULT_CONTEXT_LENGTH, CaptionTokenizer

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
DEFAULT_PAGE_SIZE = MIN_PAGE_SIZE  # grown to fit the largest sample


# --------------------------------------------------------------------------- the write itself

class _Terminated(BaseException):
    """SIGTERM during a write: unwinds like Ctrl-C, so the temporary file and the workers go."""


def _raise_terminated(signum, frame):
    raise _Terminated()


def _page_size_for(max_sample_bytes: int) -> int:
    page = DEFAULT_PAGE_SIZE
    while page < 2 * max_sample_bytes + 4096:
        page *= 2
    return page


def write_rows(target, fields: Dict, num_rows: int, make_sample: Callable[[int], tuple],
               summary: WriteSummary, describe: Callable[[int], str] = str,
               num_workers: int = 1, max_sample_bytes: int = 0, progress: bool = True,
               companions: Sequence[Tuple[Path, Path]] = ()) -> WriteSummary:
    """Write samples 0..num_rows-1 to `target` via a temporary file renamed into place on success.

    companions: (temporary, final) files written for this target (source_ids.stage_ids), renamed
    just before it, so a target under its final name always has them; removed on failure."""
    target = check_output(target)
    if num_rows == 0:
        raise ValueError(f"nothing to write to {target}: no valid rows "
                         f"({len(summary.skipped)} skipped: {summary.skip_counts})")
    num_workers = check_num_workers(num_workers)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target)
    partial = partial_path(target)
    writer = CheckedDatasetWriter(str(partial), fields, _page_size_for(max_sample_bytes),
                                  max(1, min(num_workers, num_rows)), progress)
    on_main_thread = _is_main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if on_main_thread else None
    try:
        writer.write(num_rows, make_sample, describe, chunksize=max(1, min(256, num_rows // max(1, num_workers))))
        written = BetonFile(partial)
        written.check_all()  # the full per-sample check, once, while the file is in the page cache
        record = {**written.describe(), "file": target.name}
        written.close()
        # The record and the summary first: a part folder's other writers may find this part
        # finished (and read them) as soon as it has its final name.
        save_record(target, record)
        summary.rows_written = num_rows
        summary.save(f"{target}.summary.json")
        for staged, final in companions:  # staged None: the old target's file goes with it
            os.replace(staged, final) if staged is not None else Path(final).unlink(missing_ok=True)
        os.replace(partial, target)
    except _Terminated:
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)
        if partial.exists():
            partial.unlink()
        for staged, _ in companions:
            if staged is not None:
                Path(staged).unlink(missing_ok=True)
    return summary


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _write_image_rows(target, fields, refs, where, extras: List[dict], summary, strict,
                      num_workers, progress, extra_check=None, before_write=None) -> WriteSummary:
    """Common tail of the file-based writers: check, then write each good row's image, the
    fields in its `extras` dict and id = its row in the written file. before_write(good rows)
    may stage files to keep beside the target (write_rows' companions)."""
    num_workers = check_num_workers(num_workers)
    max_resolution = fields["image"].max_resolution
    good, largest = check_images(refs, where, summary, strict, num_workers, progress, max_resolution,
                                  extra_check)
    names = list(fields)

    def make_sample(i):
        row = good[i]
        values = {**extras[row], "image": stored_image(refs[row].read(), max_resolution), "id": i}
        return tuple(values[name] for name in names)

    companions = before_write(good) if before_write is not None and good else ()
    return write_rows(target, fields, len(good), make_sample, summary,
                      describe=lambda i: where[good[i]], num_workers=num_workers,
                      max_sample_bytes=largest, progress=progress, companions=companions)


def _write_clip_rows(target, refs, captions, where, summary, context_length, strict, num_workers,
                     progress, image_kwargs, labels: Optional[List[int]] = None,
                     classes: Optional[List[str]] = None, keys: Optional[List[str]] = None,
                     uids: Optional[list] = None):
    """keys, uids: the source's own ids of each row, kept beside the target for the rows written."""
    tokenizer = CaptionTokenizer(context_length)
    tokens = tokenize_captions(captions, where, tokenizer, summary, strict)
    keep = [i for i, t in enumerate(tokens) if t is not None]
    extras = [{"tokens": tokens[i], **({} if labels is None else {"label": labels[i]})} for i in keep]
    fields = clip_fields(context_length, with_labels=labels is not None, **image_kwargs)

    def stage(good):
        rows = [keep[g] for g in good]
        return stage_ids(target, keys=None if keys is None else [keys[i] for i in rows],
                         uids=None if uids is None else [uids[i] for i in rows])

    summary = _write_image_rows(target, fields, [refs[i] for i in keep], [where[i] for i in keep], extras,
                                summary, strict, num_workers, progress, before_write=stage)
    if classes is not None:
        save_class_names(target, classes)
    return summary


# --------------------------------------------------------------------------- CLIP from a table

def write_clip_from_table(table, target, image_root=None, image_column: Optional[str] = None,
                          caption_column: Optional[str] = None, label_column: Optional[str] = None,
                          context_length: int = DEFAULT_CONTEXT_LENGTH, image_mode: str = "jpg",
                          jpeg_quality: int = 90, max_resolution: Optional[int] = 256,
                          strict: bool = False, num_workers: Optional[int] = None,
                          progress: bool = True, overwrite: bool = True, uid_column: Optional[str] = None,
                          samples_per_part: Optional[int] = None, part_range=None):
    """CLIP .beton from a folder of images and a CSV/TSV/JSONL of (image path, caption).

    Relative image paths are resolved against `image_root` (default: the table's folder).
    With `label_column` the set is labelled too (usable for zero-shot evaluation): labels follow
    the sorted class names of that column, saved beside the target (classes.py). With
    `uid_column` each row's uid (32 hex digits) is kept beside the target (source_ids.py).
    With `samples_per_part`, `target` is a part folder (convert.py): part p holds the valid rows
    among the table's rows [p K, (p + 1) K) in file order; `part_range` "i:j" writes parts i..j-1.
    """
    image_kwargs = dict(image_mode=image_mode, jpeg_quality=jpeg_quality, max_resolution=max_resolution)
    if samples_per_part is None:
        target = check_output(target, inputs=[table], overwrite=overwrite)
    check_num_workers(num_workers)
    root = Path(image_root) if image_root is not None else Path(table).parent
    rows, bad = read_caption_table(table, image_column, caption_column, label_column, uid_column)
    classes = None
    if label_column is not None:
        classes = label_names([row.label for row in rows
                               if isinstance(row.image, str) and row.image.strip() and label_given(row)])
    columns = dict(label_column=label_column, uid_column=uid_column, root=root, classes=classes,
                   context_length=context_length, strict=strict, num_workers=num_workers, progress=progress,
                   image_kwargs=image_kwargs)
    if samples_per_part is None:
        summary = WriteSummary(path=str(target), rows_read=len(rows) + len(bad))
        return _write_table_rows(target, rows, bad, summary, **columns)
    from .convert import convert_parts, part_workers

    columns["num_workers"] = part_workers(num_workers)
    # Source rows in file order: the good and the bad rows of the table, by line.
    ordered = sorted([(_line_of(row.where), 0, i) for i, row in enumerate(rows)]
                     + [(_line_of(where), 1, i) for i, (where, _) in enumerate(bad)])

    def write_part(path, part, start, stop):
        chunk = ordered[start:stop]
        summary = WriteSummary(path=str(path), rows_read=len(chunk))
        return _write_table_rows(path, [rows[i] for _, kind, i in chunk if kind == 0],
                                 [bad[i] for _, kind, i in chunk if kind == 1], summary, **columns)

    def count_rows(processes, previous):
        return {"num_rows": len(ordered)}

    what = {"source": {"kind": "table", **_file_identity(table), "image_root": str(root.resolve()),
                       "image_column": image_column, "caption_column": caption_column,
                       "label_column": label_column, "uid_column": uid_column},
            "context_length": context_length, **image_kwargs}
    summary = convert_parts(target, what=what, samples_per_part=samples_per_part, count_rows=count_rows,
                            write_part=write_part, part_range=part_range, overwrite=overwrite, progress=progress)
    if classes is not None:
        save_class_names(str(Path(target)), classes)
    return summary


def _line_of(where: str) -> int:
    """The line of a table row from its "file:line"."""
    return int(where.rsplit(":", 1)[1])


def _file_identity(path) -> dict:
    path = Path(path)
    return {"path": str(path.resolve()), "bytes": path.stat().st_size}


def _write_table_rows(target, rows, bad, summary, *, label_column, uid_column, root, classes, context_length,
                      strict, num_workers, progress, image_kwargs) -> WriteSummary:
    """One .beton from table rows (and the table's bad rows, reported): the check of each row."""
    usable, uids = check_table_rows(rows, bad, summary, strict, label_column, uid_column)
    labels = None
    if classes is not None:
        index = {name: i for i, name in enumerate(classes)}
        labels = [index[str(row.label).strip()] for row in usable]
    return _write_clip_rows(target, [FileImage(str(root / row.image)) for row in usable],
                            [row.caption for row in usable], [f"{row.where} ({row.image})" for row in usable],
                            summary, context_length, strict, num_workers, progress, image_kwargs,
                            labels=labels, classes=classes, uids=uids if uid_column is not None else None)


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


_TAR_BLOCK = 512
_END_OF_ARCHIVE = 2 * _TAR_BLOCK  # a complete tar ends with two zero blocks


def member_key(name: str) -> Tuple[str, str]:
    """(sample key, extension) of a tar member: webdataset's convention, the name up to the first
    dot of its base name (with its folder), and the rest in lower case."""
    folder, base = os.path.split(name)
    key, _, ext = base.partition(".")
    return os.path.join(folder, key), ext.lower()


def _read_shard(shard: str):
    """(samples, problems) of one shard: samples as read_webdataset_samples; problems are
    (where, BadRow) pairs for what cannot be written as read:

    - a truncated shard (a cut download): a member whose data runs past the file's end, a header
      cut short, or a shard cut at a member boundary (no end-of-archive marker, the two zero blocks
      a complete tar ends with); the members before the cut are kept;
    - a duplicate key: a member whose key and extension an earlier member of the shard already has.
      Keys name samples, so a repeat is not written twice or silently overwritten: the first sample
      with the key is kept and each repeat is reported (one skipped row per repeated sample).
    """
    try:
        tar = tarfile.open(shard, "r:")
    except tarfile.TarError as err:
        raise ValueError(f"webdataset shard {shard} is not a readable tar file: {err}") from None
    size = os.path.getsize(shard)
    groups: Dict[str, Dict[str, tarfile.TarInfo]] = {}
    repeats: Dict[str, Dict[str, List[str]]] = {}  # key -> extension -> names of the repeated members
    problems = []
    with tar:
        try:
            for member in tar:
                if member.offset_data + member.size > size:
                    raise tarfile.ReadError(f"member {member.name} ends at byte "
                                            f"{member.offset_data + member.size}, the file has {size}")
                if not member.isfile():
                    continue
                key, ext = member_key(member.name)
                members = groups.setdefault(key, {})
                if ext in members:
                    repeats.setdefault(key, {}).setdefault(ext, []).append(member.name)
                else:
                    members[ext] = member
            # tarfile stops quietly at the end of the file or at a header cut short: look for the marker
            with open(shard, "rb") as f:
                f.seek(tar.offset)
                marker = f.read(_END_OF_ARCHIVE)
            if len(marker) < _END_OF_ARCHIVE or any(marker):
                if marker.strip(b"\0") and len(marker) >= _TAR_BLOCK:  # a whole block that is no header
                    problems.append((shard, BadRow("unreadable shard", f"no valid member header at byte "
                                                   f"{tar.offset}; the {len(groups)} samples before it are kept")))
                else:
                    what = "a member header cut short" if marker.strip(b"\0") else "no end-of-archive marker"
                    raise tarfile.ReadError(f"{what} at byte {tar.offset} (the file has {size} bytes)")
        except (tarfile.TarError, EOFError) as err:
            problems.append((shard, BadRow("truncated shard",
                                           f"{err}; the {len(groups)} samples before it are kept")))
        for key, by_ext in repeats.items():
            names = sorted(name for repeated in by_ext.values() for name in repeated)
            for _ in range(max(len(repeated) for repeated in by_ext.values())):
                problems.append((f"{shard}:{key}", BadRow(
                    "duplicate key", f"{', '.join(names)} repeat(s) the key of an earlier sample of the shard; "
                                     f"the first sample with this key is kept")))
        samples = []
        for key, members in groups.items():
            image = next((members[e] for e in ("jpg", "jpeg", "png", "webp") if e in members), None)
            caption = None
            if "txt" in members:
                caption = tar.extractfile(members["txt"]).read().decode("utf-8", "replace")
            ref = TarImage(shard, image.offset_data, image.size) if image is not None else None
            samples.append((f"{shard}:{key}", ref, caption))
    return samples, problems


def read_webdataset_samples(shards):
    """Group tar members by key (webdataset convention: name up to the first dot of the basename).

    Returns (samples, bad): samples = [(where, TarImage or None, caption or None)] with
    where = "shard:key"; bad = [(where, BadRow)] for shards cut short (where = the shard) and for
    repeated keys (where = "shard:key"; each repeated sample is one entry, the first is kept).
    """
    samples, bad = [], []
    for shard in _expand_shards(shards):
        found, problems = _read_shard(shard)
        samples += found
        bad += problems
    return samples, bad


def write_clip_from_webdataset(shards, target, context_length: int = DEFAULT_CONTEXT_LENGTH,
                               image_mode: str = "jpg", jpeg_quality: int = 90,
                               max_resolution: Optional[int] = 256, strict: bool = False,
                               num_workers: Optional[int] = None, progress: bool = True,
                               overwrite: bool = True, samples_per_part: Optional[int] = None, part_range=None):
    """CLIP .beton from webdataset tar shards holding <key>.jpg/.png + <key>.txt.

    Each sample's key, and DataComp's `uid` where its .json has one, are kept beside the target
    (source_ids.py). With `samples_per_part`, `target` is a part folder (convert.py): source row
    r is the r-th sample of the shards in order; the samples per shard are counted first (every
    shard's tar headers, shared among the processes, kept in conversion.json for reruns)."""
    paths = _expand_shards(shards)
    image_kwargs = dict(image_mode=image_mode, jpeg_quality=jpeg_quality, max_resolution=max_resolution)
    common = dict(context_length=context_length, strict=strict, num_workers=num_workers, progress=progress,
                  image_kwargs=image_kwargs)
    if samples_per_part is None:
        target = check_output(target, inputs=paths, overwrite=overwrite)
        check_num_workers(num_workers)
        samples, bad = read_webdataset_samples(paths)
        samples = _with_source_ids(paths, samples)
        summary = WriteSummary(path=str(target), rows_read=len(samples))
        return _write_webdataset_rows(target, samples, bad, summary, **common)
    from .convert import convert_parts, part_workers

    num_workers = part_workers(num_workers)
    common["num_workers"] = num_workers
    offsets: List[int] = []

    def count_rows(processes, previous):
        if previous is not None:  # a rerun: the counts of the first run (the shards' sizes are unchanged)
            counts = previous["rows_per_shard"]
        else:
            mine = list(range(processes.rank, len(paths), processes.world))
            found = dict(zip(mine, _count_samples([paths[s] for s in mine], num_workers, progress)))
            counts = [0] * len(paths)
            for share in processes.all_gather(found):
                for s, n in share.items():
                    counts[int(s)] = n
        offsets[:] = np.concatenate(([0], np.cumsum(counts, dtype=np.int64))).tolist()
        return {"num_rows": offsets[-1], "rows_per_shard": counts}

    def write_part(path, part, start, stop):
        samples, bad = [], []
        num_parts = -(-offsets[-1] // samples_per_part)
        for s, shard in enumerate(paths):
            first, last = offsets[s], offsets[s + 1]
            reports_here = min(first // samples_per_part, num_parts - 1) == part  # a cut shard's report
            if not (first < stop and last > start) and not (reports_here and first == last):
                continue
            found, problems = _read_shard(shard)
            found = found[max(0, start - first): stop - first]
            samples += _with_source_ids([shard], found)
            if reports_here:  # a cut shard and repeated keys: reported once, by the part of its first row
                bad += problems
        summary = WriteSummary(path=str(path), rows_read=len(samples))
        return _write_webdataset_rows(path, samples, bad, summary, **common)

    what = {"source": {"kind": "webdataset", "shards": [_file_identity(p) for p in paths]},
            "context_length": context_length, **image_kwargs}
    return convert_parts(target, what=what, samples_per_part=samples_per_part, count_rows=count_rows,
                         write_part=write_part, part_range=part_range, overwrite=overwrite, progress=progress)


def _shard_samples(shard: str) -> int:
    """Samples in a shard, grouped as _read_shard groups them (a pass over its tar headers)."""
    return len(_read_shard(shard)[0])


def _count_samples(shards: List[str], num_workers: int, progress: bool) -> List[int]:
    """_shard_samples of each shard, in `num_workers` forked processes (tar headers are parsed in
    Python, so threads would share one core)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    bar = dict(total=len(shards), desc="counting samples", unit="shard", disable=None if progress else True)
    if num_workers <= 1 or len(shards) <= 1:
        return [_shard_samples(shard) for shard in tqdm(shards, **bar)]
    with ProcessPoolExecutor(max_workers=min(num_workers, len(shards)),
                             mp_context=multiprocessing.get_context("fork")) as pool:
        return list(tqdm(pool.map(_shard_samples, shards, chunksize=max(1, len(shards) // (8 * num_workers))),
                         **bar))


def _shard_uids(shard: str) -> Dict[str, Tuple[int, int]]:
    """{sample key: uid} of a shard's samples whose .json holds a 32-hex-digit "uid" (DataComp)."""
    uids = {}
    try:
        with tarfile.open(shard, "r:") as tar:
            for member in tar:
                key, ext = member_key(member.name)
                if not member.isfile() or ext != "json":
                    continue
                try:
                    uid = parse_uid(json.loads(tar.extractfile(member).read()).get("uid"))
                except (ValueError, AttributeError, tarfile.TarError, EOFError):
                    uid = None
                if uid is not None:
                    uids[key] = uid
    except (tarfile.TarError, EOFError):  # a cut shard: its uids before the cut (reported by _read_shard)
        pass
    return uids


def _with_source_ids(shards: List[str], samples) -> list:
    """read_webdataset_samples' (where, ref, caption), in shard order, with each sample's key and
    uid appended (where = "shard:key")."""
    out, s, uids = [], -1, {}
    for where, ref, caption in samples:
        if s < 0 or not where.startswith(shards[s] + ":"):
            s += 1
            while not where.startswith(shards[s] + ":"):
                s += 1
            uids = _shard_uids(shards[s])
        key = where[len(shards[s]) + 1:]
        out.append((where, ref, caption, key, uids.get(key)))
    return out


def _write_webdataset_rows(target, samples, bad, summary, *, context_length, strict, num_workers, progress,
                           image_kwargs) -> WriteSummary:
    """One .beton from webdataset samples (where, ref, caption, key, uid) and cut shards (reported)."""
    usable = check_webdataset_samples(samples, bad, summary, strict)
    where_list, refs, captions, keys, uids = ([sample[c] for sample in usable] for c in range(5))
    return _write_clip_rows(target, refs, captions, where_list, summary, context_length, strict,
                            num_workers, progress, image_kwargs, keys=keys, uids=uids)


# --------------------------------------------------------------------------- labelled images from ImageFolder

def _folder_images(folder: Path) -> List[Union[FileImage, BrokenLink]]:
    """The files under folder with an image extension, sorted; a dangling link is a BrokenLink
    (Path.is_file() is False for it, which would drop it without a word)."""
    found = []
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if p.is_file():
            found.append(FileImage(str(p)))
        elif p.is_symlink() and not p.exists():
            found.append(BrokenLink(str(p)))
    return found


def write_labelled_from_image_folder(root, target, image_mode: str = "jpg", jpeg_quality: int = 90,
                                     max_resolution: Optional[int] = 256, strict: bool = False,
                                     num_workers: Optional[int] = None, progress: bool = True,
                                     overwrite: bool = True, samples_per_part: Optional[int] = None,
                                     part_range=None):
    """Labelled .beton (image, label, id) from root/<class>/<image>: MoCo's training data, or an
    evaluation set for either trainer. Labels follow sorted class names (as torchvision's
    ImageFolder), saved beside the target (classes.py). A class folder without images is an
    error, as in torchvision: keeping it would give a class no sample can have. With
    `samples_per_part`, `target` is a part folder (convert.py) over the images in that order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if samples_per_part is None:
        target = check_output(target, overwrite=overwrite)
    check_num_workers(num_workers)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"image folder {root} has no class sub-folders")
    refs, extras, where, empty = [], [], [], []
    for label, name in enumerate(classes):
        found = _folder_images(root / name)
        if not found:
            empty.append(name)
        for ref in found:
            refs.append(ref)
            extras.append({"label": label})
            where.append(ref.path)
    if empty:
        raise ValueError(f"image folder {root}: class folder(s) {empty} hold no images with extensions "
                         f"{IMAGE_EXTENSIONS}; remove them or add images")
    fields = labelled_fields(image_mode=image_mode, jpeg_quality=jpeg_quality, max_resolution=max_resolution)
    if samples_per_part is None:
        summary = WriteSummary(path=str(target), rows_read=len(refs))
        summary = _write_image_rows(target, fields, refs, where, extras, summary, strict, num_workers, progress)
        save_class_names(target, classes)
        return summary
    from .convert import convert_parts, part_workers

    num_workers = part_workers(num_workers)

    def write_part(path, part, start, stop):
        summary = WriteSummary(path=str(path), rows_read=stop - start)
        return _write_image_rows(path, fields, refs[start:stop], where[start:stop], extras[start:stop], summary,
                                 strict, num_workers, progress)

    what = {"source": {"kind": "image_folder", "path": str(root.resolve()), "images": len(refs),
                       "classes": classes},
            "image_mode": image_mode, "jpeg_quality": jpeg_quality, "max_resolution": max_resolution}
    summary = convert_parts(target, what=what, samples_per_part=samples_per_part,
                            count_rows=lambda processes, previous: {"num_rows": len(refs)},
                            write_part=write_part, part_range=part_range, overwrite=overwrite, progress=progress)
    save_class_names(str(Path(target)), classes)
    return summary


write_moco_from_image_folder = write_labelled_from_image_folder


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
