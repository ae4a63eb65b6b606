"""Build the {{title}} image set: a small synthetic stand-in (shapes on noisy backgrounds), or check your own photos.

    python {{folder}}/prepare_data.py                          # -> {{folder}}/data/generated/
    python {{folder}}/prepare_data.py --num_train_per_class 10 --out /tmp/{{name}}-images

The stand-in has three classes (``circle``, ``square``, ``triangle``), drawn at a random position, size, colour and
rotation on a noisy background; the same seed gives the same images. Replace it with your photos: a folder
``root/<class>/*.jpg`` (or already split, ``root/{train,val,test}/<class>/*``) or a CSV/JSONL of ``path,label[,split]``,
then ``train.py --data_dir ROOT``. Every image is opened and every label checked before training.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from common.errors import DataError, run_main
from common.run_folder import replace_output

HERE = Path(__file__).resolve().parent
CLASSES = ("circle", "square", "triangle")


@dataclass
class GenerationArguments:
    """How the synthetic stand-in is generated (ignored when ``data_dir`` holds your own images)."""

    generate: bool = field(default=True, metadata={"help": "Generate the stand-in into data_dir if missing."})
    generation_seed: int = field(default=0, metadata={"help": "Same seed -> identical images."})
    generation_image_size: int = field(default=96, metadata={"help": "Side of the generated images (px)."})
    num_train_per_class: int = field(default=60, metadata={"help": "Generated training images per class."})
    num_val_per_class: int = field(default=15, metadata={"help": "Generated validation images per class."})
    num_test_per_class: int = field(default=20, metadata={"help": "Generated held-out test images per class."})


def make_image(rng: np.random.Generator, shape: str, size: int) -> Image.Image:
    """One ``shape`` in a random colour, position, size and rotation on a noisy background."""
    background = rng.integers(60, 200, 3) + rng.normal(0, 18, (size, size, 3))
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    r = rng.uniform(0.15, 0.3) * size
    cx, cy = rng.uniform(r, size - r, 2)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        corners = 4 if shape == "square" else 3
        draw.regular_polygon((cx, cy, r), corners, rotation=float(rng.uniform(0, 360)), fill=colour)
    return image


def generate(out: str | Path, args: GenerationArguments) -> Path:
    """Write ``out/{train,val,test}/<class>/*.png`` (via a temporary folder, so a killed run leaves no half set);
    ``out/generation.json`` records the arguments, and a folder generated with others is generated again."""
    out = Path(out)
    stamp = {f.name: getattr(args, f.name) for f in fields(args) if f.name != "generate"}
    if (out / "generation.json").is_file() and json.loads((out / "generation.json").read_text()) == stamp:
        return out
    replace_output(out, "generation.json")  # refuses a folder of the user's own
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    counts = {"train": args.num_train_per_class, "val": args.num_val_per_class, "test": args.num_test_per_class}
    for s, (split, per_class) in enumerate(counts.items()):
        for c, shape in enumerate(CLASSES):
            (tmp / split / shape).mkdir(parents=True)
            rng = np.random.default_rng([args.generation_seed, s, c])
            for i in range(per_class):
                make_image(rng, shape, args.generation_image_size).save(tmp / split / shape / f"{shape}_{i:04d}.png")
    (tmp / "generation.json").write_text(json.dumps(stamp, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def resolve_data_dir(data_dir: str, gen: GenerationArguments) -> str:
    """``data_dir`` ready to load: your folder or table as it is; the stand-in generated when missing.

    A relative path is taken from the working directory if it exists there, else from the repository root.

    Raises:
        DataError: a missing path that is not this recipe's own generated stand-in (nothing is generated there).
    """
    path = Path(data_dir)
    if not path.is_absolute() and not path.exists():
        path = HERE.parent / data_dir  # repository-relative
    generated = (path / "generation.json").is_file() or (
        path.resolve().parent == (HERE / "data").resolve() and path.name.startswith("generated"))
    if generated and gen.generate:
        return str(generate(path, gen))
    if not path.exists():
        raise DataError(f"data_dir {data_dir} does not exist ({path}); pass your image folder (root/<class>/*.png) "
                        f"or a CSV/JSONL of path,label[,split]")
    return str(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "data" / "generated"), help="where the images go")
    for f in fields(GenerationArguments):
        if f.type in ("int", int):
            parser.add_argument(f"--{f.name}", type=int, default=f.default, help=f.metadata.get("help"))
    args = parser.parse_args(argv)
    gen = GenerationArguments(**{f.name: getattr(args, f.name) for f in fields(GenerationArguments)
                                 if hasattr(args, f.name)})
    print(f"images ready: {generate(args.out, gen)}")


if __name__ == "__main__":
    run_main(main)
