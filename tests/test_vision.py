"""Vision pipeline (common/vision.py, common/gradcam.py) and the vision-defects recipe: offline, CPU, tiny models.

Bad images must fail before training with the file named; odd-but-valid images must become the right RGB;
every training mode must actually learn; resume must reproduce; Grad-CAM must point at what drives the logit.
The ``slow`` test fine-tunes the real embedded EfficientNet-Lite0 and checks it beats the linear-probe baseline.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from common import vision
from common.gradcam import GradCAM, overlay, peak, peak_in_box

REPO = Path(__file__).resolve().parents[1]
USECASE = REPO / "usecase-vision-defects"


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"vision_defects_{name}", USECASE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def prepare_data():
    return _load_script("prepare_data")


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


def test_missing_splits_are_carved_stratified(tmp_path):
    root = tmp_path / "pool"
    for c in ("a", "b"):
        for i in range(10):
            _png(root / c / f"{i}.png")
    splits = vision.load_splits(vision.VisionDataArguments(data_dir=str(root), val_fraction=0.2, test_fraction=0.3))
    assert {k: len(v) for k, v in splits.items()} == {"train": 10, "test": 6, "val": 4}
    assert all({s.label for s in v} == {"a", "b"} for v in splits.values())
    names = [s.name for v in splits.values() for s in v]
    assert len(set(names)) == 20  # no image in two splits


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


# ----------------------------------------------------------------------------------- training


def _tiny_data(tmp_path, prepare_data, per_class=2):
    gen = prepare_data.GenerationArguments(generation_image_size=32, num_train_per_class=per_class,
                                           num_val_per_class=1, num_test_per_class=1)
    root = prepare_data.generate(tmp_path / "gen", gen)
    splits = vision.load_splits(vision.VisionDataArguments(data_dir=str(root)))
    classes = vision.validate_splits(splits)
    tf = vision.build_transforms(32, (0.5,) * 3, (0.5,) * 3, train=False)
    return {k: vision.ImageDataset(v, classes, tf) for k, v in splits.items()}, classes


def _args(out, **kw):
    from transformers import TrainingArguments

    base = dict(output_dir=str(out), per_device_train_batch_size=10, learning_rate=3e-3, use_cpu=True,
                report_to=[], logging_steps=1, save_strategy="no", eval_strategy="no", disable_tqdm=True, seed=0)
    return TrainingArguments(**{**base, **kw})


@pytest.mark.parametrize("method", ["lora", "full"])
def test_lora_and_full_learn(tmp_path, prepare_data, method):
    data, classes = _tiny_data(tmp_path, prepare_data)
    backbone, _ = vision.load_backbone(vision.TINY_VISION_ALIAS, len(classes))
    model = vision.prepare_for_method(backbone, vision.VisionModelArguments(method=method, lora_r=4))
    trainable, total = vision.trainable_parameters(model)
    assert (trainable < total / 2) if method == "lora" else trainable == total
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer = vision.build_trainer(vision.ImageClassifier(model), _args(tmp_path / "run", max_steps=12),
                                   data["train"], None)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert all(np.isfinite(losses)) and np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    if method == "lora":
        assert any("lora_B" in n for n in changed) and any("classifier" in n for n in changed)
    else:
        assert any(n.startswith("conv_stem") for n in changed) and any("blocks.4" in n for n in changed)
    merged = vision.unwrap(model)  # LoRA merged into plain timm weights gives the same logits
    x = torch.stack([data["test"][i]["pixel_values"] for i in range(3)])
    model.eval()
    torch.testing.assert_close(merged.eval()(x), model(x), rtol=1e-4, atol=1e-4)


def test_linear_probe_trains_only_the_head_on_cached_features(tmp_path, prepare_data):
    data, classes = _tiny_data(tmp_path, prepare_data)
    backbone, _ = vision.load_backbone(vision.TINY_VISION_ALIAS, len(classes))
    frozen = {n: p.detach().clone() for n, p in backbone.named_parameters() if not n.startswith("classifier")}
    cache = tmp_path / "cache"
    feats, cached = vision.extract_features(backbone, data["train"], cache)
    assert not cached and feats.shape == (len(data["train"]), backbone.num_features)
    again, cached = vision.extract_features(backbone, data["train"], cache)
    assert cached and torch.equal(feats, again)
    with torch.no_grad():  # other weights -> another cache entry, never stale features
        backbone.conv_stem.weight.mul_(1.0001)
    assert not vision.extract_features(backbone, data["train"], cache)[1]
    backbone.load_state_dict({**backbone.state_dict(), "conv_stem.weight": frozen["conv_stem.weight"]})

    args = vision.VisionModelArguments(method="linear_probe", probe_epochs=150, probe_learning_rate=0.1)
    head_before = backbone.classifier.weight.detach().clone()
    vision.fit_linear_probe(backbone, data["train"], _args(tmp_path / "run"), args, cache)
    assert not torch.equal(head_before, backbone.classifier.weight)
    assert all(torch.equal(p, frozen[n]) for n, p in backbone.named_parameters() if n in frozen)
    train_metrics = vision.evaluate_classifier(backbone, data["train"], classes)
    assert train_metrics["accuracy"] >= 0.8  # a linear head can fit 10 feature vectors


def test_resume_from_checkpoint_reproduces_the_uninterrupted_run(tmp_path, prepare_data):
    data, classes = _tiny_data(tmp_path, prepare_data)

    from transformers import TrainerCallback

    class KillAfterStep2(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step >= 2

    def run(out, resume=None, killed=False):
        torch.manual_seed(0)
        backbone, _ = vision.load_backbone(vision.TINY_VISION_ALIAS, len(classes))
        model = vision.ImageClassifier(vision.prepare_for_method(backbone, vision.VisionModelArguments(method="full")))
        args = _args(out, max_steps=5, per_device_train_batch_size=4, save_strategy="steps", save_steps=2)
        trainer = vision.build_trainer(model, args, data["train"], None)
        if killed:
            trainer.add_callback(KillAfterStep2())
        trainer.train(resume_from_checkpoint=resume)
        return model

    full = run(tmp_path / "a")
    interrupted = run(tmp_path / "b", killed=True)  # stops after step 2; its checkpoint-2 is complete
    assert not torch.equal(interrupted.backbone.conv_stem.weight, full.backbone.conv_stem.weight)
    resumed = run(tmp_path / "b", resume=str(tmp_path / "b" / "checkpoint-2"))
    for (_name, p), q in zip(full.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_trainer_keeps_best_checkpoint_by_macro_f1(tmp_path, prepare_data):
    data, classes = _tiny_data(tmp_path, prepare_data)
    backbone, _ = vision.load_backbone(vision.TINY_VISION_ALIAS, len(classes))
    args = _args(tmp_path / "run", num_train_epochs=3, eval_strategy="epoch", save_strategy="epoch",
                 load_best_model_at_end=True, metric_for_best_model="macro_f1", greater_is_better=True)
    trainer = vision.build_trainer(vision.ImageClassifier(backbone), args, data["train"], data["val"], 1)
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_macro_f1" in h]
    assert evals and trainer.state.best_metric == max(h["eval_macro_f1"] for h in evals)


# ----------------------------------------------------------------------------------- Grad-CAM


class _BrightSpotNet(nn.Module):
    """conv (brightness detector) -> ReLU -> global pool -> linear: class 1 = 'has a bright spot'."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.features[0].weight.zero_()
            self.features[0].weight[0, :, 1, 1] = 1.0  # channel 0 fires on bright pixels
            self.features[0].bias.fill_(-1.5)
            self.fc.weight.zero_()
            self.fc.weight[1, 0] = 10.0

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def test_gradcam_peak_lands_on_the_planted_region():
    img = torch.zeros(2, 3, 32, 32)
    img[0, :, 20:26, 4:10] = 1.0  # the planted spots
    img[1, :, 3:7, 24:30] = 1.0
    heat, logits = GradCAM(_BrightSpotNet(), "features.1")(img, class_idx=1)
    assert heat.shape == (2, 32, 32) and float(heat.max()) == pytest.approx(1.0) and float(heat.min()) >= 0
    assert peak_in_box(heat[0], (4, 20, 10, 26), (32, 32)) and peak_in_box(heat[1], (24, 3, 30, 7), (32, 32))
    assert not peak_in_box(heat[0], (24, 3, 30, 7), (32, 32))
    x, y = peak(heat[1])
    assert 24 <= x < 30 and 3 <= y < 7
    assert overlay(Image.new("RGB", (64, 64)), heat[0]).size == (64, 64)


class _CancellingNet(nn.Module):
    """Two spot detectors with opposite class weights plus a dark-background detector.

    Grad-CAM weighs whole channels, so the spot's positive and negative evidence cancel and the background wins;
    LayerCAM keeps only positive gradients per position, so the spot stays the hottest place.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.features[0].weight.zero_()
            self.features[0].weight[0:2, :, 0, 0] = 1.0  # channels 0 and 1: bright pixels
            self.features[0].weight[2, :, 0, 0] = -1.0  # channel 2: dark pixels
            self.features[0].bias.copy_(torch.tensor([-1.5, -1.5, 0.5]))
            self.fc.weight.zero_()
            self.fc.weight[1] = torch.tensor([10.0, -8.0, 10.0])
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def test_layercam_keeps_positive_evidence_where_gradcam_cancels_it():
    img = torch.zeros(1, 3, 32, 32)
    img[0, :, 20:26, 4:10] = 1.0
    box = (4, 20, 10, 26)
    grad_heat, _ = GradCAM(_CancellingNet(), "features.1", method="gradcam")(img, class_idx=1)
    layer_heat, _ = GradCAM(_CancellingNet(), "features.1", method="layercam")(img, class_idx=1)
    assert not peak_in_box(grad_heat[0], box, (32, 32))
    assert peak_in_box(layer_heat[0], box, (32, 32))
    smooth, _ = GradCAM(_CancellingNet(), "features.1", method="layercam", smooth=2.0)(img, class_idx=1)
    assert peak_in_box(smooth[0], box, (32, 32)) and float(smooth.max()) == pytest.approx(1.0)
    assert (smooth[0] > 0.9).sum() < (layer_heat[0] > 0.9).sum()  # blurred: the spot's edges soften
    with pytest.raises(ValueError, match="not one of"):
        GradCAM(_CancellingNet(), "features.1", method="scorecam")


def test_gradcam_on_a_timm_backbone_defaults_to_the_last_stage():
    backbone, _ = vision.load_backbone(vision.TINY_VISION_ALIAS, 3)
    cam = GradCAM(backbone)
    assert cam.layer_name == backbone.feature_info[-1]["module"]
    heat, logits = cam(torch.randn(2, 3, 64, 64))
    assert heat.shape == (2, 64, 64) and logits.shape == (2, 3)
    assert backbone.conv_stem.weight.grad is None  # the explanation leaves no gradients behind


# ----------------------------------------------------------------------------------- save, data, recipe


def test_save_and_load_classifier_round_trip(tmp_path):
    backbone, norm = vision.load_backbone(vision.TINY_VISION_ALIAS, 3)
    vision.save_classifier(backbone, tmp_path / "m", ["x", "y", "z"], norm, 48)
    model, cfg = vision.load_classifier(tmp_path / "m")
    x = torch.randn(2, 3, 48, 48)
    torch.testing.assert_close(model(x), backbone.eval()(x))
    assert cfg["label_names"] == ["x", "y", "z"] and cfg["pretrained_cfg"]["input_size"] == [3, 48, 48]
    again, _ = vision.load_backbone(str(tmp_path / "m"), 3)  # a saved run is itself a model_name_or_path
    torch.testing.assert_close(again.eval()(x), model(x))


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


def test_smoke_recipe_trains_reports_and_predicts(tmp_path, monkeypatch):
    train, predict = _load_script("train"), _load_script("predict")
    monkeypatch.chdir(tmp_path)  # scripts must not depend on the working directory
    out = tmp_path / "run"
    metrics = train.main(["--config", str(USECASE / "config.smoke.yaml"), "--output_dir", str(out),
                          "--data_dir", str(tmp_path / "smoke-data")])
    assert {"before", "after"} <= set(metrics) and 0 <= metrics["after"]["macro_f1"] <= 1
    report = json.loads((out / "report.json").read_text())
    assert report["primary_metric"] == "macro_f1" and report["train"]["throughput"]["unit"] == "img/s"
    assert (out / "confusion_matrix.png").exists() and (out / "model.safetensors").exists()
    results = predict.main(["--model_dir", str(out), "--examples", "2"])
    assert len(results) == 2 and all(Path(r["heatmap"]).exists() and 0 < r["confidence"] <= 1 for r in results)
    assert all(r["class"] in metrics["after"]["per_class"] for r in results)


# ----------------------------------------------------------------------------------- slow: the real job


@pytest.mark.slow
def test_real_backbone_fine_tune_beats_the_linear_probe(tmp_path):
    """The main job: EfficientNet-Lite0 (embedded ImageNet weights) with the default config.yaml.

    Measured with this config: macro-F1 0.778 -> 0.945 (and 0.769 -> 0.951), 411-441 s of training, heatmap
    peak inside the defect box for 73-74% of correct defective test images (~8 min for the whole test).
    """
    train = _load_script("train")
    metrics = train.main(["--config", str(USECASE / "config.yaml"), "--output_dir", str(tmp_path / "run"),
                          "--data_dir", str(tmp_path / "data"), "--report_to", "none"])
    assert metrics["after"]["macro_f1"] >= metrics["before"]["macro_f1"] + 0.05
    assert metrics["after"]["macro_f1"] >= 0.85
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["train"]["seconds"] <= 10 * 60
    assert metrics["after"]["gradcam_peak_in_box"] >= 0.60  # far above chance (boxes cover 2-9% of the image)


def test_train_throughput_counts_only_this_invocation():
    from types import SimpleNamespace

    history = [{"epoch": 1.0, "eval_runtime": 5.0}, {"epoch": 2.0, "eval_runtime": 5.0},  # before the resume
               {"epoch": 3.0, "eval_runtime": 5.0}, {"epoch": 4.0, "eval_runtime": 5.0},
               {"epoch": 4.0, "train_runtime": 30.0}]
    trainer = SimpleNamespace(state=SimpleNamespace(log_history=history, epoch=4.0))
    fresh = vision.train_throughput(trainer, 100)
    resumed = vision.train_throughput(trainer, 100, start_epoch=2.0)
    assert resumed["images"] == 200 and resumed["img_per_s"] == pytest.approx(200 / (30 - 10))
    assert fresh["images"] == 400 and fresh["img_per_s"] == pytest.approx(400 / (30 - 20))
