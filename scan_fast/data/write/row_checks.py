"""Checks of user input before anything is written: rows, captions, images and num_workers.

A bad row is skipped with a one-line reason naming it (file:line, shard:key or the image's path),
counted in the WriteSummary; with strict=True the first one stops the write instead.
"""
import os
from concurrent.futures import ThreadPoolExecutor
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from tqdm import tqdm

from .images import checked_image
from ..schema import StoredJpeg
from ..source_ids import parse_uid
from .summary import WriteSummary
from .tables import BadRow


def skip_or_stop(summary: WriteSummary, where: str, err: BadRow, strict: bool) -> None:
    if strict:
        raise ValueError(f"{where}: {err} (strict=True: nothing was written)")
    summary.skip(where, err)


def check_num_workers(num_workers: Optional[int]) -> int:
    """num_workers as given, or one per core for None; a ValueError naming --num-workers otherwise."""
    if num_workers is None:
        return max(1, os.cpu_count() or 1)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers (--num-workers) must be a positive integer, got {num_workers!r}")
    return num_workers


def label_given(row) -> bool:
    return row.label is not None and bool(str(row.label).strip())


def check_table_rows(rows, bad, summary: WriteSummary, strict: bool, label_column: Optional[str],
                     uid_column: Optional[str]) -> Tuple[list, list]:
    """(usable rows, their uids) of a table: its bad rows (tables.py) and the rows without an image
    path, a label (label_column) or a 32-hex-digit uid (uid_column) are skipped or stop the write."""
    for where, err in bad:
        skip_or_stop(summary, where, err, strict)
    usable, uids = [], []
    for row in rows:
        uid = parse_uid(row.uid) if uid_column is not None else None
        if not isinstance(row.image, str) or not row.image.strip():
            skip_or_stop(summary, row.where, BadRow("missing image path", repr(row.image)), strict)
        elif label_column is not None and not label_given(row):
            skip_or_stop(summary, row.where, BadRow("missing label", f"column {label_column!r} is empty"), strict)
        elif uid_column is not None and uid is None:
            skip_or_stop(summary, row.where, BadRow("bad uid", f"column {uid_column!r} holds {row.uid!r}, not "
                                                               f"32 hex digits"), strict)
        else:
            usable.append(row)
            uids.append(uid)
    return usable, uids


def check_webdataset_samples(samples, bad, summary: WriteSummary, strict: bool) -> list:
    """The webdataset samples (where, ref, caption[, key, uid]) that have both an image and a text and no
    bad uid (a BadRow in place of the uid: source_ids.parse_uid); the others, and the shards' problems
    in `bad` (cut shards, repeated keys), are skipped or stop the write."""
    for where, err in bad:
        skip_or_stop(summary, where, err, strict)
    usable = []
    for sample in samples:
        where, ref, caption = sample[:3]
        missing = "image" if ref is None else "text" if caption is None else None
        if missing:
            skip_or_stop(summary, where, BadRow(f"no {missing} in sample"), strict)
            continue
        if len(sample) > 4 and isinstance(sample[4], BadRow):
            skip_or_stop(summary, where, sample[4], strict)
            continue
        usable.append(sample)
    return usable


def tokenize_captions(captions: List, where: List[str], tokenizer, summary, strict):
    """Tokens per row (None for rows with an unusable caption, which are skipped)."""
    tokens = []
    for i, caption in enumerate(captions):
        try:
            if caption is None:
                raise BadRow("missing caption")
            if not isinstance(caption, str):
                raise BadRow("caption is not text", f"{type(caption).__name__} {caption!r}"[:200])
            ids, truncated = tokenizer(caption)
        except ValueError as err:
            skip_or_stop(summary, where[i], err if isinstance(err, BadRow) else BadRow("empty caption", str(err)),
                         strict)
            tokens.append(None)
            continue
        summary.captions_truncated += int(truncated)
        tokens.append(ids)
    return tokens


class CheckedImages(NamedTuple):
    """check_images' verdict: the good rows, the largest stored image in bytes, and per row the size of a
    JPEG stored as it is ((width, height); (-1, -1) for a row decoded or skipped), which the write uses
    instead of reading the header again."""
    good: List[int]
    largest: int
    jpeg_sizes: np.ndarray  # (rows, 2) int32


def check_images(refs: Sequence, where: Sequence[str], summary: WriteSummary, strict: bool,
                 num_workers: int, progress: bool, max_resolution: Optional[int],
                 passthrough: bool = False) -> CheckedImages:
    """Check every image once (images.checked_image: decoded, or for a JPEG stored as it is, its
    header read and a decode at reduced scale), counting the JPEGs stored as they are in
    summary.jpegs_kept.

    The size is taken after the --max-resolution shrink: pages sized for one huge original
    would make every page (and the file) that large.
    """

    def check(i):
        try:
            stored = checked_image(refs[i].read(), max_resolution, passthrough)
            return i, stored, None
        except BadRow as err:
            return i, None, err

    good, largest = [], 0
    jpeg_sizes = np.full((len(refs), 2), -1, np.int32)
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        # one worker: each row is checked on this thread, with no hand-off to the pool per row
        checked = map(check, range(len(refs))) if num_workers == 1 else pool.map(check, range(len(refs)))
        for i, stored, err in tqdm(checked, total=len(refs), desc="checking", disable=None if progress else True):
            if err is None:
                good.append(i)
                largest = max(largest, stored.nbytes)
                if isinstance(stored, StoredJpeg):
                    jpeg_sizes[i] = stored.width, stored.height
                    summary.jpegs_kept += 1
            else:
                skip_or_stop(summary, where[i], err, strict)
    return CheckedImages(good, largest, jpeg_sizes)
