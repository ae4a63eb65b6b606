"""What is committed must match what was measured: README results tables (each recipe's, and the top README's
use-case table) are generated from the committed ``results/report.json`` of their recipe, and no committed report
holds a path of the machine that wrote it."""

import json
from pathlib import Path

import pytest

from common.cli import readme_tables
from common.paths import machine_paths
from common.readme_tables import top_table_span, usecase_table
from common.scaffold import results_pending

REPO = Path(__file__).resolve().parents[1]
REPORTS = sorted(REPO.glob("usecase-*/results/**/*.json")) + sorted(REPO.glob("usecase-*/results/**/*.jsonl"))


def test_every_usecase_readme_shows_a_generated_results_table():
    pending = []
    for readme in sorted(REPO.glob("usecase-*/README.md")):
        if results_pending(readme.parent):  # a new folder, its full run not committed yet (CONTRIBUTING.md)
            pending.append(readme.parent.name)
            continue
        assert f"results-table: generated from {readme.parent.name}/results/report.json" in readme.read_text(), (
            f"{readme.relative_to(REPO)} has no generated results table (see `cookbook readme-tables`)")
    assert readme_tables(check=True) == [], "README results tables differ from results/report.json: run " \
                                             "`cookbook readme-tables` and commit"
    if pending:
        pytest.skip(f"not yet run, no results table to check: {', '.join(pending)}")


def test_top_readme_usecase_table_equals_the_committed_reports():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    span = top_table_span(text)
    assert span is not None, "README.md has no generated use-case table (see `cookbook readme-tables`)"
    assert text[span[0]:span[1]] == "\n" + usecase_table(REPO) + "\n", (
        "README.md's use-case table differs from usecase-*/results/report.json: run `cookbook readme-tables` and commit")
    for report in sorted(REPO.glob("usecase-*/results/report.json")):
        assert f"[`{report.parents[1].name}/`]" in text[span[0]:span[1]], f"{report.parents[1].name} has no row"


@pytest.mark.parametrize("path", REPORTS, ids=[str(p.relative_to(REPO)) for p in REPORTS])
def test_committed_reports_hold_no_machine_paths(path):
    text = path.read_text()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" else [
        json.loads(text)]
    absolute = machine_paths(rows)
    assert not absolute, f"{path.relative_to(REPO)} holds machine paths: {absolute[:3]}"


def test_top_table_is_regenerated_from_reports_and_checked(tmp_path):
    from common.readme_tables import TOP_TABLE_END, TOP_TABLE_START, update_top_readme

    folder = tmp_path / "usecase-x"
    (folder / "results").mkdir(parents=True)
    (folder / "README.md").write_text("# X: a task\n")
    report = {"model": "m", "method": "SFT (LoRA), then DPO (LoRA)", "hardware": "cpu: some CPU, fp32",
              "primary_metric": "acc", "metrics": {"before": {"acc": 0.25}, "after": {"acc": 0.75}},
              "phases": {"total_seconds": 600.0},
              "train": {"seconds": 300.0, "throughput": {"value": 1.0, "unit": "img/s"}, "peak_memory_mb": 2048}}
    (folder / "results" / "report.json").write_text(json.dumps(report))
    (tmp_path / "README.md").write_text(f"# Top\n\n{TOP_TABLE_START}\n| stale |\n{TOP_TABLE_END}\n\nMore.\n")
    assert update_top_readme(tmp_path, check=True) == ["README.md"]  # a hand-typed table differs from the report
    assert update_top_readme(tmp_path) == ["README.md"]
    text = (tmp_path / "README.md").read_text()
    assert ("| [`usecase-x/`](usecase-x/README.md) | X: a task | SFT, then DPO | `m` | acc 0.25 → **0.75** | "
            "5.0 min | 10.0 min | 2.0 GiB |") in text
    assert "Measured on: x: some CPU, fp32." in text and "stale" not in text and text.endswith("More.\n")
    assert update_top_readme(tmp_path, check=True) == []
