"""Vision training (common/vision/train.py, models.py, metrics.py) on a tiny random backbone: offline, CPU.

Every training mode must actually learn; resume must reproduce; the probe and the fine-tuning Trainer must share
one accelerate state in bf16; inference must work with bf16 weights and under bf16 autocast; the measured
inference throughput must exclude warm-up.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from common import vision
from common.paths import load_sibling

USECASE = Path(__file__).resolve().parents[1] / "usecase-vision-defects"


@pytest.fixture(scope="module")
def prepare_data():
    return load_sibling(USECASE / "prepare_data.py", "prepare_data")


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


def test_probe_then_fine_tune_in_bf16_share_one_accelerate_state(tmp_path, prepare_data):
    """The run's TrainingArguments are bf16 (the policy on a CPU with native bf16, or COOKBOOK_PRECISION=bf16):
    the probe's Trainer must not initialize accelerate in fp32 first, or the fine-tuning Trainer fails."""
    data, classes = _tiny_data(tmp_path, prepare_data)
    backbone, _ = vision.load_backbone(vision.TINY_VISION_ALIAS, len(classes))
    args = _args(tmp_path / "run", bf16=True, max_steps=4, per_device_train_batch_size=5, eval_strategy="steps",
                 eval_steps=2)  # created first, like the recipe's parsed config
    vision.fit_linear_probe(backbone, data["train"], args, vision.VisionModelArguments(probe_epochs=2))
    model = vision.prepare_for_method(backbone, vision.VisionModelArguments(method="lora", lora_r=4))
    trainer = vision.build_trainer(vision.ImageClassifier(model), args, data["train"], data["val"])
    trainer.train()
    assert trainer.accelerator.mixed_precision == "bf16"
    evals = [h for h in trainer.state.log_history if "eval_macro_f1" in h]
    assert evals and all(0 <= h["eval_macro_f1"] <= 1 for h in evals)

    merged = vision.unwrap(trainer.model)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the rest of the pipeline under bf16 autocast
        feats, _ = vision.extract_features(merged, data["test"])
        metrics = vision.evaluate_classifier(merged, data["test"], classes)
        where = vision.localization_score(merged, data["test"], classes)
    assert feats.dtype == torch.float32 and torch.isfinite(feats).all()
    assert 0 <= metrics["macro_f1"] <= 1 and metrics["inference_img_per_s"] > 0
    assert where["gradcam_images"] >= 0


def test_inference_with_bf16_weights_returns_fp32(tmp_path, prepare_data):
    data, classes = _tiny_data(tmp_path, prepare_data)
    backbone, _ = vision.load_backbone(vision.TINY_VISION_ALIAS, len(classes))
    model = copy.deepcopy(backbone).to(torch.bfloat16)
    feats, _ = vision.extract_features(model, data["test"], tmp_path / "cache")
    probs, _ = vision.predict(model, data["test"])
    heat, logits = vision.GradCAM(model)(torch.stack([data["test"][i]["pixel_values"] for i in range(2)]))
    assert feats.dtype == torch.float32 and torch.isfinite(feats).all()
    assert probs.dtype == np.float32 and np.allclose(probs.sum(1), 1, atol=1e-3)
    assert heat.dtype == logits.dtype == torch.float32 and heat.shape == (2, 32, 32)
    fp32 = vision.predict(backbone, data["test"])[0]
    assert (probs.argmax(1) == fp32.argmax(1)).mean() >= 0.5  # bf16 rounding, same model
    where = vision.localization_score(model, data["test"], classes)
    assert where["gradcam_layer"] == backbone.feature_info[-1]["module"]


def test_inference_helpers_run_outside_inference_mode(tmp_path, prepare_data):
    """``predict`` / ``extract_features`` move the model to the GPU when there is one; inside
    ``torch.inference_mode()`` that move turns every weight into an inference tensor, and the next training step or
    Grad-CAM fails ("Inference tensors cannot be saved for backward", seen on an H200). A CPU has no move to make,
    so the mode the model runs in is what is checked."""
    data, classes = _tiny_data(tmp_path, prepare_data)
    backbone, _ = vision.load_backbone(vision.TINY_VISION_ALIAS, len(classes))
    seen = []
    first_conv = next(m for m in backbone.modules() if isinstance(m, nn.Conv2d))
    first_conv.register_forward_pre_hook(lambda *_: seen.append(torch.is_inference_mode_enabled()))
    vision.extract_features(backbone, data["test"])
    vision.predict(backbone, data["test"])
    assert seen and not any(seen)
    assert not any(p.is_inference() for p in backbone.parameters())


def test_channels_last_model_saves_and_reloads_through_the_trainer(tmp_path, prepare_data):
    """On a GPU the vision trainer keeps conv weights channels-last; safetensors refuses such (non-contiguous)
    tensors, and the first checkpoint failed on an H200. The state dict must come out contiguous and load back."""
    from transformers import Trainer

    from common.vision.train import to_channels_last

    backbone, _ = vision.load_backbone(vision.TINY_VISION_ALIAS, 5)
    model = to_channels_last(vision.ImageClassifier(backbone))
    assert any(not p.is_contiguous() for p in model.parameters())  # what the GPU path trains with
    Trainer(model=model, args=_args(tmp_path / "run")).save_model(str(tmp_path / "saved"))
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "saved" / "model.safetensors"))
    fresh = vision.ImageClassifier(vision.load_backbone(vision.TINY_VISION_ALIAS, 5)[0])
    fresh.load_state_dict(saved)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


class _SlowFirstCall(nn.Module):
    """A classifier whose first forward pass costs 0.5 s (one-time setup), the following ones nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 1:
            time.sleep(0.5)
        return self.fc(x.mean(dim=(2, 3)))


def test_inference_throughput_excludes_the_warm_up_batch():
    images = [{"pixel_values": torch.randn(3, 8, 8)} for _ in range(8)]
    model = _SlowFirstCall()
    probs, speed = vision.predict(model, images, batch_size=4)
    assert probs.shape == (8, 2) and model.calls == 1 + 2  # one warm-up batch, then every batch timed
    assert speed > 100  # 8 images would take > 0.5 s (< 16 img/s) if the first, slow call were timed
    assert vision.predict(_SlowFirstCall(), images, batch_size=4, warmup=0)[1] < 16  # what warm-up removes


def test_evaluate_classifier_reports_throughput_only_when_asked(tmp_path, prepare_data):
    data, classes = _tiny_data(tmp_path, prepare_data)
    backbone, _ = vision.load_backbone(vision.TINY_VISION_ALIAS, len(classes))
    timed = vision.evaluate_classifier(backbone, data["test"], classes)
    untimed = vision.evaluate_classifier(backbone, data["test"], classes, throughput=False)
    assert timed["inference_img_per_s"] > 0 and "inference_img_per_s" not in untimed
    assert timed["confusion_matrix"] == untimed["confusion_matrix"]


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


def test_save_and_load_classifier_round_trip(tmp_path):
    backbone, norm = vision.load_backbone(vision.TINY_VISION_ALIAS, 3)
    vision.save_classifier(backbone, tmp_path / "m", ["x", "y", "z"], norm, 48)
    model, cfg = vision.load_classifier(tmp_path / "m")
    x = torch.randn(2, 3, 48, 48)
    torch.testing.assert_close(model(x), backbone.eval()(x))
    assert cfg["label_names"] == ["x", "y", "z"] and cfg["pretrained_cfg"]["input_size"] == [3, 48, 48]
    again, _ = vision.load_backbone(str(tmp_path / "m"), 3)  # a saved run is itself a model_name_or_path
    torch.testing.assert_close(again.eval()(x), model(x))
