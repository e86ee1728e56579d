"""colour-digits, the main job's second noisy data set: captions, noise shares, held-out handwriting."""
import numpy as np

from scan_fast.demo.colour_digits import DIGIT_NAMES, class_names, generate


def test_captions_name_the_drawn_digit_and_colour_except_the_mismatched():
    images, captions, labels, t = generate(3000, split="train", seed=3)
    names = [n.split()[0] for n in class_names()[:8]]
    said = [c.split() for c in captions]
    caption_colour = np.array([names.index(w[1]) for w in said])
    caption_digit = np.array([DIGIT_NAMES.index(w[2]) for w in said])
    right = (caption_colour == t["colour"]) & (caption_digit == t["digit"])
    np.testing.assert_array_equal(~right, t["mismatched"])
    assert not (t["mismatched"] & t["faint"]).any()
    assert abs(t["mismatched"].mean() - 0.2) < 0.03 and abs(t["faint"].mean() - 0.15) < 0.03
    dup = t["duplicate_of"] >= 0
    assert 0.07 < dup.mean() < 0.12 and np.all(t["duplicate_of"][dup] < np.flatnonzero(dup))
    np.testing.assert_array_equal(labels, t["digit"] * 8 + t["colour"])
    # faint pairs are drawn at lower contrast: less colour above the background
    ink = images.astype(np.float32).max(axis=(1, 2, 3))
    assert ink[t["faint"]].mean() < ink[~t["faint"]].mean() - 40


def test_the_held_out_split_is_clean_and_names_80_classes():
    images, _, labels, test = generate(500, split="test", seed=1, mismatch_fraction=0.0, faint_fraction=0.0,
                                       duplicate_fraction=0.0)
    assert not test["mismatched"].any() and not test["faint"].any()
    assert len(class_names()) == 80 and class_names()[7 * 8 + 0] == "red seven"
