"""How the clause summarizer is prompted, evaluated and reported (used by train.py and predict.py).

Metrics (see facts.py for the normalization):

- ``fact_recall`` (primary): mean share of a clause's key facts that its summary keeps, on held-out clauses;
- ``invented_rate``: share of summaries holding any number, date, amount or company the clause does not;
- ``rouge1`` / ``rouge2`` / ``rougeL``: word overlap with the reference summary (Google's rouge-score, offline);
- ``summary_words``: mean summary length in words.

The same metrics with the suffix ``_style_shift`` are measured on the hand-written clauses of
``data/style_shift.jsonl`` (phrasings no training clause uses); ``handwritten_facts_kept`` counts the key facts
kept in the three hand-written documents of ``data/handwritten.jsonl`` (a lease, an employment letter, a licence).
"""

from __future__ import annotations

import json
from pathlib import Path

from common.evaluation import generate_chat, sample_chat
from common.paths import load_sibling, usecase_name

facts = load_sibling(__file__, "facts")
ROUND = 4  # fact-check candidates drawn per clause at a time
# The fact check's settings (README "Decoding": chosen on validation); train.py's defaults, and predict.py's for a
# folder that does not record them
FACT_CHECK = {"fact_check_samples": 8, "sample_temperature": 1.0, "sample_top_p": 0.95, "sample_seed": 0}
DEFAULT_SYSTEM = "Summarize the clause in plain English. Keep every party, amount, date and period exact; add nothing."


def prompt(clause: str, system_prompt: str = DEFAULT_SYSTEM) -> list[dict]:
    """The chat prompt for one clause (the same at training, evaluation and prediction time)."""
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": clause}]


def to_prompt_completion(row: dict, system_prompt: str) -> dict:
    """A conversational prompt/completion pair: TRL trains on the completion (the summary) only."""
    return {"prompt": prompt(row["clause"], system_prompt),
            "completion": [{"role": "assistant", "content": row["summary"]}]}


def summarize(model, tokenizer, clauses: list[str], args, desc: str = "summarizing",
              cache: bool = False) -> tuple[list[str], list[str]]:
    """Summaries of ``clauses``, each checked against its own clause; returns ``(checked, greedy)``.

    1. Greedy decoding (batched): the most likely wording, nothing random.
    2. The fact check (``args.fact_check_samples`` > 0): a greedy summary that drops a number or company name of
       its clause, or holds one the clause does not (``facts.check``, no reference needed), is re-drawn by
       sampling (``sample_temperature``, ``sample_top_p``, ``sample_seed``), up to ``fact_check_samples`` times in
       rounds of ``ROUND`` (a clause leaves once a candidate passes); the candidate keeping the most facts, less
       two per invented one, replaces it (the earliest wins ties, the greedy one first). A clause whose greedy
       summary passes costs nothing more.

    ``cache``: read back / keep the summaries in ``common.generation_cache`` (evaluation only, never user text).
    """
    greedy = generate_chat(model, tokenizer, [prompt(c, args.system_prompt) for c in clauses], args.max_new_tokens,
                           args.eval_batch_size, desc, cache=cache)
    checked = list(greedy)
    left = [i for i, (s, c) in enumerate(zip(greedy, clauses)) if not passes(s, c)]
    drawn = 0
    while left and drawn < args.fact_check_samples:
        n = min(ROUND, args.fact_check_samples - drawn)
        samples = sample_chat(model, tokenizer, [prompt(clauses[i], args.system_prompt) for i in left], n,
                              args.max_new_tokens, max(1, args.eval_batch_size // 2), args.sample_temperature,
                              args.sample_top_p, args.sample_seed + drawn, f"{desc} (fact check)", cache=cache)
        for i, candidates in zip(left, samples):
            checked[i] = max([checked[i], *candidates], key=lambda s: check_score(s, clauses[i]))  # first max wins
        drawn += n
        left = [i for i in left if not passes(checked[i], clauses[i])]
    return checked, greedy


def passes(summary: str, clause: str) -> bool:
    """The fact check: every checkable fact of the clause kept, nothing invented."""
    kept, total, invented = facts.check(summary, clause)
    return kept == total and not invented


def check_score(summary: str, clause: str) -> int:
    """How a candidate summary ranks in the fact check: facts kept, minus two per invented fact."""
    kept, _, invented = facts.check(summary, clause)
    return kept - 2 * len(invented)


def evaluate(model, tokenizer, splits: dict, args, tag: str) -> dict:
    """Summarize every held-out clause once; returns ``{"test", "valid", "handwritten": metrics, "summaries"}``.

    ``args.score_validation`` False leaves the validation clauses out (their metrics and summaries empty).

    Metrics are of the checked summaries (what predict.py prints); ``*_greedy`` beside them are of the greedy
    ones before the fact check, and ``fact_check_redrawn`` is the share of clauses the check re-drew.
    """
    summaries, metrics = {}, {}
    for name in ("test", "style_shift", "valid", "handwritten"):
        rows = splits[name] if name != "valid" or args.score_validation else []
        if not rows:
            summaries[name], metrics[name] = [], {}
            continue
        summaries[name], greedy = summarize(model, tokenizer, [r["clause"] for r in rows], args, f"{tag}: {name}",
                                            cache=True)
        metrics[name] = facts.score(summaries[name], rows)
        plain_greedy = facts.score(greedy, rows)
        metrics[name].update({f"{key}_greedy": plain_greedy[key] for key in ("fact_recall", "invented_rate", "rougeL")})
        metrics[name]["fact_check_redrawn"] = (sum(not passes(g, r["clause"]) for g, r in zip(greedy, rows))
                                               / len(rows) if args.fact_check_samples else 0.0)
    test = dict(metrics["test"])
    for key in ("fact_recall", "invented_rate", "rougeL", "fact_recall_greedy"):
        if metrics["style_shift"]:
            test[f"{key}_style_shift"] = metrics["style_shift"][key]
    hand = splits["handwritten"]
    if hand:
        test["handwritten_facts_kept"] = sum(facts.fact_present(f, s) for s, r in zip(summaries["handwritten"], hand)
                                             for f in r["facts"])
        test["handwritten_facts_total"] = sum(len(r["facts"]) for r in hand)
    return {"test": test, "valid": metrics["valid"], "summaries": summaries}


def write_predictions(path: Path, splits: dict, base: dict, tuned: dict) -> None:
    """Every held-out summary (validation too) before and after, with kept / missed / invented facts."""
    with path.open("w") as f:
        for name in ("valid", "test", "style_shift", "handwritten"):
            for r, b, a in zip(splits[name], base["summaries"][name], tuned["summaries"][name]):
                f.write(json.dumps({
                    "split": name, "type": r["type"], "clause": r["clause"], "reference": r["summary"],
                    "facts": r["facts"], "base": b, "fine_tuned": a,
                    "missed": [x for x in r["facts"] if not facts.fact_present(x, a)],
                    "invented": facts.invented_facts(a, r["clause"])}, ensure_ascii=False) + "\n")


def build_report(base: dict, tuned: dict, splits: dict, **fields) -> dict:
    """The report dict (common/report.py): test metrics before -> after, validation beside them."""
    return {
        "usecase": usecase_name(__file__),
        "primary_metric": "fact_recall",
        "metrics": {"before": base["test"], "after": tuned["test"]},
        **({"metrics_validation": {"before": base["valid"], "after": tuned["valid"]}} if tuned["valid"] else {}),
        "scoring": "fact_recall: mean share of a clause's key facts kept in its summary (numbers, dates, amounts "
                   "normalized); invented_rate: share of summaries with any fact not in the clause",
        "handwritten": [{"type": r["type"], "facts": r["facts"], "summary": s,
                         "kept": [x for x in r["facts"] if facts.fact_present(x, s)]}
                        for r, s in zip(splits["handwritten"], tuned["summaries"]["handwritten"])],
        "data": {name: len(rows) for name, rows in splits.items()},
        **fields,
    }


def examples_table(rows: list[dict], before: list[str], after: list[str], n: int = 6) -> str:
    """Markdown table: clause, base summary, fine-tuned summary, facts kept."""
    out = ["| clause | base model | fine-tuned | facts kept |", "|---|---|---|---|"]
    for r, b, a in list(zip(rows, before, after))[:n]:
        kept = sum(facts.fact_present(x, a) for x in r["facts"])
        cells = [" ".join(t.split()).replace("|", "/") for t in (r["clause"], b, a)]
        out.append(f"| {cells[0]} | {cells[1]} | {cells[2]} | {kept}/{len(r['facts'])} |")
    return "\n".join(out)
