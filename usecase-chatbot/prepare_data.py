"""Turn the Brightboard help center into chat training data.

    python usecase-chatbot/prepare_data.py --out_dir usecase-chatbot/data/processed

Reads ``data/help_center.md`` (every statement tagged ``{#id}``) and ``data/questions.yaml`` (how users ask
about each statement) and writes three JSONL files of ``messages`` conversations:

- ``train.jsonl``: every statement, asked in its training phrasings (data expansion: 6 phrasings each, 4 close to the docs' wording and 2 free);
- ``valid.jsonl``: held-out phrasings per statement (two in ``questions.yaml``: one close to the training
  wording, one as free as the test's), where settings are compared and early stopping reads the eval loss;
- ``test.jsonl``:  two more held-out phrasings per statement, never trained on, with ``key_terms``.

Facts vs phrasings: every fact is trained (a support bot must know all of its documentation); the held-out
splits hold out *phrasings*, so the test measures whether the model learned the fact rather than a string.

Bring your own product: write your docs in the same ``- {#id} statement`` form and your questions in the same
YAML shape, and point ``--docs`` / ``--questions`` (or ``docs_file`` / ``questions_file`` in config.yaml) at them.
"""

from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

from common.data import read_text, read_yaml, write_jsonl_splits
from common.errors import ConfigError, DataError, run_main

HERE = Path(__file__).resolve().parent
STATEMENT = re.compile(r"^- \{#([\w-]+)\} (.+)$", re.MULTILINE)


def read_statements(docs_file: Path) -> dict[str, str]:
    """``{id: statement}`` from the help-center markdown; duplicated ids are an error."""
    found = STATEMENT.findall(read_text(docs_file))
    statements: dict[str, str] = {}
    for fact_id, text in found:
        if fact_id in statements:
            raise DataError(f"{docs_file}: statement id '{fact_id}' appears twice")
        statements[fact_id] = text.strip()
    if not statements:
        raise DataError(f"{docs_file}: no '- {{#id}} statement' lines found (write each fact as "
                        f"'- {{#some-id}} The statement.')")
    return statements


def _phrasings(value, where: str, split: str) -> list[str]:
    """A split's phrasings as a list of non-empty strings (``valid`` may be one string)."""
    items = [value] if isinstance(value, str) and split == "valid" else value
    if not isinstance(items, list) or not items:
        raise DataError(f"{where}: '{split}' must be a non-empty list of question strings")
    for j, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            raise DataError(f"{where}: {split}[{j}] is {item!r}; every phrasing must be a non-empty question "
                            f"string (quote numbers)")
    return items


def _check_keys(keys, where: str) -> None:
    from common.evaluation import term_alternatives

    if not isinstance(keys, list) or not keys:
        raise DataError(f"{where}: 'keys' must be a non-empty list of key terms, e.g. keys: [\"$9|9 dollars\"]")
    for key in keys:
        alternatives = key.split("|") if isinstance(key, str) else []
        if not alternatives or len(term_alternatives(key)) != len(alternatives):
            raise DataError(f"{where}: key {key!r} is empty or has an empty '|' alternative (it would match "
                            f"any answer); write the term, or 'a|b' for two accepted spellings")


def _norm_phrase(text: str) -> str:
    return " ".join(text.lower().split()).rstrip("?.! ")


def read_questions(questions_file: Path, statements: dict[str, str]) -> dict[str, dict]:
    """Questions per statement id, checked against the docs (shape, unknown ids, missing splits, key terms,
    phrasings repeated across splits); any problem raises a :class:`DataError` naming the file and entry."""
    from common.evaluation import key_terms_score

    questions = read_yaml(questions_file)
    if questions is None:
        raise DataError(f"{questions_file}: the file is empty; expected a mapping of statement id -> "
                        f"{{keys, train, valid, test}}")
    if not isinstance(questions, dict):
        raise DataError(f"{questions_file}: expected a mapping of statement id -> {{keys, train, valid, test}}, "
                        f"got a {type(questions).__name__} (write 'fact-id:' entries, not '- ' list items)")
    for fact_id, q in questions.items():
        where = f"{questions_file}, entry '{fact_id}'"
        if fact_id not in statements:
            raise DataError(f"{where}: no statement with this id in the docs")
        if not isinstance(q, dict):
            raise DataError(f"{where}: expected a mapping with keys, train, valid and test, got {q!r}")
        for key in ("keys", "train", "valid", "test"):
            if key not in q or q[key] in (None, "", []):
                raise DataError(f"{where}: missing or empty '{key}' (every entry needs keys, train, valid, test)")
        _check_keys(q["keys"], where)
        seen: dict[str, str] = {}
        for split in ("train", "valid", "test"):
            for phrase in _phrasings(q[split], where, split):
                other = seen.setdefault(_norm_phrase(phrase), split)
                if other != split:
                    raise DataError(f"{where}: the phrasing {phrase!r} is in both '{other}' and '{split}'; "
                                    f"held-out phrasings must never be trained on (it would leak test data)")
        if not key_terms_score(statements[fact_id], q["keys"]):
            raise DataError(f"{where}: key terms {q['keys']} do not all occur in the statement itself")
    missing = set(statements) - set(questions)
    if missing:
        raise DataError(f"{questions_file}: no questions for statements {sorted(missing)}")
    return questions


def read_question_list(path: Path, with_keys: bool, limit: int | None = None) -> list:
    """A general-question file: a YAML list of question strings (replay) or of ``{question, keys}`` (scored)."""
    items = read_yaml(path)
    shape = "{question: ..., keys: [...]}" if with_keys else "a question string"
    if not isinstance(items, list) or not items:
        got = "an empty file" if items is None else f"a {type(items).__name__}"
        raise DataError(f"{path}: expected a non-empty YAML list, each item {shape}; got {got}")
    for i, item in enumerate(items, start=1):
        where = f"{path}, item {i}"
        if not with_keys:
            if not isinstance(item, str) or not item.strip():
                raise DataError(f"{where}: {item!r} is not a question string (write '- What is ...?')")
            continue
        if not isinstance(item, dict) or not isinstance(item.get("question"), str) or not item["question"].strip():
            raise DataError(f"{where}: expected {shape} with a non-empty question, got {item!r}")
        _check_keys(item.get("keys"), where)
    return items[:limit]


def read_unanswerable(path: Path, questions: dict[str, dict]) -> dict:
    """Questions the docs do not answer (``{decline, train, valid, test}``), checked: a non-empty decline answer,
    non-empty question lists, no question in two splits, none that repeats a documented fact's phrasing."""
    data = read_yaml(path)
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise DataError(f"{path}: expected a mapping with decline, train, valid and test; got {got}")
    decline = data.get("decline")
    if not isinstance(decline, str) or not decline.strip():
        raise DataError(f"{path}: 'decline' must be the (non-empty) answer the bot gives when the docs do not say")
    answerable = {_norm_phrase(p): fact_id for fact_id, q in questions.items()
                  for split in ("train", "valid", "test") for p in ([q[split]] if isinstance(q[split], str) else q[split])}
    seen: dict[str, str] = {}
    for split in ("train", "valid", "test"):
        for phrase in _phrasings(data.get(split), str(path), split):
            other = seen.setdefault(_norm_phrase(phrase), split)
            if other != split:
                raise DataError(f"{path}: the question {phrase!r} is in both '{other}' and '{split}'; held-out "
                                f"questions must never be trained on")
            if _norm_phrase(phrase) in answerable:
                raise DataError(f"{path}: {split} question {phrase!r} is a phrasing of the documented fact "
                                f"'{answerable[_norm_phrase(phrase)]}' in the questions file; it has an answer")
    return data


def conversation(system_prompt: str, question: str, answer: str) -> list[dict]:
    return [{"role": "system", "content": system_prompt},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer}]


def build_splits(docs_file: Path, questions_file: Path, system_prompt: str, seed: int = 0,
                 max_facts: int | None = None, unanswerable_file: Path | None = None,
                 max_unanswerable: int | None = None, train_declines: bool = False) -> dict[str, list[dict]]:
    """Return ``{"train", "valid", "test", "decline_train", "decline_valid", "decline_test"}`` lists of
    ``messages`` rows.

    ``max_facts`` keeps the first N statements of the docs (a reduced run, e.g. the CI tier); all by default.
    With ``unanswerable_file``, its held-out questions make ``decline_valid`` / ``decline_test`` (scored for
    abstention) and its training questions ``decline_train`` (the router learns from them that they are product
    questions); with ``train_declines`` those also join ``train`` with the decline answer (``max_unanswerable``:
    the first N of each split).
    """
    statements = read_statements(docs_file)
    questions = read_questions(questions_file, statements)
    if max_facts:
        statements = dict(list(statements.items())[:max_facts])
    splits: dict[str, list[dict]] = {"train": [], "valid": [], "test": [], "decline_train": [], "decline_valid": [],
                                     "decline_test": []}
    if unanswerable_file:
        unanswerable = read_unanswerable(unanswerable_file, questions)
        targets = [("train", "train")] if train_declines else []
        for split, target in [*targets, ("train", "decline_train"), ("valid", "decline_valid"), ("test", "decline_test")]:
            for question in unanswerable[split][:max_unanswerable]:
                splits[target].append({"fact_id": "(not in the docs)",
                                       "messages": conversation(system_prompt, question, unanswerable["decline"])})
    for fact_id, answer in statements.items():
        q = questions[fact_id]
        for question in q["train"]:
            splits["train"].append({"fact_id": fact_id, "messages": conversation(system_prompt, question, answer)})
        for question in [q["valid"]] if isinstance(q["valid"], str) else q["valid"]:
            splits["valid"].append({"fact_id": fact_id, "key_terms": q["keys"],
                                    "messages": conversation(system_prompt, question, answer)})
        for question in q["test"]:
            splits["test"].append({"fact_id": fact_id, "key_terms": q["keys"],
                                   "messages": conversation(system_prompt, question, answer)})
    random.Random(seed).shuffle(splits["train"])
    return splits


def first_sentences(text: str, n: int) -> str:
    """The first ``n`` sentences of ``text`` (all of it when ``n`` is 0)."""
    return " ".join(re.split(r"(?<=[.!?])\s+", text.strip())[:n]) if n else text


def build_replay(model, tokenizer, questions: list[str], system_prompt: str, with_system_prompt: bool = True,
                 sentences: int = 1, max_new_tokens: int = 48, batch_size: int = 16):
    """The base model's own (first-sentence) answers to general questions, as prompt/completion rows.

    These "replay" rows join the training data against forgetting. Every other question is asked under the
    bot's system prompt: general questions must keep their answers whatever the system prompt, so the adapter
    learns to act on product questions only. Short answers: the answer is nearly always in the first sentence,
    and short rows train faster.
    """
    from datasets import Dataset

    from common.evaluation import generate_chat

    system = [{"role": "system", "content": system_prompt}]
    prompts = [(system if i % 2 and with_system_prompt else []) + [{"role": "user", "content": q}]
               for i, q in enumerate(questions)]
    answers = generate_chat(model, tokenizer, prompts, max_new_tokens, batch_size, "base: replay", cache=True)
    answers = [first_sentences(a, sentences) for a in answers]
    return Dataset.from_list([{"prompt": p, "completion": [{"role": "assistant", "content": a}], "replay": True}
                              for p, a in zip(prompts, answers) if a])


def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=Path, default=HERE / "data" / "help_center.md")
    parser.add_argument("--questions", type=Path, default=HERE / "data" / "questions.yaml")
    parser.add_argument("--config", type=Path, default=HERE / "config.yaml", help="for the system prompt")
    parser.add_argument("--out_dir", type=Path, default=HERE / "data" / "processed")
    args = parser.parse_args(argv)
    config = read_yaml(args.config)
    if not isinstance(config, dict) or not isinstance(config.get("system_prompt"), str):
        raise ConfigError(f"{args.config}: no 'system_prompt' string (needed for the conversations)")
    system_prompt = config["system_prompt"]
    paths = write_jsonl_splits(build_splits(args.docs, args.questions, system_prompt), args.out_dir)
    for name, path in paths.items():
        print(f"{name:5s} {sum(1 for _ in path.open()):4d} conversations -> {path}")
    return paths


if __name__ == "__main__":
    run_main(main)
