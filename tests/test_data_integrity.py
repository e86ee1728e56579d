"""Damaged stored images, pinned side files, uid and key integrity: each a clear error, never a silent
wrong answer."""
import numpy as np
import pytest

from scan_fast.data.beton import BetonFile

RES = 32


def stored_image(path, row):
    """(byte offset, size) of the stored image of `row` in a .beton."""
    beton = BetonFile(path)
    column = f"f{list(beton.handlers).index('image')}"
    pointer = int(beton.metadata[row][column]["data_ptr"])
    index = beton.pointer_index()
    size = int(index["size"][np.searchsorted(index["ptr"], pointer)])
    beton.close()
    return pointer, size


def damage_jpeg(path, rows, how="middle"):
    """Overwrite 64 bytes inside (or the start marker of) the stored JPEG of each row, in place."""
    rng = np.random.default_rng(0)
    with open(path, "r+b") as f:
        for row in rows:
            pointer, size = stored_image(path, row)
            if how == "marker":
                f.seek(pointer)
                f.write(b"\0\0")
            else:
                f.seek(pointer + size // 2 - 32)
                f.write(rng.integers(0, 256, 64, dtype=np.uint8).tobytes())


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from scan_fast.data import write_shapes

    folder = tmp_path_factory.mktemp("integrity")
    path = str(folder / "clip.beton")
    write_shapes(path, num_samples=48, resolution=RES, context_length=16, progress=False)
    return path


@pytest.fixture
def damaged(shapes, tmp_path):
    import shutil

    path = str(tmp_path / "damaged.beton")
    shutil.copy(shapes, path)
    damage_jpeg(path, [20, 30])
    return path


@pytest.mark.parametrize("augment", [True, False])
def test_a_damaged_jpeg_stops_the_epoch_naming_its_sample_and_file(damaged, augment):
    from scan_fast.data import clip_loader
    from scan_fast.data.loaders import LoaderError

    loader = clip_loader(damaged, 16, RES, shuffle=False, augment=augment, num_workers=1)
    with pytest.raises(LoaderError, match=r"sample id 20 \(row 20 of .*damaged\.beton\) does not decode"):
        for _ in loader:
            pass
    loader.close()


def test_a_zeroed_start_marker_is_caught_too(shapes, tmp_path):
    import shutil

    from scan_fast.data import clip_loader
    from scan_fast.data.loaders import LoaderError

    path = str(tmp_path / "marker.beton")
    shutil.copy(shapes, path)
    damage_jpeg(path, [5], how="marker")
    loader = clip_loader(path, 16, RES, shuffle=False, num_workers=1)
    with pytest.raises(LoaderError, match="sample id 5 "):
        list(loader)
    loader.close()


def test_undamaged_images_read_as_before(shapes):
    from scan_fast.data import clip_loader

    loader = clip_loader(shapes, 16, RES, shuffle=False, num_workers=1)
    assert sum(len(batch.ids) for batch in loader) == 48
    loader.close()


def test_data_check_decodes_every_image_and_names_each_damaged_one(damaged, shapes):
    from scan_fast.data.convert import check_path

    assert check_path(shapes, progress=False) == []
    for workers in (1, 2):
        problems = check_path(damaged, progress=False, workers=workers)
        assert len(problems) == 2, problems
        assert "sample id 20 (row 20)" in problems[0] and "sample id 30 (row 30)" in problems[1]
        assert all("damaged.beton" in line and "does not decode" in line for line in problems)


def test_data_check_names_the_part_of_a_damaged_image(tmp_path):
    from scan_fast.data import write_shapes
    from scan_fast.data.convert import check_path

    folder = tmp_path / "parts"
    write_shapes(str(folder), num_samples=40, resolution=RES, context_length=16, progress=False,
                 samples_per_part=16)
    damage_jpeg(str(folder / "part-00001.beton"), [3])
    problems = check_path(str(folder), progress=False, workers=2)
    assert len(problems) == 1 and "part-00001.beton" in problems[0] and "sample id 19 (row 3)" in problems[0]
