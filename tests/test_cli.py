"""The `cookbook` command: scaffolding a use case and printing a results table from a report."""

import json

from common import cli


def test_new_copies_a_usecase_and_renames_references(tmp_path, monkeypatch, capsys):
    src = tmp_path / "usecase-chatbot"
    (src / "data" / "processed").mkdir(parents=True)
    (src / "train.py").write_text('CONFIG = "usecase-chatbot/config.yaml"\n')
    (src / "data" / "processed" / "train.jsonl").write_text("{}\n")
    monkeypatch.setattr(cli, "REPO", tmp_path)
    assert cli.main(["new", "invoices"]) == 0
    dst = tmp_path / "usecase-invoices"
    assert (dst / "train.py").read_text() == 'CONFIG = "usecase-invoices/config.yaml"\n'
    assert not (dst / "data" / "processed").exists()  # generated data is not copied
    assert cli.main(["new", "invoices"]) == 1  # never overwrites
    assert "already exists" in capsys.readouterr().err


def test_results_prints_before_after_from_report(tmp_path, capsys):
    report = {"model": "m", "method": "SFT + LoRA", "hardware": "cpu", "primary_metric": "acc",
              "metrics": {"before": {"acc": 0.1}, "after": {"acc": 0.7, "retention": 0.95}},
              "train": {"seconds": 61.0, "throughput": {"value": 70.0, "unit": "tokens/s"}, "peak_memory_mb": 900}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert cli.main(["results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| **acc** | 0.100 | 0.700 |" in out and "| retention | | 0.950 |" in out and "| time | 61 s |" in out
