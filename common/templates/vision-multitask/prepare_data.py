"""Build and check the {{title}} images and labels: one CSV row per image, one column per head.

    python {{folder}}/prepare_data.py                          # -> {{folder}}/data/generated/labels.csv + images
    python {{folder}}/prepare_data.py --num_train 20 --out /tmp/{{name}}-images

The synthetic stand-in draws one shape per image and labels it three ways: ``shape`` (circle, square, triangle) and
``colour`` (red, green, blue) for two classification heads, ``size`` (the shape's radius, % of the image side) for a
regression head. Your own data: a CSV with an ``image`` column (paths relative to the CSV), a ``split`` column
(train, val or test) and your label columns; name them in ``class_columns`` / ``value_columns``. Every image is
opened and every cell checked before training; all problems are reported together with their row.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from common.data import read_csv
from common.errors import DataError, run_main
from common.run_folder import replace_output
from common.vision import ImageDataError, check_image
from common.vision.multitask import MultiSample

HERE = Path(__file__).resolve().parent
SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 210)}
SPLITS = ("train", "val", "test")


@dataclass
class GenerationArguments:
    """How the synthetic stand-in is generated (ignored when ``data_dir`` is your own labels CSV)."""

    generate: bool = field(default=True, metadata={"help": "Generate the stand-in if data_dir is missing."})
    generation_seed: int = field(default=0, metadata={"help": "Same seed -> identical images."})
    generation_image_size: int = field(default=96, metadata={"help": "Side of the generated images (px)."})
    num_train: int = field(default=240, metadata={"help": "Generated training images."})
    num_val: int = field(default=60, metadata={"help": "Generated validation images."})
    num_test: int = field(default=90, metadata={"help": "Generated held-out test images."})


def make_image(rng: np.random.Generator, size: int) -> tuple[Image.Image, dict]:
    """One shape of a random kind, colour (jittered), size, position and rotation; returns the image and labels."""
    background = rng.integers(90, 170, 3) + rng.normal(0, 15, (size, size, 3))
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    shape, colour = SHAPES[rng.integers(3)], list(COLOURS)[rng.integers(3)]
    fill = tuple(int(np.clip(c + rng.normal(0, 20), 0, 255)) for c in COLOURS[colour])
    radius = rng.uniform(0.1, 0.4) * size
    cx, cy = rng.uniform(radius, size - radius, 2)
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    else:
        draw.regular_polygon((cx, cy, radius), 4 if shape == "square" else 3, rotation=float(rng.uniform(0, 360)),
                             fill=fill)
    return image, {"shape": shape, "colour": colour, "size": round(100 * radius / size, 2)}


def generate(out: str | Path, args: GenerationArguments) -> Path:
    """Write ``out/labels.csv`` and ``out/images/*.png`` (via a temporary folder); ``out/generation.json`` records
    the arguments, and a folder generated with others is generated again. Returns the CSV."""
    out = Path(out)
    stamp = {f.name: getattr(args, f.name) for f in fields(args) if f.name != "generate"}
    if (out / "generation.json").is_file() and json.loads((out / "generation.json").read_text()) == stamp:
        return out / "labels.csv"
    replace_output(out, "generation.json")  # refuses a folder of the user's own
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    (tmp / "images").mkdir()
    rows = []
    for s, (split, count) in enumerate(zip(SPLITS, (args.num_train, args.num_val, args.num_test))):
        rng = np.random.default_rng([args.generation_seed, s])
        for i in range(count):
            image, labels = make_image(rng, args.generation_image_size)
            image.save(tmp / "images" / f"{split}_{i:04d}.png")
            rows.append({"image": f"images/{split}_{i:04d}.png", **labels, "split": split})
    with (tmp / "labels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (tmp / "generation.json").write_text(json.dumps(stamp, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out / "labels.csv"


def resolve_labels_file(data_dir: str, gen: GenerationArguments) -> Path:
    """The labels CSV: ``data_dir`` itself (a CSV), ``data_dir/labels.csv``, or the stand-in generated there.

    Raises:
        DataError: a missing path that is not this recipe's own generated stand-in (nothing is generated there).
    """
    path = Path(data_dir)
    if not path.is_absolute() and not path.exists():
        path = HERE.parent / data_dir  # repository-relative
    if path.suffix.lower() == ".csv":
        if not path.is_file():
            raise DataError(f"labels file {data_dir} does not exist ({path})")
        return path
    generated = (path / "generation.json").is_file() or (
        path.resolve().parent == (HERE / "data").resolve() and path.name.startswith("generated"))
    if generated and gen.generate:
        return generate(path, gen)
    if not (path / "labels.csv").is_file():
        raise DataError(f"data_dir {data_dir}: no labels.csv there ({path}); pass your labels CSV "
                        "(image, split and one column per head)")
    return path / "labels.csv"


def load_samples(path: Path, class_columns: list[str], value_columns: list[str],
                 max_shown: int = 10) -> dict[str, list[MultiSample]]:
    """``{"train", "val", "test"}`` samples from the labels CSV, every image opened and every cell checked.

    Raises:
        DataError: a missing column, or an empty split. ImageDataError: every bad row, listed together.
    """
    columns, rows = read_csv(path)
    missing = [c for c in ("image", "split", *class_columns, *value_columns) if c not in columns]
    if missing:
        raise DataError(f"{path}: no column {missing} (columns: {columns})")
    splits: dict[str, list[MultiSample]] = {s: [] for s in SPLITS}
    problems = []
    for line, row in rows:
        where = f"{path}, row {line}"
        labels, cells = {}, {c: (row.get(c) or "").strip() for c in ("split", *class_columns, *value_columns)}
        if cells["split"] not in SPLITS:
            problems.append((where, f"split is {cells['split']!r}; expected one of {', '.join(SPLITS)}"))
        for c in class_columns:
            labels[c] = cells[c]
            if not cells[c]:
                problems.append((where, f"'{c}' is empty"))
        for c in value_columns:
            try:
                labels[c] = float(cells[c])
            except ValueError:
                labels[c] = math.nan
            if not math.isfinite(labels[c]):
                problems.append((where, f"'{c}' is {cells[c]!r}, not a number"))
        file = (path.parent / (row.get("image") or "")).resolve()
        issue = check_image(file)
        if issue:
            problems.append((f"{where} ({row.get('image')})", issue))
        elif cells["split"] in SPLITS:
            splits[cells["split"]].append(MultiSample(str(file), labels, cells["split"]))
    if problems:
        raise ImageDataError(problems, len(rows), max_shown)
    empty = [s for s, samples in splits.items() if not samples]
    if empty:
        raise DataError(f"{path}: no rows in split {empty}; every split (train, val, test) needs images")
    return splits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "data" / "generated"), help="where the images and CSV go")
    for f in fields(GenerationArguments):
        if f.type in ("int", int):
            parser.add_argument(f"--{f.name}", type=int, default=f.default, help=f.metadata.get("help"))
    args = parser.parse_args(argv)
    gen = GenerationArguments(**{f.name: getattr(args, f.name) for f in fields(GenerationArguments)
                                 if hasattr(args, f.name)})
    print(f"labels ready: {generate(args.out, gen)}")


if __name__ == "__main__":
    run_main(main)
