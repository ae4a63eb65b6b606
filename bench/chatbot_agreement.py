"""Does the chatbot give the same answer twice? Agreement of sampled answers as the gate's "unsure" signal.

    python bench/chatbot_agreement.py --model_dir runs/chatbot        # ~8 min on 2 cores

The recipe's gate reads how sure the model was from its greedy answer's log-probability. Another reading, in the
spirit of self-consistency checks: sample ``--samples`` answers to the same question (the gate's re-drawing
settings, ``scoring.REDRAW``) and measure how much they agree with the greedy one -- the mean Jaccard overlap of
their content words (``scoring.topic_words``, numbers included). A memorized fact comes back the same in other
words; an invented one changes from sample to sample. Compared, on the answers of one model:

- ``gate``: the recipe's gate, fixed on validation as train.py fixes it (word checks, re-drawing, log-probability);
- ``agreement``: the same word checks and re-drawing, with the agreement threshold in place of the log-probability;
- ``gate_then_agreement``: the recipe's gate, then an agreement threshold spending what is left of the budget.

Each threshold is chosen on the validation questions only (``scoring.most_declined``: the most unanswerable
questions declined more than answerable ones, at most ``--max_false_abstention`` of the answerable ones declined
in all); the test split is scored once with the thresholds fixed. A measurement, not part of the recipe. Writes
``runs/bench/chatbot_agreement.json``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def main(argv: list[str] | None = None) -> dict:
    from chatbot_lexical_retrieval import auc
    from chatbot_run import KEYS, greedy_answers, load_run
    from trainers import _cpu, write_report

    from common.evaluation import sample_chat
    from common.paths import load_sibling

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True, help="a folder that usecase-chatbot/train.py wrote")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max_false_abstention", type=float, default=0.05)
    parser.add_argument("--out", default="runs/bench/chatbot_agreement.json")
    args = parser.parse_args(argv)

    scoring = load_sibling(REPO / "usecase-chatbot" / "train.py", "scoring")
    run = load_run(args.model_dir)
    splits, decline, prompts, questions = run["splits"], run["decline"], run["prompts"], run["questions"]
    model, tokenizer, n_tokens = run["model"], run["tokenizer"], run["max_new_tokens"]
    docs = (REPO / "usecase-chatbot" / "data" / "help_center.md").read_text()
    answers, logprobs, greedy_seconds = greedy_answers(run)
    start = time.perf_counter()
    agreement = {}
    for key in KEYS:
        samples = sample_chat(model, tokenizer, prompts[key], args.samples, n_tokens, 16, **scoring.REDRAW,
                              desc=f"{key}: {args.samples} samples")
        agreement[key] = [sum(jaccard(scoring.topic_words(a), scoring.topic_words(s)) for s in drawn) / len(drawn)
                          for a, drawn in zip(answers[key], samples, strict=True)]
    sample_seconds = time.perf_counter() - start
    gate = scoring.gate_settings(docs, decline, redraw_samples=8)
    result = {"answers": answers, "logprobs": logprobs,
              "redrawn": {k: scoring.redraw(model, tokenizer, prompts[k], answers[k], gate, n_tokens, 48) for k in KEYS}}
    chosen = scoring.choose_gate(result, splits, gate, args.max_false_abstention)
    budget = math.floor(args.max_false_abstention * len(splits["valid"]))
    words_only, recipe = scoring.gate_rule({**gate, "threshold": None}), scoring.gate_rule(chosen)

    def decided(rule) -> dict[str, list[bool]]:
        return {k: [rule(q, a, lp) for q, a, lp in zip(questions[k], result["redrawn"][k], logprobs[k], strict=True)]
                for k in KEYS}

    def add_agreement(declined: dict[str, list[bool]]) -> tuple[dict[str, list[bool]], float | None]:
        """An agreement threshold on top of ``declined``, chosen on validation within what is left of the budget."""
        left = budget - sum(declined["valid"])
        t, _ = scoring.most_declined([s for s, d in zip(agreement["valid"], declined["valid"]) if not d],
                                     [s for s, d in zip(agreement["decline_valid"], declined["decline_valid"]) if not d],
                                     left)
        return {k: [d or (t is not None and s < t) for d, s in zip(declined[k], agreement[k])] for k in KEYS}, t

    def scored(declined: dict[str, list[bool]]) -> dict:
        final = {k: [decline if d else a for d, a in zip(declined[k], result["redrawn"][k])] for k in KEYS}
        return {s: {m: round(v, 4) for m, v in scoring.split_metrics(final, splits, s).items()} for s in ("valid", "test")}

    words, gated = decided(words_only), decided(recipe)
    with_agreement, t_agree = add_agreement(words)
    both, t_both = add_agreement(gated)
    variants = {"gate": scored(gated) | {"logprob_threshold": chosen["threshold"]},
                "agreement": scored(with_agreement) | {"agreement_threshold": t_agree},
                "gate_then_agreement": scored(both) | {"logprob_threshold": chosen["threshold"],
                                                       "agreement_threshold": t_both}}
    report = {"cpu": _cpu(), "model_dir": args.model_dir, "samples": args.samples,
              "questions": {k: len(v) for k, v in splits.items()},
              "agreement_auc": {s: round(auc(agreement[s], agreement[f"decline_{s}"]), 3) for s in ("valid", "test")},
              "agreement_median": {k: round(statistics.median(v), 3) for k, v in agreement.items()},
              "seconds": {"greedy": round(greedy_seconds, 1), "sampling": round(sample_seconds, 1)},
              "variants": variants, "agreement": {k: [round(a, 3) for a in v] for k, v in agreement.items()}}
    return write_report(report, args.out, "variants")


if __name__ == "__main__":
    main()
