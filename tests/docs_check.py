"""Commands and links in the markdown docs, checked without running anything (used by test_docs.py, test_scaffold.py).

- :func:`commands` finds every ``python usecase-x/script.py ...`` (or ``accelerate launch ... usecase-x/...``) in a
  markdown file's fenced code blocks and inline code spans.
- :func:`parse_problem` runs the script's own argument parsing on those words -- ``parse_config`` (HF / TRL
  dataclasses) for ``train.py``, ``argparse`` for the others -- and stops right after it: unknown flags, values of
  the wrong type, a missing ``--config`` file are found; nothing loads, trains or writes.
- :func:`link_problems` checks every relative link of a markdown file: the file exists, and so does the ``#anchor``
  (a heading of the target, by GitHub's rule) when it points into markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import runpy
import shlex
import sys
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote

REPO = Path(__file__).resolve().parents[1]
#: Not documentation: generated outputs (results/REPORT.md), data, skeleton templates (checked once rendered).
SKIP_DIRS = {".venv", ".git", "runs", "build", "outputs", "results", "data", "templates", "node_modules",
             ".pytest_cache", ".ruff_cache"}
SCRIPT = re.compile(r"(?:^|[\s;&|(])(?:\S*/)?(?:python3?|accelerate\s+launch(?:\s+(?!usecase-)\S+)*?)\s+"
                    r"(usecase-[\w-]+/[\w-]+\.py)(?=\s|$)")
FENCE = re.compile(r"^\s*(```|~~~)")
OPERATORS = {"|", "||", "&", "&&", ";", ">", ">>", "<", "(", ")", "2>", "2>&1"}


def markdown_files(root: Path = REPO) -> list[Path]:
    """Every ``*.md`` of the repository that is documentation."""
    return sorted(p for p in root.rglob("*.md")
                  if not SKIP_DIRS.intersection(p.relative_to(root).parts[:-1]) and "egg-info" not in str(p))


def _fences(text: str) -> tuple[list[str], str]:
    """``(fenced code blocks, the text with them blanked out)``."""
    blocks, outside, block, fence = [], [], [], None
    for line in text.splitlines():
        match = FENCE.match(line)
        if fence is None and match:
            fence, block = match.group(1), []
        elif fence is not None and line.strip().startswith(fence):
            blocks.append("\n".join(block))
            fence = None
        elif fence is not None:
            block.append(line)
        else:
            outside.append(line)
            continue
        outside.append("")
    return blocks, "\n".join(outside)


def split_code(text: str) -> tuple[list[str], str]:
    """``(code snippets, prose)``: fenced blocks and inline code spans, and the text with them blanked out."""
    snippets, rest = _fences(text)
    for paragraph in re.split(r"\n\s*\n", rest):  # an inline code span never crosses a blank line
        snippets += [m.group(2).replace("\n", " ") for m in re.finditer(r"(`+)(.+?)\1", paragraph, re.DOTALL)]
    return snippets, re.sub(r"(`+)(.+?)\1", "", rest, flags=re.DOTALL)


class Command(NamedTuple):
    """A use-case script command shown in the docs: ``python SCRIPT WORDS``; ``elided``: it ends in ``...``."""

    script: str
    words: list[str]
    elided: bool

    def __str__(self) -> str:
        return shlex.join(["python", self.script, *self.words]) + (" ..." if self.elided else "")


def _words(rest: str) -> list[str]:
    """The shell words of a command line up to its first operator (``|``, ``&&``, ``;``, ``>``) or comment."""
    lexer = shlex.shlex(rest, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, "#"
    words = []
    try:
        for word in lexer:
            if word in OPERATORS:
                break
            words.append(word)
    except ValueError:  # an unclosed quote in an inline span cut by a line break
        words = rest.split()
    return words


def commands(text: str) -> list[Command]:
    """Every use-case script command in the code of a markdown text.

    Usage notation is read as the command it stands for: ``[--flag value]`` as ``--flag value``, ``a|b`` as ``a``;
    ``...`` in place of a flag's value is a value, elsewhere it elides the rest of the command.
    """
    found = []
    for snippet in split_code(text)[0]:
        for line in snippet.replace("\\\n", " ").splitlines():
            for match in SCRIPT.finditer(line):
                words, elided = [], False
                for word in _words(line[match.end():]):
                    word = word.strip("[]") if word.startswith("[") or word.endswith("]") else word
                    if word in ("...", "…") and not (words and words[-1].startswith("--")):
                        elided = True
                    elif word:
                        words.append(word)
                found.append(Command(match.group(1), words, elided))
    return found


class _Parsed(Exception):
    """Raised right after the script's top-level argument parsing, to stop it there."""

    def __init__(self, extras: list[str]) -> None:
        super().__init__("parsed")
        self.extras = extras


@contextlib.contextmanager
def _stop_after_parsing():
    original, depth = argparse.ArgumentParser.parse_known_args, [0]

    def parse_known_args(self, args=None, namespace=None):
        depth[0] += 1
        try:
            namespace, extras = original(self, args, namespace)
        finally:
            depth[0] -= 1
        if depth[0] == 0:  # the script's own call (a subparser's nested call returns normally)
            raise _Parsed(list(extras))
        return namespace, extras

    argparse.ArgumentParser.parse_known_args = parse_known_args
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_known_args = original


def parse_problem(command: Command, root: Path = REPO) -> str | None:
    """Why ``command`` would not get past its argument parsing, or ``None`` when it would.

    The script runs as ``__main__`` with ``sys.argv`` set, from ``root``, until its first top-level
    ``ArgumentParser.parse_known_args`` (``parse_args`` and ``parse_config`` both end there), which is stopped.
    An elided command (``...``) may leave out required arguments.
    """
    script, words = command.script, command.words
    path = root / script
    if not path.is_file():
        return f"{script}: no such script"
    source = path.read_text(encoding="utf-8")
    if "parse_args(" not in source and "parse_config(" not in source:
        return f"{script}: parses no command line (not run)"
    argv, cwd, stderr = sys.argv, Path.cwd(), io.StringIO()
    sys.argv = [str(path), *words]
    try:
        os.chdir(root)
        with _stop_after_parsing(), contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            runpy.run_path(str(path), run_name="__main__")
    except _Parsed as parsed:
        return f"unknown arguments {parsed.extras}" if parsed.extras else None
    except SystemExit as e:
        lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
        if command.elided and lines and "the following arguments are required" in lines[-1]:
            return None
        return lines[-1] if lines else f"exit code {e.code} before parsing ended"
    except Exception as e:  # noqa: BLE001 -- any failure before parsing ends is the finding
        return f"{type(e).__name__}: {e}"
    finally:
        sys.argv = argv
        os.chdir(cwd)
    return "ran to the end without parsing its arguments"


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, punctuation dropped (but ``-`` and ``_``), spaces -> ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"<[^>]+>", "", text)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a markdown text defines: its headings' slugs (repeats get -1, -2, ...) and ``<a id/name>``."""
    found, seen = set(), {}
    for line in _fences(text)[1].splitlines():
        heading = re.match(r"^#{1,6}\s+(.+?)\s*#*\s*$", line)
        if heading:
            base = slug(heading.group(1))
            found.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
    found.update(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", text))
    return found


LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^\"']*[\"'])?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)


def link_problems(path: Path, text: str | None = None) -> list[str]:
    """Every relative link of the markdown file ``path`` whose file, or ``#anchor`` in a markdown file, is missing.
    ``text`` stands in for the file's content (a README rendered elsewhere, checked as if it were at ``path``)."""
    text = path.read_text(encoding="utf-8") if text is None else text
    prose = split_code(text)[1]
    problems = []
    for target in [m.group(1) for m in LINK.finditer(prose)] + REFERENCE.findall(prose):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        file, _, anchor = unquote(target).partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            problems.append(f"{target}: no such file ({os.path.relpath(dest, path.parent)})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")
                                                                      if dest != path else text):
            problems.append(f"{target}: no heading #{anchor} in {dest.name}")
    return problems
