"""Slow tier (``make test-export``; outside CI: llama-cpp-python is compiled from source first): a real chatbot run,
converted to GGUF by llama.cpp's converter, loads in llama.cpp and answers the run's test questions as the merged
model does in transformers. f16: the same top-1 token at every prompt position, and the same answer text except
where greedy decoding meets a near-tie (two tokens closer than the two runtimes' logits differ: any change of
rounding may flip it). q8_0: the same fact accuracy within one question.

The run is the chatbot's CI tier (the embedded SmolLM2-135M-Instruct, ~5 min on 2 cores), trained here; set
``COOKBOOK_EXPORT_RUN=runs/chatbot`` to check an existing run instead. Figures: docs/benchmarks.md (GGUF).
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.evaluation import key_terms_accuracy
from common.gguf_export import converter_dir
from common.run_export import export_run

REPO = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                       reason="llama-cpp-python is not installed: make llama-cpp (builds it from source)"),
    pytest.mark.skipif(not (converter_dir() / "convert_hf_to_gguf.py").exists(),
                       reason="llama.cpp's converter is not fetched: make gguf-converter"),
]


@pytest.fixture(scope="module")
def chatbot_run(tmp_path_factory) -> Path:
    if os.environ.get("COOKBOOK_EXPORT_RUN"):
        return Path(os.environ["COOKBOOK_EXPORT_RUN"])
    run = tmp_path_factory.mktemp("chatbot") / "run"
    proc = subprocess.run([sys.executable, "usecase-chatbot/train.py", "--config", "usecase-chatbot/config.ci.yaml",
                           "--output_dir", str(run), "--export_merged", "true"], cwd=REPO, capture_output=True,
                          text=True, timeout=1800, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def _key_terms(run: Path, rows: list[int]) -> list[list[str]]:
    lines = (run / "data" / "test.jsonl").read_text().splitlines()
    return [json.loads(lines[i])["key_terms"] for i in rows]


def _check(run: Path, outtype: str, out: Path) -> dict:
    result = export_run(run, gguf=outtype, check=64, out_dir=out)
    check = result["check"]
    keys = _key_terms(run, check["rows"])
    for side in ("transformers", "llama_cpp"):
        check[f"fact_accuracy_{side}"] = key_terms_accuracy([a[side] for a in check["answers"]], keys)
    print(json.dumps({k: v for k, v in {**result, **check}.items() if k not in ("answers", "check")}, indent=1))
    assert check["same_prompt_tokenization"], "llama.cpp tokenizes the chat prompt differently"
    noise = 2 * check["prompt_logits"]["max_abs_diff"]  # how far two tokens' logits can move between the runtimes
    assert all(abs(m) <= noise for m in check["divergence_margins"]), (check["divergence_margins"], noise)
    return check


def test_f16_gguf_answers_the_test_questions_like_transformers(chatbot_run, tmp_path):
    check = _check(chatbot_run, "f16", tmp_path)
    assert check["prompt_logits"]["top1_agreement"] >= 0.999 and check["prompt_logits"]["max_abs_diff"] < 0.5
    differing = [a for a in check["answers"] if a["transformers"] != a["llama_cpp"]]
    assert check["same_text"] >= 0.9 * check["prompts"], differing


def test_q8_0_gguf_keeps_the_fact_accuracy(chatbot_run, tmp_path):
    check = _check(chatbot_run, "q8_0", tmp_path)
    margin = 1 / check["prompts"]  # one question
    assert abs(check["fact_accuracy_llama_cpp"] - check["fact_accuracy_transformers"]) <= margin + 1e-9
