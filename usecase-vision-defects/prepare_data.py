"""Build the product-defects dataset: a deterministic synthetic set, or your own photos (folder or MVTec AD).

Synthetic data (the default, nothing to download)::

    python usecase-vision-defects/prepare_data.py                       # -> usecase-vision-defects/data/generated/
    python usecase-vision-defects/prepare_data.py --num_train_per_class 20 --out /tmp/defects

Five product surfaces (brushed metal, woven fabric, painted plastic, wood, circuit board) and five classes:
``good`` and four defects (``scratch``, ``dent``, ``stain``, ``crack``), with random position, size, orientation,
contrast, lighting gradient, blur and sensor noise. Every defect's bounding box is written to ``boxes.jsonl``
(the Grad-CAM localization score uses it). The same seed gives byte-identical images.

Your own data::

    python usecase-vision-defects/prepare_data.py --source /data/my_photos        # root/<class>/*.jpg
    python usecase-vision-defects/prepare_data.py --source /data/mvtec/screw      # MVTec AD category folder

A plain folder (``root/<class>/*``, optionally already split into ``train/ val/ test/``) is used as is by
``train.py --data_dir``. An MVTec AD category (``train/good``, ``test/<defect>``, ``ground_truth/<defect>``) is
re-split here into ``train/val/test`` (MVTec's own train split has no defects, so a classifier could never learn
them), with the boxes taken from MVTec's masks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from common.errors import ConfigError, DataError, run_main
from common.paths import repo_path
from common.run_folder import replace_output

HERE = Path(__file__).resolve().parent
CLASSES = ("good", "scratch", "dent", "stain", "crack")
TEXTURES = ("brushed_metal", "woven_fabric", "painted_plastic", "wood", "circuit_board")
SPLITS = {"train": 0, "val": 1, "test": 2}


@dataclass
class GenerationArguments:
    """How the bundled synthetic dataset is generated (ignored when ``data_dir`` holds your own images)."""

    generate: bool = field(default=True, metadata={"help": "Generate the synthetic set into data_dir if missing."})
    generation_seed: int = field(default=0, metadata={"help": "Same seed -> identical images."})
    generation_image_size: int = field(default=128, metadata={"help": "Side of the generated images (px)."})
    num_train_per_class: int = field(default=120, metadata={"help": "Generated training images per class."})
    num_val_per_class: int = field(default=30, metadata={"help": "Generated validation images per class."})
    num_test_per_class: int = field(default=40, metadata={"help": "Generated held-out test images per class."})


# ----------------------------------------------------------------------------------------- surfaces


def _smooth(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a ``cells x cells`` random grid upsampled bicubically."""
    grid = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
    return np.asarray(grid.resize((size, size), Image.BICUBIC), np.float32) / 255


def _rotated_coords(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    angle = rng.uniform(0, math.pi)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return x * math.cos(angle) + y * math.sin(angle), -x * math.sin(angle) + y * math.cos(angle)


def brushed_metal(rng: np.random.Generator, s: int) -> np.ndarray:
    u, v = _rotated_coords(rng, s)
    streaks = np.sin(v * rng.uniform(0.8, 2.5) + 3 * _smooth(rng, s, 6)) * 0.5 + 0.5
    fine = Image.fromarray((rng.random((s, s)) * 255).astype(np.uint8)).filter(ImageFilter.BoxBlur(1))
    g = rng.uniform(0.45, 0.75) + 0.06 * streaks + 0.06 * (np.asarray(fine, np.float32) / 255 - 0.5)
    tint = np.array([1.0, 1.0, rng.uniform(1.0, 1.08)])
    return g[..., None] * tint


def woven_fabric(rng: np.random.Generator, s: int) -> np.ndarray:
    u, v = _rotated_coords(rng, s)
    p = rng.uniform(4, 8)
    checker = ((np.floor(u / p) + np.floor(v / p)) % 2).astype(np.float32)
    warp, weft = np.abs(np.sin(math.pi * u / p)), np.abs(np.sin(math.pi * v / p))
    shade = 0.75 + 0.25 * np.where(checker > 0, warp, weft)
    color = rng.uniform(0.25, 0.85, 3)
    return shade[..., None] * color


def painted_plastic(rng: np.random.Generator, s: int) -> np.ndarray:
    color = rng.uniform(0.15, 0.9, 3)
    peel = Image.fromarray((rng.random((s, s)) * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.2))
    shade = 0.92 + 0.1 * _smooth(rng, s, 3) + 0.08 * (np.asarray(peel, np.float32) / 255 - 0.5)
    return shade[..., None] * color


def wood(rng: np.random.Generator, s: int) -> np.ndarray:
    u, v = _rotated_coords(rng, s)
    rings = np.sin(u * rng.uniform(0.15, 0.45) + 6 * _smooth(rng, s, 4)) * 0.5 + 0.5
    light, dark = np.array([0.72, 0.52, 0.32]), np.array([0.45, 0.28, 0.14])
    light = light * rng.uniform(0.85, 1.15)
    return dark + (light - dark) * rings[..., None] ** 1.5


def circuit_board(rng: np.random.Generator, s: int) -> np.ndarray:
    base = (np.array([0.08, 0.35, 0.15]) * rng.uniform(0.8, 1.2) * 255).astype(int)
    img = Image.new("RGB", (s, s), tuple(base))
    draw = ImageDraw.Draw(img)
    copper = tuple(int(c) for c in np.array([180, 140, 70]) * rng.uniform(0.85, 1.15))
    for _ in range(rng.integers(6, 14)):  # traces: horizontal/vertical runs with one bend
        x, y = rng.integers(0, s, 2)
        x2, y2 = (rng.integers(0, s), y) if rng.random() < 0.5 else (x, rng.integers(0, s))
        draw.line([(x, y), (x2, y2), (x2 + rng.integers(-15, 15), y2 + rng.integers(-15, 15))],
                  fill=copper, width=int(rng.integers(1, 4)))
    for _ in range(rng.integers(4, 10)):  # pads and vias
        x, y, r = rng.integers(0, s), rng.integers(0, s), rng.integers(2, 5)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=copper)
    for _ in range(rng.integers(1, 4)):  # silkscreen marks
        x, y = rng.integers(0, s - 12, 2)
        draw.rectangle([x, y, x + rng.integers(4, 12), y + 3], outline=(230, 230, 230))
    return np.asarray(img, np.float32) / 255


SURFACES = dict(zip(TEXTURES, (brushed_metal, woven_fabric, painted_plastic, wood, circuit_board)))

# ------------------------------------------------------------------------------------------ defects


def _polyline(rng: np.random.Generator, s: int, length: float, jagged: float) -> list[tuple[float, float]]:
    """A random walk: straight-ish (scratch, small ``jagged``) or zig-zag (crack, large ``jagged``)."""
    x, y = rng.uniform(0.15 * s, 0.85 * s, 2)
    angle, pts, steps = rng.uniform(0, 2 * math.pi), [], max(4, int(length / 3))
    for _ in range(steps):
        pts.append((x, y))
        angle += rng.normal(0, jagged)
        x, y = x + 3 * math.cos(angle), y + 3 * math.sin(angle)
    return pts


def draw_defect(rng: np.random.Generator, kind: str, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(alpha mask in [0,1], RGB colour map)`` of one defect of type ``kind`` on an ``s x s`` image."""
    mask = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(mask)
    color = np.zeros((s, s, 3), np.float32)
    if kind == "scratch":
        draw.line(_polyline(rng, s, rng.uniform(0.25, 0.6) * s, 0.04), fill=255, width=int(rng.integers(1, 3)))
        color[:] = 0.95 if rng.random() < 0.6 else 0.1  # a bright (reflecting) or dark groove
        strength = rng.uniform(0.45, 0.9)
    elif kind == "crack":
        pts = _polyline(rng, s, rng.uniform(0.2, 0.45) * s, 0.6)
        draw.line(pts, fill=255, width=int(rng.integers(1, 3)))
        if rng.random() < 0.6:  # a side branch
            bx, by = pts[len(pts) // 2]
            a = rng.uniform(0, 2 * math.pi)
            branch = [(bx + i * 3 * math.cos(a) + rng.normal(0, 1.5), by + i * 3 * math.sin(a) + rng.normal(0, 1.5))
                      for i in range(int(rng.integers(3, 8)))]
            draw.line(branch, fill=255, width=1)
        color[:] = rng.uniform(0.0, 0.12)
        strength = rng.uniform(0.6, 0.95)
    elif kind == "dent":
        r = rng.uniform(0.04, 0.09) * s
        cx, cy = rng.uniform(r + 2, s - r - 2, 2)
        e = rng.uniform(0.6, 1.0)
        draw.ellipse([cx - r, cy - r * e, cx + r, cy + r * e], fill=255)
        y, x = np.mgrid[0:s, 0:s].astype(np.float32)
        light = rng.uniform(0, 2 * math.pi)  # a depression: shadowed on the lit side, highlight opposite
        shade = ((x - cx) * math.cos(light) + (y - cy) * math.sin(light)) / r
        color[:] = (0.5 + 0.45 * np.clip(shade, -1, 1))[..., None]
        if rng.random() < 0.4:  # a hole: dark core
            color[(x - cx) ** 2 + (y - cy) ** 2 < (0.5 * r) ** 2] = 0.05
        strength = rng.uniform(0.55, 0.9)
    elif kind == "stain":
        cx, cy = rng.uniform(0.2 * s, 0.8 * s, 2)
        for _ in range(rng.integers(3, 7)):
            r = rng.uniform(0.04, 0.1) * s
            ox, oy = rng.normal(0, 0.05 * s, 2)
            draw.ellipse([cx + ox - r, cy + oy - r, cx + ox + r, cy + oy + r], fill=255)
        mask = mask.filter(ImageFilter.GaussianBlur(rng.uniform(1, 3)))
        color[:] = rng.choice([[0.35, 0.25, 0.1], [0.55, 0.5, 0.2], [0.15, 0.15, 0.15], [0.3, 0.3, 0.45]])
        strength = rng.uniform(0.3, 0.6)
    else:
        raise ValueError(f"unknown defect kind {kind!r}")
    alpha = np.asarray(mask, np.float32) / 255 * strength
    return alpha, color


def _box(alpha: np.ndarray) -> list[int] | None:
    ys, xs = np.nonzero(alpha > 0.05)
    if len(xs) == 0:
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]  # x0, y0, x1, y1 (exclusive)


def make_image(seed: int, split: str, index: int, kind: str, size: int) -> tuple[Image.Image, str, list[int] | None]:
    """One image, fully determined by ``(seed, split, index)``: returns (image, texture, defect box or None)."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    img = SURFACES[texture](rng, size)
    box = None
    if kind != "good":
        alpha, color = draw_defect(rng, kind, size)
        img = img * (1 - alpha[..., None]) + color * alpha[..., None]
        box = _box(alpha)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size  # lighting: a tilted plane times an exposure
    light = rng.uniform(0.75, 1.15) + rng.uniform(-0.25, 0.25) * (x - 0.5) + rng.uniform(-0.25, 0.25) * (y - 0.5)
    img = img * light[..., None] + rng.normal(0, rng.uniform(0.005, 0.04), img.shape)
    out = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    if rng.random() < 0.3:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9)))
    return out, texture, box


def generate(out: str | Path, args: GenerationArguments) -> Path:
    """Write ``out/{train,val,test}/<class>/*.png`` and ``out/boxes.jsonl``; skip if already complete.

    Written into a temporary folder first and renamed, so an interrupted run never leaves half a dataset.
    ``out/generation.json`` records the arguments: a folder generated with other sizes or another seed is
    generated again rather than silently reused.
    """
    out = Path(out)
    stamp = {k: getattr(args, k) for k in ("generation_seed", "generation_image_size", "num_train_per_class",
                                           "num_val_per_class", "num_test_per_class")}
    if (out / "boxes.jsonl").exists():
        old = json.loads((out / "generation.json").read_text()) if (out / "generation.json").exists() else None
        if old == stamp:
            return out
        replace_output(out, "generation.json")  # refuses a folder of the user's own (no generation.json)
        print(f"{out} was generated with {old}; generating again with {stamp}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    counts = {"train": args.num_train_per_class, "val": args.num_val_per_class, "test": args.num_test_per_class}
    rows = []
    for split, per_class in counts.items():
        for c, kind in enumerate(CLASSES):
            (tmp / split / kind).mkdir(parents=True)
            for i in range(per_class):
                img, texture, box = make_image(args.generation_seed, split, c * 100_000 + i, kind,
                                               args.generation_image_size)
                rel = f"{split}/{kind}/{kind}_{i:05d}.png"
                img.save(tmp / rel)
                rows.append({"path": rel, "label": kind, "split": split, "texture": texture, "box": box})
    (tmp / "boxes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp / "generation.json").write_text(json.dumps(stamp, indent=2))
    if out.exists():  # a concurrent run finished first
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, out)
    return out


# ------------------------------------------------------------------------------------ MVTec AD layout


def is_mvtec(root: Path) -> bool:
    return (root / "train" / "good").is_dir() and (root / "test").is_dir() and not (root / "val").exists()


def import_mvtec(root: Path, out: Path, seed: int = 0, fractions=(0.6, 0.15, 0.25)) -> Path:
    """Pool an MVTec AD category and re-split it per class into ``out/{train,val,test}`` (symlinks + boxes)."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[Path]] = {"good": sorted((root / "train" / "good").glob("*.png"))}
    for d in sorted(p for p in (root / "test").iterdir() if p.is_dir()):
        by_class.setdefault(d.name, []).extend(sorted(d.glob("*.png")))
    rows = []
    for label, files in by_class.items():
        files = [files[i] for i in rng.permutation(len(files))]
        n_val, n_test = (max(1, round(f * len(files))) for f in fractions[1:])  # every class in every split
        n_train = len(files) - n_val - n_test
        for i, f in enumerate(files):
            split = "train" if i < n_train else "val" if i < n_train + n_val else "test"
            rel = f"{split}/{label}/{f.parent.parent.name}_{f.stem}.png"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            if not (out / rel).exists():
                (out / rel).symlink_to(f.resolve())
            mask = root / "ground_truth" / label / f"{f.stem}_mask.png"
            box = _box(np.asarray(Image.open(mask).convert("L"), np.float32) / 255) if mask.exists() else None
            rows.append({"path": rel, "label": label, "split": split, "box": box})
    (out / "boxes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def prepare(data_dir: str | Path, gen: GenerationArguments) -> Path:
    """Return a dataset folder (or table) for ``train.py``: generate the synthetic set, convert MVTec, or use yours
    as is. A relative ``data_dir`` is taken from the working directory if it exists there, else from the repository
    root (:func:`common.paths.repo_path`), e.g. ``usecase-vision-defects/data/generated``."""
    data_dir = repo_path(data_dir)
    if data_dir.is_file():  # a CSV/JSONL table of path,label[,split]
        return data_dir
    if data_dir.is_dir() and is_mvtec(data_dir):
        return import_mvtec(data_dir, data_dir.parent / f"{data_dir.name}-split", seed=gen.generation_seed)
    if (data_dir / "generation.json").exists():  # generated here before: check it matches the arguments
        return generate(data_dir, gen)
    if data_dir.exists() and any(data_dir.iterdir()):
        return data_dir
    if not gen.generate:
        raise DataError(f"{data_dir} is empty or missing and generate is false; generate it with "
                        f"python usecase-vision-defects/prepare_data.py --out {data_dir}")
    return generate(data_dir, gen)


#: Tables train.py reads as ``data_dir`` (one image per row: path,label[,split]).
TABLE_SUFFIXES = (".csv", ".jsonl", ".json")


def is_generated_folder(path: Path) -> bool:
    """The recipe's own synthetic set: ``usecase-vision-defects/data/generated*`` or a folder the generator
    stamped (``generation.json``). Only these are generated when missing; any other missing path is an error."""
    own = path.resolve().parent == (HERE / "data").resolve() and path.name.startswith("generated")
    return own or (path / "generation.json").is_file()


def resolve_data_dir(data_dir: str | None, gen_args) -> str:
    """``data_dir`` ready to load: generated when it is the recipe's own generated folder, else used as is.

    Raises:
        ConfigError: no data_dir.
        DataError: a missing / empty folder or table that is not the generated set (naming it, and how to
            generate data), or a file that is not a CSV/JSONL table.
    """
    if not data_dir:
        raise ConfigError("Set data_dir (an image folder, CSV or JSONL) or dataset_name (a hub dataset).")
    path = repo_path(data_dir)
    if path.is_file() and path.suffix.lower() not in TABLE_SUFFIXES:
        raise DataError(f"data_dir {data_dir} is a file but not a CSV/JSONL table ({', '.join(TABLE_SUFFIXES)}); "
                        "pass an image folder (root/<class>/*.png) or a table with columns path,label[,split].")
    if path.suffix.lower() in TABLE_SUFFIXES and not path.exists():
        raise DataError(f"data_dir {data_dir}: table not found ({path}).")
    empty = path.is_dir() and not any(path.iterdir())
    if (not path.exists() or empty) and not is_generated_folder(path):
        raise DataError(f"data_dir {data_dir} {'is empty' if empty else 'does not exist'} ({path}); pass your image "
                        "folder (root/<class>/*.png) or a CSV/JSONL table, or generate the synthetic set there first: "
                        f"python usecase-vision-defects/prepare_data.py --out {data_dir}")
    return str(prepare(data_dir, gen_args))


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "data" / "generated"), help="where the dataset goes")
    parser.add_argument("--source", help="your own folder (root/<class>/*, or an MVTec AD category)")
    for f in GenerationArguments.__dataclass_fields__.values():
        if f.type in ("int", int):
            parser.add_argument(f"--{f.name}", type=int, default=f.default, help=f.metadata.get("help"))
    a = parser.parse_args(argv)
    gen = GenerationArguments(**{k: getattr(a, k) for k in GenerationArguments.__dataclass_fields__ if hasattr(a, k)})
    if a.source:
        src = Path(a.source)
        path = import_mvtec(src, Path(a.out), gen.generation_seed) if is_mvtec(src) else src
    else:
        path = generate(a.out, gen)
    print(f"dataset ready: {path}")
    return path


if __name__ == "__main__":
    run_main(main)
