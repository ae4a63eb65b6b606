"""``cookbook new``: write a new use-case folder -- a short skeleton of one method, or a copy of an existing recipe.

    from common.scaffold import new_usecase

    new_usecase("invoices", method="sft")                 # usecase-invoices/ from common/templates/sft/
    new_usecase("claims", source="usecase-legal")          # usecase-claims/: usecase-legal's code, configs and data

A skeleton is a complete recipe at its smallest: ``README.md`` (the tutorial's sections, each part to write marked
``TODO``), ``config.yaml``, ``config.smoke.yaml``, ``ci.yaml``, ``prepare_data.py``, ``train.py``, ``chat.py`` or
``predict.py`` and a tiny data sample, built on ``common/``. Every name in it is taken from the folder name
(``{{folder}}``, ``{{name}}`` and ``{{title}}`` in the templates). A copy of a recipe takes its code, configs and
data with the folder name replaced, never its README (a skeleton README names what to write) nor its ``results/``.

Neither holds ``results/``: a new folder is *not yet run*. Its README says so with :data:`PENDING_MARKER` where the
generated results table goes, and the tests that read committed results skip it, visibly (:func:`results_pending`),
until the full run's ``results/report.json`` is committed and the marker replaced by the table (CONTRIBUTING.md).
"""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

from common.errors import ConfigError
from common.paths import REPO_ROOT

TEMPLATES = Path(__file__).resolve().parent / "templates"

#: The skeletons ``cookbook new --method`` writes, and what each one fine-tunes (the ``--help`` text).
METHODS = {
    "sft": "supervised fine-tuning of SmolLM2-135M-Instruct with LoRA on question -> answer conversations "
           "(messages JSONL); scored by key terms in the answers; chat.py (as usecase-chatbot, usecase-legal)",
    "dpo": "SFT on the preferred answers, then DPO with LoRA on preference pairs (prompt, chosen, rejected), the SFT "
           "model as reference; scored by preference accuracy; chat.py (as usecase-medical)",
    "vision-classify": "image classification: EfficientNet-Lite0 fine-tuned against a linear-probe baseline on "
                       "images in class folders; scored by macro-F1; predict.py (as usecase-vision-defects)",
    "vision-multitask": "one EfficientNet-Lite0 backbone with several heads (classes and a number) on images listed "
                        "in a CSV; scored per head; predict.py (as usecase-car-damage)",
}

#: Where a README shows its generated results table before the folder's full run is committed.
PENDING_MARKER = "<!-- results-table: not yet run"

NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
#: Never copied: measured results, generated data and caches (nor, from a recipe, its tutorial README).
NOT_COPIED = ("results", "generated*", "processed", "runs", "__pycache__", "*.pyc")
TEXT_SUFFIXES = (".py", ".yaml", ".yml", ".md", ".json", ".jsonl", ".csv", ".txt", ".gitignore")


def describe() -> str:
    """``cookbook new --help``: what the command writes, and each method."""
    return (textwrap.fill("Write usecase-NAME/: a short skeleton that passes `make test` at once (README with TODOs, "
                          "configs, prepare_data.py, train.py, chat.py or predict.py, a tiny data sample; no results "
                          "until its full run), or with --from a copy of an existing recipe. CONTRIBUTING.md says what "
                          "comes next.", 110)
            + "\n\nmethods:\n" + "\n".join(textwrap.fill(text, 110, initial_indent=f"  {name:18s}",
                                                          subsequent_indent=" " * 20, break_on_hyphens=False)
                                            for name, text in METHODS.items()))


def folder_name(name: str) -> str:
    """``invoices`` or ``usecase-invoices`` -> ``usecase-invoices``.

    Raises:
        ConfigError: a name that is not lowercase words joined by hyphens (a folder, a report and a CLI name).
    """
    slug = name.removeprefix("usecase-")
    if not NAME.fullmatch(slug):
        raise ConfigError(f"use-case name {name!r}: use lowercase letters, digits and hyphens, starting with a letter "
                          f"(e.g. invoices or usecase-invoice-triage)")
    return f"usecase-{slug}"


def names(folder: str) -> dict[str, str]:
    """The template placeholders for ``usecase-invoice-triage``: folder, name (``invoice-triage``), title."""
    name = folder.removeprefix("usecase-")
    return {"{{folder}}": folder, "{{name}}": name, "{{title}}": name.replace("-", " ").capitalize()}


def render(text: str, values: dict[str, str]) -> str:
    """``text`` with every placeholder replaced."""
    for key, value in values.items():
        text = text.replace(key, value)
    return text


def resolve_source(source: str, repo: Path) -> Path:
    """``usecase-legal`` or ``legal`` -> the recipe folder to copy.

    Raises:
        ConfigError: no such recipe in ``repo`` (the message lists the ones there are).
    """
    folder = repo / (source if source.startswith("usecase-") else f"usecase-{source}")
    if not (folder / "train.py").is_file():
        known = ", ".join(p.name for p in sorted(repo.glob("usecase-*")) if (p / "train.py").is_file())
        raise ConfigError(f"--from {source}: no such use case (one of: {known})")
    return folder


def results_pending(folder: Path) -> bool:
    """True for a use case whose full run is not committed yet: no ``results/report.json`` and a README that says
    so (:data:`PENDING_MARKER`). Tests of committed results skip such a folder; the contract test still runs it."""
    readme = folder / "README.md"
    return (not (folder / "results" / "report.json").exists() and readme.is_file()
            and PENDING_MARKER in readme.read_text(encoding="utf-8"))


def _copy(src: Path, dst: Path, values: dict[str, str], replace: dict[str, str], skip: tuple[str, ...] = ()) -> None:
    """Copy ``src`` into ``dst`` but :data:`NOT_COPIED` and ``skip``: text files rendered (placeholders and
    ``replace``), other files as they are."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*NOT_COPIED, *skip))
    for path in sorted(dst.rglob("*")):
        if path.is_file() and (path.suffix in TEXT_SUFFIXES or path.name in TEXT_SUFFIXES):
            text = render(path.read_text(encoding="utf-8"), values)
            for old, new in replace.items():
                text = text.replace(old, new)
            path.write_text(text, encoding="utf-8")


def new_usecase(name: str, method: str | None = None, source: str | None = None, repo: Path = REPO_ROOT) -> Path:
    """Write ``repo/usecase-<name>/``: the skeleton of ``method``, or a copy of the recipe ``source``.

    Returns:
        The new folder.

    Raises:
        ConfigError: a bad name, an unknown method or source, both or neither given, or a folder that exists
            (nothing is written then).
    """
    folder = folder_name(name)
    if method is None and source is None:
        raise ConfigError(f"give --method ({' | '.join(METHODS)}) for a skeleton, or --from USECASE for a copy")
    if method is not None and source is not None:
        raise ConfigError("give --method or --from, not both")
    if method is not None and method not in METHODS:
        raise ConfigError(f"--method {method}: unknown method; choose one of {', '.join(METHODS)}")
    src = TEMPLATES / method if method else resolve_source(source, repo)
    dst = repo / folder
    if dst.exists():
        raise ConfigError(f"{dst} already exists; choose another name (nothing was changed)")
    values = names(folder)
    _copy(src, dst, values, {src.name: folder} if source else {}, ("README.md",) if source else ())
    if source:  # a copy keeps the source's method; its README is the short template, to be written
        readme = render((TEMPLATES / "README.from.md").read_text(encoding="utf-8"), values)
        predictor = next(n for n in ("chat.py", "predict.py", "train.py") if (dst / n).exists())
        (dst / "README.md").write_text(readme.replace("{{source}}", src.name).replace("{{predictor}}", predictor),
                                       encoding="utf-8")
    return dst
