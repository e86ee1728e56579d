"""Labelled .beton (image, label, id) from an ImageFolder tree, root/<class>/<image>."""
from dataclasses import replace
from pathlib import Path
from typing import List, Optional, Union

from scan_fast.outputs import check_output

from ..classes import save_class_names
from .images import BrokenLink, FileImage
from .options import WriteOptions
from ..schema import labelled_fields
from .summary import WriteSummary
from .rows import write_image_rows

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def _folder_images(folder: Path) -> List[Union[FileImage, BrokenLink]]:
    """The files under folder with an image extension, sorted; a dangling link is a BrokenLink
    (Path.is_file() is False for it, which would drop it without a word)."""
    found = []
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if p.is_file():
            found.append(FileImage(str(p)))
        elif p.is_symlink() and not p.exists():
            found.append(BrokenLink(str(p)))
    return found


def write_labelled_from_image_folder(root, target, options: Optional[WriteOptions] = None, **option_values):
    """Labelled .beton (image, label, id) from root/<class>/<image>: MoCo's training data, or an
    evaluation set for either trainer. Labels follow sorted class names (as torchvision's
    ImageFolder), saved beside the target (classes.py). A class folder without images is an
    error, as in torchvision: keeping it would give a class no sample can have. With
    `samples_per_part`, `target` is a part folder (convert.py) over the images in that order. A
    source JPEG is stored as it is where it can be (images.py), unless `reencode`. options: a
    WriteOptions (or its fields as keywords)."""
    options = WriteOptions.of(options, **option_values)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if options.samples_per_part is None:
        target = check_output(target, overwrite=options.overwrite)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"image folder {root} has no class sub-folders")
    refs, extras, where, empty = [], [], [], []
    for label, name in enumerate(classes):
        found = _folder_images(root / name)
        if not found:
            empty.append(name)
        for ref in found:
            refs.append(ref)
            extras.append({"label": label})
            where.append(ref.path)
    if empty:
        raise ValueError(f"image folder {root}: class folder(s) {empty} hold no images with extensions "
                         f"{IMAGE_EXTENSIONS}; remove them or add images")
    fields = labelled_fields(**options.image_field_options())
    if options.samples_per_part is None:
        summary = WriteSummary(path=str(target), rows_read=len(refs))
        summary = write_image_rows(target, fields, refs, where, extras, summary, options)
        save_class_names(target, classes)
        return summary
    from .convert import convert_parts, part_workers

    options = replace(options, num_workers=part_workers(options.num_workers))

    def write_part(path, part, start, stop):
        summary = WriteSummary(path=str(path), rows_read=stop - start)
        return write_image_rows(path, fields, refs[start:stop], where[start:stop], extras[start:stop], summary,
                                options)

    what = {"source": {"kind": "image_folder", "path": str(root.resolve()), "images": len(refs),
                       "classes": classes},
            **options.image_record()}
    summary = convert_parts(target, what=what, samples_per_part=options.samples_per_part,
                            count_rows=lambda processes, previous: {"num_rows": len(refs)},
                            write_part=write_part, part_range=options.part_range, overwrite=options.overwrite,
                            progress=options.progress)
    save_class_names(str(Path(target)), classes)
    return summary


write_moco_from_image_folder = write_labelled_from_image_folder
