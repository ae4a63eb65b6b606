"""A vision run is a function of its config: the same command gives the same weights in any process, and the
fine-tuning can keep BatchNorm on its running statistics (``freeze_norm_stats``).

torch seeds its default generator differently in each process, so every head or layer built before the Trainer
seeds (the classifier, the probe's linear head, the multi-task heads) used to differ from run to run; the CI
tiers then measured a different fine-tune each time. Here the process's random state is disturbed before each of
two runs of the same config: the saved weights must be equal tensor for tensor.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from common import vision
from common.paths import REPO_ROOT, load_sibling
from common.vision import multitask as mt

VISION, CAR = REPO_ROOT / "usecase-vision-defects", REPO_ROOT / "usecase-car-damage"


def _vision_data(tmp_path):
    gen = load_sibling(VISION / "prepare_data.py", "prepare_data")
    return gen.main(["--out", str(tmp_path / "data"), "--generation_image_size", "32", "--num_train_per_class", "4",
                     "--num_val_per_class", "2", "--num_test_per_class", "2"])


def _car_data(tmp_path):
    prep = load_sibling(CAR / "prepare_data.py", "prepare_data")
    costs = load_sibling(CAR / "costs.py", "costs")
    gen = prep.GenerationArguments(generation_image_size=32, num_train_per_combination=1,
                                   num_val_per_combination=1, num_test_per_combination=1)
    return prep.generate(tmp_path / "data", gen, costs.CostTable.load(CAR / "data" / "cost_table.csv"))


@pytest.mark.parametrize("folder, make_data", [(VISION, _vision_data), (CAR, _car_data)], ids=["defects", "car"])
def test_same_config_same_weights_whatever_the_process_random_state(folder, make_data, tmp_path):
    train = load_sibling(folder / "train.py", "train")
    data = make_data(tmp_path)
    runs = []
    for disturbance in (1, 2):
        torch.manual_seed(disturbance)  # what a fresh process does by itself
        out = tmp_path / f"run{disturbance}"
        train.main(["--config", str(folder / "config.smoke.yaml"), "--output_dir", str(out), "--data_dir", str(data)])
        runs.append(out)
    first, second = (load_file(str(r / "model.safetensors")) for r in runs)
    assert first.keys() == second.keys()
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, f"weights differ between two runs of one config: {different[:5]}"
    before = [{k: v for k, v in json.loads((r / "report.json").read_text())["metrics"]["before"].items()
               if not k.endswith("per_s")} for r in runs]  # inference speed is timed, the rest must be equal
    assert before[0] == before[1]


def _batchnorms(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("freeze", [True, False])
def test_frozen_norm_statistics_stay_put_while_scales_train(freeze):
    backbone, _ = vision.load_backbone(vision.TINY_VISION_ALIAS, 3)
    model = vision.ImageClassifier(backbone, freeze_norm_stats=freeze)
    norms = _batchnorms(model)
    assert norms
    stats = [n.running_mean.clone() for n in norms]
    scales = [n.weight.detach().clone() for n in norms]
    x, y = torch.randn(8, 3, 32, 32) * 3 + 1, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    model.eval()
    with torch.no_grad():
        eval_logits = model(x)["logits"]
    model.train()  # what the Trainer calls before every step
    out = model(x, y)
    out["loss"].backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()

    moved = [not torch.equal(s, n.running_mean) for s, n in zip(stats, norms)]
    assert all(not n.training for n in norms) == freeze
    assert not any(moved) if freeze else all(moved)
    # frozen: training starts from exactly the features the eval-mode probe saw
    assert torch.allclose(out["logits"], eval_logits, atol=1e-5) == freeze
    assert all(not torch.equal(s, n.weight) for s, n in zip(scales, norms))  # the scales train either way
    assert model.training and model.backbone.training  # the rest of the model is in training mode


def test_multitask_model_keeps_its_norm_statistics_too():
    backbone, _ = vision.load_backbone(vision.TINY_VISION_ALIAS, 0)
    tasks = [mt.Task("damage", classes=["none", "dent"])]
    model = mt.MultiTaskModel(backbone, tasks, freeze_norm_stats=True).train()
    assert all(not n.training for n in _batchnorms(model)) and model.heads.training
    assert all(n.training for n in _batchnorms(mt.MultiTaskModel(backbone, tasks).train()))
