"""CLIP .beton from webdataset tar shards, read as tar_shards.py reads them: a sample is the
members that share a key, <key>.jpg (or .jpeg, .png, .webp) and <key>.txt, with DataComp's uid from
<key>.json where it has one. A shard cut short and a key repeated within a shard are skipped rows
(row_checks.py), not errors.
"""
from dataclasses import replace
from typing import List, Optional

import numpy as np
from tqdm import tqdm

from scan_fast.outputs import check_output

from .options import WriteOptions
from .row_checks import check_webdataset_samples
from .summary import WriteSummary
from .tar_shards import count_shard_samples, expand_shards, read_webdataset_samples, shard_samples
from ..tokenize import DEFAULT_CONTEXT_LENGTH
from .rows import write_clip_rows


def write_clip_from_webdataset(shards, target, context_length: int = DEFAULT_CONTEXT_LENGTH,
                               options: Optional[WriteOptions] = None, **option_values):
    """CLIP .beton from webdataset tar shards holding <key>.jpg/.png + <key>.txt.

    Each sample's key, and DataComp's `uid` where its .json has one, are kept beside the target
    (source_ids.py). options: a WriteOptions (or its fields as keywords). With `samples_per_part`,
    `target` is a part folder (convert.py): source row
    r is the r-th sample of the shards in order; the samples per shard are counted first (every
    shard's tar headers, shared among the processes, kept in conversion.json for reruns). A source
    JPEG is stored as it is where it can be (images.py), unless `reencode`."""
    options = WriteOptions.of(options, **option_values)
    paths = expand_shards(shards)
    samples_per_part = options.samples_per_part
    if samples_per_part is None:
        target = check_output(target, inputs=paths, overwrite=options.overwrite)
        samples, bad = read_webdataset_samples(paths)
        summary = WriteSummary(path=str(target), rows_read=len(samples))
        return _write_webdataset_rows(target, samples, bad, summary, context_length, options)
    from .convert import convert_parts, file_identity, part_workers

    num_workers = part_workers(options.num_workers)
    options = replace(options, num_workers=num_workers)
    offsets: List[int] = []

    def count_rows(processes, previous):
        if previous is not None:  # a rerun: the counts of the first run (the shards' sizes are unchanged)
            counts = previous["rows_per_shard"]
        else:
            mine = list(range(processes.rank, len(paths), processes.world))
            found = dict(zip(mine, _count_samples([paths[s] for s in mine], num_workers, options.progress)))
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
            found, problems = shard_samples(shard)
            found = found[max(0, start - first): stop - first]
            samples += found
            if reports_here:  # a cut shard and repeated keys: reported once, by the part of its first row
                bad += problems
        summary = WriteSummary(path=str(path), rows_read=len(samples))
        return _write_webdataset_rows(path, samples, bad, summary, context_length, options)

    what = {"source": {"kind": "webdataset", "shards": [file_identity(p) for p in paths]},
            "context_length": context_length, **options.image_record()}
    return convert_parts(target, what=what, samples_per_part=samples_per_part, count_rows=count_rows,
                         write_part=write_part, part_range=options.part_range, overwrite=options.overwrite,
                         progress=options.progress)


def _count_samples(shards: List[str], num_workers: int, progress: bool) -> List[int]:
    """count_shard_samples each shard, in `num_workers` forked processes (members are grouped into
    samples in Python, so threads would share one core)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    bar = dict(total=len(shards), desc="counting samples", unit="shard", disable=None if progress else True)
    if num_workers <= 1 or len(shards) <= 1:
        return [count_shard_samples(shard) for shard in tqdm(shards, **bar)]
    with ProcessPoolExecutor(max_workers=min(num_workers, len(shards)),
                             mp_context=multiprocessing.get_context("fork")) as pool:
        return list(tqdm(pool.map(count_shard_samples, shards, chunksize=max(1, len(shards) // (8 * num_workers))),
                         **bar))


def _write_webdataset_rows(target, samples, bad, summary, context_length: int,
                           options: WriteOptions) -> WriteSummary:
    """One .beton from webdataset samples (where, ref, caption, key, uid) and cut shards (reported)."""
    usable = check_webdataset_samples(samples, bad, summary, options.strict)
    where_list, refs, captions, keys, uids = ([sample[c] for sample in usable] for c in range(5))
    return write_clip_rows(target, refs, captions, where_list, summary, context_length, options,
                           keys=keys, uids=uids)
