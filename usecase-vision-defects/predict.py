"""Classify product images with a trained run and show where the model looked (Grad-CAM heatmap overlay).

    python usecase-vision-defects/predict.py --model_dir runs/vision-defects photo.png
    python usecase-vision-defects/predict.py --model_dir runs/vision-defects my_folder/ --out heatmaps/
    python usecase-vision-defects/predict.py --model_dir runs/vision-defects --examples 4   # held-out test images

Prints one JSON line per image: the class, its confidence, and the heatmap PNG written next to the run.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from common.paths import REPO_ROOT, repo_path
from common.vision import IMAGE_EXTENSIONS, build_transforms, load_classifier, load_rgb
from common.vision.cam import GradCAM, overlay


def run_relative(path: str | os.PathLike, run_dir: str | os.PathLike) -> str:
    """``path`` as written into a run's files: relative to the run folder when inside it, else to the repository
    when inside it, else relative to the run folder through ``..`` -- never an absolute machine path."""
    p, run = Path(path).resolve(), Path(run_dir).resolve()
    for base in (run, REPO_ROOT):
        if p.is_relative_to(base):
            return p.relative_to(base).as_posix()
    return Path(os.path.relpath(p, run)).as_posix()


def resolve_run_path(path: str | os.PathLike, run_dir: str | os.PathLike) -> Path:
    """The inverse of :func:`run_relative`: relative to the run folder if it exists there, else to the repository."""
    p = Path(path)
    if p.is_absolute():
        return p
    in_run = (Path(run_dir) / p).resolve()
    return in_run if in_run.exists() else repo_path(p)


def explain(model: torch.nn.Module, config: dict, images: list[Path], out_dir: Path) -> list[dict]:
    """Predict each image and write ``<stem>.gradcam.png`` (heatmap of the predicted class) into ``out_dir``."""
    pre = config["pretrained_cfg"]
    transform = build_transforms(pre["input_size"][-1], pre["mean"], pre["std"], train=False)
    saved = config.get("cookbook", {})  # the heatmap settings train.py used (and scored)
    cam = GradCAM(model, saved.get("gradcam_layer"), saved.get("cam_method", "gradcam"), saved.get("cam_smooth", 0.0))
    labels = config["label_names"]
    good = labels.index("good") if "good" in labels else None  # heatmaps explain "this defect rather than good"
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for path in images:
        image = load_rgb(path)
        heat, logits = cam(transform(image)[None], contrast_idx=good)
        probs = logits.softmax(-1)[0]
        k = int(probs.argmax())
        heatmap = out_dir / f"{Path(path).stem}.gradcam.png"
        overlay(image, heat[0]).save(heatmap)
        results.append({"image": str(path), "class": labels[k], "confidence": round(float(probs[k]), 4),
                        "heatmap": str(heatmap)})
    return results


def held_out_examples(model_dir: Path, n: int) -> list[Path]:
    """The first ``n`` test images of the run (``test_split.jsonl`` paths are written by :func:`run_relative`)."""
    rows = [json.loads(line) for line in (model_dir / "test_split.jsonl").read_text().splitlines() if line]
    return [resolve_run_path(r["path"], model_dir) for r in rows[:n]]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description="Classify images and draw Grad-CAM heatmaps.")
    parser.add_argument("inputs", nargs="*", help="image files or folders")
    parser.add_argument("--model_dir", required=True, help="the folder train.py --output_dir wrote")
    parser.add_argument("--examples", type=int, default=0, help="also run on the run's first N test images")
    parser.add_argument("--out", help="where heatmaps go (default: MODEL_DIR/predictions)")
    args = parser.parse_args(argv)
    model_dir = Path(args.model_dir).resolve()
    images: list[Path] = []
    for item in map(Path, args.inputs):
        images += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS) if item.is_dir() else [item]
    if args.examples:
        images += held_out_examples(model_dir, args.examples)
    if not images:
        parser.error("give image files/folders or --examples N")
    model, config = load_classifier(model_dir)
    results = explain(model, config, images, Path(args.out) if args.out else model_dir / "predictions")
    for r in results:
        print(json.dumps(r))
    return results


if __name__ == "__main__":
    main()
