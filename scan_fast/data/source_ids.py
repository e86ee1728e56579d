"""The source's own ids of each sample, kept beside the data as arrays, and the kept set of a run.

Writers keep what identifies a sample in its source, one row per sample of the
.beton it sits beside (`<stem>` = the .beton path without `.beton`; for a part
folder, each part's own):

- `<stem>.keys.npy`: webdataset sample keys, fixed-width bytes (`S<width>`);
- `<stem>.uids.npy`: 128-bit uids (DataComp's `uid`, 32 hex digits, from a
  sample's `.json` or a table's `--uid-column`) as two uint64, high then low:
  dtype `np.dtype("u8,u8")` (fields f0, f1), as DataComp's resharder reads
  them. A sample without a uid holds (0, 0), which no coreset can select.

They are memory-mapped when read; nothing holds a per-sample Python structure.

A run's kept set (`coreset.bits.npy` in the run folder) is a bitset: packed
bits (`np.packbits(kept, bitorder="little")`: id i is bit i % 8 of byte
i // 8), N / 8 bytes; `np.flatnonzero(np.unpackbits(bits, bitorder="little"))`
gives the ids.

`--prune static --coreset FILE` reads, by content: a uid `.npy` (dtype u8,u8:
mapped to ids through the training data's uid arrays), a key list (a text file
whose first line is `# scan-fast keys`, or a bytes/str `.npy`: mapped through the
key arrays), a kept-set bitset (`*.bits.npy`), or sample ids (text, one a line, or
an integer `.npy`). The mapping sorts the file's uids or keys once and looks each
part's array up in them (searchsorted), a part at a time.
"""
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from scan_fast.outputs import partial_path

from .sorted_runs import merge_sorted_runs

UID_DTYPE = np.dtype([("f0", "<u8"), ("f1", "<u8")])  # == np.dtype("u8,u8") on little-endian machines
KINDS = ("keys", "uids")
KEYS_HEADER = "# scan-fast keys"
BITS_SUFFIX = ".bits.npy"
_CHUNK = 1 << 22
_UID_TEXT = re.compile(r"[0-9a-fA-F]{32}")


def ids_path(beton, kind: str) -> Path:
    """Where a .beton's `kind` array ("keys" or "uids") lives: `<stem>.<kind>.npy`."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    beton = os.fspath(beton)
    stem = beton[: -len(".beton")] if beton.endswith(".beton") else beton
    return Path(f"{stem}.{kind}.npy")


def parse_uid(text) -> Optional[Tuple[int, int]]:
    """(high, low) of a uid, or None when `text` is not one: the one uid rule of every source.

    A uid is a string of exactly 32 hexadecimal digits, either case, not all zero (the zero uid
    marks a sample without one). Nothing else is: no "0x", sign, spaces or underscores (which
    int(text, 16) would take), no number. Writers skip a row whose uid breaks the rule, naming it
    (a table's --uid-column, a webdataset sample's .json "uid"); a webdataset sample without a
    .json or without "uid" in it simply has no uid."""
    if not isinstance(text, str) or _UID_TEXT.fullmatch(text) is None:
        return None
    value = int(text, 16)
    if value == 0:
        return None
    return value >> 64, value & 0xFFFFFFFFFFFFFFFF


def uid_text(uid) -> str:
    return f"{int(uid['f0']):016x}{int(uid['f1']):016x}"


def uid_array(pairs: Sequence[Optional[Tuple[int, int]]]) -> np.ndarray:
    out = np.zeros(len(pairs), dtype=UID_DTYPE)
    for i, pair in enumerate(pairs):
        if pair is not None:
            out[i] = pair
    return out


def key_array(keys: Sequence[str]) -> np.ndarray:
    encoded = [k.encode("utf-8") for k in keys]
    width = max([1] + [len(k) for k in encoded])
    return np.array(encoded, dtype=f"S{width}")


def stage_ids(beton, keys: Optional[Sequence[str]] = None,
              uids: Optional[Sequence[Optional[Tuple[int, int]]]] = None) -> List[Tuple[Path, Path]]:
    """Write the arrays of a .beton about to be written under temporary names; returns the
    (temporary, final) pairs for the writer to rename just before the .beton itself, with
    (None, final) for a kind it lacks (an older file's array there is removed then)."""
    staged = []
    for kind, values, make in (("keys", keys, key_array), ("uids", uids, uid_array)):
        final = ids_path(beton, kind)
        if values is None or (kind == "uids" and all(v is None for v in values)):
            staged.append((None, final))
            continue
        partial = partial_path(final)
        with open(partial, "wb") as f:
            np.save(f, make(values), allow_pickle=False)
        staged.append((partial, final))
    return staged


def load_ids(beton, kind: str, num_samples: Optional[int] = None) -> Optional[np.ndarray]:
    """A .beton's `kind` array, memory-mapped; None when it has none. ValueError naming the
    file when it is not such an array or its length is not the file's sample count."""
    path = ids_path(beton, kind)
    if not path.is_file():
        return None
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable .npy array: {err}") from None
    good = array.ndim == 1 and (array.dtype == UID_DTYPE if kind == "uids" else array.dtype.kind == "S")
    if not good:
        raise ValueError(f"{path} holds {array.dtype} x {array.shape}, not the {kind} of a data set")
    if num_samples is not None and len(array) != num_samples:
        raise ValueError(f"{path} has {len(array)} {kind} for the {num_samples} samples of {beton}")
    return array


# --------------------------------------------------------------------------- pins and uniqueness

def file_sha256(path) -> str:
    """The sha256 of a file's bytes, read a MiB at a time (what manifests pin files by)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pin_ids(beton) -> dict:
    """{kind: {"file", "bytes", "sha256"}} of the arrays beside `beton`: what a manifest pins."""
    pins = {}
    for kind in KINDS:
        path = ids_path(beton, kind)
        if path.is_file():
            pins[kind] = {"file": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}
    return pins


def check_pinned(beton, pins: Optional[dict], kinds=KINDS, digest: bool = True) -> None:
    """ValueError naming the file when an array beside `beton` is not the one its manifest record
    pins (`pins` = the record's "source_ids"): missing, of another size or (digest=True) other
    content, or present but not pinned. `digest` reads the whole file: only where it is read anyway."""
    pins = pins or {}
    for kind in kinds:
        path, pin = ids_path(beton, kind), pins.get(kind)
        if pin is None:
            if path.is_file():
                raise ValueError(f"{path} is not listed in the manifest of {Path(beton).parent}: it was added "
                                 f"after the data set was written (remove it, or write the manifest again with "
                                 f"scan-fast data manifest)")
            continue
        if not isinstance(pin, dict):
            raise ValueError(f"the manifest of {Path(beton).parent} lists {path} without its size and digest "
                             f"(written by an older version): write it again with scan-fast data manifest")
        if not path.is_file():
            raise ValueError(f"{path}, listed in the manifest of {Path(beton).parent}, is missing")
        size = path.stat().st_size
        if size != int(pin["bytes"]):
            raise ValueError(f"{path} has {size} bytes, the manifest says {pin['bytes']}: it was cut or replaced")
        if digest and file_sha256(path) != pin["sha256"]:
            raise ValueError(f"{path} is not the file the manifest pins (its sha256 differs): it was edited or "
                             f"replaced, e.g. by another part's")


def _sortable(array: np.ndarray, kind: str, width: int) -> np.ndarray:
    """Keys as S<width>; uids as 16 big-endian bytes (byte order = numeric order)."""
    if kind == "keys":
        return array.astype(f"S{width}")
    pairs = np.empty((len(array), 2), ">u8")
    pairs[:, 0], pairs[:, 1] = array["f0"], array["f1"]
    return pairs.view("S16").reshape(-1)


def find_repeat(arrays: Sequence[np.ndarray], kind: str, chunk: int = _CHUNK) -> Optional[Tuple[int, tuple, tuple]]:
    """(count of repeated values, (part, row) of one repeated value's first copy, (part, row) of its
    second) over the `kind` arrays of every part in order (a key or uid on two rows), or None when
    every value is unique. The zero uid (no uid) is not counted. Memory about two chunks, whatever the
    total: sorted runs of `chunk` values go to a temporary folder and are merged block by block."""
    width = max([1] + [a.dtype.itemsize for a in arrays]) if kind == "keys" else 16
    record = np.dtype([("v", f"S{width}"), ("part", "<u4"), ("row", "<u8")])
    count, first = 0, None
    with tempfile.TemporaryDirectory(prefix="scan-fast-ids.") as scratch:
        runs, pending = [], []  # a run holds up to `chunk` values of one or many parts (parts may be small)

        def save_run():
            run = np.concatenate(pending)
            run = run[np.argsort(run["v"], kind="stable")]  # argsort of the field: a record sort compares all fields
            path = os.path.join(scratch, f"run{len(runs)}.npy")
            np.save(path, run)
            runs.append(np.load(path, mmap_mode="r"))
            pending.clear()

        held = 0
        for p, array in enumerate(arrays):
            for start in range(0, len(array), chunk):
                values = np.asarray(array[start:start + chunk])
                rows = np.arange(start, start + len(values), dtype=np.uint64)
                if kind == "uids":
                    given = (values["f0"] != 0) | (values["f1"] != 0)
                    values, rows = values[given], rows[given]
                if held + len(values) > chunk and pending:
                    save_run()
                    held = 0
                run = np.empty(len(values), record)
                run["v"], run["part"], run["row"] = _sortable(values, kind, width), p, rows
                pending.append(run)
                held += len(values)
        if pending:
            save_run()
        previous = None
        for block in merge_sorted_runs(runs, "v"):
            if previous is not None:
                block = np.concatenate([previous, block])
            same = np.flatnonzero(block["v"][1:] == block["v"][:-1])
            count += len(same)
            if len(same) and first is None:
                k = int(same[0])
                first = ((int(block["part"][k]), int(block["row"][k])),
                         (int(block["part"][k + 1]), int(block["row"][k + 1])))
            previous = block[-1:]
    return None if count == 0 else (count, *first)



def describe_repeat(files: Sequence, kind: str, repeat, arrays: Sequence[np.ndarray]) -> str:
    """One line for find_repeat's answer, naming both rows and their files."""
    count, (pa, ra), (pb, rb) = repeat
    value = arrays[pa][ra]
    text = uid_text(value) if kind == "uids" else bytes(value).decode("utf-8", "replace")
    what = "key" if kind == "keys" else "uid"
    return (f"{what} {text} is on row {ra} of {files[pa]} and on row {rb} of {files[pb]} "
            f"({count} repeated {kind} in all): a {what} coreset or export cannot tell these samples apart")


# --------------------------------------------------------------------------- kept sets as bits

def kept_bits(kept_set) -> np.ndarray:
    """Packed bits (little bit order) of a schedule's KeptSet, N / 8 bytes, from the engine's
    bitset words without listing the ids."""
    num_samples = kept_set.num_samples
    words = np.frombuffer(kept_set.ids.to_bytes(), dtype=np.uint8)[32:]  # header, then LE uint64 words
    bits = np.array(words[: (num_samples + 7) // 8])
    if not kept_set.members:
        np.invert(bits, out=bits)
        if num_samples % 8:
            bits[-1] &= np.uint8((1 << (num_samples % 8)) - 1)
    return bits


def save_kept_bits(path, kept_set) -> None:
    path = Path(path)
    partial = partial_path(path)
    with open(partial, "wb") as f:
        np.save(f, kept_bits(kept_set), allow_pickle=False)
    os.replace(partial, path)


def load_kept_bits(path, num_samples: int) -> np.ndarray:
    """A kept-set bitset file for a data set of `num_samples`: ValueError naming the file when it is not
    uint8 bits of exactly that many samples (N / 8 bytes rounded up, the bits past N clear)."""
    bits = np.load(path, allow_pickle=False)
    expected = (num_samples + 7) // 8
    if bits.dtype != np.uint8 or bits.ndim != 1:
        raise ValueError(f"coreset file {path} holds {bits.dtype} x {bits.shape}; a kept-set bitset is "
                         f"{expected} uint8 bytes (np.packbits(kept, bitorder='little'))")
    if len(bits) != expected:
        raise ValueError(f"coreset file {path} is a bitset of {len(bits)} bytes ({8 * len(bits)} samples); the "
                         f"training data has {num_samples} samples ({expected} bytes): it belongs to another "
                         f"data set")
    if num_samples % 8 and bits[-1] >> (num_samples % 8):
        raise ValueError(f"coreset file {path} sets bits past the last of the {num_samples} samples: it belongs "
                         f"to another data set")
    return bits


def bits_to_ids(bits: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.unpackbits(np.asarray(bits, np.uint8), bitorder="little")).astype(np.int64)


def iter_kept_by_part(bits: np.ndarray, offsets: np.ndarray) -> Iterator[Tuple[int, np.ndarray]]:
    """(part, rows of that part that are kept), one part at a time, from packed bits."""
    for p in range(len(offsets) - 1):
        start, stop = int(offsets[p]), int(offsets[p + 1])
        first, last = start // 8, (stop + 7) // 8
        unpacked = np.unpackbits(np.asarray(bits[first:last], np.uint8), bitorder="little")
        ids = np.flatnonzero(unpacked) + first * 8
        ids = ids[(ids >= start) & (ids < stop)]
        yield p, ids - start


# --------------------------------------------------------------------------- exports

def export_kept(dataset, bits: np.ndarray, fmt: str, out) -> int:
    """Write the kept samples of `dataset` (packed bits over its global ids) as `fmt`:
    "datacomp" (sorted uid .npy, u8,u8), "keys" (one a line, in id order) or "ids"."""
    out = Path(out)
    partial = partial_path(out)
    count = 0
    try:
        if fmt == "ids":
            with open(partial, "w") as f:
                f.write(f"# kept sample ids of {dataset.path}\n")
                for p, rows in iter_kept_by_part(bits, dataset.offsets):
                    np.savetxt(f, rows + int(dataset.offsets[p]), fmt="%d")
                    count += len(rows)
        elif fmt == "keys":
            with open(partial, "wb") as f:
                f.write(f"{KEYS_HEADER} of the kept samples of {dataset.path}\n".encode())
                for p, rows in iter_kept_by_part(bits, dataset.offsets):
                    keys = _part_ids(dataset, p, "keys", "keys")
                    for start in range(0, len(rows), _CHUNK):
                        chunk = keys[rows[start:start + _CHUNK]]
                        f.write(b"\n".join(chunk.tolist()) + b"\n" if len(chunk) else b"")
                    count += len(rows)
        elif fmt == "datacomp":
            found = []
            for p, rows in iter_kept_by_part(bits, dataset.offsets):
                uids = np.asarray(_part_ids(dataset, p, "uids", "uids")[rows])
                missing = np.flatnonzero((uids["f0"] == 0) & (uids["f1"] == 0))
                if missing.size:
                    raise ValueError(f"{missing.size} kept sample(s) of {dataset.files[p]} have no uid, e.g. "
                                     f"sample id {int(dataset.offsets[p]) + int(rows[missing[0]])}: the source "
                                     f"gave none (--format keys or ids instead)")
                found.append(uids)
                count += len(rows)
            uids = np.sort(np.concatenate(found) if found else np.zeros(0, UID_DTYPE))
            with open(partial, "wb") as f:
                np.save(f, uids, allow_pickle=False)
        else:
            raise ValueError(f"--format must be ids, keys or datacomp, got {fmt!r}")
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return count


def _part_ids(dataset, p: int, kind: str, what: str) -> np.ndarray:
    """Part p's `kind` array, checked against the manifest's pin (size and digest: the array is about to
    be read whole) and refused when the data set repeats one of its values."""
    repeated = getattr(dataset, "repeated_ids", {}).get(kind)
    if repeated:
        raise ValueError(f"{dataset.path}: {repeated} (found when it was written; export or select by ids)")
    if getattr(dataset, "pinned", False):
        check_pinned(dataset.files[p], (dataset.records[p] or {}).get("source_ids"), kinds=(kind,))
    array = load_ids(dataset.files[p], kind, int(dataset.offsets[p + 1] - dataset.offsets[p]))
    if array is None:
        raise ValueError(f"{dataset.files[p]} has no {what} ({ids_path(dataset.files[p], kind)} is missing): "
                         f"the data set was written without them (e.g. not from webdataset, or a table "
                         f"without --uid-column)")
    return array


# --------------------------------------------------------------------------- coreset files -> ids

def coreset_kind(path) -> str:
    """What a --coreset file holds: "uids", "keys", "bits" or "ids" (see the module docstring)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"coreset file not found: {path}")
    if path.endswith(".npy"):
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ValueError(f"coreset file {path} is not a readable .npy array: {err}") from None
        if array.dtype.names is not None:
            if array.dtype != UID_DTYPE:
                raise ValueError(f"coreset file {path} holds {array.dtype}; a uid list is dtype u8,u8")
            return "uids"
        if array.dtype.kind in "SU":
            return "keys"
        if path.endswith(BITS_SUFFIX):
            return "bits"
        return "ids"
    with open(path, "rb") as f:
        first = f.readline()
    return "keys" if first.startswith(KEYS_HEADER.encode()) else "ids"


def _read_key_list(path) -> np.ndarray:
    if path.endswith(".npy"):
        array = np.load(path, allow_pickle=False)
        return np.char.encode(array, "utf-8") if array.dtype.kind == "U" else array
    with open(path, "rb") as f:
        lines = [line.rstrip(b"\r\n") for line in f if not line.startswith(b"#")]
    lines = [line for line in lines if line]
    return np.array(lines, dtype=f"S{max([1] + [len(k) for k in lines])}")


def coreset_ids(path, data) -> Optional[np.ndarray]:
    """The sorted global ids a --coreset file selects in the data set `data` (a path or Dataset,
    opened only for uids and keys); None for an id list (StaticCoreset.from_file reads those).
    ValueError naming the file, with a count and an example, for uids or keys not in the data."""
    path = os.fspath(path)
    kind = coreset_kind(path)
    if kind == "ids":
        return None
    if isinstance(data, (str, os.PathLike)):
        from .dataset import open_dataset

        data = open_dataset(data, progress=False)
    dataset = data
    if kind == "bits":
        return bits_to_ids(load_kept_bits(path, dataset.num_samples))
    wanted = np.load(path, allow_pickle=False) if kind == "uids" else _read_key_list(path)
    if wanted.ndim != 1 or len(wanted) == 0:
        raise ValueError(f"coreset file {path} lists no {kind}")
    wanted, counts = np.unique(wanted, return_counts=True)
    if (counts > 1).any():
        twice = wanted[np.flatnonzero(counts > 1)[0]]
        example = uid_text(twice) if kind == "uids" else bytes(twice).decode("utf-8", "replace")
        raise ValueError(f"coreset file {path} lists {kind[:-1]} {example} more than once")
    if kind == "uids" and ((wanted["f0"] == 0) & (wanted["f1"] == 0)).any():
        raise ValueError(f"coreset file {path} lists the uid 0, which marks samples without a uid")
    found = np.zeros(len(wanted), dtype=bool)
    ids = []
    for p in range(dataset.num_parts):
        array = _part_ids(dataset, p, kind, kind)
        if kind == "keys" and array.dtype.itemsize > wanted.dtype.itemsize:
            wanted = wanted.astype(array.dtype)  # same order; searchsorted needs one width
        for start in range(0, len(array), _CHUNK):
            chunk = np.asarray(array[start:start + _CHUNK]).astype(wanted.dtype, copy=False)
            pos = np.minimum(np.searchsorted(wanted, chunk), len(wanted) - 1)
            hit = wanted[pos] == chunk
            found[pos[hit]] = True
            ids.append(np.flatnonzero(hit).astype(np.int64) + start + int(dataset.offsets[p]))
    unknown = np.flatnonzero(~found)
    if unknown.size:
        example = uid_text(wanted[unknown[0]]) if kind == "uids" else wanted[unknown[0]].decode("utf-8", "replace")
        raise ValueError(f"coreset file {path}: {unknown.size} of its {len(wanted)} {kind} are not in "
                         f"{dataset.path}, e.g. {example}")
    return np.concatenate(ids) if ids else np.zeros(0, np.int64)
