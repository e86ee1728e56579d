"""`scan-fast data index`: index webdataset shards in place instead of converting them.

Each shard becomes one part of the index (the files are described in shard_index.py). A shard's
tar headers are read as conversion reads them (from_webdataset.py: the same samples, keys, uids and
skipped rows, so the ids are a conversion's), captions are tokenized, and of each JPEG only its
header is read (jpeg_header.py): no image is decoded, re-encoded or copied. The few images FFCV's
decoder cannot read as they are go to a small side .beton of the part, written as `data clip`
writes images.

Like conversion (convert.py), parts are written independently and each is finished when its record
`part-<p>.json` has its final name (every file is written under a temporary name and renamed), so a
killed run, run again, indexes only the missing shards; `--part-range I:J` and torchrun split the
shards among processes (shard p goes to rank p % WORLD_SIZE); the manifest is written when every
part is finished.
"""
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from scan_fast.outputs import partial_path, partials_swept

from .convert import (CONVERSION, CONVERSION_FORMAT, file_identity, open_part_job, parse_part_range, read_conversion,
                      write_json)
from .images import stored_image
from ..index_format import (INDEX_FIELDS, INDEX_FORMAT, INDEX_VERSION, PART_FILES, PART_STEM, RECORD_SUFFIX, ROW_DTYPE,
                           file_entry, read_part_record, shard_fingerprint)
from .jpeg_header import JpegHeaderError, jpeg_info_at, reencode_reason
from .options import IndexOptions
from ..manifest import MANIFEST, manifest_checksum
from .parts import repeated_source_ids
from ..regions import DataError
from .row_checks import check_images, check_webdataset_samples, tokenize_captions
from ..source_ids import pin_ids, stage_ids
from .summary import WriteSummary
from .tar_shards import expand_shards, shard_samples
from ..tokenize import CaptionTokenizer

SOURCE_KIND = "webdataset index"


@dataclass
class IndexSummary:
    path: str
    num_parts: int
    written_now: int = 0
    rows_read: int = 0
    rows_written: int = 0
    converted: int = 0  # samples whose image is in a side part
    skipped: int = 0
    captions_truncated: int = 0
    pending: int = 0
    seconds: float = 0.0  # this process's time in the index (after start-up)

    def __str__(self) -> str:
        share = 100.0 * self.converted / max(1, self.rows_written)
        line = (f"{self.path}: {self.num_parts} shards indexed ({self.written_now} written now in {self.seconds:.1f} s), "
                f"read {self.rows_read} samples, indexed {self.rows_written} ({self.converted} = {share:.2f}% with "
                f"an image converted into a side part), skipped {self.skipped}, captions truncated "
                f"{self.captions_truncated} (each shard's skipped rows are in part-NNNNN.summary.json)")
        if self.pending:
            line += (f"\n{self.pending} shard(s) are not indexed yet: the manifest is written by the job that "
                     f"finishes the last one, or by `scan-fast data manifest {self.path}`")
        return line


def part_stem(folder, p: int) -> Path:
    return Path(folder) / PART_STEM.format(p)


def part_record_path(folder, p: int) -> Path:
    return Path(f"{part_stem(folder, p)}{RECORD_SUFFIX}")


def index_webdataset(shards, out, options: Optional[IndexOptions] = None, **option_values) -> IndexSummary:
    """Index webdataset shards (tar files, a folder or glob of them) into the folder `out`;
    options: an IndexOptions (or its fields as keywords), checked before any work."""
    options = IndexOptions.of(options, **option_values)
    paths = expand_shards(shards)
    context_length, max_resolution, jpeg_quality = options.context_length, options.max_resolution, options.jpeg_quality
    CaptionTokenizer(context_length)
    part_range = parse_part_range(options.part_range)
    what = {"source": {"kind": SOURCE_KIND, "shards": [file_identity(p) for p in paths]},
            "context_length": context_length, "max_resolution": max_resolution, "jpeg_quality": jpeg_quality}
    began = time.perf_counter()
    out, processes = open_part_job(out, what, options.overwrite, part_range)
    try:
        record = {"format": CONVERSION_FORMAT, "what": what, "num_parts": len(paths)}
        if processes.rank == 0 and read_conversion(out) != record:
            write_json(out / CONVERSION, record)
        start, stop = part_range or (0, len(paths))
        if start >= len(paths):
            raise ValueError(f"--part-range {start}:{stop} starts past the last shard ({len(paths)} shards)")
        mine = [p for p in range(start, min(stop, len(paths))) if p % processes.world == processes.rank]
        todo = [p for p in mine if not part_record_path(out, p).is_file()]
        shard_options = dict(context_length=context_length, max_resolution=max_resolution,
                             jpeg_quality=jpeg_quality, strict=options.strict)
        with tqdm(total=len(mine), initial=len(mine) - len(todo), unit="shard",
                  desc=f"indexing (rank {processes.rank})" if processes.world > 1 else "indexing",
                  disable=None if options.progress else True) as bar, partials_swept(out):
            for p in todo:
                summary = index_shard(paths[p], out, p, **shard_options)
                if summary.skipped:  # as the writers print each part's skipped rows
                    tqdm.write(str(summary), file=sys.stdout)
                bar.update(1)
        processes.barrier()
        finished = [part_record_path(out, p).is_file() for p in range(len(paths))]
        pending = finished.count(False)
        if processes.rank == 0 and not pending and (processes.world > 1 or part_range is None
                                                    or not (out / MANIFEST).is_file()):
            write_index_manifest(out, len(paths), what)
        total = _totals(out, len(paths))
        total.written_now, total.pending, total.seconds = len(todo), pending, time.perf_counter() - began
        return total
    finally:
        processes.close()


def index_shard(shard: str, folder, p: int, *, context_length: int, max_resolution: Optional[int],
                jpeg_quality: int, strict: bool) -> WriteSummary:
    """Write part p of the index in `folder` from `shard` (see the module docstring); called inside
    `partials_swept(folder)`, which removed killed writers' temporary files."""
    stem = part_stem(folder, p)
    files = {role: Path(f"{stem}{suffix}") for role, suffix in PART_FILES.items()}
    record_path = part_record_path(folder, p)
    samples, problems = shard_samples(shard)  # (where, TarImage, caption, key, uid)
    summary = WriteSummary(path=str(stem), rows_read=len(samples))
    usable = check_webdataset_samples(samples, problems, summary, strict)
    tokens = tokenize_captions([s[2] for s in usable], [s[0] for s in usable], CaptionTokenizer(context_length),
                               summary, strict)
    usable = [(sample, t) for sample, t in zip(usable, tokens) if t is not None]
    headers = _jpeg_headers(shard, [sample[1] for sample, _ in usable], max_resolution)
    to_convert = [i for i, h in enumerate(headers) if h is None]
    refs = [usable[i][0][1] for i in to_convert]
    where = [usable[i][0][0] for i in to_convert]
    good, largest, _ = check_images(refs, where, summary, strict, 1, False, max_resolution)
    side_row = {to_convert[g]: row for row, g in enumerate(good)}
    converting = set(to_convert)
    rows = [i for i in range(len(usable)) if i not in converting or i in side_row]

    table = np.zeros(len(rows), ROW_DTYPE)
    for r, i in enumerate(rows):
        ref, header = usable[i][0][1], headers[i]
        table[r] = (0, 0, 0, 0, side_row[i]) if i in side_row else (ref.offset, ref.size, header.height,
                                                                      header.width, -1)
    side_record = None
    if good:
        from ..beton import BetonFile  # imports ffcv: only for a shard with images to convert

        side_record = _write_side(files["side"], [refs[g] for g in good], [where[g] for g in good], largest,
                                  max_resolution, jpeg_quality)
        converted = np.flatnonzero(table["side"] >= 0)
        side = BetonFile(files["side"], side_record)
        image = side.metadata["f0"]
        table["height"][converted] = image["height"][table["side"][converted]]
        table["width"][converted] = image["width"][table["side"][converted]]
        side.close()
    token_table = np.stack([usable[i][1] for i in rows]) if rows else np.zeros((0, context_length), np.int32)
    staged = stage_ids(stem, keys=[usable[i][0][3] for i in rows], uids=[usable[i][0][4] for i in rows])
    for path, array in ((files["rows"], table), (files["tokens"], token_table.astype(np.int32))):
        partial = partial_path(path)
        with open(partial, "wb") as f:
            np.save(f, array, allow_pickle=False)
        staged.append((partial, path))
    try:
        for partial, final in staged:
            if partial is not None:
                os.replace(partial, final)
            else:
                Path(final).unlink(missing_ok=True)
    finally:
        for partial, _ in staged:
            if partial is not None:
                Path(partial).unlink(missing_ok=True)
    summary.rows_written = len(rows)
    summary.save(f"{stem}.summary.json")
    entries = {role: file_entry(str(path)) for role, path in files.items() if role != "side" and path.is_file()}
    if side_record is not None:
        entries["side"] = {**file_entry(str(files["side"])), "record": side_record}
    size = os.path.getsize(shard)
    bounds = [int(table["height"].max()) if len(table) else 0, int(table["width"].max()) if len(table) else 0]
    record = {"file": stem.name, "shard": str(Path(shard).resolve()), "shard_bytes": size,
              "shard_fingerprint": shard_fingerprint(shard, size), "num_samples": len(rows),
              "converted": len(good), "image_bounds": bounds, "files": entries, "source_ids": pin_ids(stem),
              "skipped": len(summary.skipped), "captions_truncated": summary.captions_truncated,
              "rows_read": summary.rows_read}
    write_json(record_path, record)
    return summary


def _jpeg_headers(shard: str, refs, max_resolution: Optional[int]) -> list:
    """Each image's JPEG frame header where FFCV's decoder reads the image as it is stored
    (jpeg_header.reencode_reason, the rule conversion's passthrough follows), else None; only the
    headers' bytes are read."""
    fd = os.open(shard, os.O_RDONLY)
    try:
        found = []
        for ref in refs:
            try:
                info = jpeg_info_at(fd, ref.offset, ref.size)
            except JpegHeaderError:
                info = None
            found.append(info if reencode_reason(info, max_resolution) is None else None)
        return found
    finally:
        os.close(fd)


def _write_side(target: Path, refs, where, largest: int, max_resolution, jpeg_quality) -> dict:
    """The side .beton of a part: its images converted as `data clip` converts them; its record."""
    from ..beton import BetonFile
    from ..beton_records import load_record
    from ..schema import IntSpec, image_field
    from .rows import write_rows

    fields = {"image": image_field("jpg", jpeg_quality, max_resolution), "id": IntSpec()}
    side_summary = WriteSummary(path=str(target), rows_read=len(refs))

    def make_sample(i):
        return stored_image(refs[i].read(), max_resolution), i

    write_rows(target, fields, len(refs), make_sample, side_summary, describe=lambda i: where[i], num_workers=1,
               max_sample_bytes=largest, progress=False, in_process=True)
    side = BetonFile(target)
    record = load_record(side, progress=False)
    side.close()
    return record


def write_index_manifest(folder, num_parts: int, what: Optional[dict] = None) -> dict:
    """FOLDER/manifest.json of an index whose parts are all finished, from their records."""
    folder = Path(folder)
    records = []
    for p in range(num_parts):
        record = read_part_record(str(part_record_path(folder, p)))
        if record is None:
            raise DataError(f"cannot write {folder / MANIFEST}: shard {p} is not indexed yet "
                            f"({part_record_path(folder, p)} is missing)")
        records.append(record)
    if what is None:
        what = read_conversion(folder)["what"]
    manifest = {"format": INDEX_FORMAT, "version": INDEX_VERSION,
                "num_samples": sum(int(r["num_samples"]) for r in records), "fields": list(INDEX_FIELDS),
                "context_length": int(what["context_length"]), "max_resolution": what["max_resolution"],
                "source": "webdataset", "parts": records}
    repeated = repeated_source_ids(folder, records)
    if repeated:  # kept usable for training; key/uid coresets and exports refuse it (source_ids.py)
        manifest["repeated_ids"] = repeated
    manifest["checksum"] = manifest_checksum(manifest)
    write_json(folder / MANIFEST, manifest)
    return manifest


def _totals(folder: Path, num_parts: int) -> IndexSummary:
    total = IndexSummary(str(folder), num_parts)
    for p in range(num_parts):
        record = read_part_record(str(part_record_path(folder, p)))
        if record is None:
            continue
        total.rows_read += int(record["rows_read"])
        total.rows_written += int(record["num_samples"])
        total.converted += int(record["converted"])
        total.skipped += int(record["skipped"])
        total.captions_truncated += int(record["captions_truncated"])
    return total


def is_index_conversion(record: Optional[dict]) -> bool:
    """Whether a folder's conversion.json is an index's (`data manifest` writes its manifest then)."""
    return record is not None and record.get("what", {}).get("source", {}).get("kind") == SOURCE_KIND
