"""Backbones: timm classifiers, the embedded EfficientNet-Lite0, LoRA / full / linear-probe preparation, saving.

``model_name_or_path`` is ``efficientnet-lite0`` (embedded ImageNet weights, converted once to safetensors),
``tiny-random-efficientnet`` (random, for tests), a local folder in timm's layout (``config.json`` +
``model.safetensors``, which is also what :func:`save_classifier` writes) or any timm model name / ``hf-hub:`` id.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from common.errors import ModelPathError
from common.hardware import detect
from common.models import atomic_save, cache_dir, embedded_file
from common.paths import repo_path
from common.vision.args import EMBEDDED_VISION_ALIAS, METHODS, TINY_VISION_ALIAS, VisionModelArguments

logger = logging.getLogger(__name__)

# The embedded EfficientNet-Lite0 weights expect inputs scaled to [-1, 1] (checked on ImageNet photos).
LITE0_MEAN, LITE0_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def inference_device() -> torch.device:
    """Where features, predictions and heatmaps are computed: CUDA when the hardware policy has it, else CPU."""
    return torch.device("cuda" if detect().device == "cuda" else "cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating-point dtype of ``model``'s weights (inputs are cast to it: a bf16 model takes bf16 pixels)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


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
    """A timm classifier with a fresh ``num_classes`` head, and its input normalization ``{"mean", "std"}``.

    A relative folder is looked up in the working directory, then in the repository (:func:`common.paths.repo_path`).
    """
    import timm

    if name_or_path == TINY_VISION_ALIAS:
        model = timm.create_model("test_efficientnet", pretrained=False, num_classes=num_classes)
        return model, {"mean": LITE0_MEAN, "std": LITE0_STD}
    if name_or_path == EMBEDDED_VISION_ALIAS:
        name_or_path = str(prepare_efficientnet_lite0())
    folder = repo_path(name_or_path)
    if folder.is_dir():
        model = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=num_classes)
    else:  # a timm model name or hf-hub:... id (needs the hub or a filled cache)
        model = timm.create_model(name_or_path, pretrained=True, num_classes=num_classes)
    cfg = model.pretrained_cfg
    return model, {"mean": tuple(cfg.get("mean", LITE0_MEAN)), "std": tuple(cfg.get("std", LITE0_STD))}


def head_name(model: nn.Module) -> str:
    """Name of the classification head module (timm's ``pretrained_cfg["classifier"]``)."""
    return getattr(model, "pretrained_cfg", {}).get("classifier", "classifier")


def lora_targets(model: nn.Module) -> list[str]:
    """Every Conv2d that is not depthwise and every Linear, except the classification head."""
    head = head_name(model)
    return [name for name, m in model.named_modules()
            if name != head and ((isinstance(m, nn.Conv2d) and m.groups == 1) or isinstance(m, nn.Linear))]


def prepare_for_method(model: nn.Module, args: VisionModelArguments) -> nn.Module:
    """Freeze / wrap the backbone for ``args.method``; the classification head always trains."""
    head = head_name(model)
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
    """``(trainable, total)`` parameter counts."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters())


def logits_and_loss(logits: torch.Tensor, labels: torch.Tensor | None) -> dict:
    """The Trainer's output dict: ``{"logits"}``, plus the cross-entropy ``"loss"`` when labels are given."""
    out = {"logits": logits}
    if labels is not None:
        out["loss"] = nn.functional.cross_entropy(logits, labels)
    return out


def keep_norm_statistics(module: nn.Module) -> None:
    """Put every BatchNorm layer of ``module`` back in eval mode: it normalizes with its running (ImageNet)
    statistics and no longer updates them; its scale and shift still train. Called from ``train()``."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class BackboneModel(nn.Module):
    """Base of the Trainer-facing vision models: a timm ``backbone``, and ``freeze_norm_stats``: its BatchNorm layers
    keep their running statistics in training too (see :func:`keep_norm_statistics`), so the fine-tuning starts
    from exactly the features the probe's head was fit on."""

    def __init__(self, backbone: nn.Module, freeze_norm_stats: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.freeze_norm_stats = freeze_norm_stats

    def train(self, mode: bool = True) -> BackboneModel:
        super().train(mode)
        if mode and self.freeze_norm_stats:
            keep_norm_statistics(self.backbone)
        return self


class ImageClassifier(BackboneModel):
    """Trainer-facing wrapper: ``forward(pixel_values, labels)`` -> ``{"loss", "logits"}``."""

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        return logits_and_loss(self.backbone(pixel_values), labels)


class LinearHead(nn.Module):
    """The linear probe on cached features: ``forward(features, labels)`` -> ``{"loss", "logits"}``."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(num_features, num_classes)

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        return logits_and_loss(self.linear(features), labels)


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
        what = "does not exist" if not model_dir.exists() else "is not a folder" if not model_dir.is_dir() else (
            "is empty" if not any(model_dir.iterdir()) else "holds no saved classifier (config.json + model.safetensors)")
        raise ModelPathError(f"model_dir {model_dir} {what}; pass the folder train.py --output_dir wrote.")
    try:
        cfg = json.loads(cfg_file.read_text())
        model = timm.create_model(cfg["architecture"], pretrained=False, num_classes=cfg["num_classes"])
        model.load_state_dict(load_file(model_dir / "model.safetensors"))
    except (ValueError, KeyError, RuntimeError, OSError) as e:  # json, missing key, shape mismatch, bad header
        raise ModelPathError(f"model_dir {model_dir}: incomplete or corrupt classifier ({type(e).__name__}: "
                             f"{str(e)[:300]}); retrain, or pass the folder train.py --output_dir wrote.") from e
    return model.eval(), cfg
