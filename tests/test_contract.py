"""The contract every use case keeps: discovered from the ``usecase-*`` folders, run end to end on tiny models.

A use-case folder must hold README.md, config.yaml, config.smoke.yaml, prepare_data.py, train.py, a
``predict.py`` or ``chat.py``, a committed ``results/report.json`` (its full default run) and ``ci.yaml`` (its
real-model CI tier, run by tests/test_ci_tier.py). A new folder whose full run is not committed yet says so in its
README (``common.scaffold.results_pending``): everything else is checked, and the checks of its committed report are
skipped, visibly, until it is. The test runs, as a user would (subprocesses from the repository root):

1. ``train.py --config config.smoke.yaml --output_dir RUN`` -> ``RUN/report.json`` obeys the report contract,
   ``RUN/REPORT.md`` and the plots exist;
2. ``predict.py|chat.py --model_dir RUN --examples 2`` -> exits 0 and prints something;
3. the same ``train.py`` command again -> refused with exit code 2 (a finished run is never trained over).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.report import validate_report
from common.scaffold import results_pending

REPO = Path(__file__).resolve().parents[1]
USECASES = sorted(p for p in REPO.glob("usecase-*") if p.is_dir())
REQUIRED = ("README.md", "config.yaml", "config.smoke.yaml", "prepare_data.py", "train.py", "ci.yaml")


def _run(args, timeout=600, root=REPO):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=root, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def test_usecases_are_discovered():
    assert {p.name for p in USECASES} >= {"usecase-chatbot", "usecase-vision-defects"}


@pytest.mark.parametrize("folder", USECASES, ids=[p.name for p in USECASES])
def test_usecase_declares_a_real_model_ci_tier(folder):
    """Every recipe has a CI tier: a reduced run of the embedded model within 5 minutes, with a real gain."""
    import yaml

    tier = yaml.safe_load((folder / "ci.yaml").read_text())
    assert (folder / tier["config"]).exists(), f"{folder.name}/ci.yaml names a missing config"
    assert 0 < tier["max_minutes"] <= 5, "a CI tier must fit in 5 minutes on 2 cores"
    assert tier["min_gain"] > 0, "a CI tier must assert a real gain over the base model"
    config = yaml.safe_load((folder / tier["config"]).read_text())
    assert "tiny-random" not in str(config.get("model_name_or_path", "")), "the CI tier uses the real model"
    if results_pending(folder):
        pytest.skip(f"{folder.name}: full run not committed yet, so its floors cannot be checked against it")
    committed = json.loads((folder / "results" / "report.json").read_text())
    for key in tier.get("floors") or {}:  # a misspelt floor would only fail in the CI tier, minutes later
        value = committed
        for part in key.split("."):
            assert isinstance(value, dict) and part in value, f"{folder.name}/ci.yaml floor {key}: no such report key"
            value = value[part]
        assert isinstance(value, (int, float)), f"{folder.name}/ci.yaml floor {key} is not a number in the report"
    for key, gain in (tier.get("min_gains") or {}).items():  # the same for the metrics that must gain
        assert gain > 0, f"{folder.name}/ci.yaml min_gains {key}: a gain must be positive"
        for side in ("before", "after"):
            assert isinstance(committed["metrics"][side].get(key), (int, float)), \
                f"{folder.name}/ci.yaml min_gains {key}: no such number in the report's metrics.{side}"


@pytest.mark.parametrize("folder", USECASES, ids=[p.name for p in USECASES])
def test_usecase_end_to_end(folder, tmp_path):
    check_usecase(folder, tmp_path)


def check_usecase(folder: Path, tmp_path: Path, root: Path = REPO) -> None:
    """The contract, for ``folder`` inside the repository ``root`` (a copy, for a folder made in a test)."""
    for name in REQUIRED:
        assert (folder / name).exists(), f"{folder.name} lacks {name}"
    assert (folder / "results" / "report.json").exists() or results_pending(folder), (
        f"{folder.name} lacks results/report.json (its full default run; CONTRIBUTING.md), and its README does not "
        "say it is not yet run")
    predictor = next((folder / n for n in ("predict.py", "chat.py") if (folder / n).exists()), None)
    assert predictor, f"{folder.name} lacks predict.py or chat.py"

    run = tmp_path / "run"
    _run([folder / "train.py", "--config", folder / "config.smoke.yaml", "--output_dir", run], root=root)
    report = json.loads((run / "report.json").read_text())
    validate_report(report)
    assert report["usecase"] == folder.name.removeprefix("usecase-"), "a report names its recipe by its folder"
    assert report["train"]["seconds"] > 0
    phases = {k: v for k, v in report["phases"].items() if isinstance(v, dict)}  # where the wall time went
    shares = sum(v["share"] for v in phases.values())  # each rounded to 3 decimals: allow 0.0005 per phase
    assert {"data", "training"} <= set(phases) and 0.5 < shares <= 1 + 0.0005 * len(phases) + 1e-9
    assert (run / "REPORT.md").exists() and (run / "before_after.png").exists()

    out = _run([predictor, "--model_dir", run, "--examples", "2"], root=root)
    assert out.stdout.strip(), f"{predictor.name} printed nothing"

    # A finished run is never trained over: the same command again stops at once, exit code 2, no traceback.
    written = (run / "report.json").read_bytes()
    again = subprocess.run([sys.executable, folder / "train.py", "--config", folder / "config.smoke.yaml",
                            "--output_dir", run], cwd=root, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert again.returncode == 2 and "already holds a finished run" in again.stderr, again.stderr[-2000:]
    assert "Traceback" not in again.stderr and (run / "report.json").read_bytes() == written
