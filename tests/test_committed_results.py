"""What is committed must match what was measured: README results tables are generated from the committed
``results/report.json`` of their recipe, and no committed report holds a path of the machine that wrote it."""

import json
from pathlib import Path

import pytest

from common.cli import readme_tables
from common.paths import machine_paths

REPO = Path(__file__).resolve().parents[1]
REPORTS = sorted(REPO.glob("usecase-*/results/**/*.json")) + sorted(REPO.glob("usecase-*/results/**/*.jsonl"))


def test_every_usecase_readme_shows_a_generated_results_table():
    for readme in sorted(REPO.glob("usecase-*/README.md")):
        assert f"results-table: generated from {readme.parent.name}/results/report.json" in readme.read_text(), (
            f"{readme.relative_to(REPO)} has no generated results table (see `cookbook readme-tables`)")
    assert readme_tables(check=True) == [], "README results tables differ from results/report.json: run " \
                                             "`cookbook readme-tables` and commit"


@pytest.mark.parametrize("path", REPORTS, ids=[str(p.relative_to(REPO)) for p in REPORTS])
def test_committed_reports_hold_no_machine_paths(path):
    text = path.read_text()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" else [
        json.loads(text)]
    absolute = machine_paths(rows)
    assert not absolute, f"{path.relative_to(REPO)} holds machine paths: {absolute[:3]}"
