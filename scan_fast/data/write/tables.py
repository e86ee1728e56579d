"""Caption tables (CSV, TSV, JSONL): rows of (image path, caption[, label]) with the file and line of each.

A bad row never stops the table: it is returned with its reason (file:line and what is wrong)
and the writer skips it, or stops with that message under --strict. Only a table that cannot be
used at all (no such file, unknown format, a header without the needed columns) raises.
Text is UTF-8; a byte-order mark (as Excel writes) is dropped; a line with bytes that are not
UTF-8 is a bad row of its own.
"""
import csv
import io
import json
from pathlib import Path
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

IMAGE_COLUMNS = ("image", "image_path", "filepath", "file", "path", "filename", "img")
CAPTION_COLUMNS = ("caption", "text", "title", "txt")


class BadRow(ValueError):
    """A row that cannot be written; `kind` is the short reason counted in the summary."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class TableRow(NamedTuple):
    where: str       # "file:line"
    image: Any       # the image path as read (checked by the writer)
    caption: Any     # the caption as read: a JSONL value may be any type
    label: Any = None
    uid: Any = None  # --uid-column: the source's own id of the row (a 32-hex-digit uid)


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


def _not_utf8(text: str) -> Optional[str]:
    """The first undecodable byte of text read with errors='surrogateescape', as '0x..', or None."""
    for ch in text:
        if "\udc80" <= ch <= "\udcff":
            return f"0x{ord(ch) - 0xdc00:02x}"
    return None


def _read_delimited(table: Path, fp, delimiter: str, columns_wanted) -> Tuple[List[TableRow], list]:
    reader = csv.reader(fp, delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise ValueError(f"{table}: the table is empty (no header line)") from None
    if _not_utf8("".join(header)):
        raise ValueError(f"{table}:1: the header is not UTF-8 text")
    image_col, caption_col, label_col, uid_col = columns_wanted
    picked = [_pick_column(image_col, IMAGE_COLUMNS, header, "image", str(table)),
              _pick_column(caption_col, CAPTION_COLUMNS, header, "caption", str(table))]
    for wanted, role in ((label_col, "label"), (uid_col, "uid")):
        picked.append(None if wanted is None else _pick_column(wanted, (), header, role, str(table)))
    positions = [None if name is None else header.index(name) for name in picked]
    rows, bad = [], []
    start = reader.line_num + 1
    for record in reader:
        where = f"{table}:{start}"
        start = reader.line_num + 1
        if not record:  # a blank line
            continue
        byte = _not_utf8("".join(record))
        if byte:
            bad.append((where, BadRow("not UTF-8", f"byte {byte} in this row")))
        elif len(record) != len(header):
            hint = " (quote fields that contain the delimiter)" if len(record) > len(header) else ""
            bad.append((where, BadRow("wrong field count",
                                      f"row has {len(record)} fields, the header has {len(header)}{hint}")))
        else:
            rows.append(TableRow(where, *(None if p is None else record[p] for p in positions)))
    return rows, bad


def _read_jsonl(table: Path, fp, columns_wanted) -> Tuple[List[TableRow], list]:
    image_col, caption_col, label_col, uid_col = columns_wanted
    picked = None
    rows, bad = [], []
    for line_no, line in enumerate(fp, start=1):
        where = f"{table}:{line_no}"
        if not line.strip():
            continue
        byte = _not_utf8(line)
        if byte:
            bad.append((where, BadRow("not UTF-8", f"byte {byte} in this line")))
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError as err:
            bad.append((where, BadRow("bad JSON line", str(err))))
            continue
        if picked is None:  # columns are fixed by the first object
            picked = [_pick_column(image_col, IMAGE_COLUMNS, list(record), "image", where),
                      _pick_column(caption_col, CAPTION_COLUMNS, list(record), "caption", where)]
            for wanted, role in ((label_col, "label"), (uid_col, "uid")):
                picked.append(None if wanted is None else _pick_column(wanted, (), list(record), role, where))
        missing = [c for c in picked if c is not None and c not in record]
        if missing:
            bad.append((where, BadRow("missing column", ", ".join(missing))))
            continue
        rows.append(TableRow(where, *(None if c is None else record[c] for c in picked)))
    return rows, bad


def read_caption_table(table, image_column: Optional[str] = None, caption_column: Optional[str] = None,
                       label_column: Optional[str] = None, uid_column: Optional[str] = None
                       ) -> Tuple[List[TableRow], List[Tuple[str, BadRow]]]:
    """Parse a CSV/TSV/JSONL table -> (rows, bad): `TableRow`s and (where, BadRow) pairs.

    Columns are found by the usual names unless given; `label_column` and `uid_column` are only read
    when given.
    """
    table = Path(table)
    if not table.is_file():
        raise FileNotFoundError(f"caption table {table} does not exist"
                                + (" (it is a folder)" if table.is_dir() else ""))
    suffix = table.suffix.lower()
    if suffix not in (".csv", ".tsv", ".jsonl", ".json"):
        raise ValueError(f"caption table {table}: unknown format {suffix!r} (expected .csv, .tsv or .jsonl)")
    columns = (image_column, caption_column, label_column, uid_column)
    # utf-8-sig drops a byte-order mark; surrogateescape keeps a bad byte to its own line
    with open(table, "rb") as raw:
        fp = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
        if suffix in (".csv", ".tsv"):
            return _read_delimited(table, fp, "\t" if suffix == ".tsv" else ",", columns)
        return _read_jsonl(table, fp, columns)


def label_names(values: Sequence[Any]) -> List[str]:
    """Class names of a label column in label order: sorted, numerically when every name is an integer."""
    names = sorted({str(v).strip() for v in values})
    if all(n.lstrip("-").isdigit() for n in names):
        names.sort(key=int)
    return names
