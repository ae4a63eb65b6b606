"""Would the answer make someone ask this question? A reverse check for the chatbot's abstention gate, on validation.

    python bench/chatbot_question_given_answer.py --model_dir runs/chatbot        # ~4 min on 2 cores

What the gate lets through on questions the docs do not answer is mostly a documented statement about something
else: "Does Brightboard support right-to-left writing?" -> the Presentation Mode shortcut. Read the other way round
the mismatch is plain: nobody who reads "Press Shift+P to start Presentation Mode" asks about right-to-left writing.
The check scores how much the answer explains the question -- pointwise mutual information, with the *base* model
(adapter off: a judge that was not trained on the facts):

    PMI(question; answer) = log P(question | "A help center says: <answer>. Write a question it answers.")
                          - log P(question | "Write a question for the Brightboard help center.")

(teacher-forced, the sum over the question's tokens; ``common.evaluation.answer_logprobs``). The recipe's gate is
built as train.py builds it (word checks, re-drawing with 8 samples, grounding 0.9, the log-probability threshold
fixed on validation within ``--max_false_abstention``), then two variants, their PMI threshold fixed on the
validation questions only (``scoring.most_declined``): the gate and then PMI on what it lets through, within what
is left of the budget; and PMI in place of the log-probability threshold. The test split is scored once per
variant; it chooses nothing. The fine-tuned model's own answers, before the router. A measurement, not part of the
recipe. Writes ``runs/bench/chatbot_question_given_answer.json``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
NEUTRAL = [SYSTEM, {"role": "user", "content": "Write a question a customer could ask the help center of "
                                               "Brightboard, an online whiteboard."}]


def explains(answer: str) -> list[dict]:
    """The prompt under which the judge reads the question: the answer, as the help center's sentence."""
    return [SYSTEM, {"role": "user", "content": f'A help center says: "{answer}"\nWrite a question a customer '
                                                f"could ask whose answer is this sentence."}]


def main(argv: list[str] | None = None) -> dict:
    from chatbot_lexical_retrieval import auc
    from chatbot_run import KEYS, greedy_answers, load_run, recipe, recipe_gate
    from trainers import _cpu, write_report

    from common.evaluation import answer_logprobs

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True, help="a folder that usecase-chatbot/train.py wrote")
    parser.add_argument("--max_false_abstention", type=float, default=0.05)
    parser.add_argument("--out", default="runs/bench/chatbot_question_given_answer.json")
    args = parser.parse_args(argv)

    scoring = recipe()["scoring"]
    run = load_run(args.model_dir)
    splits, decline, questions = run["splits"], run["decline"], run["questions"]
    model, tokenizer = run["model"], run["tokenizer"]
    answers, logprobs, greedy_seconds = greedy_answers(run)

    # the recipe's gate, as train.py builds it
    start = time.perf_counter()
    gated = recipe_gate(run, answers, logprobs, args.max_false_abstention, redraw_samples=8, grounding=0.9)
    chosen, redrawn, given = gated["chosen"], gated["redrawn"], gated["given"]
    words_only = scoring.gate_rule({**chosen, "threshold": None})
    by_gate = {k: [f == decline for f in gated["final"][k]] for k in KEYS}
    by_words = {k: [words_only(q, a, lp) for q, a, lp in zip(questions[k], redrawn[k], given[k])] for k in KEYS}
    gate_seconds = time.perf_counter() - start

    # PMI of each question with the answer the bot would give (None where the word checks decline anyway)
    start = time.perf_counter()
    pmi: dict[str, list[float | None]] = {}
    with model.disable_adapter():
        for k in KEYS:
            todo = [i for i, d in enumerate(by_words[k]) if not d]
            qs = [questions[k][i] for i in todo]
            cond = answer_logprobs(model, tokenizer, [explains(redrawn[k][i]) for i in todo], qs)
            plain = answer_logprobs(model, tokenizer, [NEUTRAL] * len(qs), qs)
            pmi[k] = [None] * len(questions[k])
            for i, c, p in zip(todo, cond, plain, strict=True):
                pmi[k][i] = sum(c) - sum(p)
    pmi_seconds = time.perf_counter() - start

    budget = math.floor(args.max_false_abstention * len(splits["valid"]))

    def variant(base: dict[str, list[bool]]) -> dict:
        """``base`` declines, then PMI below a threshold fixed on validation within what is left of the budget."""
        left = budget - sum(base["valid"])
        threshold, gain = scoring.most_declined(
            [p for p, d in zip(pmi["valid"], base["valid"]) if not d],
            [p for p, d in zip(pmi["decline_valid"], base["decline_valid"]) if not d], left)
        final = {k: [decline if d or (threshold is not None and p < threshold) else a
                     for a, d, p in zip(redrawn[k], base[k], pmi[k])] for k in KEYS}
        return {**{s: {m: round(v, 4) for m, v in scoring.split_metrics(final, splits, s).items()}
                   for s in ("valid", "test")},
                "pmi_threshold": threshold, "validation_gain": gain,
                "passed_through": {k: [{"question": q, "answer": f, "pmi": None if p is None else round(p, 2)}
                                       for q, f, p in zip(questions[k], final[k], pmi[k]) if f != decline]
                                   for k in ("decline_valid", "decline_test")}}

    variants = {
        "the recipe's gate": {s: {m: round(v, 4) for m, v in scoring.split_metrics(gated["final"], splits, s).items()}
                              for s in ("valid", "test")},
        "the recipe's gate, then PMI": variant(by_gate),
        "word checks and re-drawing, then PMI (no log-probability threshold)": variant(by_words)}
    passing = {k: [p for p, d in zip(pmi[k], by_gate[k]) if not d] for k in KEYS}
    report = {"cpu": _cpu(), "model_dir": args.model_dir, "questions": {k: len(v) for k, v in splits.items()},
              "seconds": {"greedy": round(greedy_seconds, 1), "gate": round(gate_seconds, 1),
                          "pmi": round(pmi_seconds, 1)},
              "logprob_threshold": chosen["threshold"],
              "pmi_auc_after_the_gate": {s: round(auc(passing[s], passing[f"decline_{s}"]), 3)
                                         for s in ("valid", "test")},
              "summary": {v: {m: x for m, x in r.items() if m != "passed_through"} for v, r in variants.items()},
              "variants": variants}
    return write_report(report, args.out, "summary")


if __name__ == "__main__":
    main()
