"""Evaluation helpers against plain oracles on synthetic features."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scan_fast.train.evaluate import class_prompts, knn_accuracy, linear_probe_accuracy
from scan_fast.train.loop import lr_at
from scan_fast.train.moco_model import momentum_at


def _knn_oracle(train_x, train_y, test_x, k, temperature):
    """Weighted kNN vote written as a loop over test samples."""
    predictions = []
    for x in test_x:
        sims = (train_x @ x).numpy()
        order = np.argsort(-sims, kind="stable")[:k]
        votes = {}
        for j in order:
            votes[int(train_y[j])] = votes.get(int(train_y[j]), 0.0) + np.exp(sims[j] / temperature)
        predictions.append(max(votes, key=votes.get))
    return predictions


@pytest.mark.parametrize("k", [1, 5, 200])
def test_knn_matches_a_loop_oracle(k):
    train_x = F.normalize(torch.randn(120, 16), dim=1)
    test_x = F.normalize(torch.randn(30, 16), dim=1)
    train_y, test_y = torch.randint(0, 4, (120,)), torch.randint(0, 4, (30,))
    expected = np.mean(np.array(_knn_oracle(train_x, train_y, test_x, min(k, 120), 0.07)) == test_y.numpy())
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=k) == pytest.approx(expected)


def test_probes_separate_separable_classes_and_not_random_labels():
    centers = torch.randn(3, 8) * 4
    y = torch.arange(300) % 3
    x = centers[y] + torch.randn(300, 8)
    assert linear_probe_accuracy(x[:200], y[:200], x[200:], y[200:]) > 0.95
    assert knn_accuracy(F.normalize(x[:200], dim=1), y[:200], F.normalize(x[200:], dim=1), y[200:]) > 0.9
    shuffled = y[torch.randperm(300)]
    assert linear_probe_accuracy(x[:200], shuffled[:200], x[200:], shuffled[200:]) < 0.6


def test_schedules_are_functions_of_the_fractional_epoch():
    assert lr_at(0.0, 1.0, 2.0, 10) == 0.0 and lr_at(1.0, 1.0, 2.0, 10) == pytest.approx(0.5)
    assert lr_at(2.0, 1.0, 2.0, 10) == pytest.approx(1.0) and lr_at(10.0, 1.0, 2.0, 10) == pytest.approx(0.0)
    assert lr_at(6.0, 1.0, 2.0, 10) == pytest.approx(0.5)  # half-way through the cosine
    assert momentum_at(0, 0.99, 10) == pytest.approx(0.99) and momentum_at(10, 0.99, 10) == pytest.approx(1.0)
    assert momentum_at(3, 0.99, 10, cosine=False) == 0.99


def test_class_prompts_from_files(tmp_path):
    names = tmp_path / "classes.txt"
    names.write_text("cat\ndog\n")
    assert class_prompts(tmp_path / "x.beton", str(names)) == (["cat", "dog"], [["a photo of a cat."],
                                                                               ["a photo of a dog."]])
    with pytest.raises(ValueError, match="pass --zeroshot-classes"):
        class_prompts(tmp_path / "x.beton")
    with pytest.raises(FileNotFoundError, match="--zeroshot-classes"):
        class_prompts(tmp_path / "x.beton", str(tmp_path / "none.txt"))
