"""The `cookbook` command: scaffolding a use case and printing a results table from a report."""

import json

import pytest

from common import cli
from common.scaffold import results_pending


def test_new_copies_a_usecase_and_renames_references(tmp_path, monkeypatch, capsys):
    src = tmp_path / "usecase-chatbot"
    (src / "data" / "processed").mkdir(parents=True)
    (src / "results").mkdir()
    (src / "train.py").write_text('CONFIG = "usecase-chatbot/config.yaml"\n')
    (src / "chat.py").write_text("")
    (src / "README.md").write_text("# The chatbot's long tutorial\n")
    (src / "results" / "report.json").write_text("{}\n")
    (src / "data" / "processed" / "train.jsonl").write_text("{}\n")
    monkeypatch.setattr(cli, "REPO", tmp_path)
    assert cli.main(["new", "invoices", "--from", "chatbot"]) == 0
    dst = tmp_path / "usecase-invoices"
    assert (dst / "train.py").read_text() == 'CONFIG = "usecase-invoices/config.yaml"\n'
    assert not (dst / "data" / "processed").exists()  # generated data is not copied
    assert not (dst / "results").exists()  # nor the source's measured results
    readme = (dst / "README.md").read_text()  # nor its tutorial: a short one to write, not yet run
    assert "long tutorial" not in readme and "python usecase-invoices/chat.py --model_dir" in readme
    assert results_pending(dst) and "{{" not in readme
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["new", "invoices", "--from", "chatbot"])  # never overwrites
    assert exit_info.value.code == 2 and "already exists" in capsys.readouterr().err


def test_results_prints_before_after_from_report(tmp_path, capsys):
    report = {"model": "m", "method": "SFT + LoRA", "hardware": "cpu", "primary_metric": "acc",
              "metrics": {"before": {"acc": 0.1}, "after": {"acc": 0.7, "retention": 0.95}},
              "train": {"seconds": 61.0, "throughput": {"value": 70.0, "unit": "tokens/s"}, "peak_memory_mb": 900}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert cli.main(["results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| **acc** | test | 0.1 | 0.7 |" in out and "| retention | test | — | 0.95 |" in out
    assert "| training time | 61 s |" in out


def test_readme_tables_regenerate_and_check(tmp_path, monkeypatch):
    from common.report import README_TABLE_END, README_TABLE_START

    folder = tmp_path / "usecase-x"
    (folder / "results").mkdir(parents=True)
    report = {"model": "m", "method": "LoRA", "hardware": "cpu", "primary_metric": "acc", "command": "python t.py",
              "metrics": {"before": {"acc": 0.25}, "after": {"acc": 0.75}},
              "train": {"seconds": 5.0, "throughput": {"value": 1.0, "unit": "img/s"}, "peak_memory_mb": 10}}
    (folder / "results" / "report.json").write_text(json.dumps(report))
    start = README_TABLE_START.format("usecase-x/results/report.json")
    (folder / "README.md").write_text(f"# X\n\n{start}\n| stale | 1 |\n{README_TABLE_END}\n\nMore text.\n")
    monkeypatch.setattr(cli, "REPO", tmp_path)
    assert cli.main(["readme-tables", "--check"]) == 1  # the hand-typed table differs from the report
    assert cli.main(["readme-tables"]) == 0
    text = (folder / "README.md").read_text()
    assert "| **acc** | test | 0.25 | 0.75 |" in text and "stale" not in text and text.endswith("More text.\n")
    assert cli.main(["readme-tables", "--check"]) == 0
