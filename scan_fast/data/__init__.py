"""FFCV data path: datasets to .beton, embedded datasets, and loaders that read
each epoch's kept ids without rewriting the data or rebuilding the loader.

Imports are lazy: ffcv, numba and open_clip load only when a name is used.
"""
from importlib import import_module

_EXPORTS = {
    "CaptionTokenizer": "tokenize",
    "WriteSummary": "summary",
    "write_clip_from_table": "from_table",
    "write_clip_from_webdataset": "from_webdataset",
    "write_moco_from_image_folder": "from_image_folder",
    "write_labelled_from_image_folder": "from_image_folder",
    "read_labels": "inspect",
    "load_class_names": "classes",
    "write_digits": "embedded",
    "write_shapes": "embedded",
    "load_shapes_truth": "embedded",
    "validate_kept_ids": "order",
    "epoch_order": "order",
    "clip_pipelines": "pipelines",
    "moco_pipelines": "pipelines",
    "clip_loader": "loaders",
    "moco_loader": "loaders",
    "labelled_loader": "loaders",
    "ScanLoader": "loaders",
    "Batch": "batch",
    "LoaderError": "loaders",
    "KeyedRandomResizedCropDecoder": "decoders",
    "keyed_uniforms": "keyed_random",
    "ScanSampler": "sampler",
    "check_beton": "schema",
    "open_dataset": "dataset",
    "Dataset": "dataset",
    "BetonFile": "beton",
    "DataError": "beton",
    "read_samples": "inspect",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
