"""What the chatbot measurement scripts share: a run folder's held-out questions, its model and greedy answers."""

from __future__ import annotations

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
