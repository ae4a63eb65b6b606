"""Image classification fine-tuning: data, validation, backbones, linear probe / LoRA / full, metrics, saving.

The pieces a vision recipe strings together::

    splits = load_splits(data_args)                         # folder, CSV/JSONL or hub dataset -> Samples
    labels = validate_splits(splits)                        # every image opened before training; ImageDataError
    backbone, norm = load_backbone(model_args.model_name_or_path, len(labels))
    probe = fit_linear_probe(backbone, ...)                 # the baseline: frozen ImageNet features
    model = prepare_for_method(backbone, model_args)        # lora | full | linear_probe
    trainer = build_trainer(ImageClassifier(model), training_args, train_ds, val_ds, patience)
    metrics = evaluate_classifier(model, test_ds, labels)   # accuracy, macro-F1, per class, confusion

Training runs on the HF :class:`~transformers.Trainer` (resume, early stopping on the task metric, TensorBoard,
``accelerate launch``); the hardware precision policy reaches it through :func:`common.config.parse_config`.

Backbones (``model_name_or_path``): ``efficientnet-lite0`` (embedded ImageNet weights, converted once to
safetensors), ``tiny-random-efficientnet`` (random, for tests), a local folder in timm's layout (``config.json`` +
``model.safetensors``, which is also what :func:`save_classifier` writes) or any timm model name / ``hf-hub:`` id.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from torch import nn

from common.hardware import detect
from common.models import atomic_save, cache_dir, embedded_file

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
TINY_VISION_ALIAS = "tiny-random-efficientnet"
EMBEDDED_VISION_ALIAS = "efficientnet-lite0"
# The embedded EfficientNet-Lite0 weights expect inputs scaled to [-1, 1] (checked on ImageNet photos).
LITE0_MEAN, LITE0_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
METHODS = ("linear_probe", "lora", "full")


# ------------------------------------------------------------------------------------------- configuration


@dataclass
class VisionDataArguments:
    """Where the images come from and how they are presented to the model."""

    data_dir: str | None = field(default=None, metadata={
        "help": "Image folder (root/<class>/* or root/{train,val,test}/<class>/*) or a CSV/JSONL of path,label[,split]."})
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset id with an Image column."})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    image_column: str = field(default="image", metadata={"help": "Hub dataset: the Image column."})
    label_column: str = field(default="label", metadata={"help": "Label column (hub dataset, CSV, JSONL)."})
    path_column: str = field(default="path", metadata={"help": "CSV/JSONL: image path column (relative to the file)."})
    labels: list[str] | None = field(default=None, metadata={
        "help": "Declared label set; any other label in the data is an error. Default: the training labels."})
    image_size: int = field(default=128, metadata={"help": "Square side the images are resized to (px)."})
    val_fraction: float = field(default=0.15, metadata={"help": "Carved from train when there is no val split."})
    test_fraction: float = field(default=0.2, metadata={"help": "Carved from train when there is no test split."})
    augment: bool = field(default=True, metadata={"help": "Random crop/flip/rotation/colour jitter in training."})
    max_problems_shown: int = field(default=10, metadata={"help": "Bad images listed in the validation error."})


@dataclass
class VisionModelArguments:
    """Which backbone, and how it is adapted."""

    model_name_or_path: str = field(default=EMBEDDED_VISION_ALIAS, metadata={
        "help": "efficientnet-lite0 (embedded), tiny-random-efficientnet, a local timm folder, or a timm/hub name."})
    method: str = field(default="lora", metadata={"help": "Fine-tuning method.", "choices": list(METHODS)})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch."})
    lora_target_modules: list[str] | None = field(default=None, metadata={
        "help": "Module names for LoRA; default: every non-depthwise Conv2d and Linear but the classifier."})
    lora_train_norm: bool = field(default=True, metadata={
        "help": "Also train BatchNorm scales/shifts (a few thousand parameters; helps on a new domain)."})
    probe_epochs: int = field(default=60, metadata={"help": "Linear-probe (baseline) epochs on cached features."})
    probe_learning_rate: float = field(default=3e-3, metadata={"help": "Linear-probe learning rate."})
    init_head_from_probe: bool = field(default=True, metadata={
        "help": "Start fine-tuning from the probe's classifier (LP-FT: keeps early gradients sane)."})
    early_stopping_patience: int = field(default=3, metadata={"help": "Evaluations without improvement; 0 = off."})
    gradcam_layer: str | None = field(default=None, metadata={"help": "Heatmap layer; default: last conv stage."})
    cam_method: str = field(default="gradcam", metadata={
        "help": "gradcam (per-channel weights; for the last stage) or layercam (per-position; early layers)."})
    cam_smooth: float = field(default=0.0, metadata={"help": "Gaussian blur of the heatmap, in pixels (0 = none)."})


# ------------------------------------------------------------------------------------------ reading images


class ImageDataError(ValueError):
    """Bad training data, found before training: ``problems`` lists ``(image, what is wrong)``."""

    def __init__(self, problems: list[tuple[str, str]], total: int, max_shown: int = 10) -> None:
        self.problems = problems
        kinds = Counter(what.split(":")[0] for _, what in problems)
        summary = ", ".join(f"{n} x {k}" for k, n in kinds.most_common())
        lines = [f"{len(problems)} problem(s) in {total} images ({summary}); fix or remove them before training:"]
        lines += [f"  {where}: {what}" for where, what in problems[:max_shown]]
        if len(problems) > max_shown:
            lines.append(f"  ... and {len(problems) - max_shown} more")
        super().__init__("\n".join(lines))


@dataclass
class Sample:
    """One labelled image: ``source`` is a path, a PIL image or a hub-style ``{"bytes", "path"}`` dict."""

    source: Any
    label: str
    split: str = "train"
    box: list[int] | None = None  # optional (x0, y0, x1, y1) of the object/defect, original-image pixels

    @property
    def name(self) -> str:
        if isinstance(self.source, (str, Path)):
            return str(self.source)
        if isinstance(self.source, dict) and self.source.get("path"):
            return str(self.source["path"])
        return f"<in-memory image, label {self.label!r}>"


def _to_8bit(img: Image.Image) -> Image.Image:
    """16/32-bit integer and float images -> 8-bit grayscale, scaling by the bit depth (not clipping)."""
    arr = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16") or (img.mode == "I" and arr.max() > 255):
        arr = arr / 257.0
    elif img.mode == "F" and arr.max() <= 1.0:
        arr = arr * 255.0
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any PIL image -> 8-bit RGB: EXIF rotation applied; grey, 16-bit, palette, CMYK converted; alpha on white."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _to_8bit(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def _open(source: Any) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, dict):
        return Image.open(io.BytesIO(source["bytes"])) if source.get("bytes") else Image.open(source["path"])
    return Image.open(source)


def load_rgb(source: Any) -> Image.Image:
    """Read a path / PIL image / ``{"bytes", "path"}`` and return it as fully decoded 8-bit RGB."""
    img = _open(source)
    img.load()
    return to_rgb(img)


def _looks_like_text(path: Path) -> bool:
    head = path.read_bytes()[:512]
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c >= 9 for c in head)


def check_image(source: Any) -> str | None:
    """``None`` when the image decodes fully, else what is wrong (``"kind: detail"``)."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            return "missing file: no such file"
        if path.stat().st_size == 0:
            return "empty file: 0 bytes"
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail here, not become grey pixels
    try:
        img = _open(source)
        img.load()
        rgb = to_rgb(img)
    except UnidentifiedImageError:
        if isinstance(source, (str, Path)) and _looks_like_text(Path(source)):
            return "not an image: this is a text file with an image extension"
        return "not an image: PIL cannot identify the format"
    except (OSError, SyntaxError, ValueError) as e:
        return f"truncated or corrupt image: {e}"
    if min(rgb.size) < 8:
        return f"too small: {rgb.size[0]}x{rgb.size[1]} px"
    return None


# ------------------------------------------------------------------------------------------ data sources


def _read_boxes(root: Path) -> dict[str, list[int] | None]:
    """Optional ``boxes.jsonl`` beside the images: ``{"path": rel, "box": [x0, y0, x1, y1]}`` per line."""
    f = root / "boxes.jsonl"
    if not f.exists():
        return {}
    rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return {r["path"]: r.get("box") for r in rows}


def samples_from_folder(root: str | Path) -> dict[str, list[Sample]]:
    """``root/<class>/*`` (one pool) or ``root/{train,val,test}/<class>/*`` (given splits); every file is kept,
    so that a non-image with an image extension is reported by validation rather than silently skipped."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    boxes = _read_boxes(root)
    split_dirs = [d for d in ("train", "val", "validation", "test") if (root / d).is_dir()]
    out: dict[str, list[Sample]] = {}
    for split_dir in split_dirs or [None]:
        base = root / split_dir if split_dir else root
        split = {"validation": "val", None: "train"}.get(split_dir, split_dir)
        for class_dir in sorted(d for d in base.iterdir() if d.is_dir()):
            for f in sorted(class_dir.iterdir()):
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                    rel = f.relative_to(root).as_posix()
                    out.setdefault(split, []).append(Sample(str(f), class_dir.name, split, boxes.get(rel)))
    if not out:
        raise ImageDataError([(str(root), "no images: expected root/<class>/*.png|jpg")], 0)
    return out


def samples_from_table(path: str | Path, path_column: str = "path", label_column: str = "label",
                       split_column: str = "split") -> dict[str, list[Sample]]:
    """A CSV or JSONL with one image per row: ``path`` (relative to the table's folder), ``label``, [``split``]."""
    path = Path(path)
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out: dict[str, list[Sample]] = {}
    for i, row in enumerate(rows, start=1 if path.suffix != ".csv" else 2):
        if path_column not in row or label_column not in row:
            raise ImageDataError([(f"{path}:{i}", f"missing column: needs '{path_column}' and '{label_column}'")], 0)
        split = row.get(split_column) or "train"
        box = row.get("box")
        box = json.loads(box) if isinstance(box, str) and box else box
        out.setdefault(split, []).append(Sample(str(path.parent / row[path_column]), str(row[label_column]), split, box))
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


def _carve(samples: list[Sample], fraction: float, seed: int, split: str) -> tuple[list[Sample], list[Sample]]:
    """Stratified split: take ``fraction`` of every class (at least one image) out of ``samples``."""
    rng = np.random.default_rng(seed)
    keep, taken = [], []
    for label in sorted({s.label for s in samples}):
        group = [s for s in samples if s.label == label]
        order = rng.permutation(len(group))
        n = max(1, round(fraction * len(group))) if len(group) > 1 else 0
        taken += [Sample(group[i].source, label, split, group[i].box) for i in order[:n]]
        keep += [group[i] for i in order[n:]]
    return keep, taken


def load_splits(args: VisionDataArguments, seed: int = 0) -> dict[str, list[Sample]]:
    """``{"train", "val", "test"}`` samples from ``args``; missing val/test splits are carved from train."""
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
        raise ValueError("Set data_dir (an image folder, CSV or JSONL) or dataset_name (a hub dataset).")
    if "train" not in splits:
        raise ImageDataError([(str(args.data_dir or args.dataset_name), "no training split")], 0)
    val_fraction = args.val_fraction  # fractions are of the whole pool
    if "test" not in splits:
        splits["train"], splits["test"] = _carve(splits["train"], args.test_fraction, seed, "test")
        val_fraction = args.val_fraction / (1 - args.test_fraction)
    if "val" not in splits:
        splits["train"], splits["val"] = _carve(splits["train"], val_fraction, seed + 1, "val")
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
        return np.array([self.index[s.label] for s in self.samples])


class FeatureDataset(torch.utils.data.Dataset):
    """Cached backbone features -> ``{"features", "labels"}`` (the linear probe trains on these)."""

    def __init__(self, features: torch.Tensor, labels: np.ndarray) -> None:
        self.features, self.labels = features, torch.as_tensor(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"features": self.features[i], "labels": self.labels[i]}


# ------------------------------------------------------------------------------------------ backbones


def _timm_config(architecture: str, num_classes: int, num_features: int, mean, std, image_size: int,
                 labels: Sequence[str] | None = None, extra: dict | None = None) -> dict:
    """A ``config.json`` that ``timm.create_model("local-dir:FOLDER")`` understands."""
    cfg = {
        "architecture": architecture, "num_classes": num_classes, "num_features": num_features,
        "pretrained_cfg": {"input_size": [3, image_size, image_size], "mean": list(mean), "std": list(std),
                           "interpolation": "bilinear", "crop_pct": 1.0, "first_conv": "conv_stem",
                           "classifier": "classifier"},
    }
    if labels:
        cfg["label_names"] = list(labels)
    if extra:
        cfg["cookbook"] = extra
    return cfg


def prepare_efficientnet_lite0() -> Path:
    """The embedded ImageNet EfficientNet-Lite0 as a timm folder (safetensors), converted on first use.

    The package's ``.pth`` holds 296 tensors under other names, in the same order and shapes as timm's
    ``efficientnet_lite0``; it is read with ``weights_only=True`` and renamed position by position.
    """
    out = cache_dir() / EMBEDDED_VISION_ALIAS
    if (out / "model.safetensors").exists():
        return out
    import timm
    from safetensors.torch import save_file

    source = torch.load(embedded_file(EMBEDDED_VISION_ALIAS), map_location="cpu", weights_only=True)
    target = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target):
        raise ValueError(f"{len(source)} tensors in the embedded file, timm expects {len(target)}")
    state = {}
    for (name, ref), (src_name, tensor) in zip(target.items(), source.items()):
        if ref.shape != tensor.shape:
            raise ValueError(f"shape mismatch: {src_name} {tuple(tensor.shape)} vs timm {name} {tuple(ref.shape)}")
        state[name] = tensor.contiguous()
    config = _timm_config("efficientnet_lite0", 1000, 1280, LITE0_MEAN, LITE0_STD, 224)

    def save(tmp: Path) -> None:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))

    logger.info("Converted the embedded EfficientNet-Lite0 to %s", out)
    return atomic_save(out, save)


def load_backbone(name_or_path: str, num_classes: int) -> tuple[nn.Module, dict]:
    """A timm classifier with a fresh ``num_classes`` head, and its input normalization ``{"mean", "std"}``."""
    import timm

    if name_or_path == TINY_VISION_ALIAS:
        model = timm.create_model("test_efficientnet", pretrained=False, num_classes=num_classes)
        return model, {"mean": LITE0_MEAN, "std": LITE0_STD}
    if name_or_path == EMBEDDED_VISION_ALIAS:
        name_or_path = str(prepare_efficientnet_lite0())
    if Path(name_or_path).expanduser().is_dir():
        model = timm.create_model(f"local-dir:{Path(name_or_path).expanduser()}", pretrained=True,
                                  num_classes=num_classes)
    else:  # a timm model name or hf-hub:... id (needs the hub or a filled cache)
        model = timm.create_model(name_or_path, pretrained=True, num_classes=num_classes)
    cfg = model.pretrained_cfg
    return model, {"mean": tuple(cfg.get("mean", LITE0_MEAN)), "std": tuple(cfg.get("std", LITE0_STD))}


def _head_name(model: nn.Module) -> str:
    return getattr(model, "pretrained_cfg", {}).get("classifier", "classifier")


def lora_targets(model: nn.Module) -> list[str]:
    """Every Conv2d that is not depthwise and every Linear, except the classification head."""
    head = _head_name(model)
    return [name for name, m in model.named_modules()
            if name != head and ((isinstance(m, nn.Conv2d) and m.groups == 1) or isinstance(m, nn.Linear))]


def prepare_for_method(model: nn.Module, args: VisionModelArguments) -> nn.Module:
    """Freeze / wrap the backbone for ``args.method``; the classification head always trains."""
    head = _head_name(model)
    if args.method == "full":
        model.requires_grad_(True)
        return model
    if args.method == "linear_probe":
        model.requires_grad_(False)
        model.get_submodule(head).requires_grad_(True)
        return model
    if args.method != "lora":
        raise ValueError(f"method must be one of {METHODS}, not {args.method!r}")
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                        target_modules=args.lora_target_modules or lora_targets(model), modules_to_save=[head])
    peft_model = get_peft_model(model, config)
    if args.lora_train_norm:
        for m in peft_model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.requires_grad_(True)
    return peft_model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain timm model: LoRA merged into the weights (``merge_and_unload``), wrappers removed."""
    model = getattr(model, "backbone", model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    return sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters())


class ImageClassifier(nn.Module):
    """Trainer-facing wrapper: ``forward(pixel_values, labels)`` -> ``{"loss", "logits"}``."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        logits = self.backbone(pixel_values)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class LinearHead(nn.Module):
    """The linear probe on cached features: ``forward(features, labels)`` -> ``{"loss", "logits"}``."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(num_features, num_classes)

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        logits = self.linear(features)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


# ------------------------------------------------------------------------------------------ features + probe


def _device() -> torch.device:
    return torch.device("cuda" if detect().device == "cuda" else "cpu")


@torch.inference_mode()
def extract_features(model: nn.Module, dataset: ImageDataset, cache: str | Path | None = None,
                     batch_size: int = 64) -> tuple[torch.Tensor, bool]:
    """Pooled backbone features (before the head) of every image; returns ``(features, loaded_from_cache)``.

    With ``cache`` (a folder), features are stored under a key made of the model weights' fingerprint, the
    image list (paths, sizes, mtimes) and the transform, so a second run, or the next epoch, reads them back.
    """
    key = None
    if cache is not None:
        h = hashlib.sha256(repr(dataset.transform).encode())
        for name, t in model.state_dict().items():
            h.update(name.encode())
            h.update(t.float().flatten()[:64].cpu().numpy().tobytes())
        for s in dataset.samples:
            p = Path(s.name)
            h.update(s.name.encode())
            if p.exists():
                st = p.stat()
                h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        key = Path(cache) / f"features-{h.hexdigest()[:20]}.safetensors"
        if key.exists():
            from safetensors.torch import load_file

            return load_file(key)["features"], True
    device = _device()
    was_training = model.training
    model.eval().to(device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    chunks = [model.forward_head(model.forward_features(b["pixel_values"].to(device)), pre_logits=True).float().cpu()
              for b in loader]
    model.train(was_training)
    features = torch.cat(chunks)
    if key is not None:
        from safetensors.torch import save_file

        key.parent.mkdir(parents=True, exist_ok=True)
        save_file({"features": features.contiguous()}, str(key))
    return features, False


def fit_linear_probe(backbone: nn.Module, train_ds: ImageDataset, training_args, model_args: VisionModelArguments,
                     cache: str | Path | None = None) -> nn.Module:
    """Train only the classification head on frozen, cached features (the Trainer, a few seconds on CPU).

    Returns ``backbone`` with the trained head copied into its classifier.
    """
    from transformers import Trainer, TrainingArguments

    features, _ = extract_features(backbone, train_ds, cache)
    head = LinearHead(features.shape[1], len(train_ds.index))
    args = TrainingArguments(
        output_dir=str(Path(training_args.output_dir) / "linear_probe"), num_train_epochs=model_args.probe_epochs,
        learning_rate=model_args.probe_learning_rate, per_device_train_batch_size=64, weight_decay=1e-4,
        lr_scheduler_type="cosine", save_strategy="no", eval_strategy="no", report_to=[], logging_strategy="no",
        use_cpu=training_args.use_cpu, seed=training_args.seed, disable_tqdm=True, label_names=["labels"],
    )
    Trainer(model=head, args=args, train_dataset=FeatureDataset(features, train_ds.targets)).train()
    classifier = backbone.get_submodule(_head_name(backbone))
    with torch.no_grad():
        classifier.weight.copy_(head.linear.weight)
        classifier.bias.copy_(head.linear.bias)
    return backbone


# ------------------------------------------------------------------------------------------ training


def compute_metrics(eval_pred) -> dict[str, float]:
    """Accuracy and macro-F1 for the Trainer's evaluation loop (``metric_for_best_model: macro_f1``)."""
    from sklearn.metrics import accuracy_score, f1_score

    logits, labels = eval_pred.predictions, eval_pred.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    preds = np.asarray(logits).argmax(-1)
    return {"accuracy": float(accuracy_score(labels, preds)),
            "macro_f1": float(f1_score(labels, preds, average="macro", zero_division=0))}


def build_trainer(model: ImageClassifier, args, train_ds, eval_ds, early_stopping_patience: int = 0):
    """An HF Trainer for an :class:`ImageClassifier`: task-metric model selection, early stopping, resume."""
    from transformers import Trainer

    from common.train import early_stopping_callbacks

    args.label_names = ["labels"]
    args.remove_unused_columns = False
    if detect().device == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                   compute_metrics=compute_metrics, callbacks=early_stopping_callbacks(args, early_stopping_patience))


def train_throughput(trainer, num_train: int, start_epoch: float = 0.0) -> dict:
    """Training seconds and images/s of this invocation from the Trainer's state (evaluation time excluded).

    ``start_epoch`` is where a resumed run started: the epochs before it were trained by another invocation.
    """
    history = [h for h in trainer.state.log_history if h.get("epoch", 0.0) > start_epoch]
    runtime = next((h["train_runtime"] for h in reversed(history) if "train_runtime" in h), float("nan"))
    eval_time = sum(h.get("eval_runtime", 0.0) for h in history)
    images = ((trainer.state.epoch or 0) - start_epoch) * num_train
    return {"seconds": runtime, "images": images, "img_per_s": images / max(runtime - eval_time, 1e-9)}


# ------------------------------------------------------------------------------------------ evaluation


@torch.inference_mode()
def predict(model: nn.Module, dataset: ImageDataset, batch_size: int = 64) -> tuple[np.ndarray, float]:
    """Softmax probabilities of every image and the inference throughput (images/s, decoding included)."""
    device = _device()
    model = unwrap(model).eval().to(device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    start, probs = time.perf_counter(), []
    for batch in loader:
        probs.append(model(batch["pixel_values"].to(device)).float().softmax(-1).cpu())
    seconds = time.perf_counter() - start
    return torch.cat(probs).numpy(), len(dataset) / max(seconds, 1e-9)


def classification_metrics(targets: np.ndarray, preds: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix (rows: true class)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    idx = list(range(len(classes)))
    p, r, f, n = precision_recall_fscore_support(targets, preds, labels=idx, zero_division=0)
    return {
        "accuracy": float(accuracy_score(targets, preds)),
        "macro_f1": float(f1_score(targets, preds, labels=idx, average="macro", zero_division=0)),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(n[i])}
                      for i, c in enumerate(classes)},
        "confusion_matrix": confusion_matrix(targets, preds, labels=idx).tolist(),
    }


def evaluate_classifier(model: nn.Module, dataset: ImageDataset, classes: Sequence[str]) -> dict:
    """:func:`classification_metrics` on ``dataset`` plus ``inference_img_per_s``."""
    probs, speed = predict(model, dataset)
    return {**classification_metrics(dataset.targets, probs.argmax(1), classes), "inference_img_per_s": speed}


def plot_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path,
                   title: str = "Confusion matrix (held-out test)") -> Path:
    """Save the confusion matrix as a PNG (counts in the cells; rows: true class, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.0 * len(classes) + 2, 1.0 * len(classes) + 1.5))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=35, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def localization_score(model: nn.Module, dataset: ImageDataset, classes: Sequence[str], normal_class: str = "good",
                       layer: str | None = None, method: str = "gradcam", smooth: float = 0.0,
                       batch_size: int = 32) -> dict:
    """Share of correctly classified defective images whose heatmap peak lies inside the defect's box.

    ``layer``, ``method`` and ``smooth`` are those of :class:`common.gradcam.GradCAM`.
    """
    from common.gradcam import GradCAM, peak_in_box

    model = unwrap(model)
    cam = GradCAM(model, layer, method=method, smooth=smooth)
    contrast = list(classes).index(normal_class) if normal_class in classes else None
    hits = total = 0
    keep = [i for i, s in enumerate(dataset.samples) if s.box and s.label != normal_class]
    for start in range(0, len(keep), batch_size):
        idx = keep[start:start + batch_size]
        batch = torch.stack([dataset[i]["pixel_values"] for i in idx]).to(_device())
        heat, logits = cam(batch, contrast_idx=contrast)
        for j, i in enumerate(idx):
            s = dataset.samples[i]
            if classes[int(logits[j].argmax())] != s.label:
                continue
            total += 1
            hits += peak_in_box(heat[j], s.box, load_rgb(s.source).size)
    return {"gradcam_peak_in_box": hits / total if total else float("nan"), "gradcam_images": total,
            "gradcam_layer": cam.layer_name, "cam_method": method, "cam_smooth": smooth}


# ------------------------------------------------------------------------------------------ save / load


def save_classifier(model: nn.Module, out_dir: str | Path, classes: Sequence[str], normalization: dict,
                    image_size: int, extra: dict | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (timm layout + labels, normalization, resolution).

    The folder loads back with :func:`load_classifier`, and is itself a valid ``model_name_or_path``.
    """
    from safetensors.torch import save_file

    model = unwrap(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    arch = model.pretrained_cfg.get("architecture") or type(model).__name__
    cfg = _timm_config(arch, len(classes), getattr(model, "num_features", 0), normalization["mean"],
                       normalization["std"], image_size, classes, extra)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


def load_classifier(model_dir: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a saved classifier; returns ``(model in eval mode, config dict)``."""
    import timm
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    cfg_file = model_dir / "config.json"
    if not cfg_file.exists() or not (model_dir / "model.safetensors").exists():
        raise FileNotFoundError(f"{model_dir} holds no saved classifier (config.json + model.safetensors); "
                                "pass the folder that train.py --output_dir wrote.")
    cfg = json.loads(cfg_file.read_text())
    model = timm.create_model(cfg["architecture"], pretrained=False, num_classes=cfg["num_classes"])
    model.load_state_dict(load_file(model_dir / "model.safetensors"))
    return model.eval(), cfg
