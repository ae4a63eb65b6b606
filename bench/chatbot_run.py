"""What the chatbot measurement scripts share: a run folder's held-out questions, its model and greedy answers."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

KEYS = ("valid", "decline_valid", "test", "decline_test")  # answerable and unanswerable, validation and test


def load_run(model_dir: str) -> dict:
    """The held-out splits ``usecase-chatbot/train.py`` wrote into ``model_dir/data`` (``KEYS``), their prompts and
    questions, the decline, and the run's model (adapter on) with its tokenizer and ``max_new_tokens``."""
    from common.models import load_for_inference

    data = Path(model_dir) / "data"
    splits = {key: [json.loads(line) for line in (data / f"{key}.jsonl").read_text().splitlines() if line.strip()]
              for key in KEYS}
    model, tokenizer, settings = load_for_inference(model_dir)
    return {"splits": splits, "decline": splits["decline_valid"][0]["messages"][-1]["content"],
            "model": model, "tokenizer": tokenizer, "max_new_tokens": settings["max_new_tokens"],
            "prompts": {key: [r["messages"][:-1] for r in rows] for key, rows in splits.items()},
            "questions": {key: [r["messages"][1]["content"] for r in rows] for key, rows in splits.items()}}


def greedy_answers(run: dict) -> tuple[dict, dict, float]:
    """``(answers, token log-probs, seconds)``: the run's greedy answers to every split, as train.py generates them
    (batches of 48)."""
    from common.evaluation import generate_chat_with_logprobs

    start = time.perf_counter()
    answers, logprobs = {}, {}
    for key in KEYS:
        answers[key], logprobs[key] = generate_chat_with_logprobs(run["model"], run["tokenizer"], run["prompts"][key],
                                                                  run["max_new_tokens"], 48, key)
    return answers, logprobs, time.perf_counter() - start


@functools.cache
def recipe() -> dict:
    """The chatbot recipe's own modules and help center: ``scoring``, ``prepare`` (prepare_data), ``docs`` (the
    text of help_center.md) and ``statements`` (its ``- {#id}`` statements, in order); loaded once per process."""
    from common.paths import load_sibling

    repo = Path(__file__).resolve().parents[1]
    train_script, docs_file = repo / "usecase-chatbot" / "train.py", repo / "usecase-chatbot" / "data" / "help_center.md"
    prepare = load_sibling(train_script, "prepare_data")
    return {"scoring": load_sibling(train_script, "scoring"), "prepare": prepare, "docs": docs_file.read_text(),
            "statements": list(prepare.read_statements(docs_file).values())}


def recipe_gate(run: dict, answers: dict, logprobs: dict, max_false_abstention: float = 0.05, **settings) -> dict:
    """The abstention gate as train.py builds it on the greedy ``answers`` (``scoring.gate_settings(**settings)``:
    re-drawing, then the log-probability threshold of the answer given, fixed on validation within the budget).
    Returns ``chosen`` (the gate), ``redrawn`` and ``given`` (answers and log-probs the threshold reads) and
    ``final`` (the decline where the gate declines) per split key."""
    r = recipe()
    scoring = r["scoring"]
    model, tokenizer, prompts = run["model"], run["tokenizer"], run["prompts"]
    gate = scoring.gate_settings(r["docs"], run["decline"], statements=r["statements"], **settings)
    redrawn = {k: scoring.redraw(model, tokenizer, prompts[k], answers[k], gate, run["max_new_tokens"], 48)
               for k in KEYS}
    given = {k: scoring.given_logprobs(model, tokenizer, prompts[k], answers[k], redrawn[k], logprobs[k]) for k in KEYS}
    chosen = scoring.choose_gate({"answers": answers, "logprobs": given, "redrawn": redrawn}, run["splits"], gate,
                                 max_false_abstention)
    declines = scoring.gate_rule(chosen)
    final = {k: [run["decline"] if declines(q, a, lp) else a
                 for q, a, lp in zip(run["questions"][k], redrawn[k], given[k], strict=True)] for k in KEYS}
    return {"chosen": chosen, "redrawn": redrawn, "given": given, "final": final}
