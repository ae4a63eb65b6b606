"""Build the clause -> summary data: generated clauses, the hand-written style-shift set, or your own files.

    python usecase-legal/prepare_data.py --out_dir runs/legal-data          # write train/valid/test JSONL to look at
    python usecase-legal/prepare_data.py --train_file my_clauses.jsonl --out_dir runs/my-data   # check your data

Every row is ``{"clause", "summary", "facts", "type", "source"}``: a contract clause, a one- or two-sentence
plain-English summary, and the key facts (parties, amounts, dates, durations, rates, places) the summary must keep.

- **Generated** (default): ``data/templates.yaml`` holds clause templates of 13 clause types in real legal phrasing,
  each used by one split only (train / validation / test), filled with varied parties, currencies, amounts, dates,
  durations, rates and jurisdictions, each written in several ways ("thirty (30) days", "$1,250.00", "the 1st day
  of March, 2025"). Party names of the validation and test clauses never occur in training. Deterministic (seeded).
- **Style shift** (test only): ``data/style_shift.jsonl``, clauses written by hand in phrasings no template uses.
- **Your data**: ``--train_file`` (and optional ``--validation_file`` / ``--test_file``) in JSONL or CSV with
  ``clause``, ``summary`` and optional ``facts`` (a JSON list, or in CSV a ``;``-separated string). Without
  ``facts``, the number facts and company names of the reference summary are used. A hub dataset id works too
  (``name`` or ``name:split``, needs hub access), with ``clause_field`` / ``summary_field`` / ``facts_field``
  naming its columns (e.g. ``clause_field: document``, ``summary_field: summary``).

Every row is checked before any model loads: a missing or empty field, a key fact that is not in the clause or not
in the reference summary stops the run with an error naming the file and the row.
"""

from __future__ import annotations

import argparse
import random
import string
from datetime import date, timedelta
from pathlib import Path

from common.data import read_jsonl, read_rows, read_yaml, write_jsonl_splits
from common.errors import DataError, run_main
from common.paths import load_sibling

facts = load_sibling(__file__, "facts")
HERE = Path(__file__).resolve().parent
SPLITS = ("train", "valid", "test")

# Party names: the validation and test splits use names training never shows (copying, not memorizing).
NAMES = {"train": ["Northwind", "Bluefin", "Crestline", "Ironbridge", "Silverleaf", "Oakmont", "Pinecrest",
                   "Meridian", "Kestrel", "Lumen", "Granite Peak", "Westbrook", "Everpine", "Copperfield",
                   "Harbor Point", "Sunridge", "Blackstone Valley", "Maple & Finch", "Tidewater", "Redwood"],
         "held_out": ["Quayside", "Amberline", "Foxglove", "Stonegate", "Brightwater", "Hollins", "Vantage Hill",
                      "Juniper", "Calloway", "Marlowe", "Ashdown", "Riverton"]}
SECTORS = ["Systems", "Logistics", "Analytics", "Foods", "Health", "Energy", "Software", "Properties", "Media",
           "Textiles", "Labs", "Partners"]
SUFFIXES = ["Inc.", "LLC", "Ltd", "Corp.", "GmbH", "plc", "B.V.", "Pty Ltd", "LLP"]
ROLES = [("Supplier", "Customer"), ("Licensor", "Licensee"), ("Provider", "Client"), ("Company", "Contractor"),
         ("Seller", "Buyer"), ("Landlord", "Tenant"), ("Vendor", "Purchaser"), ("Consultant", "Client")]
LAWS = [("the State of New York", "New York", "New York"), ("the State of Delaware", "Delaware", "Wilmington"),
        ("England and Wales", "England and Wales", "London"), ("the Province of Ontario", "Ontario", "Toronto"),
        ("the State of California", "California", "San Francisco"), ("the State of Texas", "Texas", "Austin"),
        ("Ireland", "Ireland", "Dublin"), ("the Commonwealth of Massachusetts", "Massachusetts", "Boston"),
        ("Scotland", "Scotland", "Edinburgh"), ("the State of Illinois", "Illinois", "Chicago"),
        ("Singapore", "Singapore", "Singapore"), ("New South Wales", "New South Wales", "Sydney")]
CURRENCIES = [("USD", "$", "U.S. Dollars"), ("EUR", "€", "Euros"), ("GBP", "£", "Pounds Sterling"),
              ("CAD", "CAD ", "Canadian Dollars"), ("CHF", "CHF ", "Swiss Francs"), ("AUD", "AUD ", "Australian Dollars")]
ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
       "seventeen eighteen nineteen".split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
MONTH_NAMES = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
               "November", "December"]


def spell(n: int) -> str:
    """120 -> "one hundred twenty", 1250 -> "one thousand two hundred fifty" (legal-style spelled numbers)."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else "-" + ONES[n % 10])
    for size, word in ((1_000_000, "million"), (1000, "thousand"), (100, "hundred")):
        if n >= size:
            head, rest = divmod(n, size)
            return f"{spell(head)} {word}" + (f" {spell(rest)}" if rest else "")
    raise AssertionError(n)


def _count(rng: random.Random, n: int, unit: str) -> tuple[str, str]:
    """A duration as a clause writes it, and as a summary writes it ("30 days")."""
    plural = f"{unit}s" if n != 1 else unit
    written = rng.choice([f"{spell(n)} ({n}) {plural}", f"{n} {plural}", f"{spell(n)} {plural}",
                          f"{spell(n).capitalize()} ({n}) {plural}"])
    return written, f"{n} {plural}"


def _amount(rng: random.Random, value: int) -> tuple[str, str]:
    code, symbol, words = rng.choice(CURRENCIES)
    figure = f"{value:,}"
    written = rng.choice([f"{symbol}{figure}.00", f"{code} {figure}", f"{symbol}{figure}",
                          f"{spell(value).title()} {words} ({symbol.strip()}{'' if len(symbol) == 1 else ' '}{figure})"])
    return written, f"{code} {figure}"


def _percent(rng: random.Random) -> tuple[str, str]:
    whole, half = rng.choice([(1, False), (1, True), (2, False), (3, False), (5, False), (10, False), (0, True)])
    figure = f"{whole}.5" if half else str(whole)
    words = ("one-half of one" if whole == 0 else f"{spell(whole)} and one-half") if half else spell(whole)
    written = rng.choice([f"{words} percent ({figure}%)", f"{figure}%", f"{figure} percent"])
    return written, f"{figure}%"


def _date(rng: random.Random) -> tuple[str, str]:
    d = date(2024, 1, 1) + timedelta(days=rng.randrange(4 * 365))
    month, suffix = MONTH_NAMES[d.month - 1], {1: "st", 2: "nd", 3: "rd"}.get(d.day % 10 * (d.day // 10 != 1), "th")
    written = rng.choice([f"{month} {d.day}, {d.year}", f"the {d.day}{suffix} day of {month}, {d.year}",
                          f"{d.day} {month} {d.year}", d.isoformat(), f"{d.month:02d}/{d.day:02d}/{d.year}"])
    return written, f"{d.day} {month} {d.year}"


def _party(rng: random.Random, pool: list[str], other: str = "") -> str:
    """A company name; never built on the same base name as ``other``."""
    base = rng.choice([n for n in pool if not other.startswith(n)])
    return f"{base} {rng.choice(SECTORS)} {rng.choice(SUFFIXES)}"


def fill_slots(rng: random.Random, split: str) -> dict[str, str]:
    """One random value for every slot (see data/templates.yaml), in clause form and in normalized form."""
    pool = NAMES["train" if split == "train" else "held_out"]
    a = _party(rng, pool)
    b = _party(rng, pool, other=a)
    ar, br = rng.choice(ROLES)
    law, law_n, venue = rng.choice(LAWS)
    s = {"A": a, "B": b, "Ar": ar, "Br": br, "A_def": f'{a} (the "{ar}")', "B_def": f'{b} (the "{br}")',
         "law": law, "law_n": law_n, "venue": venue, "sec": f"{rng.randint(2, 14)}.{rng.randint(1, 6)}"}
    s.update({"A_def_caps": s["A_def"].upper(), "B_def_caps": s["B_def"].upper(), "Ar_caps": ar.upper()})
    s["days"], s["days_n"] = _count(rng, rng.choice([5, 7, 10, 14, 15, 20, 30, 45, 60, 90, 120, 180]), "day")
    s["cure"], s["cure_n"] = _count(rng, rng.choice([7, 10, 15, 21, 30, 45]), "day")
    s["bdays"], s["bdays_n"] = _count(rng, rng.choice([2, 3, 5, 10]), "business day")
    s["months"], s["months_n"] = _count(rng, rng.choice([3, 6, 9, 12, 18, 24, 36]), "month")
    s["years"], s["years_n"] = _count(rng, rng.choice([1, 2, 3, 5, 7]), "year")
    s["amount"], s["amount_n"] = _amount(rng, rng.choice([250, 500, 1250, 2400, 3750, 5000, 8500, 12000, 15750,
                                                          25000, 48000, 60000, 125000]))
    s["cap"], s["cap_n"] = _amount(rng, rng.choice([50000, 100000, 250000, 500000, 750000, 1000000, 2000000]))
    s["pct"], s["pct_n"] = _percent(rng)
    s["date"], s["date_n"] = _date(rng)
    return s


def read_templates(path: Path) -> dict[str, dict[str, list[dict]]]:
    """``{clause type: {split: [template, ...]}}``; a bad entry raises a :class:`DataError` naming it."""
    data = read_yaml(path)
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path}: expected a mapping of clause types to templates")
    known = set(fill_slots(random.Random(0), "train"))
    for kind, splits in data.items():
        for split in SPLITS:
            templates = (splits or {}).get(split) if isinstance(splits, dict) else None
            if not isinstance(templates, list) or not templates:
                raise DataError(f"{path}: clause type '{kind}' needs a non-empty '{split}' list of templates")
            for j, t in enumerate(templates):
                where = f"{path}: {kind}.{split}[{j}]"
                if not isinstance(t, dict) or not all(isinstance(t.get(k), str) and t[k].strip()
                                                      for k in ("clause", "summary")):
                    raise DataError(f"{where}: needs non-empty 'clause' and 'summary' strings")
                for part in ("clause", "summary"):
                    unknown = {f for _, f, _, _ in string.Formatter().parse(t[part]) if f} - known
                    if unknown:
                        raise DataError(f"{where}: unknown slot(s) {sorted(unknown)} in its {part}")
    return data


def key_facts(summary_template: str, slots: dict[str, str]) -> list[str]:
    """The parties and normalized values a summary template names, in order, without repeats."""
    fields = [f for _, f, _, _ in string.Formatter().parse(summary_template) if f]
    picked = [slots[f] for f in fields if f in ("A", "B", "venue") or f.endswith("_n")]
    return list(dict.fromkeys(picked))


def generate(templates: dict, split: str, per_template: int, seed: int, wordings: str | None = None) -> list[dict]:
    """``per_template`` clauses from every template of ``split`` (deterministic for a seed).

    ``wordings``: take the templates of that split instead (e.g. ``"train"``: new clauses -- the party names,
    amounts and dates of ``split`` -- in the training wordings).
    """
    rng = random.Random(f"{seed}-{split}")
    wordings = wordings or split
    rows = []
    for kind, splits in templates.items():
        for j, t in enumerate(splits[wordings]):
            for _ in range(per_template):
                slots = fill_slots(rng, split)
                summary = t["summary"].format(**slots)
                rows.append({"clause": " ".join(t["clause"].format(**slots).split()), "summary": summary,
                             "facts": key_facts(t["summary"], slots), "type": kind, "source": f"{kind}.{wordings}[{j}]"})
    rng.shuffle(rows)
    return rows


def check_rows(rows: list[dict], source: str, derive_facts: bool = False) -> list[dict]:
    """Validate clause/summary/facts rows; every key fact must be in the clause and in the reference summary.

    Raises:
        DataError: the first problems, each naming ``source``, the row (1-based) and what is wrong.
    """
    problems, out = [], []
    for i, row in enumerate(rows, start=1):
        where = f"{source}, row {i}"
        if not isinstance(row, dict):
            problems.append(f"{where}: expected an object with 'clause' and 'summary'")
            continue
        bad = [k for k in ("clause", "summary") if not isinstance(row.get(k), str) or not row[k].strip()]
        if bad:
            problems.append(f"{where}: missing or empty {' and '.join(repr(b) for b in bad)}")
            continue
        found = row.get("facts")
        if isinstance(found, str):  # CSV: "Acme Corp; USD 1,250; 30 days"
            found = [f.strip() for f in found.split(";") if f.strip()]
        if found in (None, []) and derive_facts:
            canon = facts.canonical_text(row["summary"])
            found = [canon[a:b] for _, (a, b) in facts.extract_facts(row["summary"])] + \
                facts.COMPANY.findall(row["summary"])
        if not isinstance(found, list) or not all(isinstance(f, str) and f.strip() for f in found):
            problems.append(f"{where}: 'facts' must be a list of non-empty strings, e.g. [\"Acme Corp\", \"30 days\"]")
            continue
        missing = [f for f in found if not facts.fact_present(f, row["clause"])]
        if missing:
            problems.append(f"{where}: key fact(s) {missing} not found in the clause")
            continue
        unsaid = [f for f in found if not facts.fact_present(f, row["summary"])]
        if unsaid:
            problems.append(f"{where}: key fact(s) {unsaid} not found in the reference summary")
            continue
        out.append({"clause": row["clause"].strip(), "summary": row["summary"].strip(), "facts": found,
                    "type": str(row.get("type", "user")), "source": str(row.get("source", source))})
    if problems:
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise DataError(f"{len(problems)} invalid row(s):\n  " + "\n  ".join(problems[:10]) + more)
    if not out:
        raise DataError(f"{source}: no rows")
    return out


def read_user_rows(source: str, clause_field: str = "clause", summary_field: str = "summary",
                   facts_field: str = "facts") -> list[dict]:
    """Rows of a JSONL/CSV file or a hub dataset, columns renamed to clause/summary/facts, then checked."""
    path = Path(source)
    if path.suffix == ".jsonl" and path.exists():
        raw = [row for _, row in read_jsonl(path)]
    elif path.suffix in (".json", ".csv") or path.exists():
        raw = read_rows(path)
    else:  # a hub dataset id, "name" or "name:split"
        from datasets import load_dataset

        name, _, split = source.partition(":")
        raw = list(load_dataset(name, split=split or "train"))
    mapped = [{"clause": r.get(clause_field), "summary": r.get(summary_field), "facts": r.get(facts_field)}
              if isinstance(r, dict) else r for r in raw]
    return check_rows(mapped, str(source), derive_facts=True)


def build_splits(args, seed: int = 0) -> dict[str, list[dict]]:
    """``{"train", "valid", "test", "style_shift", "handwritten"}`` rows, all checked."""
    from common.paths import repo_path

    if args.test_templates not in ("held_out", "training"):
        raise DataError(f"test_templates must be 'held_out' or 'training', got {args.test_templates!r}")
    if args.train_file and args.test_templates == "training":  # it would be ignored: say so instead
        raise DataError(f"test_templates: training re-draws the generated clauses; with train_file "
                        f"({args.train_file}) give your own test rows with test_file instead")
    if args.train_file:
        train = read_user_rows(args.train_file, args.clause_field, args.summary_field, args.facts_field)
        random.Random(seed).shuffle(train)
        held = max(1, len(train) // 10)
        valid = (read_user_rows(args.validation_file, args.clause_field, args.summary_field, args.facts_field)
                 if args.validation_file else train[:held])
        test = (read_user_rows(args.test_file, args.clause_field, args.summary_field, args.facts_field)
                if args.test_file else train[held:2 * held] if not args.validation_file else train[:held])
        used = {r["clause"] for r in valid + test}
        splits = {"train": [r for r in train if r["clause"] not in used], "valid": valid, "test": test}
    else:
        templates = read_templates(repo_path(args.templates_file))
        splits = {split: check_rows(generate(templates, split, n, seed), f"{args.templates_file} ({split})")
                  for split, n in (("train", args.train_per_template), ("valid", args.valid_per_template),
                                   ("test", args.test_per_template))}
        if args.test_templates == "training":  # new clauses in known wordings: does learning happen at all?
            splits["test"] = check_rows(generate(templates, "test", args.test_per_template, seed, wordings="train"),
                                        f"{args.templates_file} (test, training wordings)")
    for name, file in (("style_shift", args.style_shift_file), ("handwritten", args.handwritten_file)):
        splits[name] = check_rows([r for _, r in read_jsonl(repo_path(file))], file) if file else []
    caps = {"valid": args.max_valid_rows or args.max_eval_rows, "test": args.max_eval_rows,
            "style_shift": args.max_eval_rows}
    for name, cap in caps.items():
        if cap:
            splits[name] = splits[name][:cap]
    if not splits["train"]:
        raise DataError("no training rows left after holding out validation and test rows")
    return splits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out_dir", default="runs/legal-data")
    parser.add_argument("--templates_file", default="usecase-legal/data/templates.yaml")
    parser.add_argument("--style_shift_file", default="usecase-legal/data/style_shift.jsonl")
    parser.add_argument("--handwritten_file", default="usecase-legal/data/handwritten.jsonl")
    for name in ("train_file", "validation_file", "test_file"):
        parser.add_argument(f"--{name}", default=None)
    for name in ("max_eval_rows", "max_valid_rows"):
        parser.add_argument(f"--{name}", default=None, type=int)
    parser.add_argument("--test_templates", default="held_out", choices=["held_out", "training"])
    for name, value in (("clause_field", "clause"), ("summary_field", "summary"), ("facts_field", "facts")):
        parser.add_argument(f"--{name}", default=value)
    for name, value in (("train_per_template", 9), ("valid_per_template", 2), ("test_per_template", 3)):
        parser.add_argument(f"--{name}", default=value, type=int)
    args = parser.parse_args(argv)
    files = write_jsonl_splits(build_splits(args), Path(args.out_dir))
    for name, path in files.items():
        print(f"{name}: {sum(1 for _ in path.open())} rows -> {path}")


if __name__ == "__main__":
    run_main(main)
