"""Robustness of the vision recipes: the corruptions are real and reproducible, the report's arithmetic holds, and a
photo far outside the training photos is flagged (while ordinary ones are not)."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from common.vision.data import build_transforms
from common.vision.robustness import (
    corrupted_transform,
    corruption_report,
    corruptions,
    photo_warnings,
    robustness_section,
    training_ranges,
)


def _photo(seed: int, size: int = 128) -> Image.Image:
    """A textured RGB test image with edges (a checkerboard with noise): what a product photo has, roughly."""
    rng = np.random.default_rng(seed)
    board = (np.indices((size, size)).sum(0) // 16 % 2 * 140 + 50).astype(np.float32)
    rgb = np.stack([board + rng.normal(0, 12, (size, size)) for _ in range(3)], -1)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


@pytest.mark.parametrize("name", sorted(corruptions()))
def test_each_corruption_changes_the_model_input_and_is_reproducible(name):
    transform = build_transforms(64, [0.5] * 3, [0.25] * 3, train=False)
    photo = _photo(0)
    clean = transform(photo)
    corrupt = corrupted_transform(corruptions()[name], transform)
    first, second = corrupt(photo), corrupt(photo)
    assert first.shape == clean.shape == (3, 64, 64) and first.dtype == torch.float32
    assert torch.equal(first, second), "a corruption must give the same image every time (reports reproduce)"
    assert (first - clean).abs().mean() > 0.01, f"{name} left the model input unchanged"
    assert torch.equal(corrupted_transform(None, transform)(photo), clean)


def test_the_noise_leaves_the_global_random_state_alone():
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    corruptions()["gaussian_noise_s0.08"](_photo(1))
    assert torch.equal(torch.rand(3), expected)


def test_report_drops_are_clean_minus_corrupted_and_the_worst_is_named():
    names = list(corruptions())
    calls = iter([0.9] + [0.9 - 0.01 * i for i in range(len(names))])  # clean first, then each corruption in order
    seen = []

    def score(corrupt):
        seen.append(corrupt)
        return {"macro_f1": next(calls), "other": 0.5}
    report = corruption_report(score, keys=("macro_f1",))
    assert seen[0] is None and all(callable(c) for c in seen[1:]) and len(seen) == len(names) + 1
    assert report["clean"] == {"macro_f1": 0.9} and list(report["corrupted"]) == names
    assert report["drop"][names[3]]["macro_f1"] == pytest.approx(0.03)
    assert report["worst"]["macro_f1"] == [names[-1], pytest.approx(0.01 * (len(names) - 1))]
    table = robustness_section({"test": report, "validation": report}, "macro_f1", "macro-F1")
    assert table.count("\n|") == len(names) + 2 and f"Worst on the test photos: **{names[-1]}**" in table


def test_a_photo_far_outside_the_training_photos_is_flagged():
    ranges = training_ranges([_photo(s) for s in range(20)])
    assert set(ranges) == {"min_side", "contrast", "sharpness"} and ranges["min_side"] == 128
    assert photo_warnings(_photo(99), ranges) == []  # an ordinary photo: no warning
    assert photo_warnings(_photo(99).resize((24, 24)), ranges)[0].startswith("too small (24 px")
    flat = Image.new("RGB", (128, 128), (120, 120, 120))
    assert any(w.startswith("nearly uniform") for w in photo_warnings(flat, ranges))
    blurred = _photo(99).filter(ImageFilter.GaussianBlur(6))
    assert [w for w in photo_warnings(blurred, ranges) if w.startswith("too blurred")]
    assert photo_warnings(flat, {}) == []  # a run saved before the ranges existed: nothing to compare with


def test_an_evenly_spaced_subset_keeps_a_class_ordered_split_balanced():
    from common.vision.robustness import evenly_spaced

    split = [c for c in "abcd" for _ in range(25)]  # 4 classes, 25 photos each, in class order
    subset = evenly_spaced(split, 20)
    assert len(subset) == 20 and {c: subset.count(c) for c in "abcd"} == {c: 5 for c in "abcd"}
    assert evenly_spaced(split, None) == split and evenly_spaced(split, 500) == split
