"""CLIP .beton from webdataset tar shards: a sample is the members that share a key, <key>.jpg
(or .jpeg, .png, .webp) and <key>.txt, with DataComp's uid from <key>.json where it has one.

Shards are read through their tar headers (an image's bytes later, from its offset). A shard cut
short and a key repeated within a shard are skipped rows (row_checks.py), not errors.
"""
import glob
import json
import os
import tarfile
from typing import Dict, List, Optional, Tuple

import numpy as np
from tqdm import tqdm

from scan_fast.outputs import check_output

from .images import TarImage
from .row_checks import check_num_workers, check_webdataset_samples
from .source_ids import parse_uid
from .summary import WriteSummary
from .tables import BadRow
from .tokenize import DEFAULT_CONTEXT_LENGTH
from .write import write_clip_rows


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


def _read_shard(shard: str, with_ids: bool = False):
    """(samples, problems) of one shard, in one pass over its tar headers: samples as
    read_webdataset_samples, with each sample's key and DataComp uid (from its .json, None
    without one) appended when with_ids; problems are (where, BadRow) pairs for what cannot be
    written as read:

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
            sample = (f"{shard}:{key}", ref, caption)
            samples.append(sample + (key, _member_uid(tar, members.get("json"))) if with_ids else sample)
    return samples, problems


def _member_uid(tar, member: Optional[tarfile.TarInfo]):
    """The 32-hex-digit "uid" of a sample's .json member (DataComp's), or None."""
    if member is None:
        return None
    try:
        return parse_uid(json.loads(tar.extractfile(member).read()).get("uid"))
    except (ValueError, AttributeError, tarfile.TarError, EOFError):
        return None


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
                               overwrite: bool = True, samples_per_part: Optional[int] = None, part_range=None,
                               reencode: bool = False):
    """CLIP .beton from webdataset tar shards holding <key>.jpg/.png + <key>.txt.

    Each sample's key, and DataComp's `uid` where its .json has one, are kept beside the target
    (source_ids.py). With `samples_per_part`, `target` is a part folder (convert.py): source row
    r is the r-th sample of the shards in order; the samples per shard are counted first (every
    shard's tar headers, shared among the processes, kept in conversion.json for reruns). A source
    JPEG is stored as it is where it can be (images.py), unless `reencode`."""
    paths = _expand_shards(shards)
    image_kwargs = dict(image_mode=image_mode, jpeg_quality=jpeg_quality, max_resolution=max_resolution,
                        reencode=reencode)
    common = dict(context_length=context_length, strict=strict, num_workers=num_workers, progress=progress,
                  image_kwargs=image_kwargs)
    if samples_per_part is None:
        target = check_output(target, inputs=paths, overwrite=overwrite)
        check_num_workers(num_workers)
        samples, bad = [], []
        for shard in paths:
            found, problems = _read_shard(shard, with_ids=True)
            samples += found
            bad += problems
        summary = WriteSummary(path=str(target), rows_read=len(samples))
        return _write_webdataset_rows(target, samples, bad, summary, **common)
    from .convert import convert_parts, file_identity, part_workers

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
            found, problems = _read_shard(shard, with_ids=True)
            samples += found[max(0, start - first): stop - first]
            if reports_here:  # a cut shard and repeated keys: reported once, by the part of its first row
                bad += problems
        summary = WriteSummary(path=str(path), rows_read=len(samples))
        return _write_webdataset_rows(path, samples, bad, summary, **common)

    what = {"source": {"kind": "webdataset", "shards": [file_identity(p) for p in paths]},
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


def _write_webdataset_rows(target, samples, bad, summary, *, context_length, strict, num_workers, progress,
                           image_kwargs) -> WriteSummary:
    """One .beton from webdataset samples (where, ref, caption, key, uid) and cut shards (reported)."""
    usable = check_webdataset_samples(samples, bad, summary, strict)
    where_list, refs, captions, keys, uids = ([sample[c] for sample in usable] for c in range(5))
    return write_clip_rows(target, refs, captions, where_list, summary, context_length, strict,
                           num_workers, progress, image_kwargs, keys=keys, uids=uids)
