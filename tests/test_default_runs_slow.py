"""The full default run of every recipe without a slow test of its own (`make test-slow`), and the check that keeps
``make test-slow`` complete.

A recipe's own slow test (``DEDICATED``) runs its default ``config.yaml`` on the real embedded model and asserts that
recipe's targets. Every other ``usecase-*`` folder -- a new one, before its own slow test is written -- is run here,
discovered from the folders, with the checks every recipe shares: the default run exits 0, writes a valid report whose
primary metric on the held-out test split beats the base model, holds the floors of its ``ci.yaml``, and its
``predict.py`` / ``chat.py`` answers from the trained folder. The one fast test here (run by ``make test``) checks
``DEDICATED`` against the folders and the test files, so no recipe is left out of ``make test-slow`` silently and no
recipe is named for a slow test that does not exist.
"""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from common.report import validate_report

REPO = Path(__file__).resolve().parents[1]
#: The recipes whose slow test is written for them (their own targets); the rest are run by the generic test below.
DEDICATED = {
    "usecase-chatbot": "test_chatbot_slow.py",
    "usecase-legal": "test_legal_slow.py",
    "usecase-medical": "test_medical_slow.py",
    "usecase-car-damage": "test_car_damage_slow.py",
    "usecase-vision-defects": "test_vision_recipe.py",
}
USECASES = sorted(p for p in REPO.glob("usecase-*") if p.is_dir())
GENERIC = [p for p in USECASES if p.name not in DEDICATED]


def slow_tests(path: Path) -> list[str]:
    """Names of the test functions in ``path`` marked ``@pytest.mark.slow``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test")
            and any(ast.unparse(d) == "pytest.mark.slow" for d in node.decorator_list)]


def test_every_recipe_has_a_full_run_test():
    for folder, test_file in DEDICATED.items():
        path = REPO / "tests" / test_file
        assert (REPO / folder).is_dir(), f"DEDICATED names {folder}, which is not a use case: remove it"
        assert path.is_file() and slow_tests(path), f"{folder}: {test_file} holds no test marked slow"
        assert folder in path.read_text(encoding="utf-8"), f"{test_file} never names {folder}"
    assert {p.name for p in USECASES} == set(DEDICATED) | {p.name for p in GENERIC}


def lookup(report: dict, dotted: str):
    value = report
    for key in dotted.split("."):
        value = value[key]
    return value


@pytest.mark.slow
@pytest.mark.parametrize("folder", GENERIC, ids=[p.name for p in GENERIC])
def test_default_run_beats_the_base_model(folder, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, folder / "train.py", "--output_dir", run], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=90 * 60)
    assert proc.returncode == 0, f"{folder.name} default run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    report = json.loads((run / "report.json").read_text())
    validate_report(report)
    primary = report["primary_metric"]
    before, after = report["metrics"]["before"][primary], report["metrics"]["after"][primary]
    print(f"{folder.name}: {primary} {before:.3f} -> {after:.3f}; train {report['train']['seconds']:.0f} s")
    assert after > before, f"{folder.name}: {primary} {before:.3f} -> {after:.3f} (no gain over the base model)"
    tier = yaml.safe_load((folder / "ci.yaml").read_text())
    for key, floor in (tier.get("floors") or {}).items():
        assert lookup(report, key) >= floor, f"{key} = {lookup(report, key)} < {floor} (ci.yaml floors)"
    predictor = next(folder / n for n in ("predict.py", "chat.py") if (folder / n).exists())
    out = subprocess.run([sys.executable, predictor, "--model_dir", run, "--examples", "2"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip(), out.stderr[-3000:]
