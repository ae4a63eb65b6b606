"""The real-model CI tier of every use case: the embedded pretrained model, a reduced but real run, a real gain.

Each ``usecase-*`` folder declares its tier in ``ci.yaml``::

    config: config.ci.yaml      # the reduced run (same train.py, same code path as config.yaml)
    max_minutes: 5              # wall-clock budget of the whole run on 2 CPU cores
    min_gain: 0.2               # primary metric, fine-tuned minus base model, on the held-out test split
    floors:                     # optional: other report values that must hold after the run
      metrics.after.general_retention_other: 0.6
    min_gains:                  # optional: other metrics that must gain at least this much over the base model
      severity_macro_f1: 0.02
    robustness: true            # optional (vision): the report's corruption table must be written and sane

``make test-ci`` (and ``.ci/run``) runs this file; ``make test`` does not (``-m "not ci"``). Every ``usecase-*``
folder is a case here: one without ``ci.yaml`` fails (and so does the contract test in ``make test``), so a new
recipe cannot skip its tier. CONTRIBUTING.md explains the keys.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
USECASES = sorted(p for p in REPO.glob("usecase-*") if p.is_dir())


def lookup(report: dict, dotted: str):
    value = report
    for key in dotted.split("."):
        value = value[key]
    return value


@pytest.mark.ci
@pytest.mark.parametrize("folder", USECASES, ids=[p.name for p in USECASES])
def test_ci_tier_beats_the_base_model(folder, tmp_path):
    assert (folder / "ci.yaml").is_file(), f"{folder.name} has no ci.yaml: every recipe declares its CI tier"
    tier = yaml.safe_load((folder / "ci.yaml").read_text())
    run = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, folder / "train.py", "--config", folder / tier["config"],
                           "--output_dir", run], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=3 * 60 * tier["max_minutes"])
    minutes = (time.perf_counter() - start) / 60
    assert proc.returncode == 0, f"{folder.name} CI tier failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    report = json.loads((run / "report.json").read_text())
    primary = report["primary_metric"]
    before, after = report["metrics"]["before"][primary], report["metrics"]["after"][primary]
    print(f"{folder.name}: {primary} {before:.3f} -> {after:.3f} in {minutes:.1f} min on {report['hardware']}")
    assert after - before >= tier["min_gain"], f"{primary} gained {after - before:.3f} < {tier['min_gain']}"
    for key, floor in (tier.get("floors") or {}).items():
        assert lookup(report, key) >= floor, f"{key} = {lookup(report, key)} < {floor}"
    for key, gain in (tier.get("min_gains") or {}).items():
        b, a = report["metrics"]["before"][key], report["metrics"]["after"][key]
        assert a - b >= gain, f"{key} gained {a - b:.3f} ({b:.3f} -> {a:.3f}) < {gain}"
    if tier.get("robustness"):
        check_robustness(report["robustness"])
    assert minutes <= tier["max_minutes"], f"the CI tier took {minutes:.1f} min (budget {tier['max_minutes']})"


def check_robustness(robustness: dict) -> None:
    """The corruption report of a vision run is written and sane: both splits, every corruption, rates in [0, 1],
    each drop the clean figure minus the corrupted one, the worst named -- and not every corruption is harmless
    and fatal at once (a model that scores the same on every input, or a broken corruption)."""
    from common.vision.robustness import corruptions

    for split in ("validation", "test"):
        r = robustness[split]
        assert set(r["corrupted"]) == set(corruptions()), f"{split}: corruptions {sorted(r['corrupted'])}"
        for name, metrics in r["corrupted"].items():
            for key, value in metrics.items():
                assert 0.0 <= value <= 1.0, f"{split} {name} {key} = {value}"
                assert abs(r["drop"][name][key] - (r["clean"][key] - value)) < 1e-3
        for key, (worst, drop) in r["worst"].items():
            assert drop == max(d[key] for d in r["drop"].values()) and worst in r["corrupted"]
            assert any(d[key] > 0 for d in r["drop"].values()), f"{split}: no corruption changes {key} at all"
