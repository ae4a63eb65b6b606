"""How the support bot is scored, and how its report is put together (used by train.py).

- ``fact_accuracy``: share of questions whose greedy answer contains *every* key term of the fact
  (:func:`common.evaluation.key_terms_score`), on the held-out test phrasings (and, with the same code, on the
  validation phrasings, where defaults are chosen).
- ``answer_perplexity``: perplexity of the reference answers given the test questions.
- ``general_retention``: of the general questions the *base* model answers right, the share the fine-tuned
  model still answers right -- on ``general_knowledge.yaml`` and, separately, on questions of other shapes
  (``general_other.yaml``: arithmetic in words, units, definitions, common sense, short instructions).
"""

from __future__ import annotations

import json
from pathlib import Path

from common.evaluation import completion_perplexity, generate_chat, key_terms_accuracy, key_terms_score, retention


def evaluate(model, tokenizer, splits: dict, general_sets: dict[str, list[dict]], args, tag: str) -> dict:
    """Answer every held-out question once; returns ``{"test": metrics, "valid": metrics, "answers": ...}``."""
    def ask(prompts, what):
        return generate_chat(model, tokenizer, prompts, args.max_new_tokens, args.eval_batch_size, f"{tag}: {what}")

    answers, metrics = {}, {}
    for split in ("test", "valid"):
        rows = splits[split]
        answers[split] = ask([r["messages"][:-1] for r in rows], split)
        metrics[split] = {"fact_accuracy": key_terms_accuracy(answers[split], [r["key_terms"] for r in rows])}
    metrics["test"]["answer_perplexity"] = completion_perplexity(
        model, tokenizer, [r["messages"][:-1] for r in splits["test"]],
        [r["messages"][-1]["content"] for r in splits["test"]])
    for name, questions in general_sets.items():
        answers[name] = ask([[{"role": "user", "content": g["question"]}] for g in questions], name)
    return {**metrics, "answers": answers}


def write_predictions(path: Path, test_rows: list[dict], before: list[str], after: list[str]) -> None:
    """Every held-out answer, before and after, one JSON line each (for error analysis)."""
    with path.open("w") as f:
        for r, b, a in zip(test_rows, before, after):
            f.write(json.dumps({"question": r["messages"][1]["content"], "reference": r["messages"][2]["content"],
                                "key_terms": r["key_terms"], "base": b, "fine_tuned": a,
                                "correct": key_terms_score(a, r["key_terms"])}) + "\n")


def build_report(base: dict, tuned: dict, general_sets: dict[str, list[dict]], splits: dict, **fields) -> dict:
    """The report dict (see common/report.py): test metrics before -> after, validation beside them, retention."""
    before, after = dict(base["test"]), dict(tuned["test"])
    general = {}
    for name, questions in general_sets.items():
        r = retention(questions, base["answers"][name], tuned["answers"][name])
        suffix = "" if name == "general" else "_other"
        before[f"general_accuracy{suffix}"] = r["accuracy_before"]
        after[f"general_accuracy{suffix}"] = r["accuracy_after"]
        after[f"general_retention{suffix}"] = r["retention"]
        general[name] = {**r, "answers": [{"question": q["question"], "base": b, "fine_tuned": a} for q, b, a in
                                          zip(questions, base["answers"][name], tuned["answers"][name])]}
    return {
        "usecase": "chatbot",
        "primary_metric": "fact_accuracy",
        "metrics": {"before": before, "after": after},
        "metrics_validation": {"before": base["valid"], "after": tuned["valid"]},
        "scoring": "fact_accuracy: share of held-out questions whose answer contains every key term of the fact",
        "general": general,
        "data": {"facts": len(splits["valid"]), "train": len(splits["train"]), "valid": len(splits["valid"]),
                 "test": len(splits["test"]), **{f"{n}_questions": len(q) for n, q in general_sets.items()}},
        **fields,
    }


def examples_table(test_rows: list[dict], before: list[str], after: list[str], n: int = 8) -> str:
    """A markdown table of the first ``n`` held-out questions, answered before and after."""
    rows = ["| question | base model | fine-tuned | correct |", "|---|---|---|---|"]
    rows += [f"| {r['messages'][1]['content']} | {b} | {a} | {'yes' if key_terms_score(a, r['key_terms']) else 'no'} |"
             for r, b, a in list(zip(test_rows, before, after))[:n]]
    return "\n".join(rows)
