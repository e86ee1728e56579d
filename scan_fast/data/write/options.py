"""How a conversion stores images and runs: one options object that every writer takes
(`write_clip_from_table`, `write_clip_from_webdataset`, `write_labelled_from_image_folder`) and whose
fields are `data clip` and `data labelled`'s flags (scan_fast/flags.py: help text, section and
choices beside each field; checked once, here, when the object is made)."""
from dataclasses import asdict, dataclass, fields
from typing import Literal, Optional, Sequence

from scan_fast.flags import check_choices, flag, redefault

from ..schema import check_image_options
from ..tokenize import DEFAULT_CONTEXT_LENGTH
from .row_checks import check_num_workers

REENCODE_HELP = ("decode and re-encode every image. By default a source JPEG that FFCV decodes as it is (8-bit "
                 "baseline or progressive, 3 colour components) and whose longer side is at most --max-resolution "
                 "is stored byte for byte, checked by a decode at 1/8 scale")


def context_length_flag():
    """--context-length, as every command that tokenizes captions takes it."""
    return flag(DEFAULT_CONTEXT_LENGTH, "caption tokens per sample", "captions")


def progress_flag():
    return flag(True, "progress bars", "run")


@dataclass(frozen=True)
class WriteOptions:
    """A writer's options; a writer takes `options=WriteOptions(...)` or these fields as keywords."""
    image_mode: Literal["jpg", "raw"] = flag("jpg", "store images as JPEG or raw pixels", "images")
    jpeg_quality: int = flag(90, "quality of the JPEGs a writer encodes", "images")
    max_resolution: Optional[int] = flag(256, "resize so the longer side is at most this many pixels", "images")
    reencode: bool = flag(False, REENCODE_HELP, "images")
    strict: bool = flag(False, "stop at the first bad row instead of skipping it (nothing is written)", "writing")
    num_workers: Optional[int] = flag(None, "writer processes of each converting process (default: all cores, "
                                            "shared among torchrun's processes on the machine)", "writing")
    overwrite: bool = flag(True, "replace --out if it exists", "writing")
    progress: bool = progress_flag()
    samples_per_part: Optional[int] = flag(
        None, "write --out as a folder of .beton parts of K = SAMPLES_PER_PART source rows: part P holds the valid "
              "rows among source rows [P*K, (P+1)*K). Parts are written independently (under torchrun each process writes parts "
              "P %% WORLD_SIZE == RANK); a rerun of a killed conversion writes only the missing parts; the manifest "
              "is written last", "part folders (conversion at scale)")
    part_range: Optional[str] = flag(
        None, "with --samples-per-part, I:J: write only parts I..J-1 (one job of a job array); the job that finds "
              "every part written writes the manifest (or run scan-fast data manifest FOLDER)",
        "part folders (conversion at scale)")

    def __post_init__(self):
        check_choices(self)
        check_image_options(self.image_mode, self.jpeg_quality, self.max_resolution)
        if self.num_workers is not None:
            check_num_workers(self.num_workers)
        if self.samples_per_part is not None and (isinstance(self.samples_per_part, bool) or self.samples_per_part < 1):
            raise ValueError(f"--samples-per-part must be >= 1, got {self.samples_per_part!r}")
        if self.part_range is not None and self.samples_per_part is None:
            raise ValueError("--part-range needs --samples-per-part")

    @classmethod
    def of(cls, options: Optional["WriteOptions"] = None, **values) -> "WriteOptions":
        """`options` (default: the defaults) with `values` in place of its fields; a TypeError names
        a keyword that is not one."""
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"unknown writer option(s) {unknown}: the options are {[f.name for f in fields(cls)]}")
        return cls(**{**(asdict(options) if options is not None else {}), **values})

    def image_record(self) -> dict:
        """The image options a part folder's conversion.json records (a rerun must match them)."""
        return dict(image_mode=self.image_mode, jpeg_quality=self.jpeg_quality,
                    max_resolution=self.max_resolution, reencode=self.reencode)

    def image_field_options(self) -> dict:
        """schema.image_field's keywords."""
        return dict(image_mode=self.image_mode, jpeg_quality=self.jpeg_quality, max_resolution=self.max_resolution)


@dataclass(frozen=True)
class ConversionFlags(WriteOptions):
    """`data clip` / `data labelled`: the options as flags, where --out is kept unless --overwrite."""
    overwrite: bool = redefault(WriteOptions, "overwrite", False)


@dataclass(frozen=True)
class IndexOptions:
    """`data index`'s options (index_shards.index_webdataset takes them, or their fields as keywords)."""
    context_length: int = context_length_flag()
    max_resolution: Optional[int] = flag(256, "a JPEG whose longer side is larger is converted into the side part, "
                                              "resized to this", "images")
    jpeg_quality: int = flag(90, "JPEG quality of the side part's images", "images")
    strict: bool = flag(False, "stop at the first bad sample instead of skipping it", "writing")
    overwrite: bool = flag(False, "replace --out if it holds an index", "writing")
    part_range: Optional[str] = flag(None, "index only shards I..J-1 (one job of a job array); the job that finds "
                                           "every shard indexed writes the manifest (or run scan-fast data manifest "
                                           "FOLDER)", "writing")
    progress: bool = progress_flag()

    def __post_init__(self):
        check_image_options("jpg", self.jpeg_quality, self.max_resolution)

    of = classmethod(WriteOptions.of.__func__)


def out_flag(help: str):
    return flag(None, help, "source", required=True)


@dataclass(frozen=True)
class ClipSource:
    """`data clip`'s source and target (its options are a ConversionFlags)."""
    table: Optional[str] = flag(None, "CSV/TSV/JSONL with an image path and a caption per row", "source")
    webdataset: Optional[Sequence[str]] = flag(None, "tar shards, a folder of them, a glob or a brace pattern "
                                                     "(shard-{000..099}.tar) (a repeated key, or a shard cut short, is "
                                                     "a skipped row: --strict stops)", "source")
    out: str = out_flag("target .beton, or the part folder with --samples-per-part")
    image_root: Optional[str] = flag(None, "folder that table image paths are relative to", "source")
    image_column: Optional[str] = flag(None, "table column holding the image path", "source")
    caption_column: Optional[str] = flag(None, "table column holding the caption", "source")
    label_column: Optional[str] = flag(None, "table column holding a class name: also writes labels (and the class "
                                             "names beside --out), so the set can be a zero-shot --val-data", "source")
    uid_column: Optional[str] = flag(None, "table column holding each row's uid (32 hex digits, DataComp's): kept "
                                           "beside --out for coreset export --format datacomp", "source")
    context_length: int = context_length_flag()

    def __post_init__(self):
        if (self.table is None) == (self.webdataset is None):
            raise ValueError("give one source: --table or --webdataset")
        if self.webdataset is not None:
            for name in ("image_root", "image_column", "caption_column", "label_column", "uid_column"):
                if getattr(self, name) is not None:
                    raise ValueError(f"--{name.replace('_', '-')} applies to --table only")


@dataclass(frozen=True)
class ImageFolderSource:
    """`data labelled`'s source and target."""
    image_folder: str = flag(None, "root folder: one sub-folder per class", "source", required=True)
    out: str = out_flag("target .beton, or the part folder with --samples-per-part")


@dataclass(frozen=True)
class IndexSource:
    """`data index`'s source and target (its options are an IndexOptions)."""
    webdataset: Sequence[str] = flag(None, "tar shards, a folder of them, a glob or a brace pattern "
                                           "(shard-{000..099}.tar) (indexed in the order given; a folder's *.tar "
                                           "sorted by name)", "source", required=True)
    out: str = out_flag("the index folder to write")
