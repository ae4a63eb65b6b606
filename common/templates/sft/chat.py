"""Ask the {{title}} assistant that train.py produced.

    python {{folder}}/chat.py --model_dir runs/{{name}} --question "How long does a refund take?"
    python {{folder}}/chat.py --model_dir runs/{{name}} --examples 3      # held-out test questions, with the reference
    python {{folder}}/chat.py --model_dir runs/{{name}}                   # one question per line on stdin
    python {{folder}}/chat.py --model_dir smollm2-135m-instruct --question "..."   # the base model, to compare

``--model_dir`` is the folder ``train.py --output_dir`` wrote (its adapter, or its ``merged/`` folder), or any model
name. Answers are greedy, with the system prompt and answer length the run was trained and scored with.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common.errors import ConfigError, run_main
from common.evaluation import generate_chat, key_terms_score
from common.models import load_for_inference


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Ask the fine-tuned {{title}} assistant.")
    parser.add_argument("--model_dir", required=True, help="train.py's --output_dir (or a model name)")
    parser.add_argument("--question", help="answer this one question")
    parser.add_argument("--examples", type=int, default=0, help="answer the run's first N held-out test questions")
    args = parser.parse_args(argv)
    rows = []
    if args.examples:
        test_file = Path(args.model_dir) / "data" / "test.jsonl"
        if not test_file.is_file():
            raise ConfigError(f"{test_file} not found: --examples needs a folder written by train.py")
        rows = [json.loads(line) for line in test_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        rows = rows[:args.examples]
    questions = [r["messages"][-2]["content"] for r in rows]
    if args.question:
        questions.append(args.question)
    elif not rows:
        questions += [line.strip() for line in sys.stdin if line.strip()]
    if not questions:
        raise ConfigError("no question: pass --question TEXT, --examples N, or questions on stdin")

    model, tokenizer, settings = load_for_inference(args.model_dir)
    system = settings.get("system_prompt")
    prompts = [[*([{"role": "system", "content": system}] if system else []), {"role": "user", "content": q}]
               for q in questions]
    answers = generate_chat(model, tokenizer, prompts, settings.get("max_new_tokens", 48), desc="answering")
    for i, (question, answer) in enumerate(zip(questions, answers)):
        if i < len(rows):
            right = key_terms_score(answer, rows[i]["key_terms"])
            print(f"Q: {question}\nA: {answer}\n   reference: {rows[i]['messages'][-1]['content']} "
                  f"[{'right' if right else 'missed'}]\n")
        else:
            print(answer if len(questions) == 1 else f"Q: {question}\nA: {answer}\n")


if __name__ == "__main__":
    run_main(main)
