"""Vision data (common/vision/images.py, data.py) and the recipe's prepare_data.py: offline, no model.

Bad images must fail before training with the file named; odd-but-valid images must become the right RGB;
missing splits are carved stratified (sklearn), with tiny classes handled; generated data is deterministic.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common import vision
from common.paths import load_sibling

USECASE = Path(__file__).resolve().parents[1] / "usecase-vision-defects"


@pytest.fixture(scope="module")
def prepare_data():
    return load_sibling(USECASE / "prepare_data.py", "prepare_data")


def _png(path: Path, color=(200, 30, 30), size=(16, 16), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def _folder(root: Path, classes=("a", "b"), splits=("train", "val", "test"), per_class=2) -> Path:
    for split in splits:
        for c, name in enumerate(classes):
            for i in range(per_class):
                _png(root / split / name / f"{i}.png", (40 + 150 * c, 90, 200 - 150 * c))
    return root


# ----------------------------------------------------------------------------------- bad and odd images


def _truncated_jpeg(path: Path) -> None:
    buf = path.with_suffix(".tmp")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    buf.unlink()


@pytest.mark.parametrize("case, expected", [
    ("truncated.jpg", "truncated or corrupt image"),
    ("empty.png", "empty file: 0 bytes"),
    ("notes.png", "text file with an image extension"),
])
def test_broken_image_is_reported_by_name_before_training(tmp_path, case, expected):
    root = _folder(tmp_path / "data")
    bad = root / "train" / "a" / case
    if case.endswith(".jpg"):
        _truncated_jpeg(bad)
    elif case == "empty.png":
        bad.write_bytes(b"")
    else:
        bad.write_text("label,notes\nthis is not an image\n")
    splits = vision.load_splits(vision.VisionDataArguments(data_dir=str(root)))
    with pytest.raises(vision.ImageDataError) as err:
        vision.validate_splits(splits)
    assert str(bad) in str(err.value) and expected in str(err.value)
    assert len(err.value.problems) == 1  # the good images raise nothing


def test_all_problems_are_collected_and_counted(tmp_path):
    root = _folder(tmp_path / "data")
    for i in range(12):
        (root / "train" / "a" / f"empty{i}.png").write_bytes(b"")
    splits = vision.load_splits(vision.VisionDataArguments(data_dir=str(root)))
    with pytest.raises(vision.ImageDataError) as err:
        vision.validate_splits(splits, max_shown=3)
    msg = str(err.value)
    assert "12 problem(s)" in msg and "12 x empty file" in msg and "... and 9 more" in msg


def test_cmyk_16bit_grey_and_rgba_become_consistent_rgb(tmp_path):
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(cmyk, "JPEG", quality=95)  # pure red in CMYK
    sixteen = tmp_path / "deep.png"
    Image.fromarray(np.full((16, 16), 32768, dtype=np.uint16)).save(sixteen)  # mid-grey at 16 bits
    grey = _png(tmp_path / "grey.png", 77, mode="L")
    rgba = _png(tmp_path / "rgba.png", (0, 0, 255, 0), mode="RGBA")  # fully transparent -> background

    images = {p.name: vision.load_rgb(p) for p in (cmyk, sixteen, grey, rgba)}
    assert all(im.mode == "RGB" and im.size == (16, 16) for im in images.values())
    r, g, b = np.asarray(images["cmyk.jpg"]).reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60
    assert abs(np.asarray(images["deep.png"]).mean() - 127.5) < 2  # scaled, not clipped to 255
    assert (np.asarray(images["grey.png"]) == 77).all()
    assert (np.asarray(images["rgba.png"]) == 255).all()
    assert all(vision.check_image(p) is None for p in (cmyk, sixteen, grey, rgba))


def test_unknown_label_in_a_table_is_named(tmp_path):
    for i in range(4):
        _png(tmp_path / f"img{i}.png")
    rows = [{"path": f"img{i}.png", "label": label, "split": "train"}
            for i, label in enumerate(["ok", "ok", "bad", "bda"])]
    table = tmp_path / "labels.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    splits = vision.samples_from_table(table)
    with pytest.raises(vision.ImageDataError) as err:
        vision.validate_splits(splits, labels=["ok", "bad"])
    assert "img3.png" in str(err.value) and "unknown label: 'bda'" in str(err.value)


def test_class_missing_in_a_split_is_reported(tmp_path):
    root = _folder(tmp_path / "data", classes=("a", "b", "c"))
    shutil.rmtree(root / "test" / "c")
    splits = vision.load_splits(vision.VisionDataArguments(data_dir=str(root)))
    with pytest.raises(vision.ImageDataError, match="split 'test'.*no image of class 'c'"):
        vision.validate_splits(splits)


# ----------------------------------------------------------------------------------- splits


def test_missing_splits_are_carved_stratified(tmp_path):
    root = tmp_path / "pool"
    for c in ("a", "b"):
        for i in range(10):
            _png(root / c / f"{i}.png")
    splits = vision.load_splits(vision.VisionDataArguments(data_dir=str(root), val_fraction=0.2, test_fraction=0.3))
    assert {k: len(v) for k, v in splits.items()} == {"train": 10, "test": 6, "val": 4}
    assert all({s.label for s in v} == {"a", "b"} for v in splits.values())
    assert all(s.split == k for k, v in splits.items() for s in v)
    names = [s.name for v in splits.values() for s in v]
    assert len(set(names)) == 20  # no image in two splits


def _samples(**sizes: int) -> list[vision.Sample]:
    return [vision.Sample(f"{label}/{i}.png", label) for label, n in sizes.items() for i in range(n)]


def test_carve_is_proportional_per_class_and_seeded():
    samples = _samples(a=50, b=150)
    kept, carved = vision.carve(samples, 0.2, seed=3, split="test")
    assert sum(s.label == "a" for s in carved) == 10 and sum(s.label == "b" for s in carved) == 30
    assert {s.split for s in carved} == {"test"} and {s.split for s in kept} == {"train"}
    assert [s.name for s in kept] == [s.name for s in samples if s.name in {k.name for k in kept}]  # input order
    again = vision.carve(samples, 0.2, seed=3, split="test")[1]
    other = vision.carve(samples, 0.2, seed=4, split="test")[1]
    assert [s.name for s in again] == [s.name for s in carved] and [s.name for s in other] != [s.name for s in carved]


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.95])
def test_carve_keeps_single_images_in_train_and_every_other_class_on_both_sides(fraction):
    # sklearn alone refuses a 1-image class and, with proportional allocation, would carve nothing from b or c
    samples = _samples(a=1, b=2, c=3, d=60)
    kept, carved = vision.carve(samples, fraction, seed=0, split="val")
    assert [s.name for s in kept if s.label == "a"] == ["a/0.png"] and not any(s.label == "a" for s in carved)
    for label in "bcd":
        assert any(s.label == label for s in carved), f"class {label} has no carved image"
        assert any(s.label == label for s in kept), f"class {label} has no image left in train"
    names = [s.name for s in kept + carved]
    assert sorted(names) == sorted(s.name for s in samples)  # a partition: nothing lost, nothing twice
    assert abs(len(carved) - max(fraction * 65, 3)) <= 3  # about the fraction (+ one image per small class)


def test_carve_of_only_single_images_carves_nothing():
    samples = _samples(a=1, b=1)
    assert vision.carve(samples, 0.5, seed=0, split="test") == (samples, [])


def test_hub_style_dataset_with_image_column(tmp_path):
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    paths = [str(_png(tmp_path / f"{i}.png", (i * 60, 0, 0))) for i in range(4)]
    ds = Dataset.from_dict({"image": paths, "label": [0, 1, 0, 1]},
                           features=Features({"image": ImageFeature(), "label": ClassLabel(names=["good", "bad"])}))
    samples = vision.samples_from_hf(ds)
    assert [s.label for s in samples] == ["good", "bad", "good", "bad"]
    classes = vision.validate_splits({"train": samples})
    item = vision.ImageDataset(samples, classes, vision.build_transforms(8, (0.5,) * 3, (0.5,) * 3, train=False))[1]
    assert item["pixel_values"].shape == (3, 8, 8) and item["labels"] == classes.index("bad")


# ----------------------------------------------------------------------------------- prepare_data.py


def test_generation_is_deterministic_with_boxes(tmp_path, prepare_data):
    gen = prepare_data.GenerationArguments(generation_image_size=48, num_train_per_class=3,
                                           num_val_per_class=1, num_test_per_class=1)
    a, b = prepare_data.generate(tmp_path / "a", gen), prepare_data.generate(tmp_path / "b", gen)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 5 * 5 and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    rows = [json.loads(line) for line in (a / "boxes.jsonl").read_text().splitlines()]
    for r in rows:
        assert (r["box"] is None) == (r["label"] == "good")
        if r["box"]:
            x0, y0, x1, y1 = r["box"]
            assert 0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 48
    other = prepare_data.generate(tmp_path / "c", prepare_data.GenerationArguments(
        generation_seed=1, generation_image_size=48, num_train_per_class=3, num_val_per_class=1, num_test_per_class=1))
    assert (other / files[0]).read_bytes() != (a / files[0]).read_bytes()


def test_generated_folder_follows_the_generation_arguments(tmp_path, prepare_data):
    small = prepare_data.GenerationArguments(generation_image_size=32, num_train_per_class=2,
                                             num_val_per_class=1, num_test_per_class=1)
    out = prepare_data.prepare(tmp_path / "gen", small)
    assert len(list((out / "train").rglob("*.png"))) == 5 * 2
    stamp = (out / "train" / "good" / "good_00000.png").stat().st_mtime_ns
    assert prepare_data.prepare(tmp_path / "gen", small) == out  # same arguments: reused, not regenerated
    assert (out / "train" / "good" / "good_00000.png").stat().st_mtime_ns == stamp
    bigger = prepare_data.GenerationArguments(generation_image_size=32, num_train_per_class=3,
                                              num_val_per_class=1, num_test_per_class=1)
    prepare_data.prepare(tmp_path / "gen", bigger)  # other sizes: generated again, never silently stale
    assert len(list((out / "train").rglob("*.png"))) == 5 * 3
    assert json.loads((out / "generation.json").read_text())["num_train_per_class"] == 3


def test_prepare_passes_a_table_through_and_resolves_relative_paths(tmp_path, monkeypatch, prepare_data):
    table = tmp_path / "labels.csv"
    table.write_text("path,label\n")
    assert prepare_data.prepare(table, prepare_data.GenerationArguments()) == table
    monkeypatch.chdir(tmp_path)  # a repository-relative path works from any working directory
    readme = prepare_data.prepare("usecase-vision-defects/README.md", prepare_data.GenerationArguments())
    assert readme == USECASE / "README.md"


def test_mvtec_layout_is_resplit_with_boxes_from_masks(tmp_path, prepare_data):
    root = tmp_path / "mvtec" / "screw"
    for i in range(5):
        _png(root / "train" / "good" / f"{i:03d}.png")
        _png(root / "test" / "good" / f"{i:03d}.png")
        _png(root / "test" / "scratch_head" / f"{i:03d}.png")
        mask = np.zeros((16, 16), np.uint8)
        mask[2:5, 6:9] = 255
        Image.fromarray(mask).save(_png(root / "ground_truth" / "scratch_head" / f"{i:03d}_mask.png"))
    assert prepare_data.is_mvtec(root)
    out = prepare_data.import_mvtec(root, tmp_path / "split")
    splits = vision.load_splits(vision.VisionDataArguments(data_dir=str(out)))
    assert vision.validate_splits(splits) == ["good", "scratch_head"]
    boxes = [s.box for v in splits.values() for s in v if s.label == "scratch_head"]
    assert boxes and all(b == [6, 2, 9, 5] for b in boxes)
