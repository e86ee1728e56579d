"""CLIP .beton from a caption table (CSV/TSV/JSONL, read by tables.py) and a folder of images:
img2dataset's layout. Rows are checked by row_checks.py and written by write.py."""
from dataclasses import replace
from pathlib import Path
from typing import Optional

from scan_fast.outputs import check_output

from ..classes import save_class_names
from .images import FileImage
from .options import WriteOptions
from .row_checks import check_table_rows, label_given
from .summary import WriteSummary
from .tables import label_names, read_caption_table
from ..tokenize import DEFAULT_CONTEXT_LENGTH
from .rows import write_clip_rows


def write_clip_from_table(table, target, image_root=None, image_column: Optional[str] = None,
                          caption_column: Optional[str] = None, label_column: Optional[str] = None,
                          uid_column: Optional[str] = None, context_length: int = DEFAULT_CONTEXT_LENGTH,
                          options: Optional[WriteOptions] = None, **option_values):
    """CLIP .beton from a folder of images and a CSV/TSV/JSONL of (image path, caption).

    Relative image paths are resolved against `image_root` (default: the table's folder).
    With `label_column` the set is labelled too (usable for zero-shot evaluation): labels follow
    the sorted class names of that column, saved beside the target (classes.py). With
    `uid_column` each row's uid (32 hex digits) is kept beside the target (source_ids.py).
    options: a WriteOptions (or its fields as keywords). With `samples_per_part`, `target` is a
    part folder (convert.py): part p holds the valid rows among the table's rows [p K, (p + 1) K)
    in file order; `part_range` "i:j" writes parts i..j-1. A source JPEG is stored as it is where
    it can be (images.py), unless `reencode`.
    """
    options = WriteOptions.of(options, **option_values)
    if options.samples_per_part is None:
        target = check_output(target, inputs=[table], overwrite=options.overwrite)
    root = Path(image_root) if image_root is not None else Path(table).parent
    rows, bad = read_caption_table(table, image_column, caption_column, label_column, uid_column)
    classes = None
    if label_column is not None:
        classes = label_names([row.label for row in rows
                               if isinstance(row.image, str) and row.image.strip() and label_given(row)])
    columns = dict(label_column=label_column, uid_column=uid_column, root=root, classes=classes,
                   context_length=context_length, options=options)
    if options.samples_per_part is None:
        summary = WriteSummary(path=str(target), rows_read=len(rows) + len(bad))
        return _write_table_rows(target, rows, bad, summary, **columns)
    from .convert import convert_parts, file_identity, part_workers

    columns["options"] = replace(options, num_workers=part_workers(options.num_workers))
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

    what = {"source": {"kind": "table", **file_identity(table), "image_root": str(root.resolve()),
                       "image_column": image_column, "caption_column": caption_column,
                       "label_column": label_column, "uid_column": uid_column},
            "context_length": context_length, **options.image_record()}
    summary = convert_parts(target, what=what, samples_per_part=options.samples_per_part, count_rows=count_rows,
                            write_part=write_part, part_range=options.part_range, overwrite=options.overwrite,
                            progress=options.progress)
    if classes is not None:
        save_class_names(str(Path(target)), classes)
    return summary


def _line_of(where: str) -> int:
    """The line of a table row from its "file:line"."""
    return int(where.rsplit(":", 1)[1])


def _write_table_rows(target, rows, bad, summary, *, label_column, uid_column, root, classes, context_length,
                      options: WriteOptions) -> WriteSummary:
    """One .beton from table rows (and the table's bad rows, reported): the check of each row."""
    usable, uids = check_table_rows(rows, bad, summary, options.strict, label_column, uid_column)
    labels = None
    if classes is not None:
        index = {name: i for i, name in enumerate(classes)}
        labels = [index[str(row.label).strip()] for row in usable]
    return write_clip_rows(target, [FileImage(str(root / row.image)) for row in usable],
                           [row.caption for row in usable], [f"{row.where} ({row.image})" for row in usable],
                           summary, context_length, options, labels=labels, classes=classes, uids=uids if uid_column is not None else None)
