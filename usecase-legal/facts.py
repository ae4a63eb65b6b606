"""Key facts of a contract clause: extraction, normalization, fact recall, invented facts, ROUGE.

A summary of a clause is only useful if every party, amount, currency, date, duration, notice period, rate and
jurisdiction in it is exactly right. This module decides, for one summary, which of the clause's key facts it
kept and which facts it made up. Numbers are compared after normalization, so the same fact written differently
still counts:

    "thirty (30) days" = "30 days" = "thirty days" = "a 30-day period"          -> duration 30 day
    "$1,250.00" = "USD 1,250" = "1,250 US dollars" = "one thousand two hundred fifty dollars ($1,250)"
    "March 1, 2025" = "1 March 2025" = "1st day of March, 2025" = "2025-03-01" = "03/01/2025" (US order)
    "one and one-half percent (1.5%)" = "1.5%" = "1.5 percent"

A key fact is a short string (``"Acme Corp"``, ``"USD 1,250"``, ``"30 days"``, ``"New York"``). If it is a number
fact (amount, duration, date, percentage), the summary must hold the same normalized value; otherwise (a party, a
place) it must appear as words (case, punctuation and accents ignored).

Invented facts: an amount, date, duration or percentage in the summary that the clause does not hold, a bare number
the clause does not hold, or a company name (``... Inc.``, ``LLC``, ``Ltd`` ...) the clause does not name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal

from common.evaluation import normalize

# ---------------------------------------------------------------------------------------------- number words
UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())}
TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if i > 1}
SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
FRACTIONS = {"one-half": Decimal("0.5"), "a half": Decimal("0.5"), "one-quarter": Decimal("0.25")}
_NUM_WORD = "|".join(sorted([*UNITS, *TENS, *SCALES], key=len, reverse=True))
_WORD_RUN = rf"(?:(?:{_NUM_WORD})(?:[\s-]+(?:and[\s-]+)?(?:one-half|one-quarter|{_NUM_WORD}))*)"
UNIT_WORDS = r"(?:business|calendar|working|consecutive|days?|weeks?|months?|years?|hours?|percent|per\s?cent|" \
             r"dollars?|euros?|pounds|(?:us|canadian|australian) dollars|swiss francs|yen)"
# "thirty (30) days", "Five Thousand Euros (EUR 5,000)": the words are a spelled-out copy of the figure
_WORDS_THEN_FIGURE = re.compile(
    rf"\b{_WORD_RUN}(?:\s+(?:and\s+)?(?:one-half|one-quarter))?(?:\s+(?:percent|per cent|(?:us |canadian )?dollars"
    rf"|euros|pounds(?: sterling)?|swiss francs))?\s*\(([^()]*\d[^()]*)\)", re.IGNORECASE)
# "$1,250 (one thousand two hundred fifty dollars)": drop the spelled-out copy
_FIGURE_THEN_WORDS = re.compile(rf"\(\s*{_WORD_RUN}(?:\s+(?:and\s+)?[\w-]+){{0,4}}\s*\)", re.IGNORECASE)
_WORDS_BEFORE_UNIT = re.compile(rf"\b({_WORD_RUN})(?=[\s-]+{UNIT_WORDS}\b)", re.IGNORECASE)


def words_to_number(words: str) -> Decimal | None:
    """``"one hundred twenty"`` -> 120, ``"thirty-five"`` -> 35, ``"one and one-half"`` -> 1.5; None if not a number."""
    total, current, seen = Decimal(0), Decimal(0), False
    text = words.lower().replace("-", " ").replace("one half", "one-half").replace("one quarter", "one-quarter")
    for token in re.sub(r"\band\b", " ", text).split():
        if token in FRACTIONS:
            current += FRACTIONS[token]
        elif token in UNITS:
            current += UNITS[token]
        elif token in TENS:
            current += TENS[token]
        elif token == "hundred":
            current = (current or 1) * 100
        elif token in SCALES:
            total += (current or 1) * SCALES[token]
            current = Decimal(0)
        else:
            return None
        seen = True
    return total + current if seen else None


def canonical_text(text: str) -> str:
    """The text with spelled-out numbers turned into figures (only where they count something: before a unit, or
    doubled by a figure in brackets), whitespace collapsed. ``"thirty (30) days"`` -> ``"30 days"``."""
    text = text.replace("\u00a0", " ").replace("\u2019", "'").replace("\u2013", "-").replace("\u2014", "-")
    text = _WORDS_THEN_FIGURE.sub(lambda m: m.group(1), text)
    text = _FIGURE_THEN_WORDS.sub("", text)

    def spell(m: re.Match) -> str:
        value = words_to_number(m.group(1))
        return m.group(0) if value is None else _fmt(value)

    text = _WORDS_BEFORE_UNIT.sub(spell, text)
    return re.sub(r"\s+", " ", text).strip()


# ---------------------------------------------------------------------------------------------- typed facts
NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
SCALE = r"(?:\s?(million|thousand|m\b|k\b))?"
CURRENCY_PREFIX = {"us$": "USD", "u.s.$": "USD", "usd": "USD", "ca$": "CAD", "c$": "CAD", "cad": "CAD", "a$": "AUD",
                   "au$": "AUD", "aud": "AUD", "s$": "SGD", "sgd": "SGD", "$": "USD", "€": "EUR", "eur": "EUR",
                   "£": "GBP", "gbp": "GBP", "chf": "CHF", "jpy": "JPY", "¥": "JPY", "inr": "INR", "₹": "INR"}
CURRENCY_SUFFIX = {"us dollars": "USD", "u.s. dollars": "USD", "canadian dollars": "CAD", "australian dollars": "AUD",
                   "dollars": "USD", "dollar": "USD", "euros": "EUR", "euro": "EUR", "pounds sterling": "GBP",
                   "pounds": "GBP", "swiss francs": "CHF", "yen": "JPY", "usd": "USD", "eur": "EUR", "gbp": "GBP",
                   "chf": "CHF", "cad": "CAD", "aud": "AUD", "jpy": "JPY", "inr": "INR", "sgd": "SGD"}
_prefix = "|".join(re.escape(k) for k in sorted(CURRENCY_PREFIX, key=len, reverse=True))
_suffix = "|".join(re.escape(k) for k in sorted(CURRENCY_SUFFIX, key=len, reverse=True))
AMOUNT_PREFIX = re.compile(rf"(?<![\w$€£¥₹])({_prefix})\s?({NUM}){SCALE}", re.IGNORECASE)
AMOUNT_SUFFIX = re.compile(rf"(?<![\w.,])({NUM}){SCALE}\s?({_suffix})\b", re.IGNORECASE)
PERCENT = re.compile(rf"(?<![\w.,])({NUM})\s?(%|percent\b|per cent\b)", re.IGNORECASE)
DURATION = re.compile(rf"(?<![\w.,])({NUM})(?:\s|-)+(?:(business|working|calendar|consecutive)(?:\s|-)+)?"
                      r"(day|week|month|year|hour)s?\b", re.IGNORECASE)
MONTHS = {m: i for i, m in enumerate("january february march april may june july august september october november "
                                     "december".split(), start=1)}
MONTHS.update({m[:3]: i for m, i in list(MONTHS.items())} | {"sept": 9})
_month = r"(" + "|".join(sorted(MONTHS, key=len, reverse=True)) + r")\.?"
_day = r"(\d{1,2})(?:st|nd|rd|th)?"
DATE_PATTERNS = [  # (regex, order of the groups: y, m, d)
    (re.compile(r"(?<!\d)(\d{4})-(\d{1,2})-(\d{1,2})(?!\d)"), "ymd"),
    (re.compile(r"(?<![\d/])(\d{1,2})/(\d{1,2})/(\d{4})(?!\d)"), "mdy"),  # US order
    (re.compile(r"(?<![\d.])(\d{1,2})\.(\d{1,2})\.(\d{4})(?!\d)"), "dmy"),  # European order
    (re.compile(rf"\b{_month}\s+{_day},?\s+(\d{{4}})\b", re.IGNORECASE), "mdy"),
    (re.compile(rf"\b{_day}\s+(?:day\s+)?(?:of\s+)?{_month},?\s+(\d{{4}})\b", re.IGNORECASE), "dmy"),
]
COMPANY = re.compile(r"\b((?:[A-Z][\w&'-]*\s+){1,4}(?:Inc|LLC|L\.L\.C|Ltd|Limited|Corp|Corporation|GmbH|plc|PLC|LLP"
                     r"|AG|S\.A|SA|B\.V|BV|Pty|Co|Company|SARL|S\.r\.l|AB|Oy|NV|LP)\b\.?)")
# Capitalized only because they start a sentence: "From Brightwater Labs LLC" names "Brightwater Labs LLC".
_LEADING_WORDS = re.compile(
    r"^(?:(?:The|A|An|If|When|Where|Whereas|Either|Neither|Each|Both|From|After|Before|Upon|Under|Unless|Until|Once"
    r"|While|Should|Following|Within|For|On|In|By|To|With|Without|Between|Only|Then|But|And|Or|So|Since|Although"
    r"|Though|Notwithstanding|Subject|Provided|Nor|Any|All|This|That|These|Those|Otherwise)\s+)+")
_BARE_NUMBER = re.compile(rf"(?<![\w.,])({NUM})(?:st|nd|rd|th)?(?![\w])")


def _dec(number: str, scale: str | None = None) -> Decimal:
    value = Decimal(number.replace(",", ""))
    scale = (scale or "").lower()
    return value * {"million": 1_000_000, "m": 1_000_000, "thousand": 1000, "k": 1000}.get(scale, 1)


def _fmt(value: Decimal) -> str:
    """1250.00 -> "1250", 1.50 -> "1.5" (a canonical figure, no grouping)."""
    text = format(value.normalize(), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _date_key(groups: Sequence[str], order: str) -> str | None:
    parts = dict(zip(order, groups))
    month = parts["m"] if parts["m"].isdigit() else str(MONTHS.get(parts["m"].lower().rstrip("."), 0))
    y, m, d = int(parts["y"]), int(month), int(parts["d"])
    return f"{y:04d}-{m:02d}-{d:02d}" if 1 <= m <= 12 and 1 <= d <= 31 else None


def extract_facts(text: str) -> list[tuple[tuple, tuple[int, int]]]:
    """Every number fact in ``text``: ``(key, span in canonical_text(text))``.

    Keys: ``("amount", "USD", "1250")``, ``("percent", "1.5")``, ``("duration", "30", "day")`` (units: hour, day,
    business day, week, month, year), ``("date", "2025-03-01")``. Overlapping matches keep the first kind found
    in that order: dates, amounts, percentages, durations.
    """
    canon = canonical_text(text)
    found: list[tuple[tuple, tuple[int, int]]] = []

    def free(span):
        return all(span[1] <= s[0] or span[0] >= s[1] for _, s in found)

    for pattern, order in DATE_PATTERNS:
        for m in pattern.finditer(canon):
            key = _date_key(m.groups(), order)
            if key and free(m.span()):
                found.append((("date", key), m.span()))
    for m in AMOUNT_PREFIX.finditer(canon):
        if free(m.span()):
            found.append((("amount", CURRENCY_PREFIX[m.group(1).lower()], _fmt(_dec(m.group(2), m.group(3)))), m.span()))
    for m in AMOUNT_SUFFIX.finditer(canon):
        if free(m.span()):
            found.append((("amount", CURRENCY_SUFFIX[m.group(3).lower()], _fmt(_dec(m.group(1), m.group(2)))), m.span()))
    for m in PERCENT.finditer(canon):
        if free(m.span()):
            found.append((("percent", _fmt(_dec(m.group(1)))), m.span()))
    for m in DURATION.finditer(canon):
        if free(m.span()):
            kind = (m.group(2) or "").lower()
            unit = ("business day" if kind in ("business", "working") and m.group(3).lower() == "day"
                    else m.group(3).lower())
            found.append((("duration", _fmt(_dec(m.group(1))), unit), m.span()))
    return found


def fact_keys(text: str) -> set[tuple]:
    """The normalized number facts of ``text`` (see :func:`extract_facts`)."""
    return {key for key, _ in extract_facts(text)}


def numbers(text: str) -> set[str]:
    """Every figure in ``text`` (after :func:`canonical_text`), canonical (``"1,250.00"`` -> ``"1250"``), plus the
    parts of every date (year, month, day) and the value of every amount."""
    canon = canonical_text(text)
    values = {_fmt(_dec(n)) for n in _BARE_NUMBER.findall(canon)}
    for key, _ in extract_facts(text):
        if key[0] == "date":
            values |= {str(int(p)) for p in key[1].split("-")}
        elif key[0] in ("amount", "percent", "duration"):
            values.add(key[2] if key[0] == "amount" else key[1])
    return values


def plain(text: str) -> str:
    """Lower-case words only (accents, punctuation and quotes dropped): how names and places are compared."""
    return " ".join(re.sub(r"[^\w\s&-]", " ", normalize(text)).replace("-", " ").split())


def fact_present(fact: str, summary: str) -> bool:
    """Is the key fact ``fact`` in ``summary``? Number facts by normalized value, others by their words."""
    keys = fact_keys(fact)
    if len(keys) == 1:  # one number fact ("30 days", "a 30-day period", "USD 1,250"): compare normalized values
        return keys <= fact_keys(summary)
    words = plain(fact)
    return bool(words) and re.search(rf"(?<!\w){re.escape(words)}(?!\w)", plain(summary)) is not None


def fact_recall(summary: str, facts: Sequence[str]) -> float:
    """Share of the key facts present in the summary (NaN for a clause without key facts)."""
    return sum(fact_present(f, summary) for f in facts) / len(facts) if facts else float("nan")


def invented_facts(summary: str, clause: str) -> list[str]:
    """Facts of ``summary`` that ``clause`` does not hold: number facts, bare figures, company names."""
    clause_keys, clause_numbers, clause_words = fact_keys(clause), numbers(clause), plain(clause)
    invented, canon = [], canonical_text(summary)
    spans = []
    for key, span in extract_facts(summary):
        spans.append(span)
        if key not in clause_keys:
            invented.append(canon[span[0]:span[1]])
    for m in _BARE_NUMBER.finditer(canon):
        inside = any(s[0] <= m.start() < s[1] for s in spans)
        if not inside and _fmt(_dec(m.group(1))) not in clause_numbers:
            invented.append(m.group(0))
    for name in COMPANY.findall(summary):
        name = _LEADING_WORDS.sub("", name.strip())
        if plain(name) and plain(name) not in clause_words:
            invented.append(name)
    return invented


def clause_facts(clause: str) -> tuple[set[tuple], set[str]]:
    """What a summary of ``clause`` can be checked against without a reference: its number facts (normalized keys)
    and the company names it holds. Places and roles are not found this way."""
    names = {_LEADING_WORDS.sub("", n.strip()) for n in COMPANY.findall(clause)}
    return fact_keys(clause), {n for n in names if plain(n)}


def check(summary: str, clause: str) -> tuple[int, int, list[str]]:
    """Check a summary against its own clause: ``(facts kept, facts checkable, invented facts)``.

    Needs no reference summary, so it runs at prediction time too: the fact check of ``scoring.summarize``.
    """
    keys, names = clause_facts(clause)
    kept = len(keys & fact_keys(summary)) + sum(fact_present(n, summary) for n in names)
    return kept, len(keys) + len(names), invented_facts(summary, clause)


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure (0-1) with Google's ``rouge-score`` package (offline, Porter stemming)."""
    import logging

    from rouge_score import rouge_scorer

    logging.getLogger("absl").setLevel(logging.WARNING)  # "Using default tokenizer." once per call
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = [scorer.score(r, p) for p, r in zip(predictions, references, strict=True)]
    n = max(len(scores), 1)
    return {k: sum(s[k].fmeasure for s in scores) / n for k in ("rouge1", "rouge2", "rougeL")}


def score(summaries: Sequence[str], rows: Sequence[dict]) -> dict[str, float]:
    """Fact recall (mean over clauses), invented-fact rate (share of summaries with any), ROUGE, length."""
    recalls = [fact_recall(s, r["facts"]) for s, r in zip(summaries, rows, strict=True) if r["facts"]]
    invented = [bool(invented_facts(s, r["clause"])) for s, r in zip(summaries, rows)]
    words = [len(s.split()) for s in summaries]
    return {"fact_recall": sum(recalls) / len(recalls) if recalls else float("nan"),
            "invented_rate": sum(invented) / max(len(invented), 1),
            **rouge(summaries, [r["summary"] for r in rows]),
            "summary_words": sum(words) / max(len(words), 1)}
