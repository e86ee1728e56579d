"""The samples of webdataset tar shards, read through their headers: what `data clip` converts and
`data index` indexes (the same samples, keys, uids and skipped rows either way).

A sample is the members that share a key, <key>.jpg (or .jpeg, .png, .webp) and <key>.txt, with
DataComp's uid from <key>.json where it has one. A shard's member list comes from its tar headers
alone (scan_fast._C.list_tar, read as Python's tarfile reads them: tests compare the two); an image
is a reference to its bytes (images.TarImage), read later and only where needed. A shard cut short
and a key repeated within a shard are skipped rows (row_checks.py), not errors.

Imports nothing of ffcv or OpenCV, so `data index` starts in a fraction of a second.
"""
import glob
import json
import os
from typing import Dict, List, Tuple, Union

from braceexpand import braceexpand

from scan_fast import _C

from .images import TarImage
from ..source_ids import parse_uid
from .tables import BadRow

_TAR_BLOCK = 512
_END_OF_ARCHIVE = 2 * _TAR_BLOCK  # a complete tar ends with two zero blocks
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # the first a sample has is its image


def expand_shards(shards) -> List[str]:
    """The .tar files of a path, a folder (its *.tar sorted by name), a glob, a brace pattern as
    webdataset takes it (shard-{000..099}.tar: every name must exist), or a list of them."""
    if isinstance(shards, (str, os.PathLike)):
        shards = [shards]
    paths = []
    for item in shards:
        item = os.fspath(item)
        if "{" in item and not os.path.exists(item):
            paths += expand_shards(list(braceexpand(item)))
            continue
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


def member_key(name: str) -> Tuple[str, str]:
    """(sample key, extension) of a tar member: webdataset's convention, the name up to the first
    dot of its base name (with its folder), and the rest in lower case."""
    if "/" not in name:  # most shards' names: no folder to split off
        key, _, ext = name.partition(".")
        return key, ext.lower()
    folder, base = os.path.split(name)
    key, _, ext = base.partition(".")
    return os.path.join(folder, key), ext.lower()


def shard_samples(shard: str):
    """(samples, problems) of one shard, in one pass over its tar headers: samples are
    (where, TarImage or None, caption or None, key, uid) in tar order, with where = "shard:key" and
    uid (high, low), None (the sample has none) or a BadRow (a malformed .json or uid: a skipped
    row); problems are (where, BadRow) pairs for what cannot be used as read:

    - a truncated shard (a cut download): a member whose data runs past the file's end, a header
      cut short, or a shard cut at a member boundary (no end-of-archive marker, the two zero blocks
      a complete tar ends with); the members before the cut are kept;
    - a duplicate key: a member whose key and extension an earlier member of the shard already has.
      Keys name samples, so a repeat is not written twice or silently overwritten: the first sample
      with the key is kept and each repeat is reported (one skipped row per repeated sample).
    """
    with open(shard, "rb") as f:
        fd = f.fileno()
        decoded, offsets, sizes, groups, problems = _shard_members(shard, fd)
        samples = []
        for key, members in groups.items():
            image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)
            caption = uid = None
            if "txt" in members:
                m = members["txt"]
                caption = os.pread(fd, int(sizes[m]), int(offsets[m])).decode("utf-8", "replace")
            if "json" in members:
                m = members["json"]
                uid = _json_uid(decoded[m], os.pread(fd, int(sizes[m]), int(offsets[m])))
            ref = TarImage(shard, int(offsets[image]), int(sizes[image])) if image is not None else None
            samples.append((f"{shard}:{key}", ref, caption, key, uid))
    return samples, problems


def count_shard_samples(shard: str) -> int:
    """len(shard_samples(shard)[0]) from the tar headers alone (no caption or .json read)."""
    with open(shard, "rb") as f:
        return len(_shard_members(shard, f.fileno())[3])


def _shard_members(shard: str, fd: int):
    """(member names, offsets, sizes, {key: {extension: member}}, problems) of the shard open as fd."""
    size = os.fstat(fd).st_size
    names, offsets, sizes, end, stop, detail = _C.list_tar(fd, size)
    if stop == "not_tar":
        raise ValueError(f"webdataset shard {shard} is not a readable tar file: {detail}")
    groups: Dict[str, Dict[str, int]] = {}  # key -> extension -> member
    repeats: Dict[str, Dict[str, List[str]]] = {}  # key -> extension -> names of the repeated members
    decoded = [name.decode("utf-8", "surrogateescape") for name in names]
    for m, name in enumerate(decoded):
        key, ext = member_key(name)
        members = groups.setdefault(key, {})
        if ext in members:
            repeats.setdefault(key, {}).setdefault(ext, []).append(name)
        else:
            members[ext] = m
    problems = []
    if stop == "error":
        problems.append((shard, BadRow("truncated shard", f"{detail}; the {len(groups)} samples before it are kept")))
    else:  # where tarfile stops quietly: a complete shard ends with the end-of-archive marker
        marker = os.pread(fd, _END_OF_ARCHIVE, end)
        if len(marker) < _END_OF_ARCHIVE or any(marker):
            if marker.strip(b"\0") and len(marker) >= _TAR_BLOCK:  # a whole block that is no header
                problems.append((shard, BadRow("unreadable shard", f"no valid member header at byte {end}; "
                                               f"the {len(groups)} samples before it are kept")))
            else:
                what = "a member header cut short" if marker.strip(b"\0") else "no end-of-archive marker"
                problems.append((shard, BadRow("truncated shard", f"{what} at byte {end} (the file has {size} "
                                               f"bytes); the {len(groups)} samples before it are kept")))
    for key, by_ext in repeats.items():
        repeated_names = sorted(name for repeated in by_ext.values() for name in repeated)
        for _ in range(max(len(repeated) for repeated in by_ext.values())):
            problems.append((f"{shard}:{key}", BadRow(
                "duplicate key", f"{', '.join(repeated_names)} repeat(s) the key of an earlier sample of the "
                                 f"shard; the first sample with this key is kept")))
    return decoded, offsets, sizes, groups, problems


def _json_uid(name: str, data: bytes) -> Union[None, Tuple[int, int], BadRow]:
    """The uid of a sample's .json (DataComp's "uid"): None without one, a BadRow (the sample is then a
    skipped row) for a .json that is not a JSON object or whose "uid" breaks source_ids.parse_uid's rule."""
    try:
        record = json.loads(data)
    except ValueError as err:
        return BadRow("unreadable .json", f"{name}: {err}")
    if not isinstance(record, dict):
        return BadRow("unreadable .json", f"{name} holds a {type(record).__name__}, not a JSON object")
    if "uid" not in record:
        return None
    uid = parse_uid(record["uid"])
    return uid if uid is not None else BadRow(
        "bad uid", f"{name} has uid {record['uid']!r}, not a uid (32 hex digits, not all zero)")


def read_webdataset_samples(shards):
    """shard_samples of every shard, together: (samples, problems)."""
    samples, bad = [], []
    for shard in expand_shards(shards):
        found, problems = shard_samples(shard)
        samples += found
        bad += problems
    return samples, bad
