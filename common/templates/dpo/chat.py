"""Ask the {{title}} assistant that train.py produced (its merged SFT + DPO model).

    python {{folder}}/chat.py --model_dir runs/{{name}} --question "My order arrived damaged."
    python {{folder}}/chat.py --model_dir runs/{{name}} --examples 3      # held-out prompts, with the preferred answer
    python {{folder}}/chat.py --model_dir runs/{{name}}                   # one question per line on stdin
    python {{folder}}/chat.py --model_dir smollm2-135m-instruct --question "..."   # the base model, to compare

``--model_dir`` is the folder ``train.py --output_dir`` wrote (its ``merged/`` model is used), or any model name.
Answers are greedy, with the system prompt and answer length the run was trained with.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common.errors import ConfigError, run_main
from common.evaluation import generate_chat
from common.models import load_for_inference


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Ask the fine-tuned {{title}} assistant.")
    parser.add_argument("--model_dir", required=True, help="train.py's --output_dir (or a model name)")
    parser.add_argument("--question", help="answer this one question")
    parser.add_argument("--examples", type=int, default=0, help="answer the run's first N held-out test prompts")
    args = parser.parse_args(argv)
    rows = []
    if args.examples:
        test_file = Path(args.model_dir) / "data" / "test.jsonl"
        if not test_file.is_file():
            raise ConfigError(f"{test_file} not found: --examples needs a folder written by train.py")
        rows = [json.loads(line) for line in test_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        rows = rows[:args.examples]
    questions = [r["prompt"][-1]["content"] for r in rows]
    if args.question:
        questions.append(args.question)
    elif not rows:
        questions += [line.strip() for line in sys.stdin if line.strip()]
    if not questions:
        raise ConfigError("no question: pass --question TEXT, --examples N, or questions on stdin")

    model, tokenizer, settings = load_for_inference(args.model_dir, prefer_merged=True)
    system = settings.get("system_prompt")
    prompts = [[*([{"role": "system", "content": system}] if system else []), {"role": "user", "content": q}]
               for q in questions]
    answers = generate_chat(model, tokenizer, prompts, settings.get("max_new_tokens", 64), desc="answering")
    for i, (question, answer) in enumerate(zip(questions, answers)):
        if i < len(rows):
            print(f"Q: {question}\nA: {answer}\n   preferred: {rows[i]['chosen'][-1]['content']}\n")
        else:
            print(answer if len(questions) == 1 else f"Q: {question}\nA: {answer}\n")


if __name__ == "__main__":
    run_main(main)
