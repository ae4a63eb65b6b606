"""The main job, for real: the default legal config on the embedded SmolLM2-135M-Instruct (~15 min on 2 cores).

Asserts, on held-out clauses (test templates and party names training never shows), that the fine-tuned model
keeps far more key facts than the base model, invents facts in fewer summaries, gains ROUGE-L, trains within the
issue's 15-minute budget, merges faithfully, and that predict.py summarizes a contract from the trained folder as
JSON. The floors sit below the committed run's figures (usecase-legal/results/report.json: test fact recall
61.2% -> 71.4%, style shift 43.4% -> 84.8%, validation 54.4% -> 84.2%, ROUGE-L +13.1 points, invented facts in
12.8% of test summaries, 4.5% of style-shift ones) with a margin for run-to-run noise; the issue's targets
themselves (90% / 85% / 5% / +15) are not met and are reported in the README.
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
    assert after["fact_recall"] >= 0.65 and after["fact_recall"] >= before["fact_recall"] + 0.05
    assert after["fact_recall_style_shift"] - before["fact_recall_style_shift"] >= 0.25
    assert after["invented_rate"] <= 0.3
    assert after["rougeL"] - before["rougeL"] >= 0.08 and after["summary_words"] < before["summary_words"]
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
