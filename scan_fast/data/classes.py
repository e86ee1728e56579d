"""Class names of a labelled .beton: saved beside it, read back, and checked against its labels.

`X.beton` with labels 0..C-1 has its class names, in label order, in `X.beton.classes.json`
(a JSON list of strings). The writers save it; zero-shot evaluation reads it unless given a
names file; `check_class_names` runs before any training so a mismatch is found up front.
"""
import json
import os
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np


def class_names_path(beton) -> Path:
    return Path(f"{os.fspath(beton)}.classes.json")


def save_class_names(beton, names: Sequence[str]) -> Path:
    """Write the names beside `beton` (temporary file + rename: a reader never sees half a list)."""
    path = class_names_path(beton)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.write_text(json.dumps(list(names)))
    os.replace(partial, path)
    return path


def load_class_names(beton) -> Optional[List[str]]:
    """The names saved beside `beton`, or None when there is no names file."""
    path = class_names_path(beton)
    if not path.is_file():
        return None
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a JSON list of class names ({err})") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path}: not a JSON list of class names")
    return names


def read_names_file(path) -> List[str]:
    """Class names from a text file, one a line in label order (blank lines ignored)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no class names file at {path}")
    try:
        with open(path, encoding="utf-8-sig") as fp:
            names = [line.strip() for line in fp if line.strip()]
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: class names are not UTF-8 text ({err})") from None
    if not names:
        raise ValueError(f"{path} lists no class names")
    return names


def check_class_names(names: Sequence[str], labels: np.ndarray, data, source: str,
                      extra_names: bool = True) -> None:
    """Every label of `data` must name a class: 0 <= label < len(names), and names must be distinct.

    With extra_names=False (names a user gave) there must be no name past the largest label either:
    zero-shot would score every image against those classes too (distractors nobody asked for).
    `source` says where the names came from (a file, or 'beside the set'); it is in the message.
    """
    labels = np.asarray(labels)
    if len(labels) and int(labels.min()) < 0:
        raise ValueError(f"{data} holds label {int(labels.min())}; labels must be >= 0")
    if len(labels) and int(labels.max()) >= len(names):
        raise ValueError(f"{data} holds labels up to {int(labels.max())}, but {source} names only "
                         f"{len(names)} classes; give one name per label, in label order")
    classes = int(labels.max()) + 1 if len(labels) else 0
    if not extra_names and len(names) > classes:
        raise ValueError(f"{source} names {len(names)} classes, but {data} holds labels 0..{classes - 1} "
                         f"({classes} classes): the {len(names) - classes} extra name(s) from {names[classes]!r} on "
                         f"would be classes no image has; give one name per label, in label order")
    seen = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{source} names class {name!r} twice: zero-shot needs distinct names")
        seen.add(name)
