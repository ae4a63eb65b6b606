"""Which heatmap finds the defect? Score Grad-CAM / LayerCAM settings of a trained run on validation and test.

    python usecase-vision-defects/compare_heatmaps.py --model_dir runs/vision-defects

For every setting (method, layer, blur) it counts the correctly classified defective images whose heatmap peak
lies inside the defect's box (``vision.localization_score``), on the validation split -- where the setting is
chosen -- and on the test split. It also prints how much of the image each defect class's box covers, and the
per-class score of the best validation setting. Writes ``DIR/heatmap_comparison.json``; the README's
localization table is this script's output for the default run (~1 min on 2 cores).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

from common import vision
from common.paths import load_sibling

predict = load_sibling(__file__, "predict")

# (method, layer, blur in pixels): the last stage for textbook Grad-CAM, then earlier, finer stages for LayerCAM.
SETTINGS = [
    ("gradcam", "blocks.6", 0.0), ("gradcam", "blocks.4", 0.0),
    ("layercam", "blocks.4", 0.0), ("layercam", "blocks.2", 0.0), ("layercam", "blocks.2", 2.0),
    ("layercam", "blocks.1", 0.0), ("layercam", "blocks.1", 2.0),
    ("layercam", "conv_stem", 0.0), ("layercam", "conv_stem", 2.0),
    ("layercam", "blocks.0", 0.0), ("layercam", "blocks.0", 2.0),
]


def box_coverage(samples: list, normal_class: str = "good") -> dict[str, float]:
    """Mean share of the image area that a defect's box covers, per class."""
    areas: dict[str, list[float]] = {}
    for s in samples:
        if s.box and s.label != normal_class:
            w, h = vision.load_rgb(s.source).size
            x0, y0, x1, y1 = s.box
            areas.setdefault(s.label, []).append((x1 - x0) * (y1 - y0) / (w * h))
    return {label: sum(a) / len(a) for label, a in sorted(areas.items())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True, help="the folder train.py --output_dir wrote")
    parser.add_argument("--data_dir", help="the run's images, when they are no longer where its report says")
    args = parser.parse_args(argv)
    run = Path(args.model_dir)
    model, config = vision.load_classifier(run)
    saved = json.loads((run / "report.json").read_text())["config"]
    data_args = vision.VisionDataArguments(**{f.name: saved[f.name] for f in fields(vision.VisionDataArguments)
                                              if f.name in saved})
    data_args.data_dir = args.data_dir or str(predict.resolve_run_path(data_args.data_dir, run))
    splits = vision.load_splits(data_args)
    classes = config["label_names"]
    pre = config["pretrained_cfg"]
    tf = vision.build_transforms(pre["input_size"][-1], pre["mean"], pre["std"], train=False)
    datasets = {split: vision.ImageDataset(splits[split], classes, tf) for split in ("val", "test")}

    rows = []
    layers = dict(model.named_modules())
    for method, layer, blur in [s for s in SETTINGS if s[1] in layers]:  # a smaller backbone lacks some stages
        scores = {split: vision.localization_score(model, ds, classes, layer=layer, method=method, smooth=blur)
                  for split, ds in datasets.items()}
        rows.append({"method": method, "layer": layer, "blur": blur,
                     **{f"{s}_peak_in_box": r["gradcam_peak_in_box"] for s, r in scores.items()},
                     **{f"{s}_images": r["gradcam_images"] for s, r in scores.items()}})
    best = max(rows, key=lambda r: r["val_peak_in_box"])  # chosen on validation only
    per_class = {}
    for label in classes:
        subset = [s for s in splits["test"] if s.label == label and s.box]
        if subset and label != "good":
            ds = vision.ImageDataset(subset, classes, tf)
            per_class[label] = vision.localization_score(model, ds, classes, layer=best["layer"],
                                                         method=best["method"], smooth=best["blur"])[
                "gradcam_peak_in_box"]
    result = {"settings": rows, "best_on_validation": best, "test_per_class_of_best": per_class,
              "box_coverage_test": box_coverage(splits["test"])}
    (run / "heatmap_comparison.json").write_text(json.dumps(result, indent=2) + "\n")

    print(f"| heatmap | layer | blur | validation ({rows[0]['val_images']} images) | test ({rows[0]['test_images']}) |")
    print("|---|---|---|---|---|")
    for r in rows:
        mark = "**" if r is best else ""
        print(f"| {mark}{r['method']}{mark} | `{r['layer']}` | {r['blur']:g} px | {mark}{r['val_peak_in_box']:.0%}{mark}"
              f" | {mark}{r['test_peak_in_box']:.0%}{mark} |")
    print("\nper class (test, best validation setting): "
          + ", ".join(f"{k} {v:.0%}" for k, v in per_class.items()))
    print("box area / image area (test): " + ", ".join(f"{k} {v:.1%}" for k, v in result["box_coverage_test"].items()))
    return result


if __name__ == "__main__":
    main()
