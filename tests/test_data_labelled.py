"""Labelled sets from a user's own files, and CLIP zero-shot on them: `data labelled`, `data clip
--label-column`, class names saved beside the set and checked against its labels before any training."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from scan_fast.cli import main
from scan_fast.data import labelled_loader, read_labels
from scan_fast.data.read.augment import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from scan_fast.data.read.inspect import read_samples
from scan_fast.train.checkpoint import FORMAT
from scan_fast.train.clip_model import Clip
from scan_fast.train.evaluate import class_embeddings, class_prompts, zero_shot_classes

CLASSES = ("cat", "dog", "fox")
RES = 32  # the tiny CLIP's input size: the stored images need no resize


@pytest.fixture(scope="module")
def user_data(tmp_path_factory):
    """An ImageFolder (3 classes x 3 images) and a caption CSV with a label column over the same images."""
    root = tmp_path_factory.mktemp("user")
    rng = np.random.default_rng(5)
    rows = ["image,caption,kind"]
    for label, name in enumerate(CLASSES):
        (root / "tree" / name).mkdir(parents=True)
        for i in range(3):
            image = rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / "tree" / name / f"{i}.png")
            rows.append(f"tree/{name}/{i}.png,a photo of a {name} number {i},{name}")
    (root / "pairs.csv").write_text("\n".join(rows) + "\n")
    quiet = ["--image-mode", "raw", "--num-workers", "1", "--no-progress"]
    assert main(["data", "labelled", "--image-folder", str(root / "tree"), "--out", str(root / "val.beton"),
                 *quiet]) == 0
    assert main(["data", "clip", "--table", str(root / "pairs.csv"), "--label-column", "kind",
                 "--context-length", "16", "--out", str(root / "pairs.beton"), *quiet]) == 0
    return root


def test_data_labelled_writes_images_labels_ids_and_the_names_beside(user_data):
    back = read_samples(user_data / "val.beton")
    assert back["label"] == [0, 0, 0, 1, 1, 1, 2, 2, 2] and back["id"] == list(range(9))
    expected = np.asarray(Image.open(user_data / "tree" / "dog" / "1.png"))
    np.testing.assert_array_equal(back["image"][4], expected)
    assert json.loads((user_data / "val.beton.classes.json").read_text()) == list(CLASSES)


def test_label_column_labels_a_caption_table(user_data):
    back = read_samples(user_data / "pairs.beton")
    assert back["label"] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert set(back) == {"image", "tokens", "id", "label"}
    assert json.loads((user_data / "pairs.beton.classes.json").read_text()) == list(CLASSES)


def test_numeric_class_names_sort_as_numbers(tmp_path):
    from scan_fast.data.write.tables import label_names

    assert label_names(["10", "9", "9", "100"]) == ["9", "10", "100"]
    assert label_names(["b", "a", "10"]) == ["10", "a", "b"]


def test_labelled_loader_reads_both_layouts_alike(user_data):
    """A labelled .beton (image, label, id) and a CLIP one with labels (image, tokens, id, label)."""
    batches = {}
    for name in ("val", "pairs"):
        path = user_data / f"{name}.beton"
        got = list(labelled_loader(path, 4, RES, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, num_workers=1))
        images, labels, ids = (torch.cat([getattr(b, k) for b in got]) for k in ("images", "labels", "ids"))
        assert labels.tolist() == read_labels(path).tolist() == read_samples(path)["label"]
        assert ids.tolist() == list(range(9))
        batches[name] = images
    torch.testing.assert_close(batches["val"], batches["pairs"], rtol=0, atol=0)


def test_class_names_come_from_beside_the_set_unless_a_file_is_given(user_data, tmp_path):
    assert class_prompts(user_data / "val.beton")[0] == list(CLASSES)
    names = tmp_path / "names.txt"
    names.write_text("kitten\npuppy\nfox cub\n")
    names_, prompts = class_prompts(user_data / "val.beton", str(names), "a {} in the wild")
    assert names_ == ["kitten", "puppy", "fox cub"] and prompts[1] == ["a puppy in the wild"]


@pytest.mark.parametrize("template", ["a {x} of {}", "a {} of {}", "a {0} photo", "a photo {", "no field"])
def test_a_bad_template_is_named(user_data, template):
    with pytest.raises(ValueError, match="--zeroshot-template"):
        zero_shot_classes(user_data / "val.beton", template=template)


def test_names_that_do_not_cover_the_labels_stop_training_before_it_starts(user_data, tmp_path):
    from scan_fast.train.clip import train_clip
    from scan_fast.train.config import ClipConfig

    names = tmp_path / "two.txt"
    names.write_text("cat\ndog\n")
    cfg = ClipConfig(train_data=str(user_data / "pairs.beton"), val_data=str(user_data / "val.beton"),
                     zeroshot_classes=str(names), batch_size=4, epochs=1, workers=1, logs=str(tmp_path / "runs"),
                     progress=False, tensorboard=False)
    with pytest.raises(ValueError, match=r"labels up to 2, but --zeroshot-classes .*two.txt names only 2"):
        train_clip(cfg)
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written


def test_more_names_than_labels_are_refused(user_data, tmp_path):
    names = tmp_path / "five.txt"
    names.write_text("a\nb\nc\nzebra\nyak\n")  # the set holds labels 0..2
    with pytest.raises(ValueError, match=r"--zeroshot-classes .*five.txt names 5 classes, but .*val.beton holds labels "
                                         r"0..2 \(3 classes\): the 2 extra name\(s\) from 'zebra' on"):
        zero_shot_classes(user_data / "val.beton", str(names))
    names.write_text("a\nb\nc\n")
    assert len(zero_shot_classes(user_data / "val.beton", str(names))) == 3


@pytest.fixture(scope="module")
def checkpoint(user_data):
    """A CLIP checkpoint of untrained weights (eval needs only model and config)."""
    torch.manual_seed(0)
    clip = Clip(context_length=16)
    path = user_data / "fresh.pt"
    torch.save({"format": FORMAT, "model": clip.state_dict(),
                "config": {"model": "scan-tiny-vit", "train_data": str(user_data / "pairs.beton")}}, path)
    return path, clip


def _oracle_accuracy(clip, beton, names):
    """Zero-shot accuracy from read_samples' images, normalised by hand."""
    back = read_samples(beton)
    images = torch.from_numpy(np.stack(back["image"])).permute(0, 3, 1, 2).float() / 255
    images = (images - torch.tensor(OPENAI_CLIP_MEAN)[:, None, None]) / torch.tensor(OPENAI_CLIP_STD)[:, None, None]
    with torch.no_grad():
        features = clip.model.encode_image(images, normalize=True)
        text = class_embeddings(clip, [[f"a photo of a {n}."] for n in names], "cpu")
    predicted = (features @ text.T).argmax(1)
    return float((predicted == torch.tensor(back["label"])).float().mean())


def test_eval_scores_a_labelled_set_without_tokens(user_data, checkpoint, capsys):
    path, clip = checkpoint
    clip.eval()
    scores = []
    for name in ("val", "pairs"):
        assert main(["eval", str(path), "--val-data", str(user_data / f"{name}.beton"), "--workers", "1"]) == 0
        out = capsys.readouterr().out
        scores.append(float(out.split("zero_shot:")[1].split()[0]))
    assert scores[0] == scores[1] == pytest.approx(_oracle_accuracy(clip, user_data / "val.beton", CLASSES),
                                                   abs=1e-4)


def test_eval_errors_are_one_line(user_data, checkpoint, tmp_path, capsys):
    path, clip = checkpoint
    val = str(user_data / "val.beton")
    assert main(["eval", str(path), "--val-data", val, "--zeroshot-template", "a {x} of {}"]) == 2
    assert "--zeroshot-template 'a {x} of {}' must hold exactly one {}" in capsys.readouterr().err
    weights = clip.state_dict()
    del weights["model.logit_scale"]
    torch.save({"format": FORMAT, "model": weights, "config": {"model": "scan-tiny-vit", "train_data": "x"}},
               tmp_path / "partial.pt")
    assert main(["eval", str(tmp_path / "partial.pt"), "--val-data", val]) == 2
    assert "weights do not fit the model its config names (missing ['model.logit_scale']" in capsys.readouterr().err
    torch.save({"format": FORMAT, "config": {"model": "scan-tiny-vit"}}, tmp_path / "nomodel.pt")
    assert main(["eval", str(tmp_path / "nomodel.pt"), "--val-data", val]) == 2
    assert "no model entry" in capsys.readouterr().err


def test_a_val_set_without_labels_says_how_to_write_one(user_data, checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    unlabelled = tmp_path / "pairs_only.beton"
    assert main(["data", "clip", "--table", str(user_data / "pairs.csv"), "--context-length", "16",
                 "--out", str(unlabelled), "--num-workers", "1", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", str(path), "--val-data", str(unlabelled)]) == 2
    err = capsys.readouterr().err
    assert "--val-data:" in err and "lacks field(s) ['label']" in err and "scan-fast data labelled" in err
