"""Ask the medical assistant that train.py produced.

    python usecase-medical/chat.py --model_dir runs/medical                        # interactive
    python usecase-medical/chat.py --model_dir runs/medical --question "I twisted my ankle, what should I do?"
    python usecase-medical/chat.py --model_dir runs/medical --examples 5           # held-out test questions
    python usecase-medical/chat.py --model_dir smollm2-135m-instruct --question "..."   # the base model

``--model_dir`` is the folder ``train.py --output_dir`` wrote (its ``merged/`` model is used), the ``merged/``
folder itself, or any model name for comparison. A run folder's triage check (``triage.safetensors``) is applied as
in train.py: the answer follows the check's red-flag call (triage.py). With ``--question`` only the answer is
printed, then one line saying it is not medical advice. A tutorial model: general information only, never a
diagnosis.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices; not for chat users

from common.context import fit_question  # noqa: E402
from common.errors import ConfigError, run_main  # noqa: E402
from common.evaluation import generate_chat  # noqa: E402
from common.models import load_for_inference  # noqa: E402
from common.paths import load_sibling  # noqa: E402

scoring = load_sibling(__file__, "scoring")
triage = load_sibling(__file__, "triage")
SYSTEM_PROMPT = load_sibling(__file__, "prepare_data").SYSTEM_PROMPT
DISCLAIMER = "General information from a tutorial model, not medical advice; in an emergency call your local number."


def load(model_dir: str):
    """Model, tokenizer and inference settings (system prompt, answer length) saved by train.py; the DPO adapter
    sits on the merged SFT weights (``merged/``). The run's triage check (``triage.safetensors``), when it has one,
    is returned in the settings as ``"triage"``."""
    model, tokenizer, settings = load_for_inference(model_dir, prefer_merged=True)
    probe = triage.Triage.load(model_dir) if Path(model_dir).is_dir() else None
    return model, tokenizer, {**settings, "triage": probe}


def ask(model, tokenizer, settings: dict, questions: list[str]) -> list[str]:
    """Greedy answers; with a triage check, answers that follow its red-flag decision (triage.py)."""
    system = settings.get("system_prompt", SYSTEM_PROMPT)
    questions = [fit_question(model, tokenizer, system, q, [], settings.get("max_new_tokens", 72))[0]
                 for q in questions]  # an over-long question is cut to the model's context, with a warning
    prompts = [[{"role": "system", "content": system}, {"role": "user", "content": q}] for q in questions]
    if settings.get("triage") is None:
        return generate_chat(model, tokenizer, prompts, settings.get("max_new_tokens", 72), desc="thinking")
    return triage.answer(model, tokenizer, prompts, settings["triage"], settings.get("max_new_tokens", 72),
                         settings.get("triage_retries", 3))["answers"]


def main(argv: list[str] | None = None, stdin=None) -> None:
    parser = argparse.ArgumentParser(description="Ask the fine-tuned medical assistant (not medical advice).")
    parser.add_argument("--model_dir", required=True, help="train.py's --output_dir (or a model name)")
    parser.add_argument("--question", help="answer one question, print the answer and a not-medical-advice line")
    parser.add_argument("--examples", type=int, help="answer the first N held-out test questions of the run")
    args = parser.parse_args(argv)
    stdin = stdin or sys.stdin
    if args.question is not None and not args.question.strip():
        raise ConfigError("--question is empty: pass the question text, or leave --question out to chat")
    if args.examples is not None and args.examples < 1:
        raise ConfigError(f"--examples must be >= 1, got {args.examples}")
    test_file = Path(args.model_dir) / "data" / "test.jsonl"
    if args.examples and not test_file.exists():
        raise ConfigError(f"{test_file} not found: --examples needs a folder written by train.py")
    model, tokenizer, settings = load(args.model_dir)

    if args.question:
        print(ask(model, tokenizer, settings, [args.question.strip()])[0])
        print(DISCLAIMER)
        return
    if args.examples:
        rows, seen = [], set()
        for line in test_file.open(encoding="utf-8"):
            row = json.loads(line) if line.strip() else None
            if row and row["prompt"][-1]["content"] not in seen:
                seen.add(row["prompt"][-1]["content"])
                rows.append(row)
        rows = rows[: args.examples]
        for row, reply in zip(rows, ask(model, tokenizer, settings, [r["prompt"][-1]["content"] for r in rows])):
            flag, esc = row.get("red_flag"), scoring.escalates(reply)
            verdict = "" if flag is None else ("  [right call]" if esc == flag else "  [WRONG call]")
            print(f"Q: {row['prompt'][-1]['content']}\nA: {reply}\n   red flag: {flag}; escalates: {esc}{verdict}\n")
        print(DISCLAIMER)
        return
    if not stdin.isatty():  # a pipe or a file: one question per line, one answer per line
        for line in stdin:
            if line.strip():
                print(ask(model, tokenizer, settings, [line.strip()])[0], flush=True)
        print(DISCLAIMER)
        return

    print(f"Symptom questions (empty line or Ctrl-D to quit). {DISCLAIMER}")
    while True:
        try:
            question = input("you> ").strip()
        except EOFError:
            break
        if not question:
            break
        print(f"assistant> {ask(model, tokenizer, settings, [question])[0]}\n{DISCLAIMER}")


if __name__ == "__main__":
    run_main(main)
