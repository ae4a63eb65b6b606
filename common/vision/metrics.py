"""Evaluation: predictions with a warmed-up throughput, classification metrics, the confusion-matrix plot, and
how often the heatmap's peak lies inside the defect's box."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.vision.data import ImageDataset
from common.vision.images import load_rgb
from common.vision.models import inference_device, model_dtype, unwrap


@torch.no_grad()  # not inference_mode: it would turn the weights moved to a GPU here into inference
# tensors, which autograd then refuses in training and Grad-CAM (seen on an H200)
def predict(model: nn.Module, dataset: ImageDataset, batch_size: int = 64, warmup: int = 1) -> tuple[np.ndarray, float]:
    """Softmax probabilities (fp32) of every image and the inference throughput (images/s, decoding included).

    ``warmup`` batches run untimed first: the first forward passes pay one-time costs (memory allocation, kernel
    and oneDNN primitive selection) that would otherwise halve the measured throughput of a small test set.
    """
    device = inference_device()
    model = unwrap(model).eval().to(device)
    dtype = model_dtype(model)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    for _, batch in zip(range(warmup), loader):  # range first: no extra batch is decoded
        model(batch["pixel_values"].to(device, dtype))
    if warmup and device.type == "cuda":
        torch.cuda.synchronize()
    start, probs = time.perf_counter(), []
    for batch in loader:
        probs.append(model(batch["pixel_values"].to(device, dtype)).float().softmax(-1).cpu())
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


def evaluate_classifier(model: nn.Module, dataset: ImageDataset, classes: Sequence[str],
                        throughput: bool = True) -> dict:
    """:func:`classification_metrics` on ``dataset``, plus ``inference_img_per_s`` when ``throughput`` (measured
    after one warm-up batch)."""
    probs, speed = predict(model, dataset, warmup=1 if throughput else 0)
    metrics = classification_metrics(dataset.targets, probs.argmax(1), classes)
    return {**metrics, "inference_img_per_s": speed} if throughput else metrics


def _confusion_figure(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str):
    """The confusion-matrix figure: :class:`sklearn.metrics.ConfusionMatrixDisplay`, counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(1.0 * len(classes) + 2, 1.0 * len(classes) + 1.5))
    ConfusionMatrixDisplay(np.asarray(matrix, dtype=int), display_labels=list(classes)).plot(
        ax=ax, cmap="Blues", colorbar=False, values_format="d", xticks_rotation=35)
    plt.setp(ax.get_xticklabels(), ha="right")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path,
                   title: str = "Confusion matrix (held-out test)") -> Path:
    """Save the confusion matrix as a PNG (counts in the cells; rows: true class, columns: predicted)."""
    import matplotlib.pyplot as plt

    fig = _confusion_figure(matrix, classes, title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def localization_score(model: nn.Module, dataset: ImageDataset, classes: Sequence[str], normal_class: str = "good",
                       layer: str | None = None, method: str = "gradcam", smooth: float = 0.0,
                       batch_size: int = 32) -> dict:
    """Share of correctly classified defective images whose heatmap peak lies inside the defect's box.

    ``layer``, ``method`` and ``smooth`` are those of :class:`common.vision.cam.GradCAM`.
    """
    from common.vision.cam import GradCAM, peak_in_box

    model = unwrap(model)
    cam = GradCAM(model, layer, method=method, smooth=smooth)
    contrast = list(classes).index(normal_class) if normal_class in classes else None
    hits = total = 0
    keep = [i for i, s in enumerate(dataset.samples) if s.box and s.label != normal_class]
    for start in range(0, len(keep), batch_size):
        idx = keep[start:start + batch_size]
        batch = torch.stack([dataset[i]["pixel_values"] for i in idx]).to(inference_device())
        heat, logits = cam(batch, contrast_idx=contrast)
        for j, i in enumerate(idx):
            s = dataset.samples[i]
            if classes[int(logits[j].argmax())] != s.label:
                continue
            total += 1
            hits += peak_in_box(heat[j], s.box, load_rgb(s.source).size)
    return {"gradcam_peak_in_box": hits / total if total else float("nan"), "gradcam_images": total,
            "gradcam_layer": cam.layer_name, "cam_method": method, "cam_smooth": smooth}
