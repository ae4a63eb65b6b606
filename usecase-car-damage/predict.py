"""Estimate part, damage, severity and repair cost for car photos with a trained run.

    python usecase-car-damage/predict.py --model_dir runs/car-damage photo1.jpg photo2.png
    python usecase-car-damage/predict.py --model_dir runs/car-damage claim_photos/ --json
    python usecase-car-damage/predict.py --model_dir runs/car-damage photo.jpg --report annotated/
    python usecase-car-damage/predict.py --model_dir runs/car-damage --examples 4    # held-out test photos

Per photo: the part, damage type and severity with their confidences, and a cost estimate with a range that says
which method produced it (the cost table applied to the labels, or the regression head; chosen on validation by
train.py) and, for the table, the breakdown (repair, parts, hours x rate). ``--json`` prints one JSON object per
photo; ``--report DIR`` also writes an annotated image per photo (labels, estimate, damage heatmap).

A bad photo (missing, empty, truncated, not an image, too large) gets a clear error of its own -- on stderr, and
as ``{"image", "error"}`` with ``--json`` -- and the others are still processed; the exit code is then 1. CMYK,
16-bit, grey and palette photos are converted to 8-bit RGB (the result says so).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from common.errors import DataError, ModelPathError, run_main
from common.paths import load_sibling, repo_path, resolve_run_path, run_relative  # noqa: F401 (train.py uses it)
from common.vision import IMAGE_EXTENSIONS, check_image, load_rgb, photo_warnings
from common.vision.cam import GradCAM, overlay
from common.vision.multitask import TaskView, load_multitask, split_outputs

costs = load_sibling(__file__, "costs")
estimate = load_sibling(__file__, "estimate")
prepare_data = load_sibling(__file__, "prepare_data")


def _conversion(path: Path) -> str | None:
    """A note when the photo is not 8-bit RGB (it is converted, not refused)."""
    with Image.open(path) as im:
        mode = im.mode
    return None if mode == "RGB" else f"converted from {mode} to 8-bit RGB"


def _annotate(image: Image.Image, heat, result: dict, path: Path) -> None:
    """The photo (256 px) with the damage heatmap and a caption: labels, confidences, estimate, method."""
    big = overlay(image, heat).resize((256, 256)) if heat is not None else image.resize((256, 256))
    canvas = Image.new("RGB", (256, 330), (255, 255, 255))
    canvas.paste(big, (0, 0))
    c, conf = result["cost"], result["confidences"]
    lines = [f"{result.get('part')} ({conf.get('part', 0):.0%}) / {result.get('damage')} ({conf.get('damage', 0):.0%})",
             f"severity: {result.get('severity')} ({conf.get('severity', 0):.0%})",
             f"cost {c.get('estimate')} [{c.get('low')} - {c.get('high')}]", f"method: {c.get('method')}"]
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((6, 260 + 17 * i), line, fill=(0, 0, 0))
    canvas.save(path)


def explain(model, config: dict, table, images: list[Path], report_dir: Path | None = None) -> list[dict]:
    """Predict every photo; with ``report_dir``, also write ``<name>.annotated.png`` (damage heatmap + labels)."""
    pre = config["pretrained_cfg"]
    transform = prepare_data.build_transforms(pre["input_size"][-1], pre["mean"], pre["std"], train=False)
    extra = config.get("cookbook", {})
    calibration = extra.get("calibration") or {"method": None, "methods": {}, "coverage": 0.8}
    model.eval()
    names = [t.name for t in model.tasks]
    cam = None
    if report_dir is not None and "damage" in names:
        layer = extra.get("gradcam_layer")
        cam = GradCAM(TaskView(model, "damage").eval(), f"model.backbone.{layer}" if layer else None,
                      extra.get("cam_method") or "gradcam")
        report_dir.mkdir(parents=True, exist_ok=True)
    none = table.damages.index(costs.NO_DAMAGE) if costs.NO_DAMAGE in table.damages else None
    weight = next(p for p in model.parameters() if p.is_floating_point())
    placement = {"device": weight.device, "dtype": weight.dtype}
    results, used = [], set()
    for path in images:
        image = load_rgb(path)
        x = transform(image)[None].to(**placement)  # where the model is (a GPU after training there), its dtype
        with torch.no_grad():
            outputs = split_outputs(model(x)["logits"].float().cpu(), model.tasks)
        result, confidences = {"image": str(path)}, {}
        for task in model.tasks:
            if task.is_classification:
                k = int(outputs[task.name][0].argmax())
                result[task.name] = task.classes[k]
                confidences[task.name] = round(float(outputs[task.name][0, k]), 4)
        result["confidences"] = confidences
        result["cost"] = estimate.user_estimate({k: v[0] for k, v in outputs.items()}, table, calibration)
        note = _conversion(path)
        if note:
            result["note"] = note
        warnings = photo_warnings(image, extra.get("photo_ranges", {}))  # far outside the training photos?
        if warnings:
            result["warnings"] = warnings
        if report_dir is not None:
            heat = cam(x, contrast_idx=none)[0][0] if cam is not None else None
            stem = Path(path).stem
            while stem in used:
                stem += "_"
            used.add(stem)
            result["annotated"] = str(report_dir / f"{stem}.annotated.png")
            _annotate(image, heat, result, Path(result["annotated"]))
        results.append(result)
    return results


def describe(r: dict) -> str:
    """One human-readable estimate."""
    c = r["cost"]
    labels = ", ".join(f"{k} {r[k]} ({r['confidences'][k]:.0%})" for k in ("part", "damage", "severity") if k in r)
    warnings = "".join(f"\n  warning: the photo is {w}; the estimate is not to be trusted" for w in r.get("warnings", []))
    if c.get("method") is None:
        return f"{r['image']}: {labels}; no cost estimate ({c.get('note')})" + warnings
    text = (f"{r['image']}: {labels}\n  estimated repair cost {c['estimate']:.2f} (range {c['low']:.2f} - "
            f"{c['high']:.2f}, {c['range_covers']}; method: {c['method']})")
    b = c.get("table_breakdown")
    if b:
        text += (f"\n  cost table: {b['repair']}: parts {b['parts_cost']:.2f} + {b['labour_hours']:g} h x "
                 f"{b['labour_rate']:.2f} = {b['table_cost']:.2f}")
    if "regression_estimate" in c:
        text += f"; regression head: {c['regression_estimate']:.2f}"
    text += warnings
    return text + (f"\n  note: {r['note']}" if r.get("note") else "")


def collect_inputs(inputs: list[str]) -> list[Path]:
    """Every file given and every image under every folder given (a missing path is a DataError)."""
    images: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise DataError(f"input folder {item} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
            images += found
        elif item.exists():
            images.append(item)
        else:
            raise DataError(f"input {item} does not exist (give image files or folders)")
    return images


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description="Estimate car damage and repair cost from photos.")
    parser.add_argument("inputs", nargs="*", help="photos or folders of photos")
    parser.add_argument("--model_dir", required=True, help="the folder train.py --output_dir wrote")
    parser.add_argument("--examples", type=int, default=0, help="also run on the run's first N test photos")
    parser.add_argument("--json", action="store_true", help="one JSON object per photo on stdout")
    parser.add_argument("--report", help="write an annotated image per photo into this folder")
    args = parser.parse_args(argv)
    model_dir = Path(args.model_dir).resolve()
    model, config = load_multitask(model_dir)  # ModelPathError before anything else is read
    table = costs.CostTable.load(model_dir / "cost_table.csv")  # the prices the run was trained and scored with
    images = collect_inputs(args.inputs)
    if args.examples:
        split_file = model_dir / "test_split.jsonl"
        if not split_file.is_file():
            raise ModelPathError(f"--examples: {split_file} does not exist; pass the folder train.py wrote.")
        rows = [json.loads(line) for line in split_file.read_text().splitlines() if line]
        images += [resolve_run_path(r["path"], model_dir) for r in rows[:args.examples]]
    if not images:
        parser.error("give photos / folders or --examples N")
    results, failed = [], 0
    for path in images:
        issue = check_image(path)  # the same check train.py's validation uses
        if issue:
            failed += 1
            print(f"error: {path}: {issue} (skipped; the other photos are processed)", file=sys.stderr)
            if args.json:
                print(json.dumps({"image": str(path), "error": issue}), flush=True)
            continue
        r = explain(model, config, table, [path], Path(args.report) if args.report else None)[0]
        results.append(r)
        print(json.dumps(r) if args.json else describe(r), flush=True)
    if failed:
        print(f"{failed} of {len(images)} photo(s) failed; the other {len(results)} were processed.", file=sys.stderr)
        sys.exit(1)
    return results


if __name__ == "__main__":
    run_main(main)
