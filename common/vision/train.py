"""Training: cached backbone features, the linear-probe baseline, and the HF Trainer for LoRA / full fine-tuning.

One accelerate state per run: the probe's own ``TrainingArguments`` copy the run's precision and device
(``bf16``, ``fp16``, ``use_cpu``), because accelerate refuses a second ``Accelerator`` with another precision in
the same process.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.generation_cache import fingerprint
from common.vision.args import VisionModelArguments
from common.vision.data import FeatureDataset, ImageDataset
from common.vision.models import ImageClassifier, LinearHead, head_name, inference_device, model_dtype


def _features_key(model: nn.Module, dataset: ImageDataset, cache: str | Path) -> Path:
    """Cache file named by the weights' fingerprint, the image list (paths, sizes, mtimes) and the transform."""
    h = hashlib.sha256(repr(dataset.transform).encode())
    h.update(fingerprint(model).encode())  # every weight, every byte: a merged or retrained backbone is a miss
    for s in dataset.samples:
        p = Path(s.name)
        h.update(s.name.encode())
        if p.exists():
            st = p.stat()
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return Path(cache) / f"features-{h.hexdigest()[:20]}.safetensors"


@torch.no_grad()  # not inference_mode: it would turn the weights moved to a GPU here into inference
# tensors, which autograd then refuses in training and Grad-CAM (seen on an H200)
def extract_features(model: nn.Module, dataset: ImageDataset, cache: str | Path | None = None,
                     batch_size: int = 64) -> tuple[torch.Tensor, bool]:
    """Pooled backbone features (before the head) of every image, in fp32; returns ``(features, from_cache)``.

    With ``cache`` (a folder), features are stored under a key made of the model weights' fingerprint, the
    image list (paths, sizes, mtimes) and the transform, so a second run, or the next epoch, reads them back.
    """
    key = _features_key(model, dataset, cache) if cache is not None else None
    if key is not None and key.exists():
        from safetensors.torch import load_file

        return load_file(key)["features"], True
    device = inference_device()
    was_training = model.training
    model.eval().to(device)
    dtype = model_dtype(model)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    chunks = [model.forward_head(model.forward_features(b["pixel_values"].to(device, dtype)), pre_logits=True)
              .float().cpu() for b in loader]
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

    The probe's Trainer runs with the precision and device of ``training_args`` (the run's), so that the
    fine-tuning Trainer after it finds the same accelerate state. Returns ``backbone`` with the trained head
    copied into its classifier.
    """
    from transformers import Trainer, TrainingArguments

    features, _ = extract_features(backbone, train_ds, cache)
    head = LinearHead(features.shape[1], len(train_ds.index))
    args = TrainingArguments(
        output_dir=str(Path(training_args.output_dir) / "linear_probe"), num_train_epochs=model_args.probe_epochs,
        learning_rate=model_args.probe_learning_rate, per_device_train_batch_size=64, weight_decay=1e-4,
        lr_scheduler_type="cosine", save_strategy="no", eval_strategy="no", report_to=[], logging_strategy="no",
        use_cpu=training_args.use_cpu, bf16=training_args.bf16, fp16=training_args.fp16,
        ddp_backend=training_args.ddp_backend, seed=training_args.seed, disable_tqdm=True, label_names=["labels"],
    )
    Trainer(model=head, args=args, train_dataset=FeatureDataset(features, train_ds.targets)).train()
    classifier = backbone.get_submodule(head_name(backbone))
    with torch.no_grad():
        classifier.weight.copy_(head.linear.weight)
        classifier.bias.copy_(head.linear.bias)
    return backbone


def compute_metrics(eval_pred) -> dict[str, float]:
    """Accuracy and macro-F1 for the Trainer's evaluation loop (``metric_for_best_model: macro_f1``)."""
    from sklearn.metrics import accuracy_score, f1_score

    logits, labels = eval_pred.predictions, eval_pred.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    preds = np.asarray(logits).argmax(-1)
    return {"accuracy": float(accuracy_score(labels, preds)),
            "macro_f1": float(f1_score(labels, preds, average="macro", zero_division=0))}


def _contiguous_state(module, state_dict, prefix, local_metadata) -> None:
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor):
            state_dict[key] = value.contiguous()


def to_channels_last(model: nn.Module) -> nn.Module:
    """Conv weights in channels-last layout (faster convolutions on a GPU), still saveable: safetensors refuses
    non-contiguous tensors, which channels-last conv weights are, so ``state_dict()`` hands out contiguous copies
    (checkpoints, the best-model reload and the final save all go through it)."""
    model = model.to(memory_format=torch.channels_last)
    model.register_state_dict_post_hook(_contiguous_state)
    return model


def build_trainer(model: ImageClassifier, args, train_ds, eval_ds, early_stopping_patience: int = 0):
    """An HF Trainer for an :class:`ImageClassifier`: task-metric model selection, early stopping, resume."""
    from transformers import Trainer

    from common.hardware import detect
    from common.train import early_stopping_callbacks

    args.label_names = ["labels"]
    args.remove_unused_columns = False
    if detect().device == "cuda":
        model = to_channels_last(model)
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
