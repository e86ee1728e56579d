"""Rows to a .beton: write_rows, and the common tail of the sources that read files.

write_rows writes samples into a temporary file, checks it whole, and renames it onto the target
only then (with the record and summary beside it), so a file under its final name is complete;
row i of the file gets id i. The sources' tail first checks every row (row_checks.py), skipping
bad ones with a reason, then writes the good ones.
"""
import os
import signal
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from scan_fast.outputs import check_output, partial_path, remove_stale_partials

from ..beton import BetonFile
from ..beton_records import save_record
from ..classes import save_class_names
from ..beton_layout import MIN_PAGE_SIZE
from .beton_writer import write_beton
from .images import stored_image
from .options import WriteOptions
from .row_checks import check_images, check_num_workers, tokenize_captions
from ..schema import StoredJpeg, clip_fields
from ..source_ids import stage_ids
from .summary import WriteSummary
from ..tokenize import CaptionTokenizer

DEFAULT_PAGE_SIZE = MIN_PAGE_SIZE  # grown to fit the largest sample
ENCODED_IN_PROCESS = 100  # write_image_rows: at most 1 row in 100 encoded here, in one process


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
               companions: Sequence[Tuple[Path, Path]] = (), in_process: bool = False) -> WriteSummary:
    """Write samples 0..num_rows-1 to `target` via a temporary file renamed into place on success:
    by ffcv's writer in `num_workers` processes, or with `in_process` by beton_writer.write_beton in
    this one (the same file as one ffcv worker writes; no ffcv import for rows that need no encoding).

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
    page_size = _page_size_for(max_sample_bytes)
    on_main_thread = _is_main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if on_main_thread else None
    try:
        if in_process:
            write_beton(partial, fields, num_rows, make_sample, describe, page_size, progress)
        else:
            from .ffcv_writer import CheckedDatasetWriter  # imports ffcv

            writer = CheckedDatasetWriter(str(partial), fields, page_size, max(1, min(num_workers, num_rows)), progress)
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


def write_image_rows(target, fields, refs, where, extras: List[dict], summary, options: WriteOptions,
                     before_write=None) -> WriteSummary:
    """Common tail of the file-based writers: check, then write each good row's image, the
    fields in its `extras` dict and id = its row in the written file. before_write(good rows)
    may stage files to keep beside the target (write_rows' companions).

    A JPEG field stores a source JPEG's bytes as they are where images.passthrough_jpeg allows,
    unless options.reencode (every image decoded and re-encoded at the field's jpeg_quality). This
    process writes the file itself (write_rows' in_process) with one writer process, or when at most
    one row in ENCODED_IN_PROCESS needs encoding: then there is little to spread over ffcv's writer
    processes, and the rows stored as they are need no ffcv import."""
    num_workers, strict, progress = check_num_workers(options.num_workers), options.strict, options.progress
    max_resolution = fields["image"].max_resolution
    passthrough = fields["image"].write_mode == "jpg" and not options.reencode
    kept_before = summary.jpegs_kept
    good, largest, jpeg_sizes = check_images(refs, where, summary, strict, num_workers, progress, max_resolution,
                                             passthrough)
    to_encode = len(good) - (summary.jpegs_kept - kept_before)
    in_process = num_workers == 1 or to_encode * ENCODED_IN_PROCESS <= len(good)
    names = list(fields)

    def make_sample(i):
        row = good[i]
        data, (width, height) = refs[row].read(), jpeg_sizes[row]
        # the check's verdict: a JPEG it kept is stored as it is, at the size its header gave then
        image = StoredJpeg(data, int(width), int(height)) if width >= 0 else stored_image(data, max_resolution)
        values = {**extras[row], "image": image, "id": i}
        return tuple(values[name] for name in names)

    companions = before_write(good) if before_write is not None and good else ()
    return write_rows(target, fields, len(good), make_sample, summary,
                      describe=lambda i: where[good[i]], num_workers=num_workers,
                      max_sample_bytes=largest, progress=progress, companions=companions, in_process=in_process)


def write_clip_rows(target, refs, captions, where, summary, context_length: int, options: WriteOptions,
                    labels: Optional[List[int]] = None, classes: Optional[List[str]] = None,
                    keys: Optional[List[str]] = None, uids: Optional[list] = None):
    """CLIP rows: each caption tokenized (a row with an unusable one skipped), then write_image_rows.

    keys, uids: the source's own ids of each row, kept beside the target for the rows written."""
    tokenizer = CaptionTokenizer(context_length)
    tokens = tokenize_captions(captions, where, tokenizer, summary, options.strict)
    keep = [i for i, t in enumerate(tokens) if t is not None]
    extras = [{"tokens": tokens[i], **({} if labels is None else {"label": labels[i]})} for i in keep]
    fields = clip_fields(context_length, with_labels=labels is not None, **options.image_field_options())

    def stage(good):
        rows = [keep[g] for g in good]
        return stage_ids(target, keys=None if keys is None else [keys[i] for i in rows],
                         uids=None if uids is None else [uids[i] for i in rows])

    summary = write_image_rows(target, fields, [refs[i] for i in keep], [where[i] for i in keep], extras,
                               summary, options, before_write=stage)
    if classes is not None:
        save_class_names(target, classes)
    return summary
