"""Bad input to the vision recipe gets one clear error before any work starts, and nothing is silently wrong.

A matrix of bad inputs across ``train.py``, ``predict.py`` and the data loaders, on tiny images and the tiny random
backbone (``config.smoke.yaml``). Each case checks the error type (or exit code), that the message names the
problem (file / row / key), and, for training, that no run output was written. Two subprocess cases check exit
code 2 without a traceback; valid CSV / JSONL tables train end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from common import vision
from common.errors import ConfigError, DataError, ModelPathError
from common.paths import REPO_ROOT, load_sibling
from common.vision import images as vision_images

USECASE = REPO_ROOT / "usecase-vision-defects"
SMOKE = USECASE / "config.smoke.yaml"
COLOURS = {"a": (200, 30, 30), "b": (30, 30, 200), "c": (30, 200, 30)}


def _script(name: str):
    return load_sibling(USECASE / f"{name}.py", name)


def _png(path: Path, colour=(120, 120, 120), size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path


def _pool(root: Path, per_class: dict[str, int] | None = None) -> Path:
    """``root/<class>/<i>.png``: a folder dataset without splits (val/test are carved)."""
    for c, n in (per_class or {"a": 6, "b": 6}).items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _png(root / c / f"{i}.png", COLOURS.get(c, (90, 90, 90)))
    return root


def _table(tmp: Path, rows: list[dict], suffix: str = ".csv", columns=("path", "label", "split")) -> Path:
    """Images for every row's path (when it has one) and the table listing them."""
    for r in rows:
        if r.get("path"):
            _png(tmp / r["path"], COLOURS.get(r.get("label"), (90, 90, 90)))
    table = tmp / f"labels{suffix}"
    if suffix == ".csv":
        lines = [",".join(columns)] + [",".join(str(r.get(c, "")) for c in columns) for r in rows]
        table.write_text("\n".join(lines) + "\n")
    else:
        table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return table


def _rows(n: int = 6) -> list[dict]:
    """A valid table: two classes, every split present."""
    splits = ["train"] * (n - 2) + ["val", "test"]
    return [{"path": f"img/{c}{i}.png", "label": c, "split": s} for c in "ab" for i, s in enumerate(splits)]


def _config(tmp: Path, **overrides) -> Path:
    """config.smoke.yaml with some values replaced (values a YAML file can hold but a flag's choices would stop)."""
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg.update(overrides)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# ---------------------------------------------------------------------------------------- train.py matrix
# Each case: (build(tmp) -> extra argv, error type, strings the message must contain).


def _missing_dir(tmp):
    return ["--data_dir", str(tmp / "no-such-folder")]


def _empty_class(tmp):
    root = _pool(tmp / "data")
    (root / "c").mkdir()
    return ["--data_dir", str(root)]


def _single_class(tmp):
    return ["--data_dir", str(_pool(tmp / "data", {"a": 8}))]


def _too_few_to_carve(tmp):
    return ["--data_dir", str(_pool(tmp / "data", {"a": 6, "b": 6, "c": 1}))]


def _empty_class_in_split(tmp):
    root = tmp / "data"
    for split in ("train", "val", "test"):
        _pool(root / split, {"a": 2, "b": 2})
    for f in (root / "test" / "b").iterdir():
        f.unlink()
    return ["--data_dir", str(root)]


def _dup_same_split(tmp):
    rows = _rows()
    rows.append(dict(rows[0]))
    return ["--data_dir", str(_table(tmp, rows))]


def _dup_conflicting(tmp):
    rows = _rows()
    rows.append({"path": rows[0]["path"], "label": "b", "split": "test"})
    return ["--data_dir", str(_table(tmp, rows, ".jsonl"))]


def _missing_column(tmp):
    return ["--data_dir", str(_table(tmp, _rows(), columns=("path", "split")))]


def _empty_label(tmp):
    rows = _rows()
    rows[3]["label"] = ""
    return ["--data_dir", str(_table(tmp, rows))]


def _empty_path(tmp):
    rows = _rows()
    rows[2]["path"] = ""
    return ["--data_dir", str(_table(tmp, rows, ".jsonl"))]


def _unknown_split(tmp):
    rows = _rows()
    rows[1]["split"] = "trian"
    return ["--data_dir", str(_table(tmp, rows))]


def _bomb(tmp):
    root = _pool(tmp / "data")
    Image.new("1", (4000, 4000)).save(root / "a" / "huge.png")  # a few KB on disk, 16 MP in the header
    return ["--data_dir", str(root)]


def _pooled(*flags):
    return lambda tmp: ["--data_dir", str(_pool(tmp / "data")), *flags]


def _yaml(**overrides):
    return lambda tmp: ["--config", str(_config(tmp, **overrides)), "--data_dir", str(_pool(tmp / "data"))]


TRAIN_CASES = {
    "missing-data-dir": (_missing_dir, DataError, ["no-such-folder", "does not exist", "prepare_data.py --out"]),
    "empty-class-folder": (_empty_class, DataError, ["empty class folder", f"data{os.sep}c"]),
    "single-class": (_single_class, DataError, ["at least 2 classes"]),
    "class-too-small-to-carve": (_too_few_to_carve, DataError, ["class 'c'", "too few images to carve"]),
    "empty-class-in-test-split": (_empty_class_in_split, DataError, [f"test{os.sep}b", "empty class folder"]),
    "duplicate-row-same-split": (_dup_same_split, DataError, ["labels.csv", "row 2", "row 14", "listed twice"]),
    "duplicate-row-conflicting": (_dup_conflicting, DataError, ["labels.jsonl", "row 1", "row 13", "label 'b'"]),
    "table-missing-column": (_missing_column, DataError, ["labels.csv", "row 2", "missing column", "'label'"]),
    "table-empty-label": (_empty_label, DataError, ["labels.csv", "row 5", "empty 'label'"]),
    "table-empty-path": (_empty_path, DataError, ["labels.jsonl", "row 3", "empty 'path'"]),
    "table-unknown-split": (_unknown_split, DataError, ["labels.csv", "row 3", "unknown split 'trian'"]),
    "decompression-bomb": (_bomb, DataError, ["huge.png", "too large", "4000x4000", "MAX_IMAGE_PIXELS"]),
    "image-size-too-small": (_pooled("--image_size", "8"), ConfigError, ["image_size", ">= 16"]),
    "val-fraction-out-of-range": (_pooled("--val_fraction", "1.5"), ConfigError, ["val_fraction", "[0, 1)"]),
    "fractions-sum-to-one": (_pooled("--val_fraction", "0.5", "--test_fraction", "0.5"), ConfigError,
                             ["val_fraction + test_fraction", "< 1"]),
    "method-unknown-in-yaml": (_yaml(method="finetune"), ConfigError, ["method", "'finetune'", "lora"]),
    "lora-rank-zero": (_pooled("--lora_r", "0"), ConfigError, ["lora_r", ">= 1"]),
    "learning-rate-zero": (_pooled("--learning_rate", "0"), ConfigError, ["learning_rate", "> 0"]),
    "epochs-zero": (_pooled("--num_train_epochs", "0"), ConfigError, ["num_train_epochs", "> 0"]),
    "probe-epochs-zero": (_pooled("--probe_epochs", "0"), ConfigError, ["probe_epochs", ">= 1"]),
    "cam-method-unknown": (_pooled("--cam_method", "gradcam++"), ConfigError, ["cam_method", "layercam"]),
    "gradcam-layer-missing": (_pooled("--gradcam_layer", "blocks.99"), ConfigError, ["gradcam_layer", "blocks.99"]),
    "misspelled-flag-prefix": (_pooled("--learning_rat", "1"), ConfigError, ["--learning_rat"]),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train_rejects_bad_input_before_any_work(case, tmp_path, monkeypatch):
    build, error, needles = TRAIN_CASES[case]
    monkeypatch.setattr(vision_images, "MAX_IMAGE_PIXELS", 1_000_000)  # the bomb case stays light
    out = tmp_path / "run"
    argv = build(tmp_path)
    if "--config" not in argv:
        argv = ["--config", str(SMOKE), *argv]
    with pytest.raises(error) as err:
        _script("train").main([*argv, "--output_dir", str(out)])
    message = str(err.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in: {message}"
    assert not (out / "report.json").exists() and not (out / "model.safetensors").exists()
    assert not (tmp_path / "no-such-folder").exists()  # nothing generated into a path the user mistyped


# ---------------------------------------------------------------------------------------- data loaders


@pytest.fixture(scope="module")
def large_png(tmp_path_factory) -> Path:
    """8000 x 8000 (64 MP in the header), a 1-bit image of a few KB: cheap to write, never decoded here."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (8000, 8000)).save(path)
    assert path.stat().st_size < 100_000
    return path


@pytest.mark.parametrize("reader", ["load_rgb", "check_image"])
def test_image_above_the_pixel_limit_is_refused_before_decoding(reader, large_png, monkeypatch):
    monkeypatch.setattr(vision_images, "MAX_IMAGE_PIXELS", 10_000_000)
    if reader == "load_rgb":
        with pytest.raises(vision.ImageDataError, match="bomb.png: too large: 8000x8000 px = 64.0 MP"):
            vision.load_rgb(large_png)
    else:
        assert vision.check_image(large_png).startswith("too large: 8000x8000")
    monkeypatch.setattr(vision_images, "MAX_IMAGE_PIXELS", None)  # the limit is a documented, overridable constant
    assert vision.check_image(_png(large_png.parent / "small.png")) is None


def test_default_pixel_limit_is_documented_and_sane():
    assert vision_images.MAX_IMAGE_PIXELS == 40_000_000


def test_image_data_error_is_a_data_error_and_a_value_error():
    assert issubclass(vision.ImageDataError, DataError) and issubclass(vision.ImageDataError, ValueError)


LOADER_CASES = {
    "table-not-found": (lambda tmp: vision.samples_from_table(tmp / "nope.csv"), DataError, ["nope.csv"]),
    "jsonl-bad-line": (lambda tmp: vision.samples_from_table(_write(tmp / "t.jsonl", '{"path": "x.png"\n')),
                       DataError, ["t.jsonl", "row 1", "not valid JSON"]),
    "folder-missing": (lambda tmp: vision.samples_from_folder(tmp / "nope"), DataError, ["nope", "does not exist"]),
    "no-data-source": (lambda tmp: vision.load_splits(vision.VisionDataArguments()), ConfigError, ["data_dir"]),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", list(LOADER_CASES))
def test_loaders_name_the_problem(case, tmp_path):
    call, error, needles = LOADER_CASES[case]
    with pytest.raises(error) as err:
        call(tmp_path)
    assert all(n in str(err.value) for n in needles), str(err.value)


# ---------------------------------------------------------------------------------------- predict.py


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A saved (untrained) tiny classifier: what train.py --output_dir writes, without training."""
    out = tmp_path_factory.mktemp("run")
    backbone, norm = vision.load_backbone(vision.TINY_VISION_ALIAS, 2)
    vision.save_classifier(backbone, out, ["a", "b"], norm, 32)
    return out


PREDICT_CASES = {
    "model-dir-missing": (lambda tmp, run: ["--model_dir", str(tmp / "no-run"), str(_png(tmp / "x.png"))],
                          ModelPathError, ["no-run", "does not exist", "train.py --output_dir"]),
    "model-dir-empty": (lambda tmp, run: ["--model_dir", str(_mkdir(tmp / "empty-run")), str(_png(tmp / "x.png"))],
                        ModelPathError, ["empty-run", "is empty", "train.py --output_dir"]),
    "model-dir-without-model": (lambda tmp, run: ["--model_dir", str(_mkdir(tmp / "logs", "events.txt")),
                                                  str(_png(tmp / "x.png"))],
                                ModelPathError, ["logs", "no saved classifier"]),
    "input-missing": (lambda tmp, run: ["--model_dir", str(run), str(tmp / "missing.png")],
                      DataError, ["missing.png", "does not exist"]),
}


def _mkdir(path: Path, file: str | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if file:
        (path / file).write_text("x")
    return path


@pytest.mark.parametrize("case", list(PREDICT_CASES))
def test_predict_rejects_bad_model_dir_and_inputs(case, tmp_path, model_dir):
    build, error, needles = PREDICT_CASES[case]
    with pytest.raises(error) as err:
        _script("predict").main([*build(tmp_path, model_dir), "--out", str(tmp_path / "heat")])
    assert all(n in str(err.value) for n in needles), str(err.value)
    assert not (tmp_path / "heat").exists()


@pytest.mark.parametrize("bad", ["truncated", "text", "empty"])
def test_predict_reports_a_bad_image_by_name_and_processes_the_rest(bad, tmp_path, model_dir, capsys):
    folder = tmp_path / "batch"
    _png(folder / "ok1.png", size=32)
    _png(folder / "ok2.png", size=32)
    broken = folder / "broken.png"
    good_bytes = (folder / "ok1.png").read_bytes()
    broken.write_bytes({"truncated": good_bytes[: len(good_bytes) // 2], "text": b"hello, not a png\n",
                        "empty": b""}[bad])
    with pytest.raises(SystemExit) as exit_:
        _script("predict").main(["--model_dir", str(model_dir), str(folder), "--out", str(tmp_path / "heat")])
    assert exit_.value.code == 1
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and {"truncated": "truncated", "text": "text file", "empty": "0 bytes"}[bad] \
        in captured.err
    lines = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")]
    assert sorted(Path(r["image"]).name for r in lines) == ["ok1.png", "ok2.png"]
    assert all(Path(r["heatmap"]).exists() for r in lines)


def test_same_name_in_two_subfolders_gets_two_heatmaps(tmp_path, model_dir):
    folder = tmp_path / "batch"
    _png(folder / "sub_a" / "img.png", (200, 0, 0), 32)
    _png(folder / "sub_b" / "img.png", (0, 0, 200), 32)
    results = _script("predict").main(["--model_dir", str(model_dir), str(folder), "--out", str(tmp_path / "h")])
    assert sorted(Path(r["heatmap"]).name for r in results) == ["sub_a__img.gradcam.png", "sub_b__img.gradcam.png"]
    assert all(Path(r["heatmap"]).exists() for r in results)


# ---------------------------------------------------------------------------------------- exit codes


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "COOKBOOK_DEBUG"}
    return subprocess.run([sys.executable, str(USECASE / script), *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_train_cli_exits_2_without_traceback(tmp_path):
    result = _run("train.py", "--config", str(SMOKE), "--data_dir", str(tmp_path / "typo-data"),
                  "--output_dir", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: data_dir" in result.stderr and "typo-data" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "typo-data").exists()


def test_predict_cli_exits_2_on_a_missing_model_dir(tmp_path):
    result = _run("predict.py", "--model_dir", str(tmp_path / "no-run"), str(_png(tmp_path / "x.png")))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no-run" in result.stderr and "train.py --output_dir" in result.stderr


# ---------------------------------------------------------------------------------------- valid tables


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_valid_table_trains_end_to_end(suffix, tmp_path):
    table = _table(tmp_path, _rows(), suffix)
    out = tmp_path / "run"
    metrics = _script("train").main(["--config", str(SMOKE), "--data_dir", str(table), "--output_dir", str(out)])
    assert 0 <= metrics["after"]["macro_f1"] <= 1
    report = json.loads((out / "report.json").read_text())
    assert report["data"] == {"classes": ["a", "b"], "train": 8, "val": 2, "test": 2}
    assert (out / "model.safetensors").exists()
