"""`colour-digits`: the main job's second noisy data set, from scikit-learn's bundled handwritten digits.

Each pair is one of the 1,797 8x8 handwritten digits (upscaled to 32 px, shifted by up to 2 px), drawn in
one of 8 colours on a dark textured background, with a caption such as "a red seven". The digit is real
handwriting (many writers), so shape is what takes learning; the colour is easy. Held-out pairs come from
digits no training pair uses (a stratified split), so zero-shot accuracy over the 80 colour x digit classes
measures generalisation to new handwriting. Noise, each share of the training pairs, disjoint:

- mismatched (`mismatch_fraction`, 20%): the caption names another digit and another colour;
- faint (`faint_fraction`, 15%): a right caption, the digit drawn at 35% contrast in stronger noise: hard
  but learnable pairs, the ones a loss-based rule must not take for mismatched;
- near-duplicates (`duplicate_fraction`, 10%): an earlier pair's digit, colour and caption, shifted by 1 px.

The ground truth is saved beside the .beton (`<stem>.truth.npz`: mismatched, faint, duplicate_of, digit,
colour, caption_digit, caption_colour; `.truth.json`), as for `shapes`; the held-out set is a labelled
.beton with its class names beside it (`<beton>.classes.json`, label = digit x 8 + colour), prompted with
"a {}". Every choice comes from one numpy generator seeded by `seed`.
"""
import json
from pathlib import Path

import numpy as np

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATE = "a {}"  # the class prompt: "a red seven"
FAINT_CONTRAST = 0.35


def _colours():
    from scan_fast.data.embedded import COLOURS

    return list(COLOURS), np.array(list(COLOURS.values()), dtype=np.float32)


def generate(num_samples: int, *, split: str, mismatch_fraction: float = 0.2, faint_fraction: float = 0.15,
             duplicate_fraction: float = 0.1, seed: int = 0, resolution: int = 32):
    """(images uint8 [n, R, R, 3], captions, labels, truth dict) of one split ("train" or "test")."""
    from scan_fast.data.embedded import digits_arrays, split_held_out

    gray, digit_of = digits_arrays(resolution - 4)  # room for the shift
    train_ids, test_ids = split_held_out(digit_of, 0.2, seed=0)
    source = train_ids if split == "train" else test_ids
    names, rgb = _colours()
    rng = np.random.default_rng([seed, 2024])
    n = num_samples
    pick = rng.choice(source, n)
    colour = rng.integers(0, len(names), n)
    shift = rng.integers(0, 5, (n, 2))
    kind = rng.random(n)
    mismatched = kind < mismatch_fraction
    faint = (kind >= mismatch_fraction) & (kind < mismatch_fraction + faint_fraction)
    duplicate_of = np.full(n, -1, np.int64)
    dup = (kind >= mismatch_fraction + faint_fraction) & (kind < mismatch_fraction + faint_fraction
                                                          + duplicate_fraction)
    for i in np.flatnonzero(dup):
        if i > 0:
            j = int(rng.integers(0, i))
            duplicate_of[i] = j
            pick[i], colour[i], mismatched[i], faint[i] = pick[j], colour[j], mismatched[j], faint[j]
            shift[i] = np.clip(shift[j] + rng.integers(-1, 2, 2), 0, 4)
    digit = digit_of[pick]
    caption_digit, caption_colour = digit.copy(), colour.copy()
    wrong = np.flatnonzero(mismatched & (duplicate_of < 0))
    caption_digit[wrong] = (digit[wrong] + rng.integers(1, 10, len(wrong))) % 10
    caption_colour[wrong] = (colour[wrong] + rng.integers(1, len(names), len(wrong))) % len(names)
    for i in np.flatnonzero(duplicate_of >= 0):
        caption_digit[i], caption_colour[i] = caption_digit[duplicate_of[i]], caption_colour[duplicate_of[i]]
    images = np.empty((n, resolution, resolution, 3), np.uint8)
    noise = rng.normal(0.0, 1.0, (n, resolution, resolution, 1)).astype(np.float32)
    for i in range(n):  # a few thousand 32 px images: written once per data set
        ink = gray[pick[i], :, :, :1].astype(np.float32) / 255.0
        contrast = FAINT_CONTRAST if faint[i] else 1.0
        canvas = np.zeros((resolution, resolution, 1), np.float32)
        y, x = shift[i]
        canvas[y:y + resolution - 4, x:x + resolution - 4] = ink
        background = 40.0 + (22.0 if faint[i] else 10.0) * noise[i]
        pixels = background * (1 - canvas * contrast) + rgb[colour[i]] * canvas * contrast
        images[i] = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    captions = [TEMPLATE.format(f"{names[c]} {DIGIT_NAMES[d]}") for c, d in zip(caption_colour, caption_digit)]
    labels = digit * len(names) + colour
    truth = {"mismatched": mismatched, "faint": faint, "duplicate_of": duplicate_of, "digit": digit,
             "colour": colour, "caption_digit": caption_digit, "caption_colour": caption_colour}
    return images, captions, labels, truth


def class_names():
    names, _ = _colours()
    return [f"{c} {d}" for d in DIGIT_NAMES for c in names]  # label = digit * 8 + colour


def write_colour_digits(target, num_samples: int, *, split: str, context_length: int, seed: int = 0,
                        mismatch_fraction: float = 0.2, faint_fraction: float = 0.15, duplicate_fraction: float = 0.1,
                        progress: bool = True) -> None:
    """Write one split: train as CLIP pairs (image, tokens, label, id), test as a labelled set with names."""
    from scan_fast.data import CaptionTokenizer
    from scan_fast.data.classes import save_class_names
    from scan_fast.data.schema import clip_fields, labelled_fields
    from scan_fast.data.embedded import write_samples

    images, captions, labels, truth = generate(num_samples, split=split, mismatch_fraction=mismatch_fraction,
                                               faint_fraction=faint_fraction, duplicate_fraction=duplicate_fraction,
                                               seed=seed)
    if split == "train":
        tokenizer = CaptionTokenizer(context_length)
        fields = clip_fields(context_length, with_labels=True)
        make = lambda i: (images[i], tokenizer(captions[i])[0], int(labels[i]))  # noqa: E731
    else:
        fields = labelled_fields()
        make = lambda i: (images[i], int(labels[i]))  # noqa: E731
    write_samples(target, fields, num_samples, make, max_image_bytes=images[0].nbytes, num_workers=1,
                  progress=progress)
    stem = str(target)[: -len(".beton")]
    np.savez_compressed(f"{stem}.truth.npz", **truth)
    meta = {"data": "colour-digits", "num_samples": num_samples, "split": split, "seed": seed,
            "mismatch_fraction": mismatch_fraction, "faint_fraction": faint_fraction,
            "duplicate_fraction": duplicate_fraction, "num_mismatched": int(truth["mismatched"].sum()),
            "num_faint": int(truth["faint"].sum()), "template": TEMPLATE}
    Path(f"{stem}.meta.json").write_text(json.dumps(meta, indent=1))
    if split != "train":
        save_class_names(target, class_names())
