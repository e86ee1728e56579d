"""Embedded datasets: deterministic bytes, correct splits, ground truth that matches the pixels."""
import hashlib
import json

import numpy as np
import pytest

from scan_fast.data.embedded import (COLOURS, DIGIT_NAMES, GRID, POSITIONS, RADII, SHAPE_MASKS, SHAPES,
                                     ShapesGenerator, digits_arrays, load_shapes_truth, split_held_out,
                                     write_digits, write_shapes)
from scan_fast.data.read.inspect import read_samples
from scan_fast.data.schema import check_beton
from scan_fast.data.tokenize import CaptionTokenizer


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def digits_dirs(tmp_path_factory):
    dirs = [tmp_path_factory.mktemp(f"digits{k}") for k in range(2)]
    for d in dirs:
        write_digits(d, resolution=16, progress=False)
    return dirs


def test_digits_are_deterministic(digits_dirs):
    a, b = digits_dirs
    for name in ("digits_train.beton", "digits_test.beton", "digits.classes.json"):
        assert _sha(a / name) == _sha(b / name)


def test_digits_split_and_content(digits_dirs):
    root = digits_dirs[0]
    meta = json.loads((root / "digits.classes.json").read_text())
    assert meta["classes"] == list(DIGIT_NAMES)
    train, test = np.array(meta["train_source_rows"]), np.array(meta["test_source_rows"])
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 1797
    images, labels = digits_arrays(16)
    for label in range(10):  # stratified: each class is about 20% held out
        held_out = np.sum(labels[test] == label) / np.sum(labels == label)
        assert 0.18 < held_out < 0.22
    back = read_samples(root / "digits_test.beton")
    assert back["id"] == list(range(len(test)))
    assert back["label"] == labels[test].tolist()
    tokenizer = CaptionTokenizer()
    for k in (0, 17, len(test) - 1):
        np.testing.assert_array_equal(back["image"][k], images[test[k]])
        caption = f"a photo of the digit {DIGIT_NAMES[labels[test[k]]]}"
        np.testing.assert_array_equal(back["tokens"][k], tokenizer(caption)[0])


def test_digits_are_real_upsampled_digits():
    from sklearn.datasets import load_digits

    images, labels = digits_arrays(8)  # no upsampling: the sklearn pixels, scaled to 0..255
    raw = load_digits()
    np.testing.assert_array_equal(labels, raw.target)
    np.testing.assert_allclose(images[..., 0], raw.images * 255 / 16, atol=0.5)
    assert (images[..., 0] == images[..., 2]).all()


def test_digits_moco_kind(tmp_path):
    write_digits(tmp_path, kind="moco", resolution=8, progress=False)
    check_beton(tmp_path / "digits_train.beton", ("image", "label", "id"))
    with pytest.raises(ValueError, match="kind must be one of"):
        write_digits(tmp_path, kind="simclr")
    with pytest.raises(ValueError, match="test_fraction"):
        split_held_out(np.arange(10) % 2, 1.5, 0)


@pytest.fixture(scope="module")
def shapes_writes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    kwargs = dict(num_samples=300, resolution=24, mismatch_fraction=0.2, duplicate_fraction=0.2,
                  image_mode="raw", progress=False)
    write_shapes(root / "a.beton", seed=4, **kwargs)
    write_shapes(root / "b.beton", seed=4, **kwargs)
    write_shapes(root / "c.beton", seed=5, **kwargs)
    return root


def test_shapes_same_seed_same_bytes(shapes_writes):
    root = shapes_writes
    assert _sha(root / "a.beton") == _sha(root / "b.beton")
    assert _sha(root / "a.truth.npz") == _sha(root / "b.truth.npz")
    assert _sha(root / "a.beton") != _sha(root / "c.beton")


def test_shapes_round_trip_and_truth(shapes_writes):
    root = shapes_writes
    truth = load_shapes_truth(root / "a.beton")
    meta = json.loads((root / "a.truth.json").read_text())
    gen = ShapesGenerator(300, 24, 0.2, 0.2, seed=4)
    back = read_samples(root / "a.beton")
    tokenizer = CaptionTokenizer()
    assert back["id"] == list(range(300))
    for i in range(300):
        np.testing.assert_array_equal(back["image"][i], gen.image(i))
        np.testing.assert_array_equal(back["tokens"][i], tokenizer(gen.caption(i))[0])
    assert meta["num_mismatched"] == truth["mismatched"].sum()
    assert 30 < truth["mismatched"].sum() < 90 and 30 < (truth["duplicate_of"] >= 0).sum() < 90
    # Clean captions describe the image; mismatched ones name another shape and colour.
    assert meta["shapes"] == list(SHAPES) and len(SHAPES) == 8 and meta["positions"] == list(POSITIONS)
    assert gen.caption(int(np.flatnonzero(~truth["mismatched"])[0])).split(" in the ")[1] in POSITIONS
    clean = ~truth["mismatched"]
    for attr in ("shape", "colour", "position"):
        np.testing.assert_array_equal(truth[f"caption_{attr}"][clean], truth[attr][clean])
    bad = truth["mismatched"]
    assert (truth["caption_shape"][bad] != truth["shape"][bad]).all()
    assert (truth["caption_colour"][bad] != truth["colour"][bad]).all()
    assert back["label"] == (truth["shape"] * len(COLOURS) + truth["colour"]).tolist()


def _masks(gen, ids):
    """The shape masks of samples `ids`, recomputed here from the generator's attributes."""
    r = gen.resolution
    cell = r / GRID
    grid = np.arange(r) + 0.5
    out = []
    for i in ids:
        row, col = divmod(gen.position[i], GRID)
        cx, cy = (col + 0.5 + gen.offset[i, 0]) * cell, (row + 0.5 + gen.offset[i, 1]) * cell
        radius = RADII[gen.size[i]] * cell
        u, v = np.meshgrid((grid - cx) / radius, (grid - cy) / radius)
        out.append(SHAPE_MASKS[SHAPES[gen.shape[i]]](u, v))
    return np.stack(out)


def test_shapes_pixels_match_the_ground_truth(shapes_writes):
    truth = load_shapes_truth(shapes_writes / "a.beton")
    images = np.stack(read_samples(shapes_writes / "a.beton")["image"]).astype(float)
    gen = ShapesGenerator(300, 24, 0.2, 0.2, seed=4)
    palette = np.array(list(COLOURS.values()), dtype=float)
    masks = _masks(gen, range(300))
    cell = 24 // GRID
    for i in range(300):
        # Inside the mask every pixel has the named colour (duplicates carry a small tint); outside
        # is grey background; and the shape lies in the quadrant its position names.
        assert masks[i].sum() >= 4, (i, SHAPES[truth["shape"][i]])
        np.testing.assert_allclose(images[i][masks[i]], np.broadcast_to(palette[truth["colour"][i]],
                                                                        (masks[i].sum(), 3)), atol=11)
        grey = images[i][~masks[i]]
        assert np.abs(grey - grey.mean(axis=1, keepdims=True)).max() < 1e-9
        row, col = divmod(truth["position"][i], GRID)
        ys, xs = np.nonzero(masks[i])
        assert row * cell <= ys.mean() < (row + 1) * cell and col * cell <= xs.mean() < (col + 1) * cell
    dup = np.flatnonzero(truth["duplicate_of"] >= 0)
    src = truth["duplicate_of"][dup]
    assert (src < dup).all() and (truth["duplicate_of"][src] == -1).all()
    near = np.abs(images[dup] - images[src]).mean(axis=(1, 2, 3))
    unrelated = np.abs(images[dup] - images[(src + 1) % 300]).mean(axis=(1, 2, 3))
    assert np.median(near) < 0.5 * np.median(unrelated)
    assert set(truth["shape"]) == set(range(len(SHAPES)))
    assert set(truth["position"]) == set(range(len(POSITIONS))) and len(POSITIONS) == GRID ** 2


@pytest.mark.parametrize("resolution, least_difference", [(16, 0.1), (32, 0.15)])
def test_each_shape_renders_distinctly(resolution, least_difference):
    """At the same place and size, any two shapes differ in a good share of their pixels (so shape is
    learnable), and the small size is a clearly smaller version of the large one.
    Also checks that render() draws exactly these masks in the named colour."""
    gen = ShapesGenerator(2 * len(SHAPES), resolution, 0.0, 0.0, seed=0)
    gen.shape[:] = np.tile(np.arange(len(SHAPES)), 2)
    gen.size[:] = np.repeat([1, 0], len(SHAPES))
    gen.position[:] = 0
    gen.offset[:] = 0.0
    gen.colour[:] = 0
    masks = _masks(gen, range(2 * len(SHAPES)))
    images = gen.render(0, 2 * len(SHAPES)).astype(float)
    red = np.array(COLOURS["red"], dtype=float)
    np.testing.assert_array_equal(np.abs(images - red).max(axis=-1) < 1, masks)
    large, small = masks[: len(SHAPES)], masks[len(SHAPES):]
    for a in range(len(SHAPES)):
        assert small[a].sum() < 0.75 * large[a].sum()
        for axis in (0, 1):  # the small one's extent lies within the large one's
            small_extent, large_extent = np.flatnonzero(small[a].any(axis)), np.flatnonzero(large[a].any(axis))
            assert large_extent[0] <= small_extent[0] and small_extent[-1] <= large_extent[-1]
        for b in range(a + 1, len(SHAPES)):
            differ = (large[a] ^ large[b]).sum() / (large[a] | large[b]).sum()
            assert differ > least_difference, (SHAPES[a], SHAPES[b], differ)  # circle / square: the closest


def test_shapes_render_is_independent_of_block_order():
    gen = ShapesGenerator(2500, 16, seed=1)
    late_first = [gen.image(i).copy() for i in (2400, 5, 1100)]
    fresh = ShapesGenerator(2500, 16, seed=1)
    for image, i in zip(late_first, (2400, 5, 1100)):
        np.testing.assert_array_equal(image, fresh.image(i))


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_samples=0), "num_samples"),
    (dict(num_samples=10, resolution=8), "resolution"),
    (dict(num_samples=10, mismatch_fraction=1.0), "mismatch_fraction"),
    (dict(num_samples=10, duplicate_fraction=-0.1), "duplicate_fraction"),
])
def test_shapes_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShapesGenerator(**kwargs)


def test_missing_truth_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ground truth"):
        load_shapes_truth(tmp_path / "nothing.beton")


def test_shapes_moco_kind(tmp_path):
    write_shapes(tmp_path / "m.beton", num_samples=40, kind="moco", resolution=16, image_mode="raw", progress=False)
    check_beton(tmp_path / "m.beton", ("image", "label", "id"))
    back = read_samples(tmp_path / "m.beton")
    gen = ShapesGenerator(40, 16, 0.1, 0.1, seed=0)
    assert back["label"] == [gen.label(i) for i in range(40)]
    np.testing.assert_array_equal(back["image"][7], gen.image(7))
