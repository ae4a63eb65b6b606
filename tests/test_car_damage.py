"""The car-damage recipe: cost-table and labels validation, the multi-task model, predict.py on bad photos."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.errors import DataError, ModelPathError
from common.paths import load_sibling
from common.vision import multitask as mt

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "usecase-car-damage"
TABLE = RECIPE / "data" / "cost_table.csv"
costs = load_sibling(RECIPE / "train.py", "costs")
estimate = load_sibling(RECIPE / "train.py", "estimate")
prepare_data = load_sibling(RECIPE / "train.py", "prepare_data")


def _write_table(path: Path, edit) -> Path:
    rows = list(csv.DictReader(TABLE.open()))
    rows = edit(rows)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=costs.COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return path


# ----------------------------------------------------------------------------------------- cost table


def test_bundled_cost_table_is_valid_and_prices_every_combination():
    table = costs.CostTable.load(TABLE)
    assert table.parts == ["panel", "bumper", "glass", "lamp", "tyre"]
    assert set(table.damages) == {"none", "dent", "scratch", "cracked_glass", "broken_lamp", "flat_tyre"}
    assert table.cost("panel", "dent", "moderate") == 60 + 3.5 * 60
    assert ("tyre", "dent", "minor") not in table.entries  # only physically sensible pairs
    assert len(table.entries) == 26


def test_cost_table_missing_combination_is_an_error(tmp_path):
    bad = _write_table(tmp_path / "t.csv", lambda rows: [r for r in rows if not (
        r["part"] == "lamp" and r["severity"] == "severe")])
    with pytest.raises(DataError, match=r"missing combination \(lamp, broken_lamp, severe\)") as e:
        costs.CostTable.load(bad)
    assert str(bad) in str(e.value)


def test_cost_table_negative_cost_names_the_row(tmp_path):
    def neg(rows):
        rows[3]["parts_cost"] = "-420"
        return rows
    bad = _write_table(tmp_path / "t.csv", neg)
    with pytest.raises(DataError, match=r"t\.csv, row 5: negative or invalid parts_cost"):
        costs.CostTable.load(bad)


@pytest.mark.parametrize("edit, match", [
    (lambda rows: rows + [rows[1]], "listed twice"),
    (lambda rows: [{**rows[0], "labour_hours": "0"}] + rows[1:], "costs nothing"),
    (lambda rows: [{**rows[0], "labour_rate": "sixty"}] + rows[1:], "is not a number"),
    (lambda rows: [{**rows[0], "severity": "minor"}] + rows[1:], "damage 'none' goes with severity 'none'"),
])
def test_cost_table_other_problems(tmp_path, edit, match):
    with pytest.raises(DataError, match=match):
        costs.CostTable.load(_write_table(tmp_path / "t.csv", edit))


def test_best_combination_is_always_a_priced_one():
    table = costs.CostTable.load(TABLE)
    p = np.full(len(table.parts), 0.01)
    p[table.parts.index("tyre")] = 0.9
    d = np.full(len(table.damages), 0.01)
    d[table.damages.index("dent")] = 0.6  # a dented tyre is not priced: the flat tyre wins
    d[table.damages.index("flat_tyre")] = 0.3
    s = np.full(len(table.severities), 0.01)
    s[table.severities.index("severe")] = 0.9
    entry, _ = table.best_combination(p, d, s)
    assert (entry.part, entry.damage, entry.severity) == ("tyre", "flat_tyre", "severe")


# ----------------------------------------------------------------------------------------- labels table


def _labels(tmp_path: Path, rows: list[dict], columns=("image", "part", "damage", "severity", "cost")) -> Path:
    img = tmp_path / "ok.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(img)
    path = tmp_path / "labels.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


GOOD = {"image": "ok.png", "part": "panel", "damage": "dent", "severity": "minor", "cost": "66.5"}


def test_labels_missing_image_and_unknown_label_name_file_and_row(tmp_path):
    path = _labels(tmp_path, [GOOD, {**GOOD, "image": "gone.png"}, {**GOOD, "damage": "rust"},
                              {**GOOD, "part": "tyre"}, {**GOOD, "cost": "-3"}])
    with pytest.raises(DataError) as e:
        prepare_data.load_table(path, costs.CostTable.load(TABLE))
    msg = str(e.value)
    assert f"{path}, row 3 (gone.png): missing file" in msg
    assert f"{path}, row 4: unknown label: damage 'rust'" in msg
    assert f"{path}, row 5: unpriced combination: ('tyre', 'dent', 'minor')" in msg
    assert f"{path}, row 6: bad cost" in msg
    assert "row 2" not in msg  # the good row is not blamed


def test_missing_label_column_disables_that_head(tmp_path):
    path = _labels(tmp_path, [GOOD] * 3, columns=("image", "part", "damage", "cost"))
    table = costs.CostTable.load(TABLE)
    splits, present = prepare_data.load_table(path, table)
    assert present == ["part", "damage", "cost"]
    tasks = estimate.build_tasks(table, present, splits["train"], estimate.MultiTaskArguments())
    assert [t.name for t in tasks] == ["part", "damage", "cost"]
    calib = estimate.calibrate({"part": np.eye(5)[[0]], "damage": np.eye(6)[[1]], "cost": np.array([70.0])},
                               np.array([66.5]), table)
    assert calib["method"] == "regression" and "table" not in calib["methods"]  # no severity: no table lookup


def test_generation_is_deterministic(tmp_path):
    gen = prepare_data.GenerationArguments(generation_image_size=32, num_train_per_combination=1,
                                           num_val_per_combination=0, num_test_per_combination=0)
    table = costs.CostTable.load(TABLE)
    a = prepare_data.generate(tmp_path / "a", gen, table)
    b = prepare_data.generate(tmp_path / "b", gen, table)
    assert a.read_text() == b.read_text()
    assert (tmp_path / "a/train/00007.png").read_bytes() == (tmp_path / "b/train/00007.png").read_bytes()
    rows = list(csv.DictReader(a.open()))
    assert len(rows) == 26 and all(float(r["cost"]) > 0 for r in rows)
    ratio = [float(r["cost"]) / table.cost(r["part"], r["damage"], r["severity"]) for r in rows]
    assert 0.7 < min(ratio) and max(ratio) < 1.4 and np.std(ratio) > 0.01  # noisy around the table price


# ----------------------------------------------------------------------------------------- the model


def _tiny_model(tasks):
    import timm

    return mt.MultiTaskModel(timm.create_model("test_efficientnet", pretrained=False, num_classes=0), tasks)


TASKS = [mt.Task("part", ["a", "b", "c"], 0.5), mt.Task("damage", ["x", "y"]),
         mt.Task("cost", weight=0.5, log=True, mean=5.0, std=1.0)]


def test_multi_head_model_learns_on_a_tiny_batch():
    torch.manual_seed(0)
    model = _tiny_model(TASKS).train()
    x = torch.randn(8, 3, 32, 32)
    y = torch.tensor([[i % 3, i % 2, TASKS[2].encode(100.0 * (1 + i))] for i in range(8)], dtype=torch.float32)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        out = model(x, labels=y)
        assert out["logits"].shape == (8, 3 + 2 + 1)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0]
    for name in ("heads.heads.part.weight", "heads.heads.cost.bias", "backbone.conv_stem.weight"):
        assert not torch.equal(before[name], dict(model.named_parameters())[name]), f"{name} did not change"


def test_loss_weights_scale_each_head():
    heads = mt.MultiTaskHeads(4, TASKS)
    logits = torch.randn(5, 6)
    labels = torch.tensor([[0, 1, 0.3]] * 5)
    base = heads.loss(logits, labels)
    heads.tasks[1].weight = 0.0
    ce = torch.nn.functional.cross_entropy(logits[:, 3:5], labels[:, 1].long())
    assert torch.allclose(base - heads.loss(logits, labels), ce)


def _trained_dir(tmp_path: Path) -> Path:
    """A saved tiny model with the bundled cost table, as train.py leaves it."""
    table = costs.CostTable.load(TABLE)
    tasks = estimate.build_tasks(table, ["part", "damage", "severity", "cost"],
                                 [mt.MultiSample("x", {"cost": c}) for c in (50.0, 500.0)],
                                 estimate.MultiTaskArguments(cost_head_hidden=16))  # the MLP cost head
    calib = {"method": "table", "coverage": 0.8,
             "methods": {"table": {"within_20pct": 0.9, "low": 0.85, "high": 1.15},
                         "regression": {"within_20pct": 0.7, "low": 0.8, "high": 1.2}}}
    out = tmp_path / "run"
    mt.save_multitask(_tiny_model(tasks), out, {"mean": (0.5,) * 3, "std": (0.5,) * 3}, 32,
                      extra={"calibration": calib, "gradcam_layer": None, "cam_method": "gradcam"})
    shutil.copy(TABLE, out / "cost_table.csv")
    return out


def test_save_and_load_round_trip(tmp_path):
    run = _trained_dir(tmp_path)
    model, cfg = mt.load_multitask(run)
    assert [t.name for t in model.tasks] == ["part", "damage", "severity", "cost"]
    again, _ = mt.load_multitask(run)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x)["logits"], again(x)["logits"])
    assert model.tasks[3].log and model.tasks[3].std > 0 and model.tasks[3].hidden == 16
    assert cfg["cookbook"]["calibration"]["method"] == "table"
    (run / "model.safetensors").write_bytes(b"\0" * 10)
    with pytest.raises(ModelPathError, match="incomplete or corrupt"):
        mt.load_multitask(run)


def _bad_images(d: Path) -> dict[str, Path]:
    d.mkdir()
    files = {"good": d / "good.png", "cmyk": d / "cmyk.jpg", "deep": d / "deep16.png", "empty": d / "empty.png",
             "truncated": d / "truncated.png", "text": d / "notes.png", "huge": d / "huge.png"}
    Image.new("RGB", (48, 48), (30, 90, 200)).save(files["good"])
    Image.new("CMYK", (48, 48), (10, 200, 30, 0)).save(files["cmyk"])
    Image.fromarray((np.arange(48 * 48).reshape(48, 48) * 20).astype(np.uint16)).save(files["deep"])
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(files["good"].read_bytes()[:60])
    files["text"].write_text("this is not a photo\n")
    Image.new("1", (8000, 6000)).save(files["huge"])  # 48 MP: refused from its header
    return files


def test_predict_reports_bad_photos_and_processes_the_others(tmp_path):
    run = _trained_dir(tmp_path)
    files = _bad_images(tmp_path / "photos")
    proc = subprocess.run([sys.executable, RECIPE / "predict.py", "--model_dir", run, "--json",
                           "--report", tmp_path / "annotated", *files.values()], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    rows = {Path(r["image"]).stem: r for r in map(json.loads, proc.stdout.splitlines())}
    assert len(rows) == len(files)
    assert rows["empty"]["error"].startswith("empty file")
    assert rows["truncated"]["error"].startswith("truncated or corrupt")
    assert rows["notes"]["error"].startswith("not an image")
    assert rows["huge"]["error"].startswith("too large")
    for name in ("good", "cmyk", "deep16"):  # processed: CMYK and 16-bit are converted, and say so
        r = rows[name]
        assert {"part", "damage", "severity", "confidences", "cost"} <= set(r), r
        assert set(r["confidences"]) == {"part", "damage", "severity"}
        c = r["cost"]
        assert c["method"] == "table" and c["low"] <= c["estimate"] <= c["high"]
        assert c["table_breakdown"]["table_cost"] == c["estimate"] and "regression_estimate" in c
        assert Path(r["annotated"]).is_file()
    assert "CMYK" in rows["cmyk"]["note"] and "I;16" in rows["deep16"]["note"]
    assert "4 of 7 photo(s) failed" in proc.stderr and "empty.png: empty file" in proc.stderr


def test_predict_human_readable_says_method_and_range(tmp_path):
    run = _trained_dir(tmp_path)
    files = _bad_images(tmp_path / "photos")
    proc = subprocess.run([sys.executable, RECIPE / "predict.py", "--model_dir", run, files["good"]], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "estimated repair cost" in proc.stdout and "method: table" in proc.stdout and "range" in proc.stdout
    assert "cost table:" in proc.stdout and " h x " in proc.stdout


def test_explain_feeds_the_model_in_its_own_dtype_and_device(tmp_path):
    """After training on a GPU, train.py explains example photos with the model where it trained (CUDA, bf16
    autocast weights or bf16 weights); photos were fed as CPU fp32 and the H200 run failed. A bf16 model on the CPU
    is the same mismatch here."""
    run = _trained_dir(tmp_path)
    predict = load_sibling(RECIPE / "train.py", "predict")
    model, cfg = mt.load_multitask(run)
    photo = tmp_path / "car.png"
    Image.new("RGB", (48, 48), (120, 40, 40)).save(photo)
    rows = predict.explain(model.to(torch.bfloat16), cfg, costs.CostTable.load(TABLE), [photo],
                           report_dir=tmp_path / "annotated")
    assert rows[0]["damage"] in model.tasks[1].classes and rows[0]["cost"]["low"] <= rows[0]["cost"]["high"]


def test_an_estimate_for_a_photo_outside_the_training_photos_says_so(tmp_path):
    """predict.py keeps answering, but a photo much smaller / flatter / blurrier than the training photos carries
    a warning in its JSON and in the readable estimate."""
    from PIL import Image

    from common.vision.robustness import photo_warnings

    predict = load_sibling(RECIPE / "train.py", "predict")
    ranges = {"min_side": 128.0, "contrast": 30.0, "sharpness": 500.0}
    flat = Image.new("RGB", (40, 40), (90, 90, 90))
    warnings = photo_warnings(flat, ranges)
    assert len(warnings) == 3  # small, uniform and (having no edges) soft
    text = predict.describe({"image": "flat.png", "damage": "dent", "confidences": {"damage": 0.9},
                             "cost": {"method": None, "note": "no estimate"}, "warnings": warnings})
    assert "no cost estimate" in text and text.count("warning: the photo is") == 3
    text = predict.describe({"image": "flat.png", "damage": "dent", "confidences": {"damage": 0.9},
                             "cost": {"method": "table", "estimate": 100.0, "low": 80.0, "high": 120.0,
                                      "range_covers": "80%"}, "warnings": warnings})
    assert text.count("warning: the photo is") == 3 and "not to be trusted" in text
