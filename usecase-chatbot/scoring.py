"""How the support bot is scored, and how its report is put together (used by train.py).

- ``fact_accuracy``: share of questions whose greedy answer contains *every* key term of the fact
  (:func:`common.evaluation.key_terms_score`), on the held-out test phrasings (and, with the same code, on the
  validation phrasings, where defaults are chosen).
- ``answer_perplexity``: perplexity of the reference answers given the test questions.
- ``abstention_rate``: share of held-out questions the docs do *not* answer (``unanswerable.yaml``) that the
  model declines; ``false_abstention_rate``: share of held-out *answerable* questions it declines. What counts as
  a decline is :func:`is_decline`.
- ``general_retention``: of the general questions the *base* model answers right, the share the fine-tuned
  model still answers right -- on ``general_knowledge.yaml`` and, separately, on questions of other shapes
  (``general_other.yaml``: arithmetic in words, units, definitions, common sense, short instructions; its
  validation twin ``general_other_valid.yaml`` is where remedies against forgetting are chosen).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from common.evaluation import completion_perplexity, generate_chat, key_terms_accuracy, key_terms_score, retention

# A decline says, in words, that the bot does not have the answer. Pointing to support alone is not a decline
# (a right answer may add "contact support"), and neither is a plain "no" (which is an answer).
DECLINE = re.compile(r"\b(i (do not|don't|dont) (have|know)|i'm not sure|i am not sure|i (can't|cannot|could not|"
                     r"couldn't) (find|answer|say)|(not|isn't|is not) (covered|mentioned|described|documented|listed)|"
                     r"no information|not (have|find) (that|this|any) information)\b")


def is_decline(answer: str) -> bool:
    """Whether ``answer`` declines to answer (see :data:`DECLINE`; curly apostrophes count as straight ones)."""
    return bool(DECLINE.search(answer.lower().replace("\u2019", "'")))


def decline_rate(answers: list[str]) -> float:
    return sum(map(is_decline, answers)) / len(answers) if answers else float("nan")


def evaluate(model, tokenizer, splits: dict, general_sets: dict[str, list[dict]], args, tag: str) -> dict:
    """Answer every held-out question once; returns ``{"test": metrics, "valid": metrics, "answers": ...}``."""
    def ask(prompts, what):
        return generate_chat(model, tokenizer, prompts, args.max_new_tokens, args.eval_batch_size, f"{tag}: {what}")

    answers, metrics = {}, {}
    for split in ("test", "valid"):
        rows = splits[split]
        answers[split] = ask([r["messages"][:-1] for r in rows], split)
        metrics[split] = {"fact_accuracy": key_terms_accuracy(answers[split], [r["key_terms"] for r in rows]),
                          "false_abstention_rate": decline_rate(answers[split])}
        if splits.get(f"decline_{split}"):
            answers[f"decline_{split}"] = ask([r["messages"][:-1] for r in splits[f"decline_{split}"]],
                                              f"{split} (not in the docs)")
            metrics[split]["abstention_rate"] = decline_rate(answers[f"decline_{split}"])
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
    valid_before, valid_after = dict(base["valid"]), dict(tuned["valid"])
    general = {}
    for name, questions in general_sets.items():
        r = retention(questions, base["answers"][name], tuned["answers"][name])
        # general, general_other (test) -> metrics; general_other_valid -> metrics_validation, as general_other
        b, a = (valid_before, valid_after) if name.endswith("_valid") else (before, after)
        suffix = name.removeprefix("general").removesuffix("_valid")
        b[f"general_accuracy{suffix}"] = r["accuracy_before"]
        a[f"general_accuracy{suffix}"] = r["accuracy_after"]
        a[f"general_retention{suffix}"] = r["retention"]
        general[name] = {**r, "answers": [{"question": q["question"], "base": b, "fine_tuned": a} for q, b, a in
                                          zip(questions, base["answers"][name], tuned["answers"][name])]}
    return {
        "usecase": "chatbot",
        "primary_metric": "fact_accuracy",
        "metrics": {"before": before, "after": after},
        "metrics_validation": {"before": valid_before, "after": valid_after},
        "scoring": {"fact_accuracy": "share of held-out questions whose answer contains every key term of the fact",
                    "abstention_rate": "share of held-out questions the docs do not answer whose answer is a "
                                       "decline (scoring.is_decline)",
                    "false_abstention_rate": "share of held-out answerable questions whose answer is a decline",
                    "decline_rule": DECLINE.pattern},
        "general": general,
        "data": {"facts": len(splits["valid"]), "train": len(splits["train"]), "valid": len(splits["valid"]),
                 "test": len(splits["test"]), "unanswerable_valid": len(splits.get("decline_valid", [])),
                 "unanswerable_test": len(splits.get("decline_test", [])),
                 **{f"{n}_questions": len(q) for n, q in general_sets.items()}},
        **fields,
    }


def examples_table(test_rows: list[dict], before: list[str], after: list[str], n: int = 8) -> str:
    """A markdown table of the first ``n`` held-out questions, answered before and after."""
    rows = ["| question | base model | fine-tuned | correct |", "|---|---|---|---|"]
    rows += [f"| {r['messages'][1]['content']} | {b} | {a} | {'yes' if key_terms_score(a, r['key_terms']) else 'no'} |"
             for r, b, a in list(zip(test_rows, before, after))[:n]]
    return "\n".join(rows)


def declines_table(splits: dict, base: dict, tuned: dict, n: int = 6) -> str:
    """Held-out questions the docs do not answer, answered before and after (does the bot decline?), then any
    answerable test questions the fine-tuned model declined (false abstentions)."""
    rows = ["| question (not in the docs) | base model | fine-tuned | declined |", "|---|---|---|---|"]
    rows += [f"| {r['messages'][1]['content']} | {b} | {a} | {'yes' if is_decline(a) else 'no'} |"
             for r, b, a in list(zip(splits.get("decline_test", []), base["answers"].get("decline_test", []),
                                     tuned["answers"].get("decline_test", [])))[:n]]
    false = [(r, a) for r, a in zip(splits["test"], tuned["answers"]["test"]) if is_decline(a)]
    rows += ["", f"Answerable test questions the fine-tuned model declined: {len(false)} of {len(splits['test'])}.", ""]
    if false:
        rows += ["| question (answered in the docs) | fine-tuned |", "|---|---|"]
        rows += [f"| {r['messages'][1]['content']} | {a} |" for r, a in false[:n]]
    return "\n".join(rows)
