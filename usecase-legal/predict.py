"""Summarize a contract, clause by clause, with the model train.py produced.

    python usecase-legal/predict.py --model_dir runs/legal --input contract.txt          # readable summary
    python usecase-legal/predict.py --model_dir runs/legal --input contract.txt --json   # JSON list only
    cat clause.txt | python usecase-legal/predict.py --model_dir runs/legal              # one clause from stdin
    python usecase-legal/predict.py --model_dir runs/legal --examples 3                  # held-out test clauses
    python usecase-legal/predict.py --model_dir smollm2-135m-instruct --input c.txt      # the base model

A contract is split into clauses at numbered sections ("1.", "2.3", "Section 4", "ARTICLE V", "(a)") and at
headings (a short line in capitals, or ending without a full stop); a text without either is split at blank lines.
A clause over 300 tokens is cut at sentence ends into pieces that fit (said on stderr). Input is checked before the
model loads: an empty input, a binary or non-UTF-8 file, more than ``--max_bytes`` or more than ``--max_clauses``
clauses stops with a clear message (exit code 2), so a run is always bounded.

Each summary goes through the fact check (scoring.summarize): a summary that drops a number or company name of its
clause, or adds one, is re-drawn up to ``--fact_check_samples`` times and the best candidate kept.

``--json`` prints ``[{"clause": ..., "summary": ...}, ...]`` and nothing else on stdout. Not legal advice.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore", category=FutureWarning)

from common.context import chunk_by_tokens  # noqa: E402
from common.errors import ConfigError, DataError, run_main  # noqa: E402
from common.paths import load_sibling  # noqa: E402

scoring = load_sibling(__file__, "scoring")
DISCLAIMER = ("These summaries were written by a small language model; they are not legal advice and may miss "
              "or change a term. Read the contract itself and ask a lawyer before relying on it.")
SECTION_START = re.compile(r"^\s*(?:(?:section|article|clause)\s+[\dIVXLC]+[\w.]*|\d+(?:\.\d+)*[.)]?(?=\s)|"
                           r"\([a-z]{1,3}\)|[IVX]+\.)\s*", re.IGNORECASE)
MAX_CLAUSE_TOKENS = 300  # longer clauses are cut at sentence ends, then at token boundaries (common.context)


def read_input(path: str | None, stdin, max_bytes: int) -> str:
    """The input text; empty, binary, non-UTF-8 or too large input raises :class:`DataError` (nothing loads)."""
    where = path or "stdin"
    if path:
        p = Path(path)
        if not p.is_file():
            raise DataError(f"{p}: no such file")
        if p.stat().st_size > max_bytes:
            raise DataError(f"{p} is {p.stat().st_size:,} bytes, more than --max_bytes {max_bytes:,}: summarize "
                            f"one contract (or part of one) at a time, or raise --max_bytes")
        data = p.read_bytes()
    else:
        data = stdin.buffer.read(max_bytes + 1) if hasattr(stdin, "buffer") else stdin.read(max_bytes + 1).encode()
        if len(data) > max_bytes:
            raise DataError(f"stdin holds more than --max_bytes {max_bytes:,} bytes: pass less text or raise --max_bytes")
    if b"\x00" in data[:8192]:
        raise DataError(f"{where}: looks like a binary file (NUL bytes); pass the contract as plain UTF-8 text "
                        f"(convert PDF/DOCX to text first)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not UTF-8 text (bad byte at offset {e.start}); save it as UTF-8") from None
    if not text.strip():
        raise DataError(f"{where}: the input is empty; pass a contract or a clause")
    return text


def _is_heading(line: str) -> bool:
    s = line.strip()
    body = SECTION_START.sub("", s)
    return 0 < len(s) <= 80 and (body.isupper() or not s.endswith((".", ";", ":", ","))) and len(body.split()) <= 8


def split_clauses(text: str) -> list[str]:
    """Clauses of a contract (see module docstring); a heading alone on its line joins the clause it introduces."""
    lines = [ln.strip() for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    structured = sum(bool(SECTION_START.match(ln)) for ln in lines if ln) >= 2
    blocks: list[list[str]] = [[]]
    for line in lines:
        if structured and line and SECTION_START.match(line) or not structured and not line:
            blocks.append([])  # a numbered section starts, or (no numbering) a blank line ends a paragraph
        if line:
            blocks[-1].append(line)
    clauses, heading = [], ""
    for block in filter(None, blocks):
        if len(block) == 1 and _is_heading(block[0]):
            heading = f"{heading} {block[0]}".strip()  # a heading alone: prefix it to the next clause
            continue
        clauses.append(" ".join([heading, *block]).strip())
        heading = ""
    if heading:
        clauses.append(heading)
    return clauses


def fit_clauses(tokenizer, clauses: list[str], max_tokens: int = MAX_CLAUSE_TOKENS) -> list[str]:
    """Clauses longer than ``max_tokens`` tokens cut at sentence ends (then at token boundaries, for a script
    written without spaces), each cut said on stderr: the model summarizes each piece on its own."""
    pieces = []
    for i, clause in enumerate(clauses, start=1):
        cut = chunk_by_tokens(tokenizer, clause, max_tokens)
        if len(cut) > 1:
            print(f"note: clause {i} is longer than {max_tokens} tokens; it is summarized in {len(cut)} parts",
                  file=sys.stderr)
        pieces += cut
    return pieces


def load(model_dir: str):
    """Model, tokenizer and inference settings (system prompt, summary length) saved by train.py."""
    from common.models import load_for_inference

    model, tokenizer, settings = load_for_inference(model_dir)
    settings.setdefault("system_prompt", scoring.DEFAULT_SYSTEM)
    settings.setdefault("max_new_tokens", 112)
    for key, value in scoring.FACT_CHECK.items():  # a folder from before the fact check (or a plain model)
        settings.setdefault(key, value)
    return model, tokenizer, settings



def main(argv: list[str] | None = None, stdin=None) -> None:
    parser = argparse.ArgumentParser(description="Summarize contract clauses in plain English (not legal advice).")
    parser.add_argument("--model_dir", required=True, help="train.py's --output_dir, its merged/, or a model name")
    parser.add_argument("--input", help="a text file with one clause or a whole contract (default: stdin)")
    parser.add_argument("--examples", type=int, help="summarize the first N held-out test clauses of the run")
    parser.add_argument("--json", action="store_true", help="print a JSON list of {clause, summary} only")
    parser.add_argument("--max_bytes", type=int, default=200_000, help="largest input accepted (default 200 kB)")
    parser.add_argument("--max_clauses", type=int, default=60, help="most clauses summarized in one run")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--fact_check_samples", type=int, help="re-draws of a summary that fails the fact check "
                        "(default: the run's setting, 8; 0 = greedy only, fastest)")
    args = parser.parse_args(argv)
    stdin = stdin or sys.stdin
    if args.fact_check_samples is not None and args.fact_check_samples < 0:
        raise ConfigError(f"--fact_check_samples must be >= 0, got {args.fact_check_samples}")
    for key in ("examples", "max_bytes", "max_clauses", "batch_size"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            raise ConfigError(f"--{key} must be >= 1, got {getattr(args, key)}")
    if args.examples:
        test_file = Path(args.model_dir) / "data" / "test.jsonl"
        if not test_file.exists():
            raise ConfigError(f"{test_file} not found: --examples needs a folder written by train.py")
        rows = [json.loads(line) for line in test_file.read_text().splitlines() if line.strip()][:args.examples]
        clauses = [r["clause"] for r in rows]
    else:
        if args.input is None and stdin.isatty():
            raise ConfigError("pass --input FILE, pipe the contract into stdin, or use --examples N")
        clauses = split_clauses(read_input(args.input, stdin, args.max_bytes))
    if len(clauses) > args.max_clauses:
        raise DataError(f"the input splits into {len(clauses)} clauses, more than --max_clauses {args.max_clauses} "
                        f"(~{args.max_clauses * 2} s each on a CPU): summarize part of it, or raise --max_clauses")

    model, tokenizer, settings = load(args.model_dir)
    clauses = fit_clauses(tokenizer, clauses)
    if args.fact_check_samples is not None:
        settings["fact_check_samples"] = args.fact_check_samples
    summaries, _ = scoring.summarize(model, tokenizer, clauses, argparse.Namespace(
        **settings, eval_batch_size=args.batch_size), desc="summarizing")
    if args.json:
        print(json.dumps([{"clause": c, "summary": s} for c, s in zip(clauses, summaries)], ensure_ascii=False,
                         indent=2))
        return
    print(f"Summary of {len(clauses)} clause(s):\n")
    for i, (clause, summary) in enumerate(zip(clauses, summaries), start=1):
        head = " ".join(clause.split()[:12])
        print(f"[{i}] {head}{' ...' if len(clause.split()) > 12 else ''}\n    -> {summary}\n")
    print(f"Not legal advice: {DISCLAIMER}")


if __name__ == "__main__":
    run_main(main)
