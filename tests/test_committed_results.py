"""What is committed must match what was measured: README results tables are generated from the committed
``results/report.json`` of their recipe, and no committed report holds a path of the machine that wrote it."""

import json
from pathlib import Path

import pytest

from common.cli import readme_tables

REPO = Path(__file__).resolve().parents[1]
REPORTS = sorted(REPO.glob("usecase-*/results/*.json")) + sorted(REPO.glob("usecase-*/results/*.jsonl"))


def test_every_usecase_readme_shows_a_generated_results_table():
    for readme in sorted(REPO.glob("usecase-*/README.md")):
        assert f"results-table: generated from {readme.parent.name}/results/report.json" in readme.read_text(), (
            f"{readme.relative_to(REPO)} has no generated results table (see `cookbook readme-tables`)")
    assert readme_tables(check=True) == [], "README results tables differ from results/report.json: run " \
                                             "`cookbook readme-tables` and commit"


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


@pytest.mark.parametrize("path", REPORTS, ids=[str(p.relative_to(REPO)) for p in REPORTS])
def test_committed_reports_hold_no_machine_paths(path):
    text = path.read_text()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" else [
        json.loads(text)]
    absolute = [s for row in rows for s in _strings(row) if s.startswith(("/", "~")) or ":\\" in s[:3]]
    assert not absolute, f"{path.relative_to(REPO)} holds machine paths: {absolute[:3]}"
