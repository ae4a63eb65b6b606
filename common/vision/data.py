"""Image data: sources (folder, CSV/JSONL table, hub dataset), train/val/test splits, validation, tensors.

:func:`load_splits` returns ``{"train", "val", "test"}`` lists of :class:`~common.vision.images.Sample`, carving
missing splits from train (stratified); :func:`validate_splits` opens every image and checks every label before
any training; :class:`ImageDataset` turns samples into the Trainer's ``{"pixel_values", "labels"}``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from common.errors import ConfigError, DataError
from common.vision.args import VisionDataArguments
from common.vision.images import IMAGE_EXTENSIONS, ImageDataError, Sample, check_image, load_rgb

# ------------------------------------------------------------------------------------------ data sources


def _read_boxes(root: Path) -> dict[str, list[int] | None]:
    """Optional ``boxes.jsonl`` beside the images: ``{"path": rel, "box": [x0, y0, x1, y1]}`` per line."""
    f = root / "boxes.jsonl"
    if not f.exists():
        return {}
    from common.data import read_jsonl

    boxes = {}
    for line, row in read_jsonl(f):
        if not isinstance(row.get("path"), str):
            raise DataError(f"{f}, row {line}: needs a \"path\" (the image, relative to {root})")
        boxes[row["path"]] = row.get("box")
    return boxes


def samples_from_folder(root: str | Path) -> dict[str, list[Sample]]:
    """``root/<class>/*`` (one pool) or ``root/{train,val,test}/<class>/*`` (given splits); every file is kept,
    so that a non-image with an image extension is reported by validation rather than silently skipped.

    Raises:
        DataError: the folder does not exist, holds no images, or a class folder holds no image (a class is
            never dropped silently).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist (expected root/<class>/*.png or "
                        "root/{train,val,test}/<class>/*.png)")
    boxes = _read_boxes(root)
    split_dirs = [d for d in ("train", "val", "validation", "test") if (root / d).is_dir()]
    out: dict[str, list[Sample]] = {}
    empty: list[tuple[str, str]] = []
    for split_dir in split_dirs or [None]:
        base = root / split_dir if split_dir else root
        split = {"validation": "val", None: "train"}.get(split_dir, split_dir)
        for class_dir in sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")):
            found = [f for f in sorted(class_dir.iterdir()) if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
            if not found:
                empty.append((str(class_dir), f"empty class folder: no image ({', '.join(IMAGE_EXTENSIONS)}) in "
                              f"class '{class_dir.name}'; add images or remove the folder"))
            for f in found:
                rel = f.relative_to(root).as_posix()
                out.setdefault(split, []).append(Sample(str(f), class_dir.name, split, boxes.get(rel)))
    if empty:
        raise ImageDataError(empty, sum(len(v) for v in out.values()))
    if not out:
        raise ImageDataError([(str(root), "no images: expected root/<class>/*.png|jpg")], 0)
    return out


#: Split names a table may use (``validation`` is read as ``val``).
TABLE_SPLITS = {"train": "train", "val": "val", "validation": "val", "test": "test"}


def _read_rows(path: Path) -> list[tuple[int, dict]]:
    """``(line number, row)`` of a CSV (header on line 1) or JSONL file."""
    if not path.is_file():
        raise DataError(f"table {path} does not exist (a CSV/JSONL with columns path,label[,split])")
    from common.data import read_csv, read_jsonl

    if path.suffix == ".csv":
        return read_csv(path)[1]

    return read_jsonl(path)


def samples_from_table(path: str | Path, path_column: str = "path", label_column: str = "label",
                       split_column: str = "split") -> dict[str, list[Sample]]:
    """A CSV or JSONL with one image per row: ``path`` (relative to the table's folder), ``label``, [``split``].

    Raises:
        DataError: a missing column, an empty path/label cell, an unknown split name, or the same image listed
            twice (naming the file and both rows).
    """
    path = Path(path)
    rows = _read_rows(path)
    if not rows:
        raise DataError(f"table {path} has no rows (expected columns {path_column},{label_column}[,{split_column}])")
    out: dict[str, list[Sample]] = {}
    seen: dict[str, tuple[int, str, str]] = {}
    for i, row in rows:
        where = f"{path}, row {i}"
        missing = [c for c in (path_column, label_column) if c not in row]
        if missing:
            raise ImageDataError([(where, f"missing column: needs '{path_column}' and '{label_column}', "
                                          f"has {sorted(row)}")], len(rows))
        for c in (path_column, label_column):
            if row[c] is None or not str(row[c]).strip():
                raise DataError(f"{where}: empty '{c}' cell")
        raw_split = str(row.get(split_column) or "train").strip()
        if raw_split not in TABLE_SPLITS:
            raise DataError(f"{where}: unknown split '{raw_split}' (allowed: {sorted(TABLE_SPLITS)})")
        split = TABLE_SPLITS[raw_split]
        label = str(row[label_column]).strip()
        image = os.path.normpath(path.parent / str(row[path_column]).strip())
        if image in seen:
            j, other_split, other_label = seen[image]
            raise DataError(f"{path}: image {row[path_column]!r} is listed twice, row {j} (split '{other_split}', "
                            f"label '{other_label}') and row {i} (split '{split}', label '{label}'); "
                            "keep one row per image (a duplicate leaks between splits or has two labels)")
        seen[image] = (i, split, label)
        box = row.get("box")
        try:
            box = json.loads(box) if isinstance(box, str) and box else box or None
        except json.JSONDecodeError:
            raise DataError(f"{where}: 'box' is not a JSON list [x0, y0, x1, y1]: {box!r}") from None
        out.setdefault(split, []).append(Sample(image, label, split, box))
    return out


def samples_from_hf(dataset, image_column: str = "image", label_column: str = "label",
                    split: str = "train") -> list[Sample]:
    """Samples from a ``datasets.Dataset`` with an Image column (kept encoded: decoded lazily, per batch)."""
    from datasets import ClassLabel
    from datasets import Image as ImageFeature

    if image_column not in dataset.column_names or label_column not in dataset.column_names:
        raise ImageDataError([(f"dataset split '{split}'", f"missing column: needs '{image_column}' and "
                               f"'{label_column}', has {dataset.column_names}")], len(dataset))
    feature = dataset.features[label_column]
    names = feature.names if isinstance(feature, ClassLabel) else None
    encoded = dataset.cast_column(image_column, ImageFeature(decode=False))
    return [Sample(row[image_column], names[row[label_column]] if names else str(row[label_column]), split)
            for row in encoded]


# ------------------------------------------------------------------------------------------ splits


def carve(samples: Sequence[Sample], fraction: float, seed: int, split: str) -> tuple[list[Sample], list[Sample]]:
    """Stratified split of ``samples`` into ``(kept, carved)``: about ``fraction`` of every class is carved out
    (:func:`sklearn.model_selection.train_test_split` with ``stratify``), relabelled ``split``.

    A class with a single image stays whole in ``kept``; every class with two or more images has at least one
    image on each side. (sklearn allocates the carved count in proportion to the class sizes, so a small class
    beside large ones could otherwise get none; one image is moved over then.) Both lists keep the input order.
    """
    from sklearn.model_selection import train_test_split

    counts = Counter(s.label for s in samples)
    pool = [i for i, s in enumerate(samples) if counts[s.label] >= 2]
    labels = [samples[i].label for i in pool]
    n_classes = len(set(labels))
    if not pool:
        return list(samples), []
    n_carved = min(max(round(fraction * len(pool)), n_classes), len(pool) - n_classes)
    kept, carved = train_test_split(pool, test_size=n_carved, stratify=labels, random_state=seed)
    for label in sorted(set(labels)):
        for src, dst in ((kept, carved), (carved, kept)):
            if not any(samples[i].label == label for i in dst):
                moved = next(i for i in src if samples[i].label == label)
                src.remove(moved)
                dst.append(moved)
    taken = set(carved)
    return ([s for i, s in enumerate(samples) if i not in taken],
            [replace(samples[i], split=split) for i in sorted(taken)])


def load_splits(args: VisionDataArguments, seed: int = 0) -> dict[str, list[Sample]]:
    """``{"train", "val", "test"}`` samples from ``args``; missing val/test splits are carved from train.

    ``val_fraction`` and ``test_fraction`` are fractions of the whole pool; see :func:`carve`.
    """
    if args.dataset_name:
        from datasets import load_dataset

        ds = load_dataset(args.dataset_name, args.dataset_config)
        rename = {"validation": "val"}
        splits = {rename.get(k, k): samples_from_hf(v, args.image_column, args.label_column, rename.get(k, k))
                  for k, v in ds.items()}
    elif args.data_dir and Path(args.data_dir).suffix in (".csv", ".jsonl", ".json"):
        splits = samples_from_table(args.data_dir, args.path_column, args.label_column)
    elif args.data_dir:
        splits = samples_from_folder(args.data_dir)
    else:
        raise ConfigError("Set data_dir (an image folder, CSV or JSONL) or dataset_name (a hub dataset).")
    if "train" not in splits:
        raise ImageDataError([(str(args.data_dir or args.dataset_name), "no training split")], 0)
    val_fraction = args.val_fraction  # fractions are of the whole pool
    pool = Counter(s.label for s in splits["train"])
    carved = [s for s in ("test", "val") if s not in splits]
    if "test" not in splits:
        splits["train"], splits["test"] = carve(splits["train"], args.test_fraction, seed, "test")
        val_fraction = args.val_fraction / (1 - args.test_fraction)
    if "val" not in splits:
        splits["train"], splits["val"] = carve(splits["train"], val_fraction, seed + 1, "val")
    problems = [(f"class '{c}'", f"too few images to carve: {n} image(s) in train and none left for the "
                 f"carved '{split}' split; add images (>= {len(carved) + 1} per class) or give a {split} split")
                for split in carved for c, n in sorted(pool.items()) if not any(s.label == c for s in splits[split])]
    if problems and len(pool) >= 2:
        raise ImageDataError(problems, sum(pool.values()))
    return splits


def validate_splits(splits: dict[str, list[Sample]], labels: Sequence[str] | None = None,
                    max_shown: int = 10) -> list[str]:
    """Open every image and check the labels, before any training. Returns the sorted class names.

    Raises:
        ImageDataError: unreadable, empty, truncated or non-image files; labels outside ``labels`` (or, when
            none are declared, outside the training labels); a class with no image in some split.
    """
    train_labels = sorted({s.label for s in splits.get("train", [])})
    classes = list(labels) if labels else train_labels
    if len(train_labels) < 2:
        raise ImageDataError([("split 'train'", f"needs at least 2 classes: found {len(train_labels)} "
                               f"({train_labels}); a classifier needs two or more class folders / labels")],
                             sum(len(v) for v in splits.values()))
    known = set(classes)
    problems: list[tuple[str, str]] = []
    total = 0
    for split, samples in splits.items():
        for s in samples:
            total += 1
            if s.label not in known:
                where = "the declared labels" if labels else "the training split"
                problems.append((s.name, f"unknown label: '{s.label}' (split '{split}') is not in {where} {classes}"))
            issue = check_image(s.source)
            if issue:
                problems.append((s.name, issue))
        present = {s.label for s in samples}
        for c in classes:
            if c not in present:
                problems.append((f"split '{split}'", f"class missing in a split: no image of class '{c}'"))
    if problems:
        raise ImageDataError(problems, total, max_shown)
    return classes


# ------------------------------------------------------------------------------------------ tensors


def build_transforms(image_size: int, mean: Sequence[float], std: Sequence[float], train: bool, augment: bool = True):
    """torchvision v2 pipeline: PIL RGB -> normalized float tensor (random augmentation when training).

    Images are resized to a square (not cropped) at evaluation, so a box in the original image maps linearly
    onto the model's input; training crops keep >= 90% of the area so a defect stays in the frame.
    """
    from torchvision.transforms import v2

    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if not (train and augment):
        return v2.Compose([v2.Resize((image_size, image_size), antialias=True), *tail])
    return v2.Compose([
        v2.RandomResizedCrop(image_size, scale=(0.9, 1.0), ratio=(0.95, 1.05), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.RandomApply([v2.RandomRotation(20)], p=0.3),
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.1),
        *tail,
    ])


class ImageDataset(torch.utils.data.Dataset):
    """Samples -> ``{"pixel_values", "labels"}`` dicts for the Trainer (images decoded to RGB on the fly)."""

    def __init__(self, samples: Sequence[Sample], classes: Sequence[str], transform) -> None:
        self.samples, self.transform = list(samples), transform
        self.index = {c: i for i, c in enumerate(classes)}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        s = self.samples[i]
        return {"pixel_values": self.transform(load_rgb(s.source)), "labels": self.index[s.label]}

    @property
    def targets(self) -> np.ndarray:
        """The class index of every sample, in order."""
        return np.array([self.index[s.label] for s in self.samples])


class FeatureDataset(torch.utils.data.Dataset):
    """Cached backbone features -> ``{"features", "labels"}`` (the linear probe trains on these)."""

    def __init__(self, features: torch.Tensor, labels: np.ndarray) -> None:
        self.features, self.labels = features, torch.as_tensor(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"features": self.features[i], "labels": self.labels[i]}
