"""Should a figure in the question decline it? The chatbot gate's question check with and without figures, on validation.

    python bench/chatbot_question_figures.py --model_dir runs/chatbot        # ~4 min on 2 cores

The gate declines a question that names something the help center never uses. For a *name* that is a good sign of
a question the docs do not answer ("Linux", "Microsoft Teams"); a *figure* in a question is more often the user's
own guess at a documented one ("Can 100 people edit one board together?" -- the docs say 120; "Our whole department
of 150 wants to edit together live"), which the bot's answer corrects. With ``question_figures: false`` only names
decline a question; figures in *answers* are still checked (an answer naming one is re-drawn).

The whole gate is rebuilt both ways on the same greedy answers, as train.py builds it (re-drawing with 8 samples,
grounding 0.9, the log-probability threshold fixed on the validation questions within ``--max_false_abstention``;
``scoring.choose_gate``). The setting is chosen on validation -- the most unanswerable questions declined within
the budget, then the best fact accuracy, then the recipe's current one -- and the test split is scored once per
setting; it chooses nothing. The fine-tuned model's own answers, before the router. Writes
``runs/bench/chatbot_question_figures.json``.
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


def main(argv: list[str] | None = None) -> dict:
    from chatbot_run import greedy_answers, load_run, recipe, recipe_gate
    from trainers import _cpu, write_report

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True, help="a folder that usecase-chatbot/train.py wrote")
    parser.add_argument("--max_false_abstention", type=float, default=0.05)
    parser.add_argument("--out", default="runs/bench/chatbot_question_figures.json")
    args = parser.parse_args(argv)

    scoring = recipe()["scoring"]
    run = load_run(args.model_dir)
    splits, decline, questions = run["splits"], run["decline"], run["questions"]
    answers, logprobs, greedy_seconds = greedy_answers(run)

    settings = {}
    for figures in (True, False):
        start = time.perf_counter()
        gated = recipe_gate(run, answers, logprobs, args.max_false_abstention, redraw_samples=8, grounding=0.9,
                            question_figures=figures)
        chosen, final = gated["chosen"], gated["final"]
        name = "names and figures" if figures else "names only"
        settings[name] = {
            **{s: {m: round(v, 4) for m, v in scoring.split_metrics(final, splits, s).items()} for s in ("valid", "test")},
            "logprob_threshold": chosen["threshold"],
            "validation_declined_by_checks": chosen["validation_declined_by_words"],
            "seconds": round(time.perf_counter() - start, 1),
            "declined_answerable": {k: [{"question": q, "model_answer": a}
                                        for q, a, f in zip(questions[k], answers[k], final[k]) if f == decline]
                                    for k in ("valid", "test")},
            "passed_through": {k: [{"question": q, "answer": f} for q, f in zip(questions[k], final[k]) if f != decline]
                               for k in ("decline_valid", "decline_test")}}

    budget = math.floor(args.max_false_abstention * len(splits["valid"]))
    within = [v for v in settings if settings[v]["valid"]["false_abstention_rate"] * len(splits["valid"]) <= budget]
    chosen_setting = max(within, key=lambda v: (settings[v]["valid"]["abstention_rate"],
                                                settings[v]["valid"]["fact_accuracy"],
                                                v == "names and figures")) if within else None
    report = {"cpu": _cpu(), "model_dir": args.model_dir, "questions": {k: len(v) for k, v in splits.items()},
              "seconds": {"greedy": round(greedy_seconds, 1)}, "chosen_on_validation": chosen_setting,
              "summary": {v: {m: x for m, x in r.items() if m not in ("declined_answerable", "passed_through")}
                          for v, r in settings.items()},
              "settings": settings}
    return write_report(report, args.out, "summary")


if __name__ == "__main__":
    main()
