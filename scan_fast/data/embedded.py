"""Generated and embedded datasets, written to .beton without any download.

write_samples writes samples made in memory, valid by construction (no row checks), with id = row:
the embedded datasets below and colour digits (demo/colour_digits.py) are written by it.

digits: scikit-learn's bundled handwritten digits (1,797 real 8x8 images),
    upsampled to RGB, captioned "a photo of the digit seven", with a
    deterministic stratified held-out split for zero-shot / linear-probe eval.
shapes: generated image-text pairs ("a small red ring in the top left") of
    any size: one of 8 shapes that stay distinct at 32 px (circle, square,
    triangle, cross, ring, diamond, horizontal and vertical bar), in one of 8
    colours, small or large, in one quadrant of the image (a large shape spans
    most of its quadrant: about 13 of 32 pixels across, a small one about 10).
    A chosen share of the captions is mismatched (ill-matched pairs: another
    shape and another colour) and a share of the images are near-duplicates of
    earlier ones (redundant pairs). The label of a sample is its image's
    shape x colour class (64 classes), the target of zero-shot evaluation.
    The ground truth is saved beside the .beton as <name>.truth.npz +
    <name>.truth.json. Images are rendered in vectorised blocks on demand while
    writing, so memory stays flat at 1M+ samples. Same arguments, same bytes
    (with the default single writer).
    With captions="varied" (the demo's `shapes-hard`) each caption is one of
    VARIED_TEMPLATES (some leave out the size or the position) and a
    mismatched caption is a near miss: it differs from the right one in one
    word, the shape or the colour, so wrong pairs are harder to tell from right
    ones. captions="plain" (the default) draws nothing more: its data is unchanged.
"""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Literal, Optional

import numpy as np

from .schema import clip_fields, moco_fields
from .tokenize import DEFAULT_CONTEXT_LENGTH, CaptionTokenizer
from .write.parts import clear_folder, part_ranges, write_sample_parts
from .write.summary import WriteSummary
from .write.options import WriteOptions, context_length_flag, progress_flag
from scan_fast.flags import flag, redefault

KINDS = ("clip", "moco")
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_TEMPLATE = "a photo of the digit {}"

# Each shape is a mask over (u, v), the pixel offset from the shape's centre in units of
# its radius (v points down). Chosen to differ clearly at 32 px: outline, hole, corners, arms.
SHAPE_MASKS = {
    "circle": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.85,
    "triangle": lambda u, v: (np.abs(v) <= 1.0) & (np.abs(u) <= 0.5 * (v + 1.0)),
    "cross": lambda u, v: (np.minimum(np.abs(u), np.abs(v)) <= 0.3) & (np.maximum(np.abs(u), np.abs(v)) <= 1.0),
    "ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.55 ** 2),
    "diamond": lambda u, v: np.abs(u) + np.abs(v) <= 1.1,
    "horizontal bar": lambda u, v: (np.abs(u) <= 1.0) & (np.abs(v) <= 0.35),
    "vertical bar": lambda u, v: (np.abs(u) <= 0.35) & (np.abs(v) <= 1.0),
}
SHAPES = tuple(SHAPE_MASKS)
COLOURS = {
    "red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (240, 220, 30),
    "purple": (140, 40, 180), "orange": (250, 140, 20), "cyan": (30, 210, 220), "pink": (250, 120, 190),
}
GRID = 2  # positions: the cells of a GRID x GRID grid, row by row
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
SIZES = ("small", "large")
RADII = (0.3, 0.42)  # shape radius by size, in grid cells
JITTER = 0.05        # largest shift of a shape's centre from its cell's centre, in grid cells
SHAPES_TEMPLATE = "a {size} {colour} {shape} in the {position}"
# captions="varied": all fit the tiny CLIP's 16 tokens; each names the shape and the colour (the class)
VARIED_TEMPLATES = (SHAPES_TEMPLATE, "a {colour} {shape}", "{position}: a {size} {colour} {shape}",
                    "there is a {colour} {shape} in the {position}", "a {shape} in {colour}, {size}",
                    "{size} {colour} {shape}, {position}")
CAPTION_STYLES = ("plain", "varied")


def _kind_flag():
    return flag("clip", "clip: captioned images with labels (training and zero-shot evaluation); moco: labelled "
                        "images", "data set")


@dataclass(frozen=True)
class DigitsFlags:
    """`scan-fast data digits`: write_digits' arguments as flags."""
    out: str = flag(None, "folder for digits_{train,test}.beton", "data set", required=True)
    kind: Literal["clip", "moco"] = _kind_flag()
    resolution: int = flag(32, "image side in pixels (the 8 x 8 digits scaled up)", "data set")
    test_fraction: float = flag(0.2, "share of each class held out as digits_test.beton", "data set")
    seed: int = flag(0, "seed of the held-out split", "data set")
    image_mode: Literal["jpg", "raw"] = redefault(WriteOptions, "image_mode", "raw")
    jpeg_quality: int = redefault(WriteOptions, "jpeg_quality", 90)
    context_length: int = context_length_flag()
    progress: bool = progress_flag()


@dataclass(frozen=True)
class ShapesFlags:
    """`scan-fast data shapes`: write_shapes' arguments as flags, and --overwrite."""
    out: str = flag(None, "target .beton file (ground truth goes beside it)", "data set", required=True)
    kind: Literal["clip", "moco"] = _kind_flag()
    num_samples: int = flag(10_000, "pairs to generate", "data set")
    resolution: int = flag(32, "image side in pixels", "data set")
    mismatch_fraction: float = flag(0.1, "share of captions that name another shape and colour (the wrong pairs, "
                                         "recorded in the truth files)", "data set")
    duplicate_fraction: float = flag(0.1, "share of images that are near-duplicates of an earlier one (its "
                                          "attributes, slightly moved and recoloured)", "data set")
    seed: int = flag(0, "seed of every choice", "data set")
    image_mode: Literal["jpg", "raw"] = redefault(WriteOptions, "image_mode", "jpg")
    jpeg_quality: int = redefault(WriteOptions, "jpeg_quality", 90)
    context_length: int = context_length_flag()
    num_workers: int = flag(1, "writer processes; 1 keeps the bytes reproducible", "writing")
    overwrite: bool = redefault(WriteOptions, "overwrite", False)
    progress: bool = progress_flag()


def _check_kind(kind):
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _fields(kind, context_length, image_kwargs):
    if kind == "clip":
        return clip_fields(context_length, with_labels=True, **image_kwargs)
    return moco_fields(**image_kwargs)


def _sample_maker(kind, images_of, tokens_of, label_of):
    """make_sample(i) in field order without the id: CLIP (image, tokens, label), MoCo (image, label)."""
    if kind == "clip":
        return lambda i: (images_of(i), tokens_of(i), int(label_of(i)))
    return lambda i: (images_of(i), int(label_of(i)))


def write_samples(target, fields: Dict, num_rows: int, make_sample: Callable[[int], tuple],
                  max_image_bytes: int, num_workers: int = 1, progress: bool = True,
                  summary: Optional[WriteSummary] = None) -> WriteSummary:
    """Write generated samples (already valid, in field order without the id) with id = row.

    With one worker the bytes are reproducible; several workers interleave pages.
    """
    summary = summary or WriteSummary(path=str(target), rows_read=num_rows)
    names = list(fields)
    id_pos = names.index("id")

    def with_id(i):
        sample = make_sample(i)
        return (*sample[:id_pos], i, *sample[id_pos:])

    from .write.rows import write_rows  # imports ffcv: only when a set is written

    return write_rows(target, fields, num_rows, with_id, summary, num_workers=num_workers,
                      max_sample_bytes=max_image_bytes, progress=progress)


# --------------------------------------------------------------------------- digits

def digits_arrays(resolution: int = 32):
    """(images uint8 [1797, R, R, 3], labels int64) from sklearn's bundled digits."""
    import torch
    from sklearn.datasets import load_digits

    if not 8 <= resolution <= 512:
        raise ValueError(f"resolution must be in [8, 512], got {resolution}")
    digits = load_digits()
    small = torch.from_numpy(digits.images.astype(np.float32) * (255.0 / 16.0))[:, None]
    big = torch.nn.functional.interpolate(small, size=(resolution, resolution), mode="bilinear",
                                          align_corners=False)
    gray = big.round().clamp(0, 255).to(torch.uint8)[:, 0].numpy()
    return np.repeat(gray[..., None], 3, axis=-1), digits.target.astype(np.int64)


def split_held_out(labels: np.ndarray, test_fraction: float, seed: int):
    """Deterministic stratified split -> (train ids, test ids), both sorted."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng([seed, 1797])
    test = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        test.append(rng.permutation(members)[: int(round(test_fraction * len(members)))])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(len(labels)), test)
    return train, test


def write_digits(out_dir, kind: str = "clip", resolution: int = 32, test_fraction: float = 0.2,
                 seed: int = 0, image_mode: str = "raw", jpeg_quality: int = 90,
                 context_length: int = DEFAULT_CONTEXT_LENGTH, progress: bool = True) -> Dict[str, WriteSummary]:
    """Write digits_train.beton, digits_test.beton and digits.classes.json into out_dir."""
    _check_kind(kind)
    images, labels = digits_arrays(resolution)
    train, test = split_held_out(labels, test_fraction, seed)
    tokenizer = CaptionTokenizer(context_length)
    class_tokens = [tokenizer(DIGIT_TEMPLATE.format(name))[0] for name in DIGIT_NAMES]
    fields = _fields(kind, context_length, dict(image_mode=image_mode, jpeg_quality=jpeg_quality))
    out_dir = Path(out_dir)
    summaries = {}
    for split, ids in (("train", train), ("test", test)):
        make = _sample_maker(kind, lambda i, ids=ids: images[ids[i]],
                             lambda i, ids=ids: class_tokens[labels[ids[i]]],
                             lambda i, ids=ids: labels[ids[i]])
        summaries[split] = write_samples(out_dir / f"digits_{split}.beton", fields, len(ids), make,
                                         max_image_bytes=images[0].nbytes, progress=progress)
    (out_dir / "digits.classes.json").write_text(json.dumps(
        {"classes": list(DIGIT_NAMES), "template": DIGIT_TEMPLATE,
         "train_source_rows": train.tolist(), "test_source_rows": test.tolist()}))
    return summaries


# --------------------------------------------------------------------------- shapes

class ShapesGenerator:
    """Attributes for all samples up front (a few bytes each), pixels rendered per block."""

    def __init__(self, num_samples: int, resolution: int = 32, mismatch_fraction: float = 0.1,
                 duplicate_fraction: float = 0.1, seed: int = 0, captions: str = "plain"):
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        if not 16 <= resolution <= 1024:
            raise ValueError(f"resolution must be in [16, 1024], got {resolution}")
        for name, value in (("mismatch_fraction", mismatch_fraction),
                            ("duplicate_fraction", duplicate_fraction)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if captions not in CAPTION_STYLES:
            raise ValueError(f"captions must be one of {CAPTION_STYLES}, got {captions!r}")
        self.captions = captions
        self.num_samples, self.resolution, self.seed = num_samples, resolution, seed
        self.mismatch_fraction, self.duplicate_fraction = mismatch_fraction, duplicate_fraction
        self.block = int(np.clip(2 ** 22 // resolution ** 2, 16, 1024))
        self._palette = np.array(list(COLOURS.values()), dtype=np.float32)
        self._make_attributes()
        self._block_index, self._block_images = None, None  # the block image() rendered last

    def _make_attributes(self):
        n, rng = self.num_samples, np.random.default_rng([self.seed, 0])
        self.shape = rng.integers(0, len(SHAPES), n)
        self.colour = rng.integers(0, len(COLOURS), n)
        self.position = rng.integers(0, len(POSITIONS), n)
        self.size = rng.integers(0, len(SIZES), n)
        self.offset = rng.uniform(-JITTER, JITTER, (n, 2)).astype(np.float32)  # of a grid cell
        self.background = rng.uniform(90, 160, n).astype(np.float32)

        # Near-duplicates copy an earlier original's attributes, slightly moved and recoloured.
        is_dup = rng.random(n) < self.duplicate_fraction
        is_dup[0] = False
        originals = np.flatnonzero(~is_dup)
        dup_ids = np.flatnonzero(is_dup)
        earlier = np.searchsorted(originals, dup_ids)  # originals before each duplicate (>= 1)
        src = originals[(rng.random(dup_ids.size) * earlier).astype(np.int64)]
        self.duplicate_of = np.full(n, -1, dtype=np.int64)
        self.duplicate_of[dup_ids] = src
        for attr in ("shape", "colour", "position", "size", "background"):
            getattr(self, attr)[dup_ids] = getattr(self, attr)[src]
        self.offset[dup_ids] = self.offset[src] + rng.uniform(-0.03, 0.03, (dup_ids.size, 2))
        self.tint = np.zeros((n, 3), dtype=np.float32)
        self.tint[dup_ids] = rng.uniform(-10, 10, (dup_ids.size, 3))

        # Mismatched captions describe another shape in another colour.
        self.mismatched = rng.random(n) < self.mismatch_fraction
        self.caption_shape = self.shape.copy()
        self.caption_colour = self.colour.copy()
        self.caption_position = self.position.copy()
        bad = np.flatnonzero(self.mismatched)
        self.caption_shape[bad] = (self.shape[bad] + rng.integers(1, len(SHAPES), bad.size)) % len(SHAPES)
        self.caption_colour[bad] = (self.colour[bad] + rng.integers(1, len(COLOURS), bad.size)) % len(COLOURS)
        self.caption_position[bad] = rng.integers(0, len(POSITIONS), bad.size)
        self.template = np.zeros(n, dtype=np.int64)
        if self.captions == "varied":  # its own stream: the plain data's draws above stay as they were
            varied = np.random.default_rng([self.seed, 2])
            self.template = varied.integers(0, len(VARIED_TEMPLATES), n)
            # a near miss: the right caption with one word changed, the shape or the colour
            wrong_shape = varied.random(bad.size) < 0.5
            self.caption_shape[bad] = np.where(wrong_shape, self.caption_shape[bad], self.shape[bad])
            self.caption_colour[bad] = np.where(wrong_shape, self.colour[bad], self.caption_colour[bad])
            self.caption_position[bad] = self.position[bad]

    def caption(self, i: int) -> str:
        return VARIED_TEMPLATES[self.template[i]].format(size=SIZES[self.size[i]], colour=list(COLOURS)[self.caption_colour[i]],
                                      shape=SHAPES[self.caption_shape[i]],
                                      position=POSITIONS[self.caption_position[i]])

    def label(self, i: int) -> int:
        """Class of the image (not the caption): shape x colour, len(SHAPES) * len(COLOURS) classes."""
        return int(self.shape[i] * len(COLOURS) + self.colour[i])

    def image(self, i: int) -> np.ndarray:
        b = i // self.block
        if self._block_index != b:
            self._block_images = self.render(b * self.block, min(self.num_samples, (b + 1) * self.block))
            self._block_index = b
        return self._block_images[i - b * self.block]

    def render(self, start: int, stop: int) -> np.ndarray:
        """Images of ids [start, stop) as uint8 [B, R, R, 3]; noise seeded by (seed, block)."""
        r, ids = self.resolution, np.arange(start, stop)
        cell = r / GRID
        row, col = np.divmod(self.position[ids], GRID)
        cx = (col + 0.5 + self.offset[ids, 0]) * cell
        cy = (row + 0.5 + self.offset[ids, 1]) * cell
        radius = np.asarray(RADII, dtype=np.float32)[self.size[ids]] * cell
        grid = np.arange(r, dtype=np.float32) + 0.5
        u = (grid[None, None, :] - cx[:, None, None]) / radius[:, None, None]  # [B, 1, R]
        v = (grid[None, :, None] - cy[:, None, None]) / radius[:, None, None]  # [B, R, 1]
        u, v = np.broadcast_arrays(u, v)
        mask = np.zeros((len(ids), r, r), dtype=bool)
        shape = self.shape[ids]
        for k, draw in enumerate(SHAPE_MASKS.values()):
            members = np.flatnonzero(shape == k)
            if members.size:
                mask[members] = draw(u[members], v[members])
        rng = np.random.default_rng([self.seed, 1, start])
        pixels = self.background[ids][:, None, None, None] + rng.normal(0, 6, (len(ids), r, r, 1))
        colour = self._palette[self.colour[ids]] + self.tint[ids]
        pixels = np.where(mask[..., None], colour[:, None, None, :], pixels)
        return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)

    def truth(self) -> Dict[str, np.ndarray]:
        return {"mismatched": self.mismatched, "duplicate_of": self.duplicate_of,
                "shape": self.shape, "colour": self.colour, "position": self.position,
                "size": self.size, "caption_shape": self.caption_shape,
                "caption_colour": self.caption_colour, "caption_position": self.caption_position,
                "template": self.template}


def write_shapes(target, num_samples: int = 10_000, kind: str = "clip", resolution: int = 32,
                 mismatch_fraction: float = 0.1, duplicate_fraction: float = 0.1, seed: int = 0,
                 image_mode: str = "jpg", jpeg_quality: int = 90,
                 context_length: int = DEFAULT_CONTEXT_LENGTH, num_workers: int = 1,
                 progress: bool = True, samples_per_part: Optional[int] = None,
                 captions: str = "plain") -> WriteSummary:
    """Write the shapes dataset plus <target minus .beton>.truth.npz / .truth.json.

    With `samples_per_part`, `target` is a part folder (dataset.py) of parts of that many samples:
    the same rows in the same order as a single file, so the same data set."""
    _check_kind(kind)
    gen = ShapesGenerator(num_samples, resolution, mismatch_fraction, duplicate_fraction, seed, captions)
    tokenizer = CaptionTokenizer(context_length)
    make = _sample_maker(kind, gen.image, lambda i: tokenizer(gen.caption(i))[0], gen.label)
    fields = _fields(kind, context_length, dict(image_mode=image_mode, jpeg_quality=jpeg_quality))
    if samples_per_part is None:
        summary = write_samples(target, fields, num_samples, make, max_image_bytes=resolution ** 2 * 3,
                                num_workers=num_workers, progress=progress)
    else:
        part_ranges(num_samples, samples_per_part)  # checks the size first
        clear_folder(target)

        def write_part(path, start, stop):
            return write_samples(path, fields, stop - start, lambda row: make(start + row),
                                 max_image_bytes=resolution ** 2 * 3, num_workers=num_workers, progress=progress)

        write_sample_parts(target, samples_per_part, num_samples, write_part)
        summary = WriteSummary(path=str(target), rows_read=num_samples, rows_written=num_samples)
    stem = truth_stem(target)
    truth = gen.truth()
    np.savez_compressed(f"{stem}.truth.npz", **truth)
    meta = {"num_samples": num_samples, "resolution": resolution, "seed": seed,
            "mismatch_fraction": mismatch_fraction, "duplicate_fraction": duplicate_fraction,
            "num_mismatched": int(truth["mismatched"].sum()),
            "num_duplicates": int((truth["duplicate_of"] >= 0).sum()), **shapes_vocabulary(captions),
            "label": "shape * len(colours) + colour"}
    Path(f"{stem}.truth.json").write_text(json.dumps(meta, indent=1))
    return summary


def shapes_vocabulary(captions: str = "plain") -> Dict:
    """What a shapes set's .truth.json records of the generator (its words, geometry and caption style): a set
    whose record differs was written by another generator (the demo rewrites it)."""
    vocabulary = {"template": SHAPES_TEMPLATE, "shapes": list(SHAPES), "colours": list(COLOURS),
                  "positions": list(POSITIONS), "sizes": list(SIZES), "grid": GRID, "radii": list(RADII),
                  "jitter": JITTER}
    if captions != "plain":  # the plain sets' records stay as they were
        vocabulary.update(captions=captions, templates=list(VARIED_TEMPLATES))
    return vocabulary


def truth_stem(target) -> str:
    """The path of a shapes set's ground truth without its suffix: <stem>.truth.npz / .truth.json beside a .beton
    file (its name less .beton) or a part folder (its path, a trailing slash or not)."""
    target = str(target).rstrip("/")
    return target[: -len(".beton")] if target.endswith(".beton") else target


def has_shapes_truth(target) -> bool:
    """Whether `target` has the ground truth write_shapes saves beside it."""
    return Path(f"{truth_stem(target)}.truth.npz").is_file()


def read_shapes_meta(target) -> Optional[Dict]:
    """The .truth.json write_shapes saved beside `target`, or None where there is none or it is unreadable."""
    try:
        return json.loads(Path(f"{truth_stem(target)}.truth.json").read_text())
    except (OSError, ValueError):
        return None


def load_shapes_truth(target) -> Dict[str, np.ndarray]:
    """The ground truth saved by write_shapes for `target` (arrays indexed by sample id)."""
    path = Path(f"{truth_stem(target)}.truth.npz")
    if not path.is_file():
        raise FileNotFoundError(f"no ground truth at {path}; was {target} written by write_shapes?")
    with np.load(path) as data:
        return {k: data[k] for k in data.files}
