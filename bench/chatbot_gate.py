"""How the chatbot's abstention gate re-draws answers: number of sampled candidates, compared on validation.

    python bench/chatbot_gate.py --model_dir runs/chatbot                  # ~3 min on 2 cores
    python bench/chatbot_gate.py --model_dir runs/chatbot --samples 0 4 8 16
    python bench/chatbot_gate.py --model_dir runs/chatbot --samples 8 --confidence min sum mean

On the validation questions a chatbot run was trained with (``MODEL_DIR/data/valid.jsonl``, the answerable ones,
and ``decline_valid.jsonl``, the ones the docs do not answer; the test split is not read), the trained model
answers greedily, and the gate is fixed and applied exactly as train.py does it (``scoring.redraw`` ->
``scoring.choose_gate`` -> ``scoring.apply_gate``) for each number of re-drawn candidates (0: an answer naming
what the docs never use is declined at once) and each measure of how sure the model was of its greedy answer
(``--confidence``: the log-probability of its least likely token, of the whole answer -- the recipe's
``scoring.confidence`` -- or per token). Reports fact accuracy, abstention and false abstention on validation, the
threshold chosen, the re-drawn answers kept, and the seconds spent re-drawing. Writes
``runs/bench/chatbot_gate.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> dict:
    from trainers import _cpu, write_report

    from common.evaluation import generate_chat_with_logprobs
    from common.models import load_for_inference
    from common.paths import load_sibling

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True, help="a folder that usecase-chatbot/train.py wrote")
    parser.add_argument("--samples", type=int, nargs="+", default=[0, 4, 8])
    parser.add_argument("--confidence", nargs="+", choices=["min", "sum", "mean"], default=["sum"],
                        help="how sure the model was: least likely token, whole answer (the recipe's), per token")
    parser.add_argument("--max_false_abstention", type=float, default=0.05)
    parser.add_argument("--out", default="runs/bench/chatbot_gate.json")
    args = parser.parse_args(argv)

    scoring = load_sibling(REPO / "usecase-chatbot" / "train.py", "scoring")
    # from the answer tokens' log-probabilities; "sum" is the recipe's own scoring.confidence
    measures = {"min": lambda lp: min(lp) if lp else -math.inf, "sum": scoring.confidence,
                "mean": lambda lp: sum(lp) / len(lp) if lp else -math.inf}
    data = Path(args.model_dir) / "data"
    splits = {key: [json.loads(line) for line in (data / f"{key}.jsonl").read_text().splitlines() if line.strip()]
              for key in ("valid", "decline_valid")}
    model, tokenizer, settings = load_for_inference(args.model_dir)
    n_tokens, docs = settings["max_new_tokens"], (REPO / "usecase-chatbot" / "data" / "help_center.md").read_text()
    answers, logprobs = {}, {}
    for key, rows in splits.items():
        answers[key], logprobs[key] = generate_chat_with_logprobs(model, tokenizer, [r["messages"][:-1] for r in rows],
                                                                  n_tokens, 48, key)
    result = {"valid": {}, "answers": answers, "logprobs": logprobs}
    decline = splits["decline_valid"][0]["messages"][-1]["content"]
    report: dict = {"cpu": _cpu(), "model_dir": args.model_dir, "questions": {k: len(v) for k, v in splits.items()},
                    "settings": {}}
    for k in args.samples:
        gate = scoring.gate_settings(docs, decline, redraw_samples=k)
        start = time.perf_counter()
        result["redrawn"] = {key: scoring.redraw(model, tokenizer, [r["messages"][:-1] for r in splits[key]],
                                                 answers[key], gate, n_tokens, 48) for key in splits}
        seconds = time.perf_counter() - start
        for measure in args.confidence:
            scoring.confidence = measures[measure]  # what choose_gate and gate_rule look up, in this process only
            chosen = scoring.choose_gate(result, splits, gate, args.max_false_abstention)
            gated = scoring.apply_gate(result, splits, chosen)
            scoring.confidence = measures["sum"]
            valid, name = gated["valid"], f"samples={k}" + (f" confidence={measure}" if len(args.confidence) > 1 else "")
            report["settings"][name] = {
                "fact_accuracy": round(valid["fact_accuracy"], 4), "abstention_rate": round(valid["abstention_rate"], 4),
                "false_abstention_rate": round(valid["false_abstention_rate"], 4), "threshold": chosen["threshold"],
                "redrawn_kept": gated["redrawn_kept"], "redraw_seconds": round(seconds, 1)}
            print(name, report["settings"][name], flush=True)
    report["without_gate"] = scoring.split_metrics(answers, splits, "valid")
    return write_report(report, args.out, "settings")


if __name__ == "__main__":
    main()
