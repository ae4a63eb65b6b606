"""How far does the fine-tuned chatbot's knowledge reach from the words it was trained on? Fact accuracy by phrasing.

    python bench/chatbot_phrasings.py --model_dir runs/chatbot          # ~2 min on 2 cores

Each of the 45 facts is asked in every phrasing ``questions.yaml`` holds for it: the 4 training ones, the first
validation phrasing (close to the training wording), the second (written as freely as a new user would), and the
2 test phrasings. The model's greedy answers (the run's own, before any abstention gate) are scored with the
recipe's rule (every key term present). Beside each group: the share of its questions that use a content word
neither the docs nor the training phrasings use. A model that learned the facts answers every group alike; one
that learned question strings answers the training wording and little else. Writes
``runs/bench/chatbot_phrasings.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> dict:
    from trainers import _cpu, write_report

    from common.evaluation import generate_chat, key_terms_score
    from common.models import load_trained_causal_lm
    from common.paths import load_sibling

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True, help="a folder that usecase-chatbot/train.py wrote")
    parser.add_argument("--out", default="runs/bench/chatbot_phrasings.json")
    args = parser.parse_args(argv)

    recipe = REPO / "usecase-chatbot"
    prepare = load_sibling(recipe / "train.py", "prepare_data")
    scoring = load_sibling(recipe / "train.py", "scoring")
    statements = prepare.read_statements(recipe / "data" / "help_center.md")
    questions = prepare.read_questions(recipe / "data" / "questions.yaml", statements)
    inference = json.loads((Path(args.model_dir) / "inference.json").read_text())
    known = scoring.topic_words((recipe / "data" / "help_center.md").read_text())
    for q in questions.values():
        for phrasing in q["train"]:
            known |= scoring.topic_words(phrasing)

    def listed(value) -> list[str]:
        return [value] if isinstance(value, str) else list(value)

    groups: dict[str, list[tuple[str, str]]] = {"train": [], "valid (first)": [], "valid (second)": [], "test": []}
    for fact_id, q in questions.items():
        valid = listed(q["valid"])
        groups["train"] += [(fact_id, p) for p in q["train"]]
        groups["valid (first)"] += [(fact_id, valid[0])]
        groups["valid (second)"] += [(fact_id, p) for p in valid[1:]]
        groups["test"] += [(fact_id, p) for p in q["test"]]
    model, tokenizer = load_trained_causal_lm(args.model_dir)
    system = [{"role": "system", "content": inference["system_prompt"]}]
    report: dict = {"cpu": _cpu(), "model_dir": args.model_dir, "groups": {}}
    for name, items in groups.items():
        answers = generate_chat(model, tokenizer, [[*system, {"role": "user", "content": p}] for _, p in items],
                                inference["max_new_tokens"], 48, f"answers: {name}")
        right = [key_terms_score(a, questions[f]["keys"]) for (f, _), a in zip(items, answers)]
        free = [bool(scoring.topic_words(p) - known) for _, p in items]
        report["groups"][name] = {"questions": len(items), "fact_accuracy": round(sum(right) / len(items), 4),
                                  "new_words_share": round(sum(free) / len(items), 4)}
        print(name, report["groups"][name], flush=True)
    return write_report(report, args.out, "groups")


if __name__ == "__main__":
    main()
