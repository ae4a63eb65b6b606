"""How many re-drawn samples must agree? A vote floor for the chatbot gate's re-drawing, chosen on validation.

    python bench/chatbot_redraw_votes.py --model_dir runs/chatbot        # ~3 min on 2 cores

The gate re-draws an answer that names a word the docs never use or restates no statement (``scoring.redraw``):
8 answers are sampled and the most frequent one that passes the checks is kept, even when only one of the 8 does.
A question the model knows comes back as the same documented statement again and again; a question the docs do not
answer can be re-drawn into a documented statement about something else ("What is Brightboard's phone number?" ->
the offline-app statement) that one sample of eight happened to produce. With a vote floor ``m`` a re-drawn answer
is kept only when at least ``m`` of the samples are that answer; below it the question is declined.

For each ``m`` of ``--votes`` the whole gate is rebuilt on the same greedy answers and the same samples, as
train.py builds it (the threshold reading the log-probability of the answer given, fixed on the validation
questions within ``--max_false_abstention``; ``scoring.choose_gate``). ``m = 1`` is the recipe's gate. The floor is
chosen on validation -- the most unanswerable questions declined within the budget, then the best fact accuracy,
then the lowest floor -- and the test split is scored once per floor; it chooses nothing. The fine-tuned model's
own answers, before the router. A measurement, not part of the recipe. Writes ``runs/bench/chatbot_redraw_votes.json``
with every re-drawn question's samples.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> dict:
    from chatbot_run import KEYS, greedy_answers, load_run, recipe
    from trainers import _cpu, write_report

    from common.evaluation import sample_chat

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True, help="a folder that usecase-chatbot/train.py wrote")
    parser.add_argument("--votes", nargs="+", type=int, default=[1, 2, 3, 4], help="vote floors to measure")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--grounding", type=float, default=0.9)
    parser.add_argument("--max_false_abstention", type=float, default=0.05)
    parser.add_argument("--out", default="runs/bench/chatbot_redraw_votes.json")
    args = parser.parse_args(argv)

    r = recipe()
    scoring = r["scoring"]
    run = load_run(args.model_dir)
    splits, decline, prompts, questions = run["splits"], run["decline"], run["prompts"], run["questions"]
    model, tokenizer, n_tokens = run["model"], run["tokenizer"], run["max_new_tokens"]
    answers, logprobs, greedy_seconds = greedy_answers(run)
    gate = scoring.gate_settings(r["docs"], decline, redraw_samples=args.samples, statements=r["statements"],
                                 grounding=args.grounding)
    passes = scoring._answer_check(gate)

    # the samples scoring.redraw draws (the same prompts, batch size and seed), with their votes kept
    start = time.perf_counter()
    votes: dict[str, dict[int, tuple[str, int, list[str]]]] = {}
    for k in KEYS:
        todo = [i for i, (q, a) in enumerate(zip(questions[k], answers[k], strict=True))
                if not scoring.asks_unknown(q, gate) and not passes(q, a)]
        samples = sample_chat(model, tokenizer, [prompts[k][i] for i in todo], args.samples, n_tokens, 48,
                              **scoring.REDRAW, desc="re-drawing") if todo else []
        votes[k] = {}
        for i, candidates in zip(todo, samples, strict=True):
            passing = [a for a in candidates if passes(questions[k][i], a)]
            best, n = Counter(passing).most_common(1)[0] if passing else (None, 0)
            votes[k][i] = (best, n, candidates)
    seconds = {"greedy": round(greedy_seconds, 1), "sampling": round(time.perf_counter() - start, 1)}
    kept = {k: [votes[k][i][0] if i in votes[k] else a for i, a in enumerate(answers[k])] for k in KEYS}
    given = {k: scoring.given_logprobs(model, tokenizer, prompts[k], answers[k], kept[k], logprobs[k]) for k in KEYS}

    floors = {}
    for m in args.votes:
        redrawn = {k: [a if i not in votes[k] or votes[k][i][1] >= m else None for i, a in enumerate(kept[k])]
                   for k in KEYS}
        result = {"answers": answers, "logprobs": given, "redrawn": redrawn}
        chosen = scoring.choose_gate(result, splits, gate, args.max_false_abstention)
        declines = scoring.gate_rule(chosen)
        final = {k: [decline if declines(q, a, lp) else a
                     for q, a, lp in zip(questions[k], redrawn[k], given[k], strict=True)] for k in KEYS}
        floors[m] = {**{s: {x: round(v, 4) for x, v in scoring.split_metrics(final, splits, s).items()}
                        for s in ("valid", "test")},
                     "logprob_threshold": chosen["threshold"],
                     "validation_declined_by_checks": chosen["validation_declined_by_words"],
                     "passed_through": {k: [{"question": q, "answer": f} for q, f in zip(questions[k], final[k])
                                            if f != decline] for k in ("decline_valid", "decline_test")},
                     "answers": final}

    budget = math.floor(args.max_false_abstention * len(splits["valid"]))
    within = [m for m in floors if floors[m]["valid"]["false_abstention_rate"] * len(splits["valid"]) <= budget]
    chosen_floor = max(within, key=lambda m: (floors[m]["valid"]["abstention_rate"],
                                              floors[m]["valid"]["fact_accuracy"], -m)) if within else None
    report = {"cpu": _cpu(), "model_dir": args.model_dir, "questions": {k: len(v) for k, v in splits.items()},
              "seconds": seconds, "chosen_on_validation": chosen_floor,
              "summary": {m: {x: v for x, v in f.items() if x not in ("passed_through", "answers")} for m, f in floors.items()},
              "floors": floors,
              "redrawn": {k: [{"question": questions[k][i], "greedy": answers[k][i], "kept": best, "votes": n,
                               "samples": candidates} for i, (best, n, candidates) in votes[k].items()]
                          for k in KEYS}}
    return write_report(report, args.out, "summary")


if __name__ == "__main__":
    main()
