"""Keyed augmentation: the random numbers, the crop rule, the decoder, the photometric ops
(against torchvision's functional versions) and the loaders' determinism."""
import numba
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

from scan_fast.data.read import augment
from scan_fast.data.read.batch import Batch
from scan_fast.data.read.decoders import KeyedRandomResizedCropDecoder, keyed_crop as crop_rule
from scan_fast.data.read.keyed_random import keyed_uniforms, sample_key as key_of

keyed_crop = numba.njit(crop_rule)  # as the decoder compiles it


def sample_key(seed, epoch, sample, view):
    return np.uint64(key_of(seed, epoch, sample, view))  # keep it uint64 between compiled calls

RES = 32


# ----------------------------------------------------------------------------- keyed uniforms

def test_keyed_uniforms_are_a_function_of_their_key_only():
    ids = np.array([5, 0, 9, 5], np.int64)
    a = keyed_uniforms(7, 2, ids, 1, 64, 9)
    assert a.shape == (4, 9) and a.dtype == np.float64
    np.testing.assert_array_equal(a, keyed_uniforms(7, 2, ids, 1, 64, 9))
    np.testing.assert_array_equal(a[0], a[3])  # same sample, same draws, wherever it sits
    np.testing.assert_array_equal(a[:, 2:5], keyed_uniforms(7, 2, ids, 1, 66, 3))  # draws are addressable
    for other in (keyed_uniforms(8, 2, ids, 1, 64, 9), keyed_uniforms(7, 3, ids, 1, 64, 9),
                  keyed_uniforms(7, 2, ids, 0, 64, 9), keyed_uniforms(7, 2, ids + 1, 1, 64, 9)):
        assert not np.any(other == a)


def test_keyed_uniforms_are_uniform():
    values = keyed_uniforms(0, 0, np.arange(20_000), 0, 0, 5).ravel()
    assert values.min() >= 0.0 and values.max() < 1.0
    counts = np.histogram(values, bins=20, range=(0, 1))[0]
    expected = values.size / 20
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 50  # 19 degrees of freedom: p < 1e-4 for a fair generator
    assert abs(np.corrcoef(values[:-1], values[1:])[0, 1]) < 0.02


def test_keyed_uniforms_refuse_negative_inputs():
    with pytest.raises(ValueError, match="sample ids must be >= 0, got -3"):
        keyed_uniforms(0, 0, np.array([1, -3]), 0, 0, 1)
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        keyed_uniforms(0, -1, np.array([1]), 0, 0, 1)


# ----------------------------------------------------------------------------- crop rule

@settings(max_examples=200, deadline=None)
@given(height=st.integers(1, 600), width=st.integers(1, 600), low=st.floats(0.05, 1.0),
       span=st.floats(0.0, 1.0), sample=st.integers(0, 2**40), epoch=st.integers(0, 1000))
def test_keyed_crop_stays_inside_the_image_and_follows_scale_and_ratio(height, width, low, span, sample, epoch):
    scale = np.array([low, low + (1.0 - low) * span])
    ratio = np.array([3 / 4, 4 / 3])
    key = sample_key(1, epoch, sample, 0)
    i, j, h, w = keyed_crop(key, height, width, scale, np.log(ratio))
    assert 0 <= i and 0 <= j and 1 <= h and 1 <= w and i + h <= height and j + w <= width
    assert (i, j, h, w) == keyed_crop(key, height, width, scale, np.log(ratio))
    fell_back = (i, j) == ((height - h) // 2, (width - w) // 2)
    if not fell_back and min(h, w) >= 20:  # rounding aside, area and aspect are as drawn
        assert scale[0] * 0.9 <= h * w / (height * width) <= scale[1] * 1.1
        assert ratio[0] * 0.9 <= w / h <= ratio[1] * 1.1


def test_keyed_crops_are_distributed_as_torchvisions_random_resized_crop():
    from scipy.stats import ks_2samp
    from torchvision.transforms import RandomResizedCrop

    height, width, n = 180, 240, 3000
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    ours = np.array([keyed_crop(sample_key(0, 0, sample, 0), height, width, np.array(scale),
                                np.log(np.array(ratio))) for sample in range(n)])
    torch.manual_seed(0)
    image = torch.empty(3, height, width)
    theirs = np.array([RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(n)])
    for name, of in (("area", lambda c: c[:, 2] * c[:, 3]), ("aspect", lambda c: c[:, 3] / c[:, 2]),
                     ("top", lambda c: c[:, 0] / (height - c[:, 2] + 1)),
                     ("left", lambda c: c[:, 1] / (width - c[:, 3] + 1))):
        assert ks_2samp(of(ours), of(theirs)).pvalue > 1e-3, name


def test_decoder_refuses_bad_arguments():
    with pytest.raises(ValueError, match="crop scale"):
        KeyedRandomResizedCropDecoder((8, 8), scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="flip_prob"):
        KeyedRandomResizedCropDecoder((8, 8), flip_prob=1.5)


# ----------------------------------------------------------------------------- decoder and loaders

@pytest.fixture(scope="module")
def betons(tmp_path_factory):
    from scan_fast.data import write_shapes

    folder = tmp_path_factory.mktemp("augment")
    paths = {"jpg": str(folder / "jpg.beton"), "raw": str(folder / "raw.beton"), "clip": str(folder / "clip.beton")}
    write_shapes(paths["jpg"], num_samples=48, kind="moco", resolution=RES, progress=False)
    write_shapes(paths["raw"], num_samples=48, kind="moco", resolution=RES, image_mode="raw", progress=False)
    write_shapes(paths["clip"], num_samples=48, resolution=RES, context_length=16, progress=False)
    return paths


def _images_by_id(loader, epoch, *outputs):
    """{id: tuple of the named outputs} over one epoch (batch tensors are copied: ffcv reuses them)."""
    loader.set_epoch(epoch)
    found = {}
    for batch in loader:
        for row, sample in enumerate(batch.ids.tolist()):
            found[sample] = tuple(getattr(batch, k)[row].clone() for k in outputs)
    return found


@pytest.mark.parametrize("mode", ["jpg", "raw"])
def test_whole_image_crop_with_flip_equals_the_mirrored_centre_decode(betons, mode):
    """scale = ratio = 1 on square images crops everything: the keyed decoder must then return the
    plain decode, mirrored when flip_prob is 1."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder
    from ffcv.transforms import ToTensor

    from scan_fast.data.read.loaders import build_loader

    def read(decoder):
        pipes = {"image": [decoder, ToTensor()], "label": None, "id": [IntDecoder(), ToTensor()]}
        loader = build_loader(betons[mode], 16, pipes, ("image", "id"), shuffle=False, drop_last=False,
                              num_workers=1)
        return torch.cat([batch.images.clone() for batch in loader])

    plain = read(CenterCropRGBImageDecoder((RES, RES), ratio=1.0))
    same = read(KeyedRandomResizedCropDecoder((RES, RES), scale=(1.0, 1.0), ratio=(1.0, 1.0)))
    flipped = read(KeyedRandomResizedCropDecoder((RES, RES), scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=1.0))
    torch.testing.assert_close(same, plain, rtol=0, atol=0)
    torch.testing.assert_close(flipped, plain.flip(2), rtol=0, atol=0)  # NHWC: width is dim 2


def test_moco_views_depend_on_seed_epoch_and_id_only(betons):
    from scan_fast.data import moco_loader

    loader = moco_loader(betons["jpg"], 16, RES, seed=3, num_workers=1)
    first = _images_by_id(loader, 0, "images", "view2")
    again = _images_by_id(moco_loader(betons["jpg"], 8, RES, seed=3, num_workers=2), 0, "images", "view2")
    assert first.keys() == again.keys() and len(first) == 48
    for sample in first:  # other batch size, other threads: same images per sample
        torch.testing.assert_close(first[sample], again[sample], rtol=0, atol=0)
    next_epoch = _images_by_id(loader, 1, "images", "view2")
    other_seed = _images_by_id(moco_loader(betons["jpg"], 16, RES, seed=4, num_workers=1), 0, "images", "view2")
    for changed in (next_epoch, other_seed):
        assert sum(torch.equal(first[s][0], changed[s][0]) for s in first) <= 2
    assert all(not torch.equal(*first[s]) for s in first)  # the two views differ


def test_clip_crops_depend_on_seed_epoch_and_id_only(betons):
    from scan_fast.data import clip_loader

    def epoch_images(batch_size, seed, epoch):
        loader = clip_loader(betons["clip"], batch_size, RES, seed=seed, num_workers=1, crop_scale=(0.3, 1.0))
        return _images_by_id(loader, epoch, "images")

    loader = clip_loader(betons["clip"], 16, RES, seed=0, num_workers=1, crop_scale=(0.3, 1.0))
    first = _images_by_id(loader, 2, "images")
    for sample, images in epoch_images(12, 0, 2).items():
        torch.testing.assert_close(images, first[sample], rtol=0, atol=0)
    other = _images_by_id(loader, 3, "images")  # the same loader, a later epoch
    assert sum(torch.equal(first[s][0], other[s][0]) for s in first) <= 2


# ----------------------------------------------------------------------------- photometric ops

@pytest.fixture
def images():
    torch.manual_seed(0)
    return torch.rand(4, 3, 20, 24)


@pytest.mark.parametrize("op, ours", [
    (TF.adjust_brightness, lambda x, f: augment._blend(x, torch.zeros_like(x), f)),
    (TF.adjust_saturation, lambda x, f: augment._blend(x, augment.grayscale(x).expand_as(x), f)),
])
def test_blends_match_torchvision(images, op, ours):
    factors = torch.tensor([0.6, 1.0, 1.3, 0.0])
    expected = torch.stack([op(img, float(f)) for img, f in zip(images, factors)])
    torch.testing.assert_close(ours(images, factors), expected, rtol=1e-5, atol=1e-5)


def test_contrast_grayscale_hue_blur_and_solarize_match_torchvision(images):
    factors = torch.tensor([0.6, 1.0, 1.4, 0.2])
    jitter = augment.color_jitter(images, torch.ones(4), factors, torch.ones(4), torch.zeros(4))
    expected = torch.stack([TF.adjust_contrast(img, float(f)) for img, f in zip(images, factors)])
    torch.testing.assert_close(jitter, expected, rtol=1e-4, atol=1e-4)

    torch.testing.assert_close(augment.grayscale(images), TF.rgb_to_grayscale(images), rtol=1e-5, atol=1e-5)

    hues = torch.tensor([-0.1, 0.0, 0.05, 0.1])
    shifted = augment.color_jitter(images, torch.ones(4), torch.ones(4), torch.ones(4), hues)
    expected = torch.stack([TF.adjust_hue(img, float(h)) for img, h in zip(images, hues)])
    torch.testing.assert_close(shifted, expected, rtol=1e-4, atol=1e-4)

    sigmas = torch.tensor([0.5, 1.0, 1.7, 0.1])
    blurred = augment.gaussian_blur(images, sigmas, kernel_size=7)
    expected = torch.stack([TF.gaussian_blur(img, [7, 7], [float(s), float(s)]) for img, s in zip(images, sigmas)])
    torch.testing.assert_close(blurred, expected, rtol=1e-5, atol=1e-5)

    torch.testing.assert_close(augment.solarize(images), TF.solarize(images, 0.5))


def test_moco_view_augment_follows_its_draws(images):
    pixels = (images * 255).round().to(torch.uint8)
    plain = augment.MocoViewAugment(jitter_p=0.0, grayscale_p=1.0, blur_p=0.0)
    out = plain(pixels, torch.full((4, plain.NUM_DRAWS), 0.5))
    expected = (augment.grayscale(pixels.float() / 255).expand(-1, 3, -1, -1) - plain.normalize.mean) \
        / plain.normalize.std
    torch.testing.assert_close(out, expected)
    views = augment.KeyedMocoViews(seed=1)
    ids = torch.tensor([3, 8, 1, 40])
    one = views(Batch(ids=ids, images=pixels, view2=pixels, labels=ids), epoch=2)
    part = views(Batch(ids=ids[2:], images=pixels[2:], view2=pixels[2:], labels=ids[2:]), epoch=2)
    torch.testing.assert_close(one.images[2:], part.images)  # a sample's augmentation ignores its batch mates
    torch.testing.assert_close(one.view2[2:], part.view2)
    with pytest.raises(ValueError, match="draws must have shape"):
        plain(pixels, torch.zeros(4, 3))
