"""Classify product images with a trained run and show where the model looked (Grad-CAM heatmap overlay).

    python usecase-vision-defects/predict.py --model_dir runs/vision-defects photo.png
    python usecase-vision-defects/predict.py --model_dir runs/vision-defects my_folder/ --out heatmaps/
    python usecase-vision-defects/predict.py --model_dir runs/vision-defects --examples 4   # held-out test images

Prints one JSON line per image: the class, its confidence, and the heatmap PNG written next to the run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:
    import common  # noqa: F401  (installed editable by `make setup`)
except ImportError:  # running from a plain checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from common.gradcam import GradCAM, overlay
from common.vision import IMAGE_EXTENSIONS, build_transforms, load_classifier, load_rgb


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
    """The first ``n`` test images of the run (``test_split.jsonl`` holds absolute paths)."""
    rows = [json.loads(line) for line in (model_dir / "test_split.jsonl").read_text().splitlines() if line]
    return [Path(r["path"]) for r in rows[:n]]


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
