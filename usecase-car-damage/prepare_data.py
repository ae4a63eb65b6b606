"""Build the car-damage dataset: a deterministic synthetic set, or load your own labelled photos.

Synthetic data (the default, nothing to download)::

    python usecase-car-damage/prepare_data.py                      # -> usecase-car-damage/data/generated/
    python usecase-car-damage/prepare_data.py --num_train_per_combination 5 --out /tmp/cars

Five parts (painted body panel, bumper, windshield, head/tail lamp, tyre), six damage labels (``none``, ``dent``,
``scratch``, ``cracked_glass``, ``broken_lamp``, ``flat_tyre``) on the parts where they make sense, and three
visible severities (see scenes.py). Every image's cost is the cost table's price for its (part, damage,
severity) times log-normal noise. The same seed gives byte-identical images. The output is a folder of PNGs and
``labels.csv`` -- the same format as your own data.

Your own data: a CSV or JSONL with one photo per row::

    image,part,damage,severity,cost[,split]
    photos/0001.jpg,bumper,scratch,moderate,212.50,train

``image`` is relative to the table's folder. Labels must be ones the cost table lists (``data/cost_table.csv``:
add your parts and prices there first). A missing label *column* switches that head off (e.g. no ``cost`` column:
no regression head, costs come from the table alone); a missing image, an unknown label or a combination the
table does not price stops the run before training, naming the file and the row. Without a ``split`` column,
validation and test splits are carved from the rows (stratified by damage).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from common.errors import ConfigError, DataError, run_main
from common.paths import load_sibling, repo_path
from common.run_folder import replace_output
from common.vision.images import ImageDataError, check_image
from common.vision.multitask import MultiSample

HERE = Path(__file__).resolve().parent
costs = load_sibling(__file__, "costs")
scenes = load_sibling(__file__, "scenes")
LABEL_COLUMNS = ("part", "damage", "severity", "cost")
SPLITS = {"train": "train", "val": "val", "validation": "val", "test": "test"}


@dataclass
class CarDataArguments:
    """Where the photos and prices come from, and how the photos are presented to the model."""

    data_dir: str = field(default="usecase-car-damage/data/generated", metadata={
        "help": "The generated folder (made if missing), or your CSV/JSONL table (image,part,damage,severity,cost)."})
    cost_table: str = field(default="usecase-car-damage/data/cost_table.csv", metadata={
        "help": "part,damage,severity -> parts_cost + labour_hours x labour_rate (also defines the label sets)."})
    image_size: int = field(default=128, metadata={"help": "Square side the images are resized to (px)."})
    augment: bool = field(default=True, metadata={"help": "Random crop / colour jitter in training (no flips "
                                                          "upside down: a flat tyre is flat at the bottom)."})
    val_fraction: float = field(default=0.15, metadata={"help": "Carved from the rows when there is no split."})
    test_fraction: float = field(default=0.2, metadata={"help": "Carved from the rows when there is no split."})
    max_problems_shown: int = field(default=10, metadata={"help": "Bad rows / images listed in the error."})


@dataclass
class GenerationArguments:
    """How the bundled synthetic dataset is generated (ignored when ``data_dir`` is your own table)."""

    generation_seed: int = field(default=0, metadata={"help": "Same seed -> identical images and costs."})
    generation_image_size: int = field(default=128, metadata={"help": "Side of the generated images (px)."})
    num_train_per_combination: int = field(default=40, metadata={"help": "Per (part, damage, severity)."})
    num_val_per_combination: int = field(default=10, metadata={"help": "Per combination: model selection."})
    num_test_per_combination: int = field(default=15, metadata={"help": "Per combination: held out."})
    cost_noise: float = field(default=0.1, metadata={"help": "Sigma of the log-normal noise on the table cost."})


# ----------------------------------------------------------------------------------------- generation


def generate(out: str | Path, gen: GenerationArguments, table) -> Path:
    """Draw the synthetic set into ``out`` (PNGs + ``labels.csv``); reused when ``generation.json`` matches."""
    out = Path(out)
    stamp = {**asdict(gen), "cost_table": {f"{p}/{d}/{s}": e.total for (p, d, s), e in table.entries.items()}}
    if (out / "generation.json").is_file() and json.loads((out / "generation.json").read_text()) == stamp:
        return out / "labels.csv"
    replace_output(out, "generation.json")  # a folder it generated before, or an empty one: never the user's
    out.mkdir(parents=True)
    (out / "generation.json").write_text(json.dumps({"complete": False}))  # ours, even if interrupted
    drawable = [c for c in table.combinations() if (c[0] in scenes.PART_DRAWERS or c[0] == "tyre")
                and (c[1] == costs.NO_DAMAGE or c[1] in scenes.DAMAGE_DRAWERS)]
    counts = {"train": gen.num_train_per_combination, "val": gen.num_val_per_combination,
              "test": gen.num_test_per_combination}
    rows = []
    for split_id, (split, n) in enumerate(counts.items()):
        (out / split).mkdir(parents=True, exist_ok=True)
        for combo_id, (part, damage, severity) in enumerate(drawable):
            for i in range(n):
                rng = np.random.default_rng([gen.generation_seed, split_id, combo_id, i])
                name = f"{split}/{len(rows):05d}.png"
                scenes.render(rng, part, damage, severity, gen.generation_image_size).save(out / name)
                cost = costs.noisy_cost(table, part, damage, severity, rng, gen.cost_noise)
                rows.append({"image": name, "part": part, "damage": damage, "severity": severity, "cost": cost,
                             "split": split})
    with (out / "labels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", *LABEL_COLUMNS, "split"])
        writer.writeheader()
        writer.writerows(rows)
    (out / "generation.json").write_text(json.dumps(stamp, indent=1))
    return out / "labels.csv"


def resolve_data_dir(data_dir: str, gen: GenerationArguments, table) -> Path:
    """The labels table to load: the recipe's own generated folder is generated when missing; a CSV/JSONL (or a
    folder holding ``labels.csv``) is used as is.

    Raises:
        DataError: a missing table / folder that is not the recipe's generated set.
    """
    path = repo_path(data_dir)
    if path.is_file():
        if path.suffix.lower() not in (".csv", ".jsonl"):
            raise DataError(f"data_dir {data_dir} is not a CSV/JSONL table (image,part,damage,severity,cost)")
        return path
    if path.is_dir() and (path / "labels.csv").is_file() and not (path / "generation.json").is_file():
        return path / "labels.csv"
    own = path.resolve().parent == (HERE / "data").resolve() and path.name.startswith("generated")
    if not own and not (path / "generation.json").is_file():
        raise DataError(f"data_dir {data_dir} does not exist ({path}); pass your CSV/JSONL table, or generate the "
                        f"synthetic set: python usecase-car-damage/prepare_data.py --out {data_dir}")
    return generate(path, gen, table)


# ----------------------------------------------------------------------------------------- loading


def _read(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    from common.data import read_csv, read_jsonl

    if path.suffix.lower() == ".csv":
        return read_csv(path)

    rows = read_jsonl(path)
    return list(dict.fromkeys(k for _, r in rows for k in r)), rows


def load_table(path: str | Path, table, check_images: bool = True,
               max_shown: int = 10) -> tuple[dict[str, list[MultiSample]], list[str]]:
    """Read and validate a labels table; returns ``({split: samples}, label columns present)``.

    Every problem is collected (missing or unreadable images, unknown labels, unpriced combinations, bad costs,
    unknown splits) and reported together, naming the file and the row, before any model is loaded.

    Raises:
        DataError: no ``image`` column, no rows, or any problem above.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"labels table {path} does not exist")
    columns, rows = _read(path)
    if "image" not in columns:
        raise DataError(f"{path}: no 'image' column (columns: {columns}); expected image,part,damage,severity,cost")
    if not rows:
        raise DataError(f"{path} has no rows")
    present = [c for c in LABEL_COLUMNS if c in columns]
    if not present:
        raise DataError(f"{path}: no label column; give at least one of {list(LABEL_COLUMNS)}")
    allowed = {"part": table.parts, "damage": table.damages, "severity": table.severities}
    problems: list[tuple[str, str]] = []
    splits: dict[str, list[MultiSample]] = {}
    for line, row in rows:
        where = f"{path}, row {line}"
        image = str(row.get("image") or "").strip()
        if not image:
            problems.append((where, "empty cell: 'image' is empty"))
            continue
        labels: dict = {}
        for c in present:
            value = str(row.get(c) if row.get(c) is not None else "").strip()
            if not value:
                problems.append((where, f"empty cell: '{c}' is empty (a column given is needed on every row)"))
            elif c == "cost":
                try:
                    labels[c] = float(value)
                except ValueError:
                    labels[c] = float("nan")
                if not (math.isfinite(labels[c]) and labels[c] > 0):
                    problems.append((where, f"bad cost: {value!r} is not a positive number"))
            elif value not in allowed[c]:
                problems.append((where, f"unknown label: {c} '{value}' is not in the cost table {allowed[c]}"))
            else:
                labels[c] = value
        combo = tuple(labels.get(c) for c in ("part", "damage", "severity"))
        if None not in combo and combo not in table.entries:
            problems.append((where, f"unpriced combination: {combo} has no row in the cost table ({table.source})"))
        split = SPLITS.get(str(row.get("split") or "train").strip())
        if split is None:
            problems.append((where, f"unknown split: '{row.get('split')}' (allowed: {sorted(SPLITS)})"))
            continue
        file = (path.parent / image).resolve()
        issue = check_image(file) if check_images else (None if file.exists() else "missing file: no such file")
        if issue:
            problems.append((f"{where} ({image})", issue))
        splits.setdefault(split, []).append(MultiSample(str(file), labels, split))
    if problems:
        raise ImageDataError(problems, len(rows), max_shown)
    return splits, present


def carve_splits(splits: dict[str, list[MultiSample]], val_fraction: float, test_fraction: float,
                 seed: int) -> dict[str, list[MultiSample]]:
    """Carve missing ``test`` / ``val`` splits from train, stratified by damage (else part) when possible."""
    from sklearn.model_selection import train_test_split

    if "train" not in splits:
        raise DataError("the labels table has no training rows (split 'train' or no split column)")

    def cut(pool, fraction, name, seed):
        key = next((c for c in ("damage", "part") if c in pool[0].labels), None)
        strata = [s.labels[key] for s in pool] if key else None
        if strata and min(strata.count(v) for v in set(strata)) < 2:
            strata = None
        keep, carved = train_test_split(pool, test_size=fraction, stratify=strata, random_state=seed)
        for s in carved:
            s.split = name
        return keep, carved

    if "test" not in splits:
        splits["train"], splits["test"] = cut(splits["train"], test_fraction, "test", seed)
    if "val" not in splits:
        splits["train"], splits["val"] = cut(splits["train"], val_fraction / (1 - test_fraction), "val", seed + 1)
    return splits


def load_data(data: CarDataArguments, gen: GenerationArguments, seed: int = 0):
    """Cost table, then the labelled photos (generated if needed), validated and split:
    ``(table, {split: samples}, label columns present)``."""
    if not 0 < data.val_fraction < 1 or not 0 < data.test_fraction < 1 or data.val_fraction + data.test_fraction >= 1:
        raise ConfigError("val_fraction and test_fraction must be in (0, 1) and sum to < 1")
    table = costs.CostTable.load(repo_path(data.cost_table))
    labels_file = resolve_data_dir(data.data_dir, gen, table)
    splits, present = load_table(labels_file, table, max_shown=data.max_problems_shown)
    return table, carve_splits(splits, data.val_fraction, data.test_fraction, seed), present


def build_transforms(size: int, mean, std, train: bool, augment: bool = True):
    """PIL RGB -> normalized tensor. Training: a mild random crop (the damage stays in frame), horizontal flip,
    small rotation and colour jitter -- no vertical flip: a flat tyre is flat at the bottom."""
    import torch
    from torchvision.transforms import v2

    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if not (train and augment):
        return v2.Compose([v2.Resize((size, size), antialias=True), *tail])
    return v2.Compose([v2.RandomResizedCrop(size, scale=(0.85, 1.0), ratio=(0.95, 1.05), antialias=True),
                       v2.RandomHorizontalFlip(), v2.RandomApply([v2.RandomRotation(10)], p=0.3),
                       v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.15), *tail])


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "data" / "generated"), help="where the dataset goes")
    parser.add_argument("--cost_table", default=str(HERE / "data" / "cost_table.csv"))
    for f in GenerationArguments.__dataclass_fields__.values():
        parser.add_argument(f"--{f.name}", type=type(f.default), default=f.default, help=f.metadata.get("help"))
    a = parser.parse_args(argv)
    gen = GenerationArguments(**{k: getattr(a, k) for k in GenerationArguments.__dataclass_fields__})
    path = generate(a.out, gen, costs.CostTable.load(a.cost_table))
    print(f"dataset ready: {path}")
    return path


if __name__ == "__main__":
    run_main(main)
