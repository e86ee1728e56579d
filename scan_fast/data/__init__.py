"""FFCV data path: datasets to .beton, embedded datasets, and loaders that read
each epoch's kept ids without rewriting the data or rebuilding the loader.

Three rooms: write/ (conversion and the in-place index), read/ (loaders, staging, checks), and
here the formats both sides share (.beton files, part folders and indexes, manifests, source ids,
the tokenizer, the schema) with the embedded data sets.

Imports are lazy: ffcv, numba and open_clip load only when a name is used.
"""
from ..lazy_exports import lazy_exports

_EXPORTS = {
    "CaptionTokenizer": ".tokenize",
    "WriteSummary": ".write.summary",
    "write_clip_from_table": ".write.from_table",
    "write_clip_from_webdataset": ".write.from_webdataset",
    "write_moco_from_image_folder": ".write.from_image_folder",
    "write_labelled_from_image_folder": ".write.from_image_folder",
    "read_labels": ".read.inspect",
    "load_class_names": ".classes",
    "write_digits": ".embedded",
    "write_shapes": ".embedded",
    "load_shapes_truth": ".embedded",
    "validate_kept_ids": ".read.order",
    "epoch_order": ".read.order",
    "clip_pipelines": ".read.pipelines",
    "moco_pipelines": ".read.pipelines",
    "clip_loader": ".read.loaders",
    "moco_loader": ".read.loaders",
    "labelled_loader": ".read.loaders",
    "ScanLoader": ".read.loaders",
    "reuse_compiled_loaders": ".read.loader_reuse",
    "Batch": ".read.batch",
    "LoaderError": ".read.loaders",
    "KeyedRandomResizedCropDecoder": ".read.decoders",
    "keyed_uniforms": ".read.keyed_random",
    "ScanSampler": ".read.sampler",
    "check_beton": ".schema",
    "open_dataset": ".dataset",
    "Dataset": ".dataset",
    "BetonFile": ".beton",
    "DataError": ".beton",
    "read_samples": ".read.inspect",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
