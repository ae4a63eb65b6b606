"""Load datasets and validate them against a recipe's schema before any training starts.

Sources: a local ``.jsonl`` / ``.json`` / ``.csv`` file or a hub dataset id (``name`` or ``name:split``).
Every problem is reported with the file, the row (1-based line for JSONL) and what is wrong, e.g.::

    data/train.jsonl, row 17: messages[2].role is 'asistant'; expected one of system, user, assistant

Schemas (TRL's dataset formats):

- ``messages``: a list of ``{"role", "content"}`` turns ending with an assistant turn;
- ``prompt_completion``: ``prompt`` and ``completion`` (both strings, or both message lists);
- ``preference``: ``prompt``, ``chosen`` and ``rejected``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable
from pathlib import Path

from datasets import Dataset

from common.errors import DataError

ROLES = ("system", "user", "assistant")
MAX_LISTED = 10


class DataValidationError(DataError):
    """Bad input data; the message names the source, the row(s) and the problem."""


class DataFileMissing(DataError, FileNotFoundError):
    """A data file that does not exist (a :class:`DataError` that is also a ``FileNotFoundError``)."""


def _not_utf8(path: Path, e: UnicodeDecodeError) -> DataValidationError:
    line = e.object[:e.start].count(b"\n") + 1
    return DataValidationError(f"{path}, line {line}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at byte offset "
                               f"{e.start}); save the file as UTF-8 (in Excel: CSV UTF-8)")


def read_text(path: str | Path) -> str:
    """The UTF-8 text of a data file (with or without a byte-order mark; any line ending); a missing file, a folder
    or non-UTF-8 bytes raise a :class:`DataError` naming the file (and the line of the first bad byte).

    Every text file a recipe takes is read through here (or :func:`read_csv`, :func:`read_jsonl`,
    :func:`read_yaml`), so that each reads the same encodings and fails the same way."""
    path = Path(path)
    if not path.exists():
        raise DataFileMissing(f"{path}: no such file")
    if not path.is_file():
        raise DataValidationError(f"{path}: is a folder, not a file")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")  # a byte-order mark (Excel's "CSV UTF-8") is dropped, not read as text
    except UnicodeDecodeError as e:
        raise _not_utf8(path, e) from None


def read_yaml(path: str | Path):
    """Parse a YAML data file; a syntax error raises a :class:`DataError` with the file and the line."""
    import yaml

    text = read_text(path)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        start = getattr(e, "context_mark", None)
        if start is not None and mark is not None and start.line != mark.line:
            where += f" (in what starts at line {start.line + 1})"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise DataValidationError(f"{path}{where}: YAML syntax error ({problem}); fix the YAML there "
                                  f"(quote strings holding ':' or '#', close brackets)") from None


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """``(line number, object)`` of every non-blank line of a JSONL file; a bad line raises with file and line."""
    rows = []
    for i, line in enumerate(read_text(path).split("\n"), start=1):  # not splitlines: JSON may hold U+2028
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataValidationError(f"{path}, row {i}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise DataValidationError(f"{path}, row {i}: expected a JSON object, got {type(row).__name__}")
        rows.append((i, row))
    return rows


def read_csv(path: str | Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """The header and ``(line number, row)`` of every row of a CSV file (read as :func:`read_text` reads)."""
    import io

    try:
        reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
        rows = [(reader.line_num, row) for row in reader]
    except csv.Error as e:
        raise DataValidationError(f"{path}, line {reader.line_num}: not valid CSV ({e})") from None
    return [name.strip() for name in reader.fieldnames or []], rows


def write_jsonl_splits(splits: dict[str, list[dict]], out_dir: str | Path, write: bool = True) -> dict[str, Path]:
    """``out_dir/<split>.jsonl`` for every split (the exact rows trained and scored, kept with the run); returns the
    paths. ``write=False`` only names them: under ``accelerate launch`` the main process writes, the others read."""
    out_dir = Path(out_dir)
    paths = {name: out_dir / f"{name}.jsonl" for name in splits}
    if write:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, rows in splits.items():
            paths[name].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return paths


def read_rows(source: str | Path) -> list[dict]:
    """Read a JSONL/JSON/CSV file into a list of dicts; malformed lines raise with file and line number."""
    path = Path(source)
    if not path.exists():
        raise DataFileMissing(f"{path}: no such file")
    if path.suffix == ".jsonl":
        return [row for _, row in read_jsonl(path)]
    if path.suffix == ".json":
        try:
            data = json.loads(read_text(path))
        except json.JSONDecodeError as e:
            raise DataValidationError(f"{path}, line {e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(data, list):
            raise DataValidationError(f"{path}: expected a JSON list of objects")
        return data
    if path.suffix == ".csv":
        return [row for _, row in read_csv(path)[1]]
    raise DataValidationError(f"{path}: unsupported file type '{path.suffix}' (use .jsonl, .json or .csv)")


def _check_messages(msgs, field: str, need_last_assistant: bool) -> str | None:
    if not isinstance(msgs, list) or not msgs:
        return f"'{field}' must be a non-empty list of {{role, content}} turns"
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            return f"{field}[{j}] must be an object with 'role' and 'content'"
        if m["role"] not in ROLES:
            return f"{field}[{j}].role is {m['role']!r}; expected one of {', '.join(ROLES)}"
        if not isinstance(m["content"], str) or not m["content"].strip():
            return f"{field}[{j}].content is empty or not a string"
    if need_last_assistant and msgs[-1]["role"] != "assistant":
        return f"the last turn of '{field}' must be the assistant's answer (got {msgs[-1]['role']!r})"
    return None


def _check_text_or_messages(row: dict, field: str, as_answer: bool) -> str | None:
    value = row.get(field)
    if value is None:
        return f"missing field '{field}'"
    if isinstance(value, str):
        return None if value.strip() else f"'{field}' is empty"
    if isinstance(value, list):
        err = _check_messages(value, field, need_last_assistant=as_answer)
        if err is None and as_answer and any(m["role"] != "assistant" for m in value):
            return f"'{field}' may only hold assistant turns"
        return err
    return f"'{field}' must be a string or a list of messages, got {type(value).__name__}"


def _messages_problem(row: dict) -> str | None:
    if "messages" not in row:
        return "missing field 'messages'"
    return _check_messages(row["messages"], "messages", need_last_assistant=True)


def _prompt_completion_problem(row: dict) -> str | None:
    return _check_text_or_messages(row, "prompt", False) or _check_text_or_messages(row, "completion", True)


def _text_of(value) -> str:
    """The text of a string or of a message list (contents joined), whitespace collapsed, for comparisons."""
    if isinstance(value, list):
        value = "\n".join(str(m.get("content", "")) for m in value if isinstance(m, dict))
    return " ".join(str(value).split())


def _preference_problem(row: dict) -> str | None:
    for field, as_answer in (("prompt", False), ("chosen", True), ("rejected", True)):
        err = _check_text_or_messages(row, field, as_answer)
        if err:
            return err
    if row["chosen"] == row["rejected"] or _text_of(row["chosen"]) == _text_of(row["rejected"]):
        return "'chosen' and 'rejected' are identical"
    return None


SCHEMAS: dict[str, Callable[[dict], str | None]] = {
    "messages": _messages_problem,
    "prompt_completion": _prompt_completion_problem,
    "preference": _preference_problem,
}


def validate_rows(rows: Iterable[dict], schema: str, source: str, skip_invalid: bool = False) -> tuple[list[dict], int]:
    """Check every row against ``schema``.

    Returns ``(valid_rows, n_skipped)``. Unless ``skip_invalid`` is set, any bad row raises
    :class:`DataValidationError` listing the first problems (file, row, what is wrong) and how many there are.
    """
    check = SCHEMAS[schema]
    valid, problems = [], []
    for i, row in enumerate(rows, start=1):
        err = check(row) if isinstance(row, dict) else f"expected an object, got {type(row).__name__}"
        if err:
            problems.append(f"{source}, row {i}: {err}")
        else:
            valid.append(row)
    if problems and not skip_invalid:
        listed = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DataValidationError(f"{len(problems)} invalid row(s) for schema '{schema}':\n  {listed}{more}")
    if not valid:
        raise DataValidationError(f"{source}: no valid rows for schema '{schema}'")
    return valid, len(problems)


def prompt_key(prompt) -> str:
    """A prompt's identity across splits: its user turns' text (string prompts as they are), case and whitespace
    folded -- the same question under another system prompt is still the same question."""
    if isinstance(prompt, list):
        prompt = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"] or prompt
    return _text_of(prompt).lower()


def check_disjoint_prompts(splits: dict[str, tuple[str, list[dict]]]) -> None:
    """No prompt may appear in two splits (a held-out score on a trained prompt measures memory, not skill).

    ``splits`` maps a split name to ``(source, rows)``; rows hold a ``prompt``. Raises
    :class:`DataValidationError` naming both files and rows of the first repeats, e.g.
    ``data/test.jsonl, row 3: prompt already in data/train.jsonl, row 12 ('What is ...')``.
    """
    seen: dict[str, tuple[str, str, int]] = {}
    problems = []
    for name, (source, rows) in splits.items():
        for i, row in enumerate(rows, start=1):
            key = prompt_key(row.get("prompt", ""))
            first = seen.get(key)
            if first and first[0] != name:
                problems.append(f"{source}, row {i}: prompt already in the {first[0]} split ({first[1]}, row "
                                f"{first[2]}): {key[:60]!r}")
            elif not first:
                seen[key] = (name, source, i)
    if problems:
        listed = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DataValidationError(f"{len(problems)} prompt(s) repeated across splits:\n  {listed}{more}")


def load_dataset_validated(source: str | Path, schema: str, skip_invalid: bool = False,
                           split: str = "train") -> tuple[Dataset, int]:
    """Load a local file or a hub dataset, validate it, and return ``(Dataset, n_skipped)``."""
    path = Path(source)
    if path.suffix in (".jsonl", ".json", ".csv") or path.exists():
        rows = read_rows(path)
        name = str(path)
    else:  # hub dataset id, optionally "name:split"
        from datasets import load_dataset

        name, _, hub_split = str(source).partition(":")
        rows = list(load_dataset(name, split=hub_split or split))
    valid, skipped = validate_rows(rows, schema, name, skip_invalid=skip_invalid)
    return Dataset.from_list(valid), skipped


def messages_to_prompt_completion(example: dict) -> dict:
    """Split a ``messages`` conversation into a conversational ``prompt`` / ``completion`` pair.

    The completion is the final assistant turn; everything before it is the prompt. TRL then computes the
    loss on the completion only (answer tokens + end-of-turn), which works with any chat template -- unlike
    ``assistant_only_loss``, which needs ``{% generation %}`` markers that many templates lack.
    """
    msgs = example["messages"]
    return {"prompt": msgs[:-1], "completion": msgs[-1:]}
