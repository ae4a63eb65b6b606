"""The top README's use-case table, generated from every recipe's committed ``results/report.json``.

``README.md`` marks the table with :data:`TOP_TABLE_START` and :data:`TOP_TABLE_END`; ``cookbook readme-tables``
rewrites the block (``--check`` only compares; ``tests/test_committed_results.py`` fails when it is stale). One
short line per recipe: task, method, model, the primary metric before -> after on the held-out test split,
training time, whole-job time and peak memory, all read from the report except the task's one-line description.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

TOP_TABLE_START = ("<!-- usecase-table: generated from usecase-*/results/report.json by `cookbook readme-tables`; "
                   "do not edit -->")
TOP_TABLE_END = "<!-- /usecase-table -->"

#: What each recipe does, in a few words (the one column not read from a report). A recipe missing here is
#: described by its README's title.
TASKS = {
    "usecase-chatbot": "answer questions about one product from its help docs",
    "usecase-legal": "plain-English summaries of contract clauses that keep every fact",
    "usecase-medical": "answer symptom questions, escalate red flags and only red flags",
    "usecase-vision-defects": "classify surface defects in product photos, show where",
    "usecase-car-damage": "part, damage, severity and repair cost from a photo",
}

#: Vision reports name the method by its config value.
METHOD_NAMES = {"full": "full fine-tune", "lora": "LoRA", "linear_probe": "linear probe"}


def _task(folder: Path) -> str:
    if folder.name in TASKS:
        return TASKS[folder.name]
    readme = folder / "README.md"
    title = readme.read_text(encoding="utf-8").splitlines()[0].lstrip("# ").strip() if readme.exists() else ""
    return title or folder.name


def _method(report: dict) -> str:
    method = str(report.get("method", ""))
    method = METHOD_NAMES.get(method, re.sub(r"\s*\([^)]*\)", "", method))  # "SFT (LoRA), then DPO (...)" -> short
    if isinstance(report.get("loss_weights"), dict):  # a multi-task report names one weight per head
        method += f", {len(report['loss_weights'])} heads"
    return method


def _minutes(seconds) -> str:
    return f"{seconds / 60:.1f} min" if isinstance(seconds, (int, float)) else "—"


def usecase_row(folder: Path, report: dict) -> str:
    """One table line for a recipe folder and its committed report."""
    primary = report["primary_metric"]
    before, after = report["metrics"]["before"][primary], report["metrics"]["after"][primary]
    train = report["train"]
    job = (report.get("phases") or {}).get("total_seconds")
    memory = train.get("peak_memory_mb")
    return (f"| [`{folder.name}/`]({folder.name}/README.md) | {_task(folder)} | {_method(report)} | "
            f"`{report['model']}` | {primary} {before:.2f} → **{after:.2f}** | {_minutes(train.get('seconds'))} | "
            f"{_minutes(job)} | {f'{memory / 1024:.1f} GiB' if memory else '—'} |")


def _reports(repo: Path) -> list[tuple[Path, dict]]:
    return [(path.parents[1], json.loads(path.read_text(encoding="utf-8")))
            for path in sorted(repo.glob("usecase-*/results/report.json"))]


def usecase_table(repo: Path) -> str:
    """The whole generated block: the table, then the hardware each report was measured on."""
    reports = _reports(repo)
    rows = ["| recipe | task | method | model | primary metric, test: base → fine-tuned | training | job | "
            "peak RAM |", "|---|---|---|---|---|---|---|---|"]
    rows += [usecase_row(folder, report) for folder, report in reports]
    machines: dict[str, list[str]] = {}
    for folder, report in reports:
        hardware = str(report.get("hardware", "?")).removeprefix("cpu: ")
        machines.setdefault(hardware, []).append(folder.name.removeprefix("usecase-"))
    rows += ["", "Measured on: " + "; ".join(f"{', '.join(names)}: {hw}" for hw, names in machines.items()) + "."]
    return "\n".join(rows)


def top_table_span(text: str) -> tuple[int, int] | None:
    """``(start, end)`` of the generated block's content in the top README, or None when it has no block."""
    start = text.find(TOP_TABLE_START)
    if start < 0:
        return None
    end = text.find(TOP_TABLE_END, start)
    if end < 0:
        raise ValueError(f"README.md: the use-case table has no closing {TOP_TABLE_END}")
    return start + len(TOP_TABLE_START), end


def update_top_readme(repo: Path, check: bool = False) -> list[str]:
    """Rewrite (or, with ``check``, compare) the top README's use-case table; returns ``["README.md"]`` when it
    was (or would be) changed, ``[]`` otherwise (also when the README has no such block)."""
    readme = repo / "README.md"
    if not readme.exists():
        return []
    text = readme.read_text(encoding="utf-8")
    span = top_table_span(text)
    if span is None:
        return []
    table = "\n" + usecase_table(repo) + "\n"
    if text[span[0]:span[1]] == table:
        return []
    if not check:
        readme.write_text(text[:span[0]] + table + text[span[1]:], encoding="utf-8")
    return ["README.md"]
