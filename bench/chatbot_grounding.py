"""Does the answer restate the docs? A grounding check for the chatbot's abstention gate, its setting chosen on validation.

    python bench/chatbot_grounding.py --model_dir runs/chatbot        # ~8 min on 2 cores

The bot is trained to answer with the help center's own statements, word for word. A memorized fact comes back as
one of them; an invention is a new sentence -- often assembled from the docs' words ("The Brightboard supports
more than 50 languages.", "The Meeting agenda includes a video slide."), so the gate's word checks let it through.
``scoring.grounding`` scores an answer by its ROUGE-L F1 against the closest statement of ``help_center.md``; with
``abstention_grounding: g`` an answer below ``g`` is treated like one naming a word the docs never use: re-drawn
from 8 samples (the most frequent grounded one is kept), declined when none is grounded.

For each ``g`` of ``--grounding`` (``none``: the check off) the whole gate is rebuilt on the same greedy answers, as
train.py builds it: re-drawing, then the log-probability threshold fixed on the validation questions within
``--max_false_abstention`` of them (``scoring.choose_gate``) -- twice: the threshold reading the log-probability of
the answer the bot gives (``scoring.given_logprobs``: a re-drawn answer's own, teacher-forced) and, as the gate did
before, that of the greedy answer even where a re-drawn one replaced it. The variant is chosen on validation -- the
most unanswerable questions declined within the budget, then the best fact accuracy, then the first listed -- and
the test split is scored once per variant; it chooses nothing. The fine-tuned model's own answers, before the
router. ``--redrawn_on_topic`` adds a variant that also declines a re-drawn answer sharing no content word with
its question (``scoring.off_topic``). A measurement, not part of the recipe. Writes ``runs/bench/chatbot_grounding.json``.
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


def main(argv: list[str] | None = None) -> dict:
    from chatbot_lexical_retrieval import auc
    from chatbot_run import KEYS, greedy_answers, load_run, recipe
    from trainers import _cpu, write_report

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True, help="a folder that usecase-chatbot/train.py wrote")
    parser.add_argument("--grounding", nargs="+", default=["none", "0.5", "0.6", "0.7", "0.8", "0.9"],
                        help="least ROUGE-L against the closest statement ('none': no grounding check)")
    parser.add_argument("--redrawn_on_topic", action="store_true",
                        help="also: decline a re-drawn answer that shares no content word with its question")
    parser.add_argument("--max_false_abstention", type=float, default=0.05)
    parser.add_argument("--out", default="runs/bench/chatbot_grounding.json")
    args = parser.parse_args(argv)

    r = recipe()
    scoring, docs, statements = r["scoring"], r["docs"], r["statements"]
    run = load_run(args.model_dir)
    splits, decline, prompts, questions = run["splits"], run["decline"], run["prompts"], run["questions"]
    model, tokenizer, n_tokens = run["model"], run["tokenizer"], run["max_new_tokens"]
    answers, logprobs, greedy_seconds = greedy_answers(run)
    seconds = {"greedy": round(greedy_seconds, 1)}
    own = {k: [scoring.grounding(a, statements) for a in answers[k]] for k in KEYS}

    variants = {}
    for setting in args.grounding:
        g = None if setting == "none" else float(setting)
        start = time.perf_counter()
        gate = scoring.gate_settings(docs, decline, redraw_samples=8, statements=statements, grounding=g)
        redrawn = {k: scoring.redraw(model, tokenizer, prompts[k], answers[k], gate, n_tokens, 48) for k in KEYS}
        given = {k: scoring.given_logprobs(model, tokenizer, prompts[k], answers[k], redrawn[k], logprobs[k])
                 for k in KEYS}
        readings = [("given", given, redrawn), ("greedy", logprobs, redrawn)]  # the threshold reads given / greedy
        if args.redrawn_on_topic:  # a re-drawn answer sharing no content word with its question becomes None
            on_topic = {k: [r if r is None or r == a or not scoring.off_topic(q, r) else None
                            for q, a, r in zip(questions[k], answers[k], redrawn[k], strict=True)] for k in KEYS}
            readings.append(("given (re-drawn answers on the question's topic)", given, on_topic))
        for reads, lps, redrawn in readings:
            result = {"answers": answers, "logprobs": lps, "redrawn": redrawn}
            chosen = scoring.choose_gate(result, splits, gate, args.max_false_abstention)
            declines = scoring.gate_rule(chosen)
            final = {k: [decline if declines(q, a, lp) else a
                         for q, a, lp in zip(questions[k], redrawn[k], lps[k], strict=True)] for k in KEYS}
            name = f"grounding {setting}, threshold reads the {reads} answer"
            variants[name] = {
                **{s: {m: round(v, 4) for m, v in scoring.split_metrics(final, splits, s).items()}
                   for s in ("valid", "test")},
                "logprob_threshold": chosen["threshold"],
                "validation_declined_by_checks": chosen["validation_declined_by_words"],
                "redrawn_kept": {k: sum(a is not None and a != o for a, o in zip(redrawn[k], answers[k])) for k in KEYS},
                "seconds": round(time.perf_counter() - start, 1)}
            variants[name]["changed"] = {k: [{"question": q, "answer": a, "grounding": round(s, 3), "now": f}
                                             for q, a, s, f in zip(questions[k], answers[k], own[k], final[k]) if f != a]
                                         for k in KEYS}

    budget = math.floor(args.max_false_abstention * len(splits["valid"]))
    within = [v for v in variants if variants[v]["valid"]["false_abstention_rate"] * len(splits["valid"]) <= budget]
    chosen_variant = max(within, key=lambda v: (variants[v]["valid"]["abstention_rate"],
                                                variants[v]["valid"]["fact_accuracy"])) if within else None
    report = {"cpu": _cpu(), "model_dir": args.model_dir, "questions": {k: len(v) for k, v in splits.items()},
              "statements": len(statements),
              "grounding_of_own_answers": {
                  "auc": {s: round(auc(own[s], own[f"decline_{s}"]), 3) for s in ("valid", "test")},
                  "median": {k: round(statistics.median(v), 3) for k, v in own.items()},
                  "below_1": {k: sum(v < 1 for v in vals) for k, vals in own.items()}},
              "seconds": seconds, "chosen_on_validation": chosen_variant,
              "summary": {v: {k: x for k, x in variants[v].items() if k != "changed"} for v in variants},
              "variants": variants}
    return write_report(report, args.out, "summary")


if __name__ == "__main__":
    main()
