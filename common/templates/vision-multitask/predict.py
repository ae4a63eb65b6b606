"""Predict every head for images with the model train.py produced.

    python {{folder}}/predict.py --model_dir runs/{{name}} photo.png more_photos/
    python {{folder}}/predict.py --model_dir runs/{{name}} --examples 4     # the run's held-out test images

Prints one JSON line per image: each classification head's class and probability, each regression head's value.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from common.errors import DataError, run_main
from common.paths import resolve_run_path
from common.vision import IMAGE_EXTENSIONS, build_transforms, load_rgb
from common.vision.multitask import load_multitask, split_outputs


def collect_inputs(inputs: list[str]) -> list[Path]:
    """Every image file given, and every image under every folder given."""
    images = []
    for item in map(Path, inputs):
        if item.is_dir():
            images += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif item.is_file():
            images.append(item)
        else:
            raise DataError(f"input {item} does not exist (give image files or folders)")
    return images


@torch.no_grad()
def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description="Predict every head for images with a trained run.")
    parser.add_argument("inputs", nargs="*", help="image files or folders")
    parser.add_argument("--model_dir", required=True, help="the folder train.py --output_dir wrote")
    parser.add_argument("--examples", type=int, default=0, help="also predict the run's first N test images")
    args = parser.parse_args(argv)
    model_dir = Path(args.model_dir)
    model, config = load_multitask(model_dir)
    images = collect_inputs(args.inputs)
    if args.examples:
        rows = [json.loads(line) for line in (model_dir / "test_split.jsonl").read_text().splitlines() if line]
        images += [resolve_run_path(r["path"], model_dir) for r in rows[:args.examples]]
    if not images:
        parser.error("give image files/folders or --examples N")
    pre = config["pretrained_cfg"]
    transform = build_transforms(pre["input_size"][-1], pre["mean"], pre["std"], train=False)
    results = []
    for path in images:
        outputs = split_outputs(model(transform(load_rgb(path))[None])["logits"], model.tasks)
        result = {"image": str(path)}
        for task in model.tasks:
            if task.is_classification:
                k = int(outputs[task.name][0].argmax())
                result[task.name] = {"class": task.classes[k], "probability": round(float(outputs[task.name][0][k]), 4)}
            else:
                result[task.name] = round(float(outputs[task.name][0]), 3)
        results.append(result)
        print(json.dumps(result))
    return results


if __name__ == "__main__":
    run_main(main)
