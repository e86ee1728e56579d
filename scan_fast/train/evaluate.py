"""Evaluation: zero-shot classification for CLIP; kNN and linear probe on frozen features for MoCo.

Zero-shot works on any labelled .beton (image, label, id; tokens are not needed). Class
prompts come from a class-name file with a template, else from the names saved beside the set
(`scan-fast data labelled`, `data clip --label-column`), else from the metadata of the embedded
`shapes` and `digits` sets; each class's text embedding is the normalised mean over its prompts.
`zero_shot_classes` checks the names against the set's labels, so a trainer calls it before training.
"""
import itertools
import json
import string
from pathlib import Path
from typing import List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from scan_fast.train.config import DEFAULT_ZEROSHOT_TEMPLATE


def check_template(template: str) -> str:
    """A prompt template holds exactly one empty {} field (where the class name goes)."""
    try:
        fields_ = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template)
                   if name is not None]
    except ValueError as err:  # an unmatched brace
        raise ValueError(f"--zeroshot-template {template!r}: {err} (write a literal brace as {{{{ or }}}})") from None
    if fields_ != [("", "", None)]:
        raise ValueError(f"--zeroshot-template {template!r} must hold exactly one {{}} (where the class name "
                         f"goes) and no other {{...}} field")
    return template


def class_prompts(val_data, classes_file=None, template: str = DEFAULT_ZEROSHOT_TEMPLATE) -> Tuple[List[str], List[List[str]]]:
    """(class names, prompts per class) for the labelled set `val_data`, indexed by its labels."""
    from scan_fast.data.classes import load_class_names, read_names_file

    val_data = Path(val_data)
    stem = str(val_data)[: -len(".beton")] if str(val_data).endswith(".beton") else str(val_data)
    if classes_file is not None:
        try:
            names = read_names_file(classes_file)
        except (OSError, ValueError) as err:
            raise type(err)(f"--zeroshot-classes: {err}") from None
        check_template(template)
        return names, [[template.format(n)] for n in names]
    beside = load_class_names(val_data)
    if beside is not None:
        check_template(template)
        return beside, [[template.format(n)] for n in beside]
    shapes_meta = Path(f"{stem}.truth.json")
    if shapes_meta.is_file():
        meta = json.loads(shapes_meta.read_text())
        names, prompts = [], []
        for shape, colour in itertools.product(meta["shapes"], meta["colours"]):  # label = shape * C + colour
            names.append(f"{colour} {shape}")
            prompts.append([meta["template"].format(size=s, colour=colour, shape=shape, position=p)
                            for s in meta["sizes"] for p in meta["positions"]])
        return names, prompts
    digits_meta = val_data.parent / "digits.classes.json"
    if digits_meta.is_file():
        meta = json.loads(digits_meta.read_text())
        return list(meta["classes"]), [[meta["template"].format(c)] for c in meta["classes"]]
    raise ValueError(f"no class names for {val_data}: no {val_data.name}.classes.json beside it (written by "
                     f"scan-fast data labelled / data clip --label-column) and it is not an embedded data set; "
                     f"pass --zeroshot-classes FILE")


def check_labelled(val_data) -> None:
    """--val-data must be a labelled .beton; the error says how to write one."""
    from scan_fast.data.schema import check_beton

    try:
        check_beton(val_data, ("image", "label", "id"))
    except ValueError as err:
        hint = ("; write labelled sets with scan-fast data labelled (an ImageFolder) or data clip --label-column"
                if "lacks field" in str(err) else "")
        raise ValueError(f"--val-data: {err}{hint}") from None


def zero_shot_classes(val_data, classes_file=None, template: str = DEFAULT_ZEROSHOT_TEMPLATE) -> List[List[str]]:
    """Prompts per class of `val_data`, after checking that every label of the set has a class name."""
    from scan_fast.data.classes import check_class_names
    from scan_fast.data.read.inspect import read_labels

    names, prompts = class_prompts(val_data, classes_file, template)
    source = f"--zeroshot-classes {classes_file}" if classes_file else f"the class names for {val_data}"
    check_class_names(names, read_labels(val_data), val_data, source, extra_names=classes_file is None)
    return prompts


@torch.no_grad()
def class_embeddings(clip, prompts: List[List[str]], device) -> torch.Tensor:
    """(C, D) normalised mean text embedding of each class's prompts."""
    from scan_fast.data import CaptionTokenizer

    tokenizer = CaptionTokenizer(clip.context_length)
    rows = []
    for class_prompts_ in prompts:
        tokens = torch.from_numpy(np.stack([tokenizer(p)[0] for p in class_prompts_])).long().to(device)
        text = clip.model.encode_text(tokens, normalize=True).float().mean(0)
        rows.append(F.normalize(text, dim=0))
    return torch.stack(rows)


@torch.no_grad()
def zero_shot_accuracy(clip, loader, prompts: List[List[str]], device) -> float:
    """Top-1 accuracy of argmax cosine(image, class text) over a loader of batches with images and labels
    (data.labelled_loader); labels are checked against the classes beforehand (zero_shot_classes)."""
    was_training = clip.training
    clip.eval()
    classes = class_embeddings(clip, prompts, device)
    correct = total = 0
    for batch in loader:
        image = clip.model.encode_image(batch.images.to(device), normalize=True).float()
        predicted = (image @ classes.T).argmax(1).cpu()
        correct += int((predicted == batch.labels.cpu()).sum())
        total += len(batch.labels)
    clip.train(was_training)
    return correct / max(total, 1)


@torch.no_grad()
def extract_features(encoder, loader, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(normalised features, labels) of a loader of batches with images and labels."""
    was_training = encoder.training
    encoder.eval()
    feats, labels = [], []
    for batch in loader:
        feats.append(F.normalize(encoder(batch.images.to(device)).float(), dim=1).cpu())
        labels.append(batch.labels.cpu())
    encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def knn_accuracy(train_x, train_y, test_x, test_y, k: int = 20, temperature: float = 0.07) -> float:
    """Weighted kNN (Wu et al. 2018, as in MoCo/DINO evaluations) on normalised features."""
    k = min(k, len(train_x))
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    sims, idx = (test_x @ train_x.T).topk(k, dim=1)
    votes = torch.zeros(len(test_x), num_classes)
    votes.scatter_add_(1, train_y[idx], (sims / temperature).exp())
    return float((votes.argmax(1) == test_y).float().mean())


def linear_probe_accuracy(train_x, train_y, test_x, test_y, steps: int = 300, lr: float = 0.5,
                          wd: float = 1e-4, seed: int = 0) -> float:
    """Logistic regression on frozen features, standardised with the training set's statistics,
    fitted by full-batch SGD with momentum (small probe sets: a few hundred steps suffice)."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    generator = torch.Generator().manual_seed(seed)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    head = torch.nn.Linear(train_x.shape[1], num_classes)
    with torch.no_grad():
        head.weight.normal_(0, 0.01, generator=generator)
        head.bias.zero_()
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(head(train_x), train_y).backward()
        opt.step()
    with torch.no_grad():
        return float((head(test_x).argmax(1) == test_y).float().mean())


def evaluate_checkpoint(checkpoint, val_data, zeroshot_classes=None, zeroshot_template=DEFAULT_ZEROSHOT_TEMPLATE,
                        probe_train_data=None, workers=2) -> dict:
    """{"zero_shot": acc} for a CLIP checkpoint, {"knn": acc, "linear_probe": acc} for a MoCo one
    (`scan-fast eval`)."""
    from scan_fast.train.config import ClipConfig, MocoConfig

    from scan_fast.train.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint)
    check_labelled(val_data)
    absent = [key for key in ("model", "config") if not isinstance(state.get(key), dict)]
    if absent:
        raise ValueError(f"{checkpoint}: not a complete scan-fast checkpoint (no {' or '.join(absent)} entry)")
    config = state["config"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if "model" in config:  # CLIP
        from scan_fast.train.clip import clip_task
        from scan_fast.train.clip_model import Clip

        zero_shot_classes(val_data, zeroshot_classes, zeroshot_template)  # before the model is built
        positions = state["model"].get("model.positional_embedding")
        if positions is None:
            raise ValueError(f"{checkpoint}: not a CLIP checkpoint of scan-fast (its model has no "
                             f"model.positional_embedding)")
        model = Clip(config["model"], context_length=positions.shape[0], loss=config.get("loss"))
        _load_weights(model, state["model"], checkpoint)
        model.to(device)
        cfg = ClipConfig(train_data=config["train_data"], val_data=val_data, zeroshot_classes=zeroshot_classes,
                         zeroshot_template=zeroshot_template, workers=workers, model=config["model"],
                         loss=config.get("loss"))
        return {"zero_shot": clip_task(cfg).evaluation(model, device)()}
    from scan_fast.train.moco import MocoTask
    from scan_fast.train.moco_model import build_moco

    model = build_moco(config["arch"], config["resolution"], config["moco_dim"], config["moco_mlp_dim"],
                       config["moco_t"])
    _load_weights(model, state["model"], checkpoint)
    model.to(device)
    cfg = MocoConfig(train_data=config["train_data"], val_data=val_data, probe_train_data=probe_train_data,
                     resolution=config["resolution"], knn_k=config["knn_k"], workers=workers)
    knn = MocoTask(cfg).evaluation(model, device)
    return {"knn": knn(), "linear_probe": knn.linear_probe()}


def _load_weights(model, weights, checkpoint) -> None:
    """load_state_dict, with a one-line error naming the checkpoint and the keys or sizes that differ."""
    if not isinstance(weights, dict):
        raise ValueError(f"{checkpoint}: its 'model' entry is not a state dict")
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise ValueError(f"{checkpoint}: its weights do not fit the model its config names "
                         f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                         f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})")
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        sizes = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
        raise ValueError(f"{checkpoint}: its weights do not fit the model its config names "
                         f"({sizes[0] if sizes else err})") from None
