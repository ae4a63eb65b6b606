"""Decline when the model itself would: P(decline | question) from a chatbot trained with decline rows.

    python usecase-chatbot/train.py --train_declines true --output_dir runs/chatbot-declines
    python bench/chatbot_decline_score.py --model_dir runs/chatbot-declines        # ~5 min on 2 cores

A model trained on the decline rows (``--train_declines true``) answers some answerable questions with the
decline as well: its greedy answer is a yes/no at a threshold it chose itself. This reads the same decision as a
score and fixes its threshold on validation: for every question, the log-probability of the whole decline given the
question (teacher-forced, ``score``), and the model's answer with the decline's first token ("I") forbidden
(``forced``; in the gate's re-drawn samples too, or the re-drawing would bring the decline back). A question is declined when its score is at or above ``t``, otherwise it gets the forced answer; then
the recipe's own gate runs on what is left (word checks, re-drawing, the confidence threshold; ``scoring``). ``t``
is chosen on the validation questions: the one that declines the most unanswerable validation questions while the
whole gate declines at most ``--max_false_abstention`` of the answerable ones (ties: the higher fact accuracy).
Only then is the test split scored, beside the model's own greedy answers through the same gate. The test split
chooses nothing. Writes ``runs/bench/chatbot_decline_score.json``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

def main(argv: list[str] | None = None) -> dict:
    from chatbot_lexical_retrieval import auc
    from chatbot_run import KEYS, greedy_answers, load_run
    from trainers import _cpu, write_report

    from common.evaluation import answer_logprobs, generate_chat_with_logprobs
    from common.paths import load_sibling

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True, help="a folder that usecase-chatbot/train.py wrote")
    parser.add_argument("--max_false_abstention", type=float, default=0.05)
    parser.add_argument("--out", default="runs/bench/chatbot_decline_score.json")
    args = parser.parse_args(argv)

    scoring = load_sibling(REPO / "usecase-chatbot" / "train.py", "scoring")
    run = load_run(args.model_dir)
    splits, decline, prompts = run["splits"], run["decline"], run["prompts"]
    model, tokenizer, n_tokens = run["model"], run["tokenizer"], run["max_new_tokens"]
    docs = (REPO / "usecase-chatbot" / "data" / "help_center.md").read_text()

    # log P(decline | question): the sum over the decline's tokens, teacher-forced (end-of-turn not counted)
    score = {key: [sum(lp) for lp in answer_logprobs(model, tokenizer, prompts[key], [decline] * len(prompts[key]))]
             for key in KEYS}
    own, own_lp, _ = greedy_answers(run)
    forced, forced_lp = {}, {}
    first = tokenizer(decline, add_special_tokens=False)["input_ids"][0]
    model.generation_config.bad_words_ids = [[first]]  # the decline cannot start: the model's best other answer
    for key in KEYS:
        forced[key], forced_lp[key] = generate_chat_with_logprobs(model, tokenizer, prompts[key], n_tokens, 48,
                                                                  f"{key} (no decline)")
    gate = scoring.gate_settings(docs, decline, redraw_samples=8)

    def redrawn(answers: dict) -> dict:
        return {key: scoring.redraw(model, tokenizer, prompts[key], answers[key], gate, n_tokens, 48) for key in KEYS}

    forced_redrawn = redrawn(forced)  # still without the decline: re-drawn answers are answers too
    model.generation_config.bad_words_ids = None
    own_redrawn = redrawn(own)

    def through_gate(answers, logprobs, redrawn_, declined: dict[str, list[bool]]) -> dict:
        """Declined questions get the decline before the gate sees them (they cost budget like the word checks)."""
        result = {"answers": {k: [decline if d else a for a, d in zip(answers[k], declined[k])] for k in KEYS},
                  "logprobs": {k: [[0.0] if d else lp for lp, d in zip(logprobs[k], declined[k])] for k in KEYS},
                  "redrawn": {k: [decline if d else a for a, d in zip(redrawn_[k], declined[k])] for k in KEYS}}
        # the decline "names" nothing new, so the word checks would let it pass: mark it as failing instead
        result["redrawn"] = {k: [None if a == decline else a for a in v] for k, v in result["redrawn"].items()}
        for s in ("valid", "test"):
            result[s] = scoring.split_metrics(result["answers"], splits, s)
        chosen = scoring.choose_gate(result, splits, gate, args.max_false_abstention)
        gated = scoring.apply_gate(result, splits, chosen)
        return {s: {m: round(gated[s][m], 4) for m in ("fact_accuracy", "abstention_rate", "false_abstention_rate")}
                for s in ("valid", "test")} | {"confidence_threshold": chosen["threshold"]}

    none = {k: [False] * len(splits[k]) for k in KEYS}
    report: dict = {"cpu": _cpu(), "model_dir": args.model_dir, "questions": {k: len(v) for k, v in splits.items()},
                    "own_answers_through_gate": through_gate(own, own_lp, own_redrawn, none),
                    "forced_answers_through_gate": through_gate(forced, forced_lp, forced_redrawn, none)}
    # the decline threshold, on validation only: candidates are the validation scores themselves
    candidates = sorted(set(score["valid"] + score["decline_valid"]), reverse=True)
    budget = math.floor(args.max_false_abstention * len(splits["valid"]))
    best, rows = None, []
    for t in candidates:
        declined = {k: [s >= t for s in score[k]] for k in KEYS}
        if sum(declined["valid"]) > budget:
            break
        r = through_gate(forced, forced_lp, forced_redrawn, declined)
        r["decline_threshold"] = round(t, 3)
        rows.append(r)
        v = r["valid"]
        if v["false_abstention_rate"] * len(splits["valid"]) > budget + 1e-9:
            continue
        if best is None or (v["abstention_rate"], v["fact_accuracy"]) > (best["valid"]["abstention_rate"],
                                                                          best["valid"]["fact_accuracy"]):
            best = r
    report["decline_score"] = {"chosen": best, "candidates_tried": len(rows)}
    report["scores"] = {k: [round(s, 2) for s in v] for k, v in score.items()}
    # the score alone: how well it separates (a higher score means "decline"), and what the whole budget buys
    report["score_auc"] = {s: round(auc([-x for x in score[s]], [-x for x in score[f"decline_{s}"]]), 3)
                           for s in ("valid", "test")}
    alone = sorted(score["valid"], reverse=True)[budget]  # declining above it declines `budget` answerable ones
    report["score_alone_within_budget"] = {"declines_above": round(alone, 3), "unanswerable_valid_declined":
                                           f"{sum(x > alone for x in score['decline_valid'])} of {len(score['decline_valid'])}"}
    report["own_declines"] = {k: sum(scoring.is_decline(a) for a in v) for k, v in own.items()}
    report["summary"] = {"own": report["own_answers_through_gate"], "forced": report["forced_answers_through_gate"],
                         "decline_score": best, "score_auc": report["score_auc"],
                         "score_alone_within_budget": report["score_alone_within_budget"]}
    for k in ("valid", "decline_valid"):
        print(k, sorted(report["scores"][k], reverse=True)[:12], flush=True)
    return write_report(report, args.out, "summary")


if __name__ == "__main__":
    main()
