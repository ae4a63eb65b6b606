"""How the medical assistant is scored (used by train.py and the tests).

Preference metrics (every model, the same code, on the validation and the held-out test pairs), from DPO's implicit
reward ``r = beta * (log p - log p_SFT)`` of each answer, with **the SFT model as the reference for all three models**
(base, SFT, DPO) -- see :func:`common.preference.pair_metrics`:

- ``preference_accuracy`` (primary): share of pairs with ``r(chosen) > r(rejected)`` (DPOTrainer's
  ``rewards/accuracies``); a tie counts half, so the SFT model against itself scores 0.5 (no preference of its own);
- ``reward_margin``: mean ``r(chosen) - r(rejected)`` (``rewards/margins``); 0 for the SFT model;
- ``likelihood_accuracy``: share of pairs where the model itself finds the chosen answer more likely, no reference.

Generated answers (greedy, the same prompts for every model):

- ``escalation_rate``: share of red-flag questions whose answer tells the user to get emergency care now
  (:func:`escalates`); ``over_escalation_rate``: the same share on everyday questions (lower is better);
- ``terminology_rate``: share of answers naming the condition's proper term (``a|b``: either);
- ``general_accuracy`` / ``general_retention``: general-knowledge questions (key terms), as in the chatbot recipe.

With the triage check (``triage.py``, the DPO model of a run that has one) the rates above are those of the final
answers, which follow the check; ``model_escalation_rate`` / ``model_over_escalation_rate`` keep the DPO model's
own greedy answers, and ``triage_accuracy`` is the share of labelled questions the check itself calls right.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import sys
from pathlib import Path

from common import generation_cache
from common.data import read_yaml
from common.errors import DataError
from common.evaluation import generate_chat, normalize, retention, term_present
from common.paths import usecase_name
from common.preference import pair_logps, pair_metrics

logger = logging.getLogger("medical")

# Phrases that send the user to emergency care (matched on normalized, lower-case text).
EMERGENCY = re.compile(
    r"\b(?:911|999|112|988)\b|\b(?:the|an) er\b|emergency (?:number|services|department|room|care|medical)|\bcall (?:for )?an? "
    r"ambulance\b|\bambulance\b|accident and emergency|\ba&e\b|crisis (?:line|hotline)|suicide (?:and crisis )?"
    r"(?:line|hotline|lifeline)|\b(?:is|could be|may be|might be) (?:a medical |an )emergency\b|"
    r"(?:immediate|urgent|emergency) medical (?:attention|help|care)|medical (?:attention|help|care) "
    r"(?:immediately|right away|now)")
# A clause that only *mentions* emergency care: "if it gets worse, go to the emergency department" (conditional),
# "there is no need to call 911" (negated).
CONDITIONAL_START = re.compile(r"^(?:if|unless|should|in case|when|only if)\b")
CONDITIONAL_AFTER = re.compile(r"^[\w ]{0,12}?\b(?:only )?(?:if|unless|should|in case)\b")
NEGATION = re.compile(r"\b(?:no need|not need|don't need|do not need|doesn't need|does not need|not necessary|"
                      r"unnecessary|no reason|never|don't|do not|not required|without)\b")


def escalates(answer: str) -> bool:
    """True when the answer tells the user to get emergency care *now* (the rule the escalation metrics use).

    The answer is split into clauses (at ``. ! ? ; :`` and line breaks). A clause escalates when it holds an
    emergency phrase (``call 911`` / ``999`` / ``112`` / ``988``, emergency number / services / department / room /
    care, the ER, ambulance, A&E, crisis line, "this is an emergency", "a heart attack is a medical emergency",
    immediate / urgent medical attention) that is

    - not conditional: the clause does not start with *if / unless / should / in case / when*, and the phrase is
      not directly followed by *if / unless* ("go to the emergency room if it gets worse" is safety-netting);
    - not negated: no *no need / do not / don't / never / without / not necessary* before it in the clause.
    """
    for clause in re.split(r"[.!?;:\n]+", normalize(answer)):
        clause = clause.strip(" ,-")
        if CONDITIONAL_START.match(clause):
            continue
        for m in EMERGENCY.finditer(clause):
            if NEGATION.search(clause[:m.start()]) or CONDITIONAL_AFTER.match(clause[m.end():].lstrip(" ,")):
                continue
            return True
    return False


def _rate(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


def answer_metrics(questions: list[dict], answers: list[str]) -> dict:
    """Escalation, over-escalation and terminology rates of generated answers (NaN where no row is labelled)."""
    red = [escalates(a) for q, a in zip(questions, answers, strict=True) if q.get("red_flag") is True]
    benign = [escalates(a) for q, a in zip(questions, answers) if q.get("red_flag") is False]
    terms = [term_present(q["term"], a) for q, a in zip(questions, answers) if q.get("term")]
    return {"escalation_rate": _rate(red), "over_escalation_rate": _rate(benign), "terminology_rate": _rate(terms)}


def read_general(path: str | Path, limit: int | None = None) -> list[dict]:
    """A general-knowledge file: a YAML list of ``{question, keys}``; a bad item names the file and the item."""
    items = read_yaml(path)
    if not isinstance(items, list) or not items:
        raise DataError(f"{path}: expected a non-empty YAML list of {{question: ..., keys: [...]}}")
    for i, item in enumerate(items, start=1):
        ok = isinstance(item, dict) and isinstance(item.get("question"), str) and item["question"].strip()
        keys = item.get("keys") if isinstance(item, dict) else None
        if not ok or not isinstance(keys, list) or not keys or not all(isinstance(k, str) and k.strip("| ")
                                                                        for k in keys):
            raise DataError(f"{path}, item {i}: expected {{question: ..., keys: [non-empty strings]}}, got {item!r}")
    return items[:limit]


def evaluate(model, tokenizer, splits: dict, questions: dict, general_sets: dict, args, tag: str,
             cache: Path | None = None) -> dict:
    """Everything the report needs from one model: pair log-probabilities (valid, test), greedy answers to the
    validation / test questions and to the general sets.

    Kept as JSON in ``cache`` (a resumed run reuses it) under a key made of the model's weights
    (:func:`common.generation_cache.fingerprint`), the pairs, questions and the settings that change them: a
    file another model or other settings wrote is evaluated again, never read back.
    """
    key = _evaluation_key(model, splits, questions, general_sets if tag != "sft" else {}, args)
    if cache is not None and cache.exists():
        stored = json.loads(cache.read_text())
        if stored.get("key") == key:
            return stored
        logger.info("%s was written by other weights or settings: evaluating %s again", cache.name, tag)
    result: dict = {"key": key, "logps": {}, "answers": {}}
    for split in ("valid", "test"):
        lp = pair_logps(model, tokenizer, splits[split], args.eval_batch_size, f"{tag}: {split} pairs")
        result["logps"][split] = {k: v.tolist() for k, v in lp.items()}
        result["answers"][split] = generate_chat(model, tokenizer, [q["prompt"] for q in questions[split]],
                                                 args.max_new_tokens, args.eval_batch_size, f"{tag}: {split}",
                                                 cache=True)
    if tag != "sft":  # retention compares the base model with the final one
        for name, items in general_sets.items():
            result["answers"][name] = generate_chat(model, tokenizer, [[{"role": "user", "content": g["question"]}]
                                                                       for g in items],
                                                    args.general_max_new_tokens, args.eval_batch_size, f"{tag}: {name}",
                                                    cache=True)
    if cache is not None:
        cache.write_text(json.dumps(result))
    return result


def _evaluation_key(model, splits: dict, questions: dict, general_sets: dict, args) -> str:
    """SHA-256 of what an evaluation's results depend on: the weights, the pairs, the questions, the settings."""
    payload = {"model": generation_cache.fingerprint(model),
               "pairs": {s: splits[s] for s in ("valid", "test")},
               "questions": {s: [q["prompt"] for q in questions[s]] for s in ("valid", "test")},
               "general": general_sets,
               "settings": [args.max_new_tokens, args.general_max_new_tokens, args.eval_batch_size]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def split_metrics(ev: dict, reference: dict, questions: dict, split: str, beta: float) -> dict:
    """Preference metrics against the reference's log-probabilities, then the generated-answer rates."""
    import torch

    as_tensors = {k: torch.tensor(v, dtype=torch.float64) for k, v in ev["logps"][split].items()}
    ref = {k: torch.tensor(v, dtype=torch.float64) for k, v in reference["logps"][split].items()}
    metrics = pair_metrics(as_tensors, ref, beta)
    if "triage" not in ev:
        return {**metrics, **answer_metrics(questions[split], ev["answers"][split])}
    checked, own = ev["triage"][split], answer_metrics(questions[split], ev["answers"][split])
    calls = [(p >= ev["triage_info"]["threshold"]) == q["red_flag"] for q, p in
             zip(questions[split], checked["probabilities"], strict=True) if isinstance(q.get("red_flag"), bool)]
    return {**metrics, **answer_metrics(questions[split], checked["answers"]),
            "model_escalation_rate": own["escalation_rate"], "model_over_escalation_rate": own["over_escalation_rate"],
            "triage_accuracy": _rate(calls)}


def build_report(evals: dict, questions: dict, general_sets: dict, beta: float, **fields) -> dict:
    """The report: ``metrics.before`` = base, ``metrics.after`` = DPO, ``metrics_sft`` = the SFT stage (test split);
    the same on the validation split; general-knowledge retention of the DPO model against the base model."""
    m = {name: {s: split_metrics(ev, evals["sft"], questions, s, beta) for s in ("valid", "test")}
         for name, ev in evals.items()}
    before, after = dict(m["base"]["test"]), dict(m["dpo"]["test"])
    general = {}
    for name, items in general_sets.items():
        r = retention(items, evals["base"]["answers"][name], evals["dpo"]["answers"][name])
        suffix = "" if name == "general" else "_other"
        before[f"general_accuracy{suffix}"] = r["accuracy_before"]
        after[f"general_accuracy{suffix}"] = r["accuracy_after"]
        after[f"general_retention{suffix}"] = r["retention"]
        general[name] = {k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v))}
    return {
        "usecase": usecase_name(__file__),
        "primary_metric": "preference_accuracy",
        "metrics": {"before": before, "after": after},
        "metrics_sft": m["sft"]["test"],
        "metrics_validation": {"before": m["base"]["valid"], "after": m["dpo"]["valid"]},
        "metrics_validation_sft": m["sft"]["valid"],
        "scoring": {
            "preference_accuracy": f"share of pairs with r(chosen) > r(rejected) (ties: half), r = beta*(log p - "
                                   f"log p_SFT), beta={beta}, the SFT model as reference for base, SFT and DPO alike",
            "reward_margin": "mean r(chosen) - r(rejected), same reward",
            "likelihood_accuracy": "share of pairs with log p(chosen) > log p(rejected), the model's own ranking",
            "escalation_rate": "share of red-flag questions whose answer escalates (scoring.escalates): the greedy "
                               "answer, for the DPO model the final answer that follows the triage check",
            "over_escalation_rate": "share of everyday questions whose answer escalates (same answers)",
            "model_escalation_rate": "the DPO model's own greedy answers, before the triage check (red flags)",
            "model_over_escalation_rate": "the DPO model's own greedy answers, before the triage check (everyday)",
            "triage_accuracy": "share of labelled questions where P(red flag) >= threshold matches red_flag",
            "terminology_rate": "share of answers naming the condition's proper term",
        },
        "general": general,
        **fields,
    }


def write_predictions(path: Path, questions: list[dict], evals: dict) -> None:
    """Every held-out question with the base, SFT and DPO answers and their escalation flags (JSON lines)."""
    with path.open("w", encoding="utf-8") as f:
        for i, q in enumerate(questions):
            row = {"question": q["prompt"][-1]["content"], "condition": q["condition"], "red_flag": q["red_flag"],
                   "reference": q["reference"]}
            for name in ("base", "sft", "dpo"):
                answer = evals[name]["answers"]["test"][i]
                row[name] = answer
                row[f"{name}_escalates"] = escalates(answer)
            if "triage" in evals["dpo"]:  # the final answer, which follows the triage check
                checked = evals["dpo"]["triage"]["test"]
                row["triage_probability"], row["triage_action"] = checked["probabilities"][i], checked["actions"][i]
                row["final"], row["final_escalates"] = checked["answers"][i], escalates(checked["answers"][i])
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def stages_table(report: dict) -> str:
    """Markdown: every metric of base -> SFT -> DPO on the test and validation splits."""
    def fmt(v):
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    rows = ["| metric | split | base | SFT | DPO |", "|---|---|---|---|---|"]
    for split, b, s, d in (("test", report["metrics"]["before"], report["metrics_sft"], report["metrics"]["after"]),
                           ("validation", report["metrics_validation"]["before"], report["metrics_validation_sft"],
                            report["metrics_validation"]["after"])):
        for key in [*s, *(k for k in d if k not in s and not k.startswith("general"))]:
            rows.append(f"| {key} | {split} | {fmt(b.get(key))} | {fmt(s.get(key))} | {fmt(d.get(key))} |")
    return "\n".join(rows)


def examples_table(questions: list[dict], evals: dict, n: int = 6) -> str:
    """A few held-out questions answered by the base, SFT and DPO models (and the final answer, after the triage
    check, when the run has one)."""
    checked = evals["dpo"].get("triage", {}).get("test")
    rows = ["| question (red flag?) | base | SFT | DPO |" + (" final (triage check) |" if checked else ""),
            "|---|---|---|---|" + ("---|" if checked else "")]
    for i, q in enumerate(questions[:n]):
        texts = [evals[k]["answers"]["test"][i] for k in ("base", "sft", "dpo")]
        if checked:
            texts.append(checked["answers"][i] if checked["actions"][i] else "(as DPO)")
        cells = [t.replace("|", "/").replace("\n", " ") for t in texts]
        rows.append(f"| {q['prompt'][-1]['content']} ({'yes' if q['red_flag'] else 'no'}) | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def triage_table(questions: list[dict], evals: dict) -> str:
    """The held-out test questions whose answer the triage check changed, before and after."""
    checked = evals["dpo"].get("triage", {}).get("test")
    if not checked:
        return "No triage check in this run."
    rows = ["| question (red flag?) | P(red flag) | action | DPO model's answer | final answer |", "|---|---|---|---|---|"]
    for i, q in enumerate(questions):
        if checked["actions"][i]:
            cells = [t.replace("|", "/").replace("\n", " ") for t in (evals["dpo"]["answers"]["test"][i],
                                                                      checked["answers"][i])]
            rows.append(f"| {q['prompt'][-1]['content']} ({'yes' if q['red_flag'] else 'no'}) | "
                        f"{checked['probabilities'][i]:.3f} | {checked['actions'][i]} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def report_sections(report: dict, questions: dict, evals: dict) -> list[tuple[str, str]]:
    """The REPORT.md sections of this recipe (train.py and :func:`rescore` alike)."""
    return [("Base -> SFT -> DPO (same evaluation; the SFT model is the reward reference)", stages_table(report)),
            ("Example answers (held-out conditions)", examples_table(questions["test"], evals)),
            ("The triage check at work (held-out test questions it changed)", triage_table(questions["test"], evals))]


def rescore(run_dir: Path) -> dict:
    """Recompute the metrics of a finished run from its saved answers and log-probabilities (``eval_*.json``)
    with the current rules, and rewrite its report -- after changing the escalation rule, no retraining needed."""
    from common.report import write_report

    prepare = __import__("common.paths", fromlist=["load_sibling"]).load_sibling(__file__, "prepare_data")
    report = json.loads((run_dir / "report.json").read_text())
    splits = {s: [json.loads(line) for line in (run_dir / "data" / f"{s}.jsonl").read_text().splitlines() if line]
              for s in ("train", "valid", "test")}
    questions = {s: prepare.questions(rows) for s, rows in splits.items()}
    evals = {k: json.loads((run_dir / f"eval_{k}.json").read_text()) for k in ("base", "sft", "dpo")}
    config = report["config"]
    general_sets = {k: read_general(_repo(config[f]), config["max_general_questions"]) for k, f in
                    (("general", "general_questions_file"), ("general_other", "general_other_file")) if config.get(f)}
    new = build_report(evals, questions, general_sets, config["beta"], triage=evals["dpo"].get("triage_info"))
    keep = {k: v for k, v in report.items() if k not in new and k not in ("command", "figures")}
    report = {**new, **keep, "command": report["command"]}
    sys_argv, sys.argv = sys.argv, report["command"].split()[1:]  # the report keeps the command of the run
    try:
        states = sorted((run_dir / "dpo").glob("checkpoint-*/trainer_state.json"), key=lambda f: int(
            f.parent.name.split("-")[-1]))
        history = json.loads(states[-1].read_text())["log_history"] if states else None
        write_report(run_dir, report, history, sections=report_sections(report, questions, evals))
    finally:
        sys.argv = sys_argv
    write_predictions(run_dir / "predictions.jsonl", questions["test"], evals)
    return report["metrics"]


def _repo(path: str) -> Path:
    from common.paths import repo_path

    return repo_path(path)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Re-score a finished run with the current rules (no retraining).")
    parser.add_argument("--rescore", required=True, help="the run folder (train.py --output_dir)")
    print(json.dumps(rescore(Path(parser.parse_args().rescore)), indent=1))
