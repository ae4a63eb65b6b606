"""Classify product images with a trained run and show where the model looked (Grad-CAM heatmap overlay).

    python usecase-vision-defects/predict.py --model_dir runs/vision-defects photo.png
    python usecase-vision-defects/predict.py --model_dir runs/vision-defects my_folder/ --out heatmaps/
    python usecase-vision-defects/predict.py --model_dir runs/vision-defects --examples 4   # held-out test images

Prints one JSON line per image: the class, its confidence, and the heatmap PNG written next to the run. A photo far
outside the training photos (much smaller, flatter or blurrier than nearly all of them) gets ``"warnings"`` in its
line and a warning on stderr: the model still answers, but the answer is not to be trusted.
A bad image (missing, truncated, not an image, too large) is reported on stderr by name and skipped; the rest
are processed and the exit code is 1. A missing or empty ``--model_dir`` or input path is an error (exit code 2).
Heatmaps of images from a folder are named after their path inside it (``sub_a/img.png`` ->
``sub_a__img.gradcam.png``), so same-named images in different subfolders never overwrite each other.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from common.errors import DataError, ModelPathError, run_main
from common.paths import repo_path, resolve_run_path, run_relative  # noqa: F401 (re-exported for train.py)
from common.vision import IMAGE_EXTENSIONS, build_transforms, check_image, load_classifier, load_rgb, photo_warnings
from common.vision.cam import GradCAM, overlay


def heatmap_names(images: list[Path], names: list[str] | None = None) -> list[str]:
    """One distinct heatmap stem per image: ``names`` (or the file stems), ``_2``, ``_3``... added on a clash."""
    stems = list(names) if names else [Path(p).stem for p in images]
    seen: dict[str, int] = {}
    out = []
    for stem in stems:
        seen[stem] = seen.get(stem, 0) + 1
        out.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return out


def explain(model: torch.nn.Module, config: dict, images: list[Path], out_dir: Path,
            names: list[str] | None = None) -> list[dict]:
    """Predict each image and write ``<name>.gradcam.png`` (heatmap of the predicted class) into ``out_dir``;
    ``names`` default to the file stems (made distinct, see :func:`heatmap_names`)."""
    pre = config["pretrained_cfg"]
    transform = build_transforms(pre["input_size"][-1], pre["mean"], pre["std"], train=False)
    saved = config.get("cookbook", {})  # the heatmap settings train.py used (and scored)
    cam = GradCAM(model, saved.get("gradcam_layer"), saved.get("cam_method", "gradcam"), saved.get("cam_smooth", 0.0))
    labels = config["label_names"]
    good = labels.index("good") if "good" in labels else None  # heatmaps explain "this defect rather than good"
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for path, name in zip(images, heatmap_names(images, names)):
        image = load_rgb(path)
        heat, logits = cam(transform(image)[None], contrast_idx=good)
        probs = logits.softmax(-1)[0]
        k = int(probs.argmax())
        heatmap = out_dir / f"{name}.gradcam.png"
        overlay(image, heat[0]).save(heatmap)
        result = {"image": str(path), "class": labels[k], "confidence": round(float(probs[k]), 4),
                  "heatmap": str(heatmap)}
        warnings = photo_warnings(image, saved.get("photo_ranges", {}))  # far outside the training photos?
        if warnings:
            result["warnings"] = warnings
            print(f"warning: {path}: {'; '.join(warnings)} -- the answer is not to be trusted", file=sys.stderr)
        results.append(result)
    return results


def held_out_examples(model_dir: Path, n: int) -> list[Path]:
    """The first ``n`` test images of the run (``test_split.jsonl`` paths are written by :func:`run_relative`)."""
    split_file = model_dir / "test_split.jsonl"
    if not split_file.is_file():
        raise ModelPathError(f"--examples: {split_file} does not exist; pass the folder train.py --output_dir wrote.")
    rows = [json.loads(line) for line in split_file.read_text().splitlines() if line]
    return [resolve_run_path(r["path"], model_dir) for r in rows[:n]]


def collect_inputs(inputs: list[str]) -> list[tuple[Path, str]]:
    """``(image, heatmap name)`` for every file given and every image under every folder given.

    Raises:
        DataError: an input path that does not exist, or a folder with no image in it.
    """
    images: list[tuple[Path, str]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise DataError(f"input folder {item} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
            images += [(p, p.relative_to(item).with_suffix("").as_posix().replace("/", "__")) for p in found]
        elif item.exists():
            images.append((item, item.stem))
        else:
            raise DataError(f"input {item} does not exist (give image files or folders)")
    return images


def main(argv: list[str] | None = None) -> list[dict]:
    """Predict every good image; a bad one is named on stderr and skipped, then ``SystemExit(1)``.

    Raises:
        ModelPathError: ``--model_dir`` missing, empty or without a saved classifier.
        DataError: an input path that does not exist.
    """
    parser = argparse.ArgumentParser(description="Classify images and draw Grad-CAM heatmaps.")
    parser.add_argument("inputs", nargs="*", help="image files or folders")
    parser.add_argument("--model_dir", required=True, help="the folder train.py --output_dir wrote")
    parser.add_argument("--examples", type=int, default=0, help="also run on the run's first N test images")
    parser.add_argument("--out", help="where heatmaps go (default: MODEL_DIR/predictions)")
    args = parser.parse_args(argv)
    model_dir = Path(args.model_dir).resolve()
    model, config = load_classifier(model_dir)  # ModelPathError before anything else is read or written
    images = collect_inputs(args.inputs)
    if args.examples:
        images += [(p, p.stem) for p in held_out_examples(model_dir, args.examples)]
    if not images:
        parser.error("give image files/folders or --examples N")
    good, failed = [], []
    for path, name in images:
        issue = check_image(path)  # the same check train.py's validation uses
        if issue:
            failed.append(path)
            print(f"error: {path}: {issue} (skipped)", file=sys.stderr)
        else:
            good.append((path, name))
    results = explain(model, config, [p for p, _ in good], Path(args.out) if args.out else model_dir / "predictions",
                      names=[n for _, n in good]) if good else []
    for r in results:
        print(json.dumps(r))
    if failed:
        print(f"{len(failed)} of {len(images)} image(s) failed; the other {len(results)} were processed.",
              file=sys.stderr)
        sys.exit(1)
    return results


if __name__ == "__main__":
    run_main(main)
