"""The demo's data sets (`scan-fast demo --data`), written once under <out>/data and reused while current.

shapes          the embedded shapes (scan_fast/data/embedded.py): 20% mismatched captions (another shape and
                another colour), 10% near-duplicates
shapes-clean    the same generator with no mismatched captions, the near-duplicates kept: only redundancy and
                difficulty are left to prune
shapes-hard     20% mismatched captions that are near misses (one word wrong: the shape or the colour), every
                caption from one of several templates, 10% near-duplicates: wrong pairs harder to tell apart
colour-digits   handwritten digits in colour (scan_fast/demo/colour_digits.py): 20% mismatched, 15% faint but
                right, 10% near-duplicates
colour-digits-clean   the same with no mismatched captions, the faint pairs and near-duplicates kept

Every shapes set is evaluated on the same clean held-out shapes set, every colour-digits set on the same
held-out digits.
"""
import json
import os
from typing import Dict, NamedTuple, Tuple


class DemoData(NamedTuple):
    """One --data choice: its generator family, caption style and noise shares."""
    family: str  # "shapes" or "colour-digits"
    mismatch_fraction: float
    captions: str = "plain"


DATA_SETS = {
    "shapes": DemoData("shapes", 0.2),
    "shapes-clean": DemoData("shapes", 0.0),
    "shapes-hard": DemoData("shapes", 0.2, "varied"),
    "colour-digits": DemoData("colour-digits", 0.2),
    "colour-digits-clean": DemoData("colour-digits", 0.0),
}
TRAIN_PARTS = 4


def build_data(out: str, num_samples: int, test_samples: int, progress: bool = True,
               data: str = "shapes") -> Dict[str, str]:
    """{"train": path, "test": path} of the data set `data` under out/data (written when missing or stale)."""
    choice = DATA_SETS[data]
    build = build_colour_digits if choice.family == "colour-digits" else build_shapes
    return build(out, num_samples, test_samples, progress, data)


def _stem(data: str) -> str:
    return data.replace("-", "_")


def _data_folder(out: str) -> Tuple[str, int]:
    """(out/data, made if missing; the context length of the demo's tiny CLIP, which its tokens are cut to)."""
    from scan_fast.train.clip_model import TINY_CLIP_CONFIG

    folder = os.path.join(out, "data")
    os.makedirs(folder, exist_ok=True)
    return folder, TINY_CLIP_CONFIG["text_cfg"]["context_length"]


def build_colour_digits(out: str, num_samples: int, test_samples: int, progress: bool = True,
                        data: str = "colour-digits") -> Dict[str, str]:
    """The colour-digits train and held-out sets under out/data (reused when their meta matches)."""
    from scan_fast.demo.colour_digits import write_colour_digits

    choice = DATA_SETS[data]
    folder, context = _data_folder(out)
    paths = {"train": os.path.join(folder, f"{_stem(data)}{num_samples}.beton"),
             "test": os.path.join(folder, f"colour_digits_test{test_samples}.beton")}
    for split, n, seed in (("train", num_samples, 0), ("test", test_samples, 1)):
        path = paths[split]
        mismatch = choice.mismatch_fraction if split == "train" else 0.0
        try:
            meta = json.loads(open(path[: -len(".beton")] + ".meta.json").read())
            fresh = (os.path.isfile(path) and meta["num_samples"] == n and meta["split"] == split
                     and meta["mismatch_fraction"] == mismatch)
        except (OSError, ValueError, KeyError):
            fresh = False
        if not fresh:
            noise = (dict(mismatch_fraction=mismatch) if split == "train" else
                     dict(mismatch_fraction=0.0, faint_fraction=0.0, duplicate_fraction=0.0))
            if os.path.exists(path):
                os.remove(path)
            write_colour_digits(path, n, split=split, context_length=context, seed=seed, progress=progress, **noise)
    return paths


def build_shapes(out: str, num_samples: int, test_samples: int, progress: bool = True,
                 data: str = "shapes") -> Dict[str, str]:
    """Write a shapes training set and the held-out set once (reused when already there with the same size,
    noise and generator: data of an older generator is rewritten)."""
    from scan_fast.data import check_beton, write_shapes
    from scan_fast.data.embedded import read_shapes_meta, shapes_vocabulary

    choice = DATA_SETS[data]
    folder, context = _data_folder(out)
    # The training set is a part folder (4 parts), so the main job reads data the way a large
    # data set is read; the rows and their order are those of a single file.
    paths = {"train": os.path.join(folder, f"{_stem(data)}{num_samples}"),
             "test": os.path.join(folder, f"shapes_test{test_samples}.beton")}

    def stale(path, n, mismatch, captions):
        try:
            if check_beton(path)["num_samples"] != n:
                return True
        except (FileNotFoundError, ValueError):
            return True
        meta = read_shapes_meta(path)
        expected = dict(shapes_vocabulary(captions), mismatch_fraction=mismatch)
        return meta is None or any(meta.get(key) != value for key, value in expected.items())

    if stale(paths["train"], num_samples, choice.mismatch_fraction, choice.captions):
        write_shapes(paths["train"], num_samples=num_samples, mismatch_fraction=choice.mismatch_fraction,
                     duplicate_fraction=0.1, seed=0, context_length=context, progress=progress,
                     samples_per_part=-(-num_samples // TRAIN_PARTS), captions=choice.captions)
    if stale(paths["test"], test_samples, 0.0, "plain"):
        write_shapes(paths["test"], num_samples=test_samples, mismatch_fraction=0.0, duplicate_fraction=0.0,
                     seed=1, context_length=context, progress=progress)
    return paths
