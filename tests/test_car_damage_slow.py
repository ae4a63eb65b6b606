"""The full default run of the car-damage recipe (`make test-slow`): the embedded EfficientNet-Lite0, config.yaml.

Proves the main job: fine-tuning the backbone with the multi-task loss beats the linear-probe baseline on the
held-out test split, on the damage type, on severity and on the cost estimate; and the report holds every
figure the README quotes. Results of this run are committed in usecase-car-damage/results/.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_default_run_beats_the_linear_probe(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "usecase-car-damage/train.py", "--output_dir", run], cwd=REPO,
                          capture_output=True, text=True, timeout=60 * 60,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr[-5000:]
    report = json.loads((run / "report.json").read_text())
    before, after = report["metrics"]["before"], report["metrics"]["after"]
    for key in ("damage_macro_f1", "severity_accuracy", "cost_within_20pct"):
        assert after[key] > before[key], f"{key}: {before[key]:.3f} -> {after[key]:.3f}"
    assert after["damage_macro_f1"] >= 0.85 and after["severity_accuracy"] >= 0.75
    assert after["cost_within_20pct"] >= 0.6 and after["cost_method"] in ("table", "regression")
    assert {"cost_table_within_20pct", "cost_regression_within_20pct", "cost_range_coverage"} <= set(after)
    for png in ("confusion_damage.png", "confusion_severity.png", "confusion_part.png", "cost_calibration.png"):
        assert (run / png).is_file()
    out = subprocess.run([sys.executable, "usecase-car-damage/predict.py", "--model_dir", run, "--examples", "3",
                          "--json"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 3
