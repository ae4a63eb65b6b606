"""How many answers to generate per batch: greedy answers of a trained chatbot to its test questions, timed per batch size.

    python bench/generation_batch.py --model_dir runs/chatbot            # ~2 min on 2 cores
    python bench/generation_batch.py --model_dir runs/chatbot --batch_sizes 16 48
    python bench/generation_batch.py --model_dir runs/chatbot --sets      # one call per question set, or one in all

Each batch size answers the same 90 held-out questions (``usecase-chatbot`` test split) with
``common.evaluation.generate_chat`` (greedy, stop at end of turn, at most ``--max_new_tokens``); the script reports
the seconds (after one untimed warm-up) and how many answers are identical, word for word, to those of the first batch size.
``--sets`` instead answers every question set the recipe evaluates (the run's ``data/`` splits and the general sets)
at the first batch size, once set by set (as ``scoring.evaluate`` does) and once in a single call. Writes
``runs/bench/generation_batch.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> dict:
    from trainers import _cpu, write_report

    from common.evaluation import generate_chat
    from common.models import load_trained_causal_lm
    from common.paths import load_sibling

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True, help="a folder that usecase-chatbot/train.py wrote")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[16, 32, 48, 96])
    parser.add_argument("--max_new_tokens", type=int, default=48)
    parser.add_argument("--sets", action="store_true", help="set by set against one call, at the first batch size")
    parser.add_argument("--out", default="runs/bench/generation_batch.json")
    args = parser.parse_args(argv)

    prepare = load_sibling(REPO / "usecase-chatbot" / "train.py", "prepare_data")
    data = REPO / "usecase-chatbot" / "data"
    splits = prepare.build_splits(data / "help_center.md", data / "questions.yaml",
                                  "You are the Brightboard support assistant.", seed=0)
    prompts = [r["messages"][:-1] for r in splits["test"]]
    model, tokenizer = load_trained_causal_lm(args.model_dir)
    report: dict = {"cpu": _cpu(), "model_dir": args.model_dir, "questions": len(prompts), "batch_sizes": {}}
    generate_chat(model, tokenizer, prompts[:8], 8, batch_size=8)  # untimed: one-time allocation and kernel set-up
    if args.sets:
        return _sets(args, model, tokenizer, report, prepare, data, write_report)
    first = None
    for size in dict.fromkeys(args.batch_sizes):  # each size once
        start = time.perf_counter()
        answers = generate_chat(model, tokenizer, prompts, args.max_new_tokens, batch_size=size)
        seconds = time.perf_counter() - start
        first = first or answers
        report["batch_sizes"][str(size)] = {"seconds": round(seconds, 1),
                                            "same_answers": sum(a == b for a, b in zip(answers, first))}
        print(size, report["batch_sizes"][str(size)], flush=True)
    return write_report(report, args.out, "batch_sizes")


def _sets(args, model, tokenizer, report, prepare, data, write_report) -> dict:
    """Every evaluated question set answered set by set, then all of them in one call (same batch size)."""
    import json

    from common.evaluation import generate_chat

    rows = Path(args.model_dir) / "data"
    groups = {}
    for key in ("test", "decline_test", "valid", "decline_valid"):
        if (rows / f"{key}.jsonl").exists():
            lines = (rows / f"{key}.jsonl").read_text().splitlines()
            groups[key] = [json.loads(line)["messages"][:-1] for line in lines if line.strip()]
    for name in ("general_knowledge", "general_other", "general_other_valid"):
        questions = prepare.read_question_list(data / f"{name}.yaml", True)
        groups[name] = [[{"role": "user", "content": q["question"]}] for q in questions]
    size = args.batch_sizes[0]
    start = time.perf_counter()
    separate = [a for group in groups.values()
                for a in generate_chat(model, tokenizer, group, args.max_new_tokens, batch_size=size)]
    seconds_separate = time.perf_counter() - start
    start = time.perf_counter()
    together = generate_chat(model, tokenizer, [p for group in groups.values() for p in group], args.max_new_tokens,
                             batch_size=size)
    report["sets"] = {"batch_size": size, "questions": {k: len(v) for k, v in groups.items()},
                      "seconds_set_by_set": round(seconds_separate, 1),
                      "seconds_one_call": round(time.perf_counter() - start, 1),
                      "same_answers": f"{sum(a == b for a, b in zip(separate, together))} of {len(together)}"}
    return write_report(report, args.out, "sets")


if __name__ == "__main__":
    main()
