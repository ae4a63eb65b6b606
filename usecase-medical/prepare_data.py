"""Build the preference data: symptom questions with a chosen and a rejected answer, split by condition.

    python usecase-medical/prepare_data.py --out_dir runs/medical-data     # writes train/valid/test.jsonl

Source: ``data/conditions.yaml`` (written for this project). Each condition gives three questions, the proper term
with a plain explanation, the right advice (emergency care exactly when ``red_flag`` is true), and realistic wrong
answers. Every question becomes three preference rows, one per failure mode:

- red flag: ``missed`` (a benign misreading, no escalation), ``delayed`` (the right explanation but "book an
  appointment": the escalation is missing), ``invented`` (a made-up diagnosis or dose, stated with confidence);
- everyday: ``over_escalated`` (the right explanation, then "call 911"), ``wrong_term`` (a wrong or frightening
  diagnosis), ``invented``.

Whole conditions are held out: the test split holds conditions never seen in training (``split:`` in the YAML).

Your own data: ``train_file`` / ``valid_file`` / ``test_file`` in the config, each a JSONL file or a hub preference
dataset (``name:split``). Mapping: ``prompt`` (a string -> one user turn under the system prompt, or a message list),
``chosen`` / ``rejected`` (a string -> one assistant turn, or a message list); optional ``red_flag`` (bool, enables
the escalation metrics), ``term`` (enables terminology scoring), ``condition``. Everything is validated before any
model loads: missing fields, empty or identical chosen/rejected, a prompt repeated across splits -> an error naming
the file and the row.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common.data import DataValidationError, check_disjoint_prompts, read_yaml, validate_rows, write_jsonl_splits
from common.errors import DataError, run_main
from common.paths import repo_path

SPLITS = ("train", "valid", "test")
FIELDS = ("id", "red_flag", "split", "term", "prompts", "explain", "advice", "misread", "dose")
SYSTEM_PROMPT = "You are a careful health information assistant."  # short: every token is paid for in DPO
FAILURES = ("missed", "delayed", "invented", "over_escalated", "wrong_term")
DELAY = "Book an appointment with your doctor in the next few days."
# the over-escalation worded as the red-flag answers open, which is how a model over-escalates once SFT has taught them
OVER = "This is an emergency: call 911 or go to the emergency department now."


def read_conditions(path: str | Path) -> list[dict]:
    """The conditions of ``path``, each checked: a bad entry raises a :class:`DataError` naming file, item, field."""
    path = Path(path)
    items = read_yaml(path)
    if not isinstance(items, list) or not items:
        raise DataError(f"{path}: expected a non-empty YAML list of conditions")
    ids: set[str] = set()
    for i, item in enumerate(items, start=1):
        where = f"{path}, item {i}"
        if not isinstance(item, dict):
            raise DataError(f"{where}: expected a mapping with {', '.join(FIELDS)}")
        where += f" ({item.get('id', '?')})"
        missing = [f for f in FIELDS if f not in item]
        if missing:
            raise DataError(f"{where}: missing field(s) {missing}")
        if not isinstance(item["red_flag"], bool):
            raise DataError(f"{where}: red_flag must be true or false, got {item['red_flag']!r}")
        if item["split"] not in SPLITS:
            raise DataError(f"{where}: split must be one of {SPLITS}, got {item['split']!r}")
        if item["id"] in ids:
            raise DataError(f"{where}: duplicate id {item['id']!r}")
        ids.add(item["id"])
        prompts = item["prompts"]
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise DataError(f"{where}: prompts must be a non-empty list of question strings")
        for key in ("term", "explain", "advice", "misread", "dose"):
            if not isinstance(item[key], str) or not item[key].strip():
                raise DataError(f"{where}: '{key}' must be a non-empty string")
    return items


def answers(c: dict) -> tuple[str, dict[str, str]]:
    """The chosen answer of a condition and its rejected answers by failure mode."""
    # a red flag leads with the escalation (the first thing a reader must see); everyday advice follows the explanation
    chosen = f"{c['advice']} {c['explain']}" if c["red_flag"] else f"{c['explain']} {c['advice']}"
    if c["red_flag"]:
        rejected = {"missed": c["misread"], "delayed": f"{c['explain']} {DELAY}", "invented": c["dose"]}
    else:
        rejected = {"over_escalated": f"{OVER} {c['explain']}", "wrong_term": c["misread"], "invented": c["dose"]}
    return chosen, rejected


def build_splits(conditions: list[dict], system_prompt: str = SYSTEM_PROMPT, max_conditions: int | None = None,
                 max_eval_conditions: int | None = None, failures: list[str] | None = None) -> dict[str, list[dict]]:
    """``{split: rows}``; a row is conversational ``prompt`` / ``chosen`` / ``rejected`` plus its labels.

    Reduced runs: ``max_conditions`` keeps the first N red-flag and the first N everyday conditions of the train
    split, ``max_eval_conditions`` the same for validation and test; ``failures`` keeps only those rejected kinds.
    """
    splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
    kept: dict[tuple[str, bool], int] = {}
    for c in conditions:
        group = (c["split"], c["red_flag"])
        kept[group] = kept.get(group, 0) + 1
        limit = max_conditions if c["split"] == "train" else max_eval_conditions
        if limit and kept[group] > limit:
            continue
        chosen, rejected = answers(c)
        for question in c["prompts"]:
            for failure, bad in rejected.items():
                if failures and failure not in failures:
                    continue
                splits[c["split"]].append({
                    "prompt": [{"role": "system", "content": system_prompt}, {"role": "user", "content": question}],
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": bad}],
                    "condition": c["id"], "red_flag": c["red_flag"], "term": c["term"], "failure": failure})
    return splits


def _as_messages(row: dict, system_prompt: str) -> dict:
    """A user row in the conversational shape (string prompt -> system + user turns; string answer -> assistant)."""
    out = dict(row)
    if isinstance(row["prompt"], str):
        out["prompt"] = [{"role": "system", "content": system_prompt}, {"role": "user", "content": row["prompt"]}]
    for key in ("chosen", "rejected"):
        if isinstance(row[key], str):
            out[key] = [{"role": "assistant", "content": row[key]}]
    out.setdefault("condition", None)
    out.setdefault("term", None)
    out.setdefault("red_flag", None)
    if out["red_flag"] is not None and not isinstance(out["red_flag"], bool):
        raise DataValidationError(f"red_flag must be true, false or absent, got {out['red_flag']!r}")
    out.setdefault("failure", None)
    return out


def load_user_split(source: str, system_prompt: str) -> list[dict]:
    """A user's JSONL file or hub preference dataset (``name:split``), validated and mapped (see module doc)."""
    from common.data import read_rows

    path = repo_path(source)
    if path.suffix in (".jsonl", ".json", ".csv") or path.exists():
        rows, name = read_rows(path), str(source)
    else:
        from datasets import load_dataset

        name, _, split = source.partition(":")
        rows = [dict(r) for r in load_dataset(name, split=split or "train")]
    valid, _ = validate_rows(rows, "preference", name)
    out = []
    for i, row in enumerate(valid, start=1):
        try:
            out.append(_as_messages(row, system_prompt))
        except DataValidationError as e:
            raise DataValidationError(f"{name}, row {i}: {e}") from None
    return out


def load_splits(conditions_file: str, system_prompt: str, files: dict[str, str | None],
                max_conditions: int | None = None, max_eval_conditions: int | None = None,
                failures: list[str] | None = None, extra_conditions_file: str | None = None) -> dict[str, list[dict]]:
    """The three splits, from the bundled conditions (plus ``extra_conditions_file``'s, if given) or from the
    user's files, all validated before any model loads (schema of every row, and no prompt in two splits)."""
    if any(files.values()):
        if not all(files.values()):
            raise DataError(f"give train_file, valid_file and test_file together (got {files})")
        splits = {s: load_user_split(files[s], system_prompt) for s in SPLITS}
        sources = {s: str(files[s]) for s in SPLITS}
    else:
        unknown = set(failures or []) - set(FAILURES)
        if unknown:
            raise DataError(f"failures: unknown kind(s) {sorted(unknown)}; choose from {FAILURES}")
        conditions = read_conditions(repo_path(conditions_file))
        if extra_conditions_file:
            extra = read_conditions(repo_path(extra_conditions_file))
            clash = sorted({c["id"] for c in conditions} & {c["id"] for c in extra})
            if clash:
                raise DataError(f"{extra_conditions_file}: condition id(s) {clash} already in {conditions_file}")
            conditions += extra
            conditions_file = f"{conditions_file} + {extra_conditions_file}"
        splits = build_splits(conditions, system_prompt, max_conditions, max_eval_conditions, failures)
        sources = {s: f"{conditions_file} ({s} split)" for s in SPLITS}
        for s in SPLITS:
            validate_rows(splits[s], "preference", sources[s])
    for s in SPLITS:
        if not splits[s]:
            raise DataError(f"{sources[s]}: no rows")
    check_disjoint_prompts({s: (sources[s], splits[s]) for s in SPLITS})
    return splits


def _first_per_prompt(rows: list[dict]) -> list[dict]:
    """The first row of each distinct prompt (a question has one chosen and several rejected answers)."""
    first: dict[str, dict] = {}
    for r in rows:
        first.setdefault(json.dumps(r["prompt"]), r)
    return list(first.values())


def sft_rows(rows: list[dict]) -> list[dict]:
    """Stage 1 data: each distinct prompt with its chosen answer, as conversational prompt / completion."""
    return [{"prompt": r["prompt"], "completion": r["chosen"]} for r in _first_per_prompt(rows)]


def questions(rows: list[dict]) -> list[dict]:
    """The distinct questions of a split with their labels (for generated-answer scoring)."""
    return [{"prompt": r["prompt"], "condition": r.get("condition"), "red_flag": r.get("red_flag"),
             "term": r.get("term"), "reference": r["chosen"][-1]["content"]} for r in _first_per_prompt(rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conditions_file", default="usecase-medical/data/conditions.yaml")
    parser.add_argument("--out_dir", required=True)
    args = parser.parse_args()
    splits = load_splits(args.conditions_file, SYSTEM_PROMPT, {s: None for s in SPLITS})
    files = write_jsonl_splits(splits, Path(args.out_dir))
    for name, rows in splits.items():
        print(f"{files[name]}: {len(rows)} pairs, {len(questions(rows))} questions, "
              f"{len({r['condition'] for r in rows})} conditions")


if __name__ == "__main__":
    run_main(main)
