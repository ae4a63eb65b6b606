"""The main job, for real: the default legal config on the embedded SmolLM2-135M-Instruct (~28 min on 2 cores).

Asserts, on held-out clauses (test templates and party names training never shows), that the fine-tuned model
keeps far more key facts than the base model (with the fact check, and greedy alone), invents facts in few
summaries, gains ROUGE-L, trains within the issue's 15-minute budget, merges faithfully, and that predict.py
summarizes a contract from the trained folder as JSON. The floors sit below the committed run's figures
(usecase-legal/results/report.json: test fact recall 72.7% -> 90.3%, greedy 61.2% -> 71.4%, style shift
68.5% -> 95.5%, validation 64.2% -> 94.6%, ROUGE-L +15.6 points, invented facts in 0% of test summaries) with a
margin for run-to-run noise; the README reports the issue's targets (90% / 85% / 5% / +15) against that run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_default_legal_run_meets_targets(tmp_path):
    run = tmp_path / "legal"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "usecase-legal/train.py", "--output_dir", str(run)], cwd=REPO, env=env,
                   check=True, timeout=3600)
    report = json.loads((run / "report.json").read_text())
    before, after = report["metrics"]["before"], report["metrics"]["after"]
    print(json.dumps({"before": before, "after": after, "train": report["train"]}, indent=1))
    assert after["fact_recall"] >= 0.85 and after["fact_recall"] >= before["fact_recall"] + 0.1
    assert after["fact_recall_greedy"] >= before["fact_recall_greedy"] + 0.05
    assert after["fact_recall_style_shift"] >= 0.85 and after["invented_rate"] <= 0.08
    assert after["rougeL"] - before["rougeL"] >= 0.12 and after["summary_words"] < before["summary_words"]
    val = report["metrics_validation"]
    assert val["after"]["fact_recall"] - val["before"]["fact_recall"] >= 0.2
    assert report["train"]["seconds"] <= 15 * 60
    assert report["train"]["merge_max_abs_logit_diff"] < 1e-3

    contract = tmp_path / "contract.txt"
    contract.write_text("1. PAYMENT. The Customer shall pay the Supplier $4,800.00 within thirty (30) days.\n"
                        "2. GOVERNING LAW. This Agreement is governed by the laws of the State of Texas.\n")
    out = subprocess.run([sys.executable, "usecase-legal/predict.py", "--model_dir", str(run), "--input",
                          str(contract), "--json"], cwd=REPO, env=env, check=True, capture_output=True, text=True,
                         timeout=600).stdout
    items = json.loads(out)
    assert len(items) == 2 and "4,800" in items[0]["summary"] and "Texas" in items[1]["summary"]  # measured: both
