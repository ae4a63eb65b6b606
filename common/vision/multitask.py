"""Multi-task vision: one backbone, several heads (classification and regression) trained together.

    tasks = [Task("part", classes=[...]), Task("damage", classes=[...]), Task("cost", log=True, weight=0.5)]
    model = MultiTaskModel(backbone, tasks)                  # backbone: timm model made with num_classes=0
    fit_multitask_probe(model, probe_ds, training_args, epochs, lr, cache)   # baseline: heads on frozen features
    model = prepare_multitask(model, model_args)             # linear_probe | lora | full
    trainer = build_multitask_trainer(model, training_args, train_ds, val_ds, patience)
    outputs, img_per_s = predict_multitask(model, test_ds)   # {task: probabilities or values}
    metrics = multitask_metrics(outputs, test_ds.targets, tasks)
    save_multitask(model, out, norm, image_size); model, cfg = load_multitask(out)

timm's ``create_model(..., num_classes=0)`` gives pooled features (1280 for EfficientNet-Lite0); each task gets a
head on them. A regression head predicts the *standardized* target (``(y - mean) / std``, after ``log`` for e.g.
a price). The loss is ``sum_t weight_t * loss_t`` (cross-entropy; MSE of the standardized target); choose the
weights on validation (an easy head, or one on another scale, otherwise dominates the shared backbone).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from common.errors import ModelPathError
from common.vision.images import load_rgb
from common.vision.models import BackboneModel, _timm_config, inference_device, lora_targets, model_dtype


@dataclass
class Task:
    """One head: ``classes`` for a classification task, none for a regression task (``log``: regress log(y))."""

    name: str
    classes: list[str] | None = None
    weight: float = 1.0
    log: bool = False
    hidden: int = 0  # > 0: a small MLP head (Linear -> ReLU -> Linear) instead of a linear one
    mean: float = 0.0  # regression: standardization of the (log) target, from the training split
    std: float = 1.0

    @property
    def is_classification(self) -> bool:
        return self.classes is not None

    @property
    def width(self) -> int:
        return len(self.classes) if self.classes is not None else 1

    def encode(self, value: Any) -> float:
        """A label (class name or number) -> what the head is trained on (class index, standardized value)."""
        if self.classes is not None:
            return float(self.classes.index(value))
        y = math.log(float(value)) if self.log else float(value)
        return (y - self.mean) / self.std

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Regression head outputs -> values in the task's units."""
        y = np.asarray(z, dtype=np.float64) * self.std + self.mean
        return np.exp(y) if self.log else y


@dataclass
class MultiSample:
    """One image and its labels ``{task: class name or number}``."""

    source: Any
    labels: dict = field(default_factory=dict)
    split: str = "train"

    @property
    def name(self) -> str:
        return str(self.source) if isinstance(self.source, (str, Path)) else "<in-memory image>"


class MultiTaskDataset(torch.utils.data.Dataset):
    """Samples -> ``{"pixel_values", "labels"}``; ``labels`` holds one encoded target per task, in task order."""

    def __init__(self, samples: Sequence[MultiSample], tasks: Sequence[Task], transform) -> None:
        self.samples, self.tasks, self.transform = list(samples), list(tasks), transform
        self.targets = np.array([[t.encode(s.labels[t.name]) for t in self.tasks] for s in self.samples],
                                dtype=np.float32).reshape(len(self.samples), len(self.tasks))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.transform(load_rgb(self.samples[i].source)),
                "labels": torch.from_numpy(self.targets[i])}


class _FeatureTargets(torch.utils.data.Dataset):
    def __init__(self, features: torch.Tensor, targets: np.ndarray) -> None:
        self.features, self.targets = features, torch.as_tensor(targets)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> dict:
        return {"features": self.features[i], "labels": self.targets[i]}


class MultiTaskHeads(nn.Module):
    """One head per task on pooled features (linear, or an MLP with ``Task.hidden``); ``forward(features, labels)`` -> ``{"loss", "logits"}``.

    ``logits`` are the heads' outputs concatenated in task order (one tensor, so the Trainer gathers it like a
    single-task model's); :meth:`split` cuts them back per task.
    """

    def __init__(self, num_features: int, tasks: Sequence[Task], dropout: float = 0.0) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({t.name: nn.Linear(num_features, t.width) if not t.hidden else nn.Sequential(
            nn.Linear(num_features, t.hidden), nn.ReLU(), nn.Linear(t.hidden, t.width)) for t in self.tasks})

    def split(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip([t.name for t in self.tasks], logits.split([t.width for t in self.tasks], dim=-1)))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``sum_t weight_t * loss_t``: cross-entropy (classification), MSE of the standardized target (regression)."""
        total = logits.new_zeros(())
        for (task, out), y in zip(zip(self.tasks, self.split(logits).values()), labels.float().unbind(-1)):
            out = out.float()
            part = (nn.functional.cross_entropy(out, y.long()) if task.is_classification
                    else nn.functional.mse_loss(out[:, 0], y))
            total = total + task.weight * part
        return total

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        features = self.dropout(features)
        logits = torch.cat([self.heads[t.name](features) for t in self.tasks], dim=-1)
        return {"logits": logits, **({"loss": self.loss(logits, labels)} if labels is not None else {})}


class MultiTaskModel(BackboneModel):
    """A timm backbone (``num_classes=0``: pooled features) and :class:`MultiTaskHeads`."""

    def __init__(self, backbone: nn.Module, tasks: Sequence[Task], dropout: float = 0.0,
                 freeze_norm_stats: bool = False) -> None:
        super().__init__(backbone, freeze_norm_stats)
        self.heads = MultiTaskHeads(backbone.num_features, tasks, dropout)

    @property
    def tasks(self) -> list[Task]:
        return self.heads.tasks

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        return self.heads(self.backbone(pixel_values), labels)


class TaskView(nn.Module):
    """One task's logits of a :class:`MultiTaskModel` (what :class:`common.vision.cam.GradCAM` explains)."""

    def __init__(self, model: MultiTaskModel, task: str) -> None:
        super().__init__()
        self.model, self.task = model, task

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.heads.split(self.model(pixel_values)["logits"])[self.task]


# ------------------------------------------------------------------------------------------ training


def prepare_multitask(model: MultiTaskModel, method: str, model_args=None) -> MultiTaskModel:
    """Freeze / wrap the backbone for ``method`` (linear_probe | lora | full); the heads always train.

    LoRA settings (``lora_r``, ``lora_alpha``, ``lora_dropout``, ``lora_target_modules``, ``lora_train_norm``) come
    from ``model_args`` (:class:`common.vision.args.VisionModelArguments`).
    """
    model.requires_grad_(method == "full")
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        a = model_args
        config = LoraConfig(r=a.lora_r, lora_alpha=a.lora_alpha, lora_dropout=a.lora_dropout,
                            target_modules=a.lora_target_modules or lora_targets(model.backbone))
        model.backbone = get_peft_model(model.backbone, config)
        if a.lora_train_norm:
            for m in model.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.requires_grad_(True)
    elif method not in ("linear_probe", "full"):
        raise ValueError(f"method must be linear_probe, lora or full, not {method!r}")
    model.heads.requires_grad_(True)
    return model


def merged(model: MultiTaskModel) -> MultiTaskModel:
    """The model with LoRA merged into the backbone's weights (a plain timm backbone again)."""
    if hasattr(model.backbone, "merge_and_unload"):
        model.backbone = model.backbone.merge_and_unload()
    return model


def fit_multitask_probe(model: MultiTaskModel, dataset: MultiTaskDataset, training_args, epochs: int,
                        learning_rate: float, cache: str | Path | None = None) -> MultiTaskModel:
    """The baseline: train only the heads, with the multi-task loss, on frozen cached backbone features.

    Runs on an HF Trainer with the run's precision and device (one accelerate state per run, see
    :mod:`common.vision.train`). The heads are trained in place: fine-tuning starts from them (LP-FT).
    """
    from transformers import Trainer, TrainingArguments

    from common.vision.train import extract_features

    features, _ = extract_features(model.backbone, dataset, cache)
    args = TrainingArguments(
        output_dir=str(Path(training_args.output_dir) / "linear_probe"), num_train_epochs=epochs,
        learning_rate=learning_rate, per_device_train_batch_size=64, weight_decay=1e-4, lr_scheduler_type="cosine",
        save_strategy="no", eval_strategy="no", report_to=[], logging_strategy="no", use_cpu=training_args.use_cpu,
        bf16=training_args.bf16, fp16=training_args.fp16, ddp_backend=training_args.ddp_backend,
        seed=training_args.seed, disable_tqdm=True, label_names=["labels"])
    Trainer(model=model.heads, args=args, train_dataset=_FeatureTargets(features, dataset.targets)).train()
    return model


def selection_score(metrics: dict, tasks: Sequence[Task]) -> float:
    """What checkpoints are chosen by: the mean of every classification head's macro-F1 and every regression
    head's share within +-20% of the truth (each in [0, 1], so no head dominates by its scale)."""
    keys = [f"{t.name}_macro_f1" if t.is_classification else f"{t.name}_within_20pct" for t in tasks]
    return float(np.mean([metrics[k] for k in keys]))


def build_multitask_trainer(model: MultiTaskModel, args, train_ds: MultiTaskDataset, eval_ds: MultiTaskDataset,
                            early_stopping_patience: int = 0):
    """An HF Trainer for a :class:`MultiTaskModel`: per-head metrics, best checkpoint by ``score``
    (:func:`selection_score`; set ``metric_for_best_model: score``), early stopping, resume."""
    from transformers import Trainer

    from common.train import early_stopping_callbacks

    tasks = model.tasks

    def compute_metrics(eval_pred) -> dict:
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        outputs = split_outputs(torch.as_tensor(np.asarray(logits)), tasks)
        m = multitask_metrics(outputs, np.asarray(eval_pred.label_ids), tasks)
        flat = {k: v for k, v in m.items() if isinstance(v, float)}
        return {**flat, "score": selection_score(m, tasks)}

    args.label_names = ["labels"]
    args.remove_unused_columns = False
    return Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                   compute_metrics=compute_metrics, callbacks=early_stopping_callbacks(args, early_stopping_patience))


# ------------------------------------------------------------------------------------------ evaluation


def split_outputs(logits: torch.Tensor, tasks: Sequence[Task]) -> dict[str, np.ndarray]:
    """Concatenated head outputs -> ``{task: softmax probabilities | values in the task's units}``."""
    out = {}
    for task, part in zip(tasks, logits.float().split([t.width for t in tasks], dim=-1)):
        out[task.name] = part.softmax(-1).numpy() if task.is_classification else task.decode(part[:, 0].numpy())
    return out


@torch.no_grad()  # not inference_mode: it would turn the weights moved to a GPU here into inference
# tensors, which autograd then refuses in training and Grad-CAM (seen on an H200)
def predict_multitask(model: MultiTaskModel, dataset: MultiTaskDataset, batch_size: int = 64,
                      warmup: int = 1) -> tuple[dict[str, np.ndarray], float]:
    """Every head's output on ``dataset`` (see :func:`split_outputs`) and the throughput (images/s, decoding
    included, after ``warmup`` untimed batches)."""
    device = inference_device()
    model = merged(model).eval().to(device)
    dtype = model_dtype(model)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    for _, batch in zip(range(warmup), loader):
        model(batch["pixel_values"].to(device, dtype))
    start, chunks = time.perf_counter(), []
    for batch in loader:
        chunks.append(model(batch["pixel_values"].to(device, dtype))["logits"].float().cpu())
    seconds = time.perf_counter() - start
    return split_outputs(torch.cat(chunks), model.tasks), len(dataset) / max(seconds, 1e-9)


def regression_metrics(pred: np.ndarray, true: np.ndarray, prefix: str) -> dict[str, float]:
    """MAE, MAPE and the share of predictions within +-20% of the truth, in the task's units."""
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    rel = np.abs(pred - true) / np.maximum(np.abs(true), 1e-9)
    return {f"{prefix}_mae": float(np.mean(np.abs(pred - true))), f"{prefix}_mape": float(np.mean(rel)),
            f"{prefix}_within_20pct": float(np.mean(rel <= 0.2))}


def multitask_metrics(outputs: dict[str, np.ndarray], targets: np.ndarray, tasks: Sequence[Task]) -> dict:
    """Per head: ``<task>_accuracy``, ``<task>_macro_f1`` and ``confusion[<task>]`` (rows: true class), or
    ``<task>_mae``, ``<task>_mape``, ``<task>_within_20pct``. ``targets`` are the encoded labels (dataset.targets)."""
    from common.vision.metrics import classification_metrics

    metrics: dict = {}
    confusion = {}
    for j, task in enumerate(tasks):
        if task.is_classification:
            m = classification_metrics(targets[:, j].astype(int), outputs[task.name].argmax(1), task.classes)
            metrics[f"{task.name}_accuracy"], metrics[f"{task.name}_macro_f1"] = m["accuracy"], m["macro_f1"]
            confusion[task.name] = m["confusion_matrix"]
        else:
            metrics.update(regression_metrics(outputs[task.name], task.decode(targets[:, j]), task.name))
    return {**metrics, "confusion": confusion}


# ------------------------------------------------------------------------------------------ save / load


def save_multitask(model: MultiTaskModel, out_dir: str | Path, normalization: dict, image_size: int,
                   extra: dict | None = None) -> Path:
    """``model.safetensors`` (backbone + heads, LoRA merged) and ``config.json`` (timm layout + the tasks)."""
    from safetensors.torch import save_file

    model = merged(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    backbone = model.backbone
    arch = getattr(backbone, "pretrained_cfg", {}).get("architecture") or type(backbone).__name__
    cfg = _timm_config(arch, 0, backbone.num_features, normalization["mean"], normalization["std"], image_size,
                       extra=extra)
    cfg["tasks"] = [asdict(t) for t in model.tasks]
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


def load_multitask(model_dir: str | Path) -> tuple[MultiTaskModel, dict]:
    """Rebuild a saved :class:`MultiTaskModel`; returns ``(model in eval mode, config dict)``.

    Raises:
        ModelPathError: the folder is missing, empty, or holds an incomplete / corrupt model.
    """
    import timm
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    cfg_file = model_dir / "config.json"
    if not cfg_file.exists() or not (model_dir / "model.safetensors").exists():
        what = "does not exist" if not model_dir.exists() else "is not a folder" if not model_dir.is_dir() else (
            "holds no saved multi-task model (config.json + model.safetensors)")
        raise ModelPathError(f"model_dir {model_dir} {what}; pass the folder train.py --output_dir wrote.")
    try:
        cfg = json.loads(cfg_file.read_text())
        tasks = [Task(**t) for t in cfg["tasks"]]
        backbone = timm.create_model(cfg["architecture"], pretrained=False, num_classes=0)
        model = MultiTaskModel(backbone, tasks)
        model.load_state_dict(load_file(model_dir / "model.safetensors"))
    except (ValueError, KeyError, TypeError, RuntimeError, OSError, SafetensorError) as e:
        raise ModelPathError(f"model_dir {model_dir}: incomplete or corrupt multi-task model ({type(e).__name__}: "
                             f"{str(e)[:300]}); retrain, or pass the folder train.py --output_dir wrote.") from e
    return model.eval(), cfg
