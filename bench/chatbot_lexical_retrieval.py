"""Can word overlap with the help center tell answerable questions from the others? Lexical retrieval, no model.

    python bench/chatbot_lexical_retrieval.py --model_dir runs/chatbot        # seconds

Retrieval is the usual other half of abstention: find the passage that answers the question, decline when none
does. Its simplest form needs no model: a question's *coverage* is the largest share of its content words
(``scoring.topic_words``: function words and "Brightboard" left out, crudely stemmed) found in one statement of
``help_center.md`` -- or, looser, anywhere in it. Low coverage means "the docs do not talk about this". Scored on
the held-out answerable phrasings and unanswerable questions the recipe evaluates (``MODEL_DIR/data``; any run of
``usecase-chatbot/train.py`` writes them): the separation (AUC: the chance that an unanswerable question covers less
than an answerable one) and, per threshold, how many of each it declines. The threshold is chosen on validation within
``--max_false_abstention`` of the answerable questions, as the recipe's gate is; the test split chooses nothing.
A measurement, not part of the recipe. Writes ``runs/bench/chatbot_lexical_retrieval.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _questions(path: Path) -> list[str]:
    return [json.loads(line)["messages"][1]["content"] for line in path.read_text().splitlines() if line.strip()]


def auc(answerable: list[float], unanswerable: list[float]) -> float:
    """P(an unanswerable question covers less than an answerable one); ties count half."""
    pairs = [(u < a) + 0.5 * (u == a) for u in unanswerable for a in answerable]
    return sum(pairs) / len(pairs)


def _rates(cov: dict[str, list[float]], split: str, threshold: float | None) -> dict:
    """Abstention and false abstention of ``split`` when questions covering less than ``threshold`` are declined."""
    def share(key: str) -> float:
        return round(sum(threshold is not None and c < threshold for c in cov[key]) / len(cov[key]), 4)
    return {"abstention_rate": share(f"decline_{split}"), "false_abstention_rate": share(split)}


def main(argv: list[str] | None = None) -> dict:
    from trainers import write_report

    from common.paths import load_sibling

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True, help="a folder that usecase-chatbot/train.py wrote")
    parser.add_argument("--max_false_abstention", type=float, default=0.05)
    parser.add_argument("--out", default="runs/bench/chatbot_lexical_retrieval.json")
    args = parser.parse_args(argv)

    scoring = load_sibling(REPO / "usecase-chatbot" / "train.py", "scoring")
    docs = (REPO / "usecase-chatbot" / "data" / "help_center.md").read_text()
    statements = [scoring.topic_words(s) for s in re.findall(r"\{#[\w-]+\}\s*(.+)", docs)]
    everything = set().union(*statements)

    def coverage(question: str, passages: list[set[str]]) -> float:
        words = scoring.topic_words(question)
        return max(len(words & p) / len(words) for p in passages) if words else 1.0

    data = Path(args.model_dir) / "data"
    questions = {key: _questions(data / f"{key}.jsonl") for key in ("valid", "decline_valid", "test", "decline_test")}
    report: dict = {"statements": len(statements), "questions": {k: len(v) for k, v in questions.items()}}
    for name, passages in (("best_statement", statements), ("whole_help_center", [everything])):
        cov = {key: [coverage(q, passages) for q in qs] for key, qs in questions.items()}
        budget = math.floor(args.max_false_abstention * len(cov["valid"]))
        # declining below t: the largest t (most unanswerable declined) within the budget on validation, if any
        within = [t for t in sorted(set(cov["valid"])) if sum(c < t for c in cov["valid"]) <= budget]
        t = within[-1] if within else None

        report[name] = {
            "auc": {s: round(auc(cov[s], cov[f"decline_{s}"]), 3) for s in ("valid", "test")},
            "answerable_sharing_no_word": {s: [q for q, c in zip(questions[s], cov[s]) if c == 0]
                                           for s in ("valid", "test")},
            "threshold": t, "valid": _rates(cov, "valid", t), "test": _rates(cov, "test", t),
            "by_threshold_valid": [{"below": round(x, 3), "answerable": sum(c < x for c in cov["valid"]),
                                    "unanswerable": sum(c < x for c in cov["decline_valid"])}
                                   for x in sorted(set(cov["valid"]))[1:9]]}
    report["summary"] = {k: {m: report[k][m] for m in ("auc", "answerable_sharing_no_word", "threshold", "valid",
                                                        "test")} for k in ("best_statement", "whole_help_center")}
    return write_report(report, args.out, "summary")


if __name__ == "__main__":
    main()
