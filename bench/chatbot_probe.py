"""Does the fine-tuned chatbot *know* when its docs do not answer a question? A linear probe on its hidden states.

    python bench/chatbot_probe.py --model_dir runs/chatbot

The question (as the model sees it, with the chat template) is run through the trained model once; each layer's
hidden states are averaged over the prompt's tokens, and a logistic regression per layer separates the answerable
training phrasings (``MODEL_DIR/data/train.jsonl``) from the training questions the docs do not answer
(``usecase-chatbot/data/unanswerable.yaml``, ``train``). The layer is the one with the lowest validation log-loss,
and the decision threshold the one that declines the most unanswerable validation questions while declining at most
``--max_false_abstention`` of the answerable ones -- the same budget the recipe's abstention gate is held to. Only
then is the test split scored, beside the run's own abstention gate (``MODEL_DIR/report.json``). The same
mechanism as the medical recipe's triage check (``usecase-medical/triage.py``; features from ``common.probe``).
A measurement, not part of the recipe. Writes ``runs/bench/chatbot_probe.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _rates(declined: list[bool], unanswerable: list[bool]) -> dict:
    pos = [d for d, u in zip(declined, unanswerable) if u]
    neg = [d for d, u in zip(declined, unanswerable) if not u]
    return {"abstention_rate": round(sum(pos) / len(pos), 4), "false_abstention_rate": round(sum(neg) / len(neg), 4),
            "declined_unanswerable": f"{sum(pos)} of {len(pos)}", "declined_answerable": f"{sum(neg)} of {len(neg)}"}


def main(argv: list[str] | None = None) -> dict:
    import numpy as np
    import yaml
    from trainers import _cpu, write_report

    from common.models import load_for_inference
    from common.probe import LinearProbe, fit_per_layer, prompt_features

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True, help="a folder that usecase-chatbot/train.py wrote")
    parser.add_argument("--max_false_abstention", type=float, default=0.05)
    parser.add_argument("--c", type=float, default=1.0, help="inverse L2 strength of the logistic regression")
    parser.add_argument("--out", default="runs/bench/chatbot_probe.json")
    args = parser.parse_args(argv)

    data = Path(args.model_dir) / "data"
    system = _read(data / "train.jsonl")[0]["messages"][0]["content"]
    unanswerable = yaml.safe_load((REPO / "usecase-chatbot" / "data" / "unanswerable.yaml").read_text())

    def prompt(question: str) -> list[dict]:
        return [{"role": "system", "content": system}, {"role": "user", "content": question}]

    def questions(rows: list[dict]) -> list[str]:
        return [r["messages"][1]["content"] for r in rows]

    splits = {"train": (questions(_read(data / "train.jsonl")), list(unanswerable["train"])),
              "valid": (questions(_read(data / "valid.jsonl")), questions(_read(data / "decline_valid.jsonl"))),
              "test": (questions(_read(data / "test.jsonl")), questions(_read(data / "decline_test.jsonl")))}
    model, tokenizer, _ = load_for_inference(args.model_dir)
    x, y = {}, {}
    for name, (answerable, declines) in splits.items():
        x[name] = prompt_features(model, tokenizer, [prompt(q) for q in answerable + declines])
        y[name] = np.array([False] * len(answerable) + [True] * len(declines))
        print(f"{name}: {len(answerable)} answerable, {len(declines)} unanswerable", flush=True)

    layer, bias, weight, _, losses = fit_per_layer(x["train"], y["train"].tolist(), x["valid"], y["valid"].tolist(),
                                                   c=args.c, balanced=True)
    probe = LinearProbe(layer, weight, bias)
    p = {name: np.array(probe.predict(x[name][layer])) for name in splits}

    # threshold on validation only: the most unanswerable questions declined within the false-abstention budget
    answerable_valid = np.sort(p["valid"][~y["valid"]])[::-1]
    allowed = int(args.max_false_abstention * len(answerable_valid))  # how many answerable ones may be declined
    threshold = float(answerable_valid[allowed]) + 1e-6 if allowed < len(answerable_valid) else 0.0
    probe_says = {name: (p[name] >= threshold).tolist() for name in splits}

    report = {"cpu": _cpu(), "model_dir": args.model_dir, "layer": layer, "threshold": round(threshold, 4),
              "validation_log_loss_by_layer": [round(v, 4) for v in losses],
              "questions": {name: {"answerable": len(a), "unanswerable": len(d)} for name, (a, d) in splits.items()},
              "probe": {name: _rates(probe_says[name], y[name].tolist()) for name in ("valid", "test")}}
    run = json.loads((Path(args.model_dir) / "report.json").read_text())  # the run's own gate, for comparison
    report["gate"] = {split: {key: metrics["after"].get(key) for key in ("abstention_rate", "false_abstention_rate")}
                      for split, metrics in (("valid", run.get("metrics_validation", {"after": {}})),
                                             ("test", run["metrics"]))}
    report["summary"] = {key: report[key] for key in ("layer", "threshold", "probe", "gate")}
    return write_report(report, args.out, "summary")


if __name__ == "__main__":
    main()
