"""The legal recipe's own logic: fact normalization and scoring, data generation and validation, clause splitting
and the predict script's input handling (tiny model; seconds)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import DataError
from common.models import TINY_TEXT_ALIAS, load_tokenizer
from common.paths import load_sibling

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "usecase-legal"
facts = load_sibling(RECIPE / "train.py", "facts")
prepare = load_sibling(RECIPE / "train.py", "prepare_data")
predict = load_sibling(RECIPE / "train.py", "predict")


# ------------------------------------------------------------------------------------------ normalization
@pytest.mark.parametrize("a, b", [
    ("thirty (30) days", "30 days"),
    ("Thirty (30) days", "a 30-day period"),
    ("sixty days", "60 days"),
    ("sixty (60) calendar days", "60 days"),
    ("$1,250.00", "USD 1,250"),
    ("one thousand two hundred fifty dollars ($1,250)", "USD 1,250"),
    ("1,250 US dollars", "USD 1,250"),
    ("Five Thousand Euros (EUR 5,000)", "€5,000"),
    ("£12,500", "GBP 12,500"),
    ("$2.5 million", "USD 2,500,000"),
    ("March 1, 2025", "1 March 2025"),
    ("the 1st day of March, 2025", "2025-03-01"),
    ("03/01/2025", "1 March 2025"),  # numeric dates are read in US order (month/day/year)
    ("1st March 2025", "March 1st, 2025"),
    ("one and one-half percent (1.5%)", "1.5%"),
    ("10 percent", "ten percent (10%)"),
    ("twelve (12) months", "12 months"),
    ("ten (10) business days", "10 working days"),
])
def test_same_fact_written_differently_is_the_same_fact(a, b):
    assert facts.fact_keys(a) == facts.fact_keys(b) != set()
    assert facts.fact_present(b, f"The summary says {a} here.")


@pytest.mark.parametrize("fact, text", [
    ("30 days", "within 30 business days"),      # business days are not days
    ("USD 1,250", "EUR 1,250"),                  # the currency is part of the fact
    ("USD 1,250", "USD 12,500"),
    ("1 March 2025", "3 January 2025"),
    ("7 days", "17 days"),
    ("1.5%", "15%"),
    ("12 months", "12 weeks"),
    ("Acme Corp", "Acme Corporation Holdings"),  # names must be copied, not paraphrased
])
def test_different_facts_do_not_match(fact, text):
    assert not facts.fact_present(fact, text)


def test_names_and_places_ignore_case_and_punctuation():
    assert facts.fact_present("Acme Corp.", "ACME CORP must pay")
    assert facts.fact_present("England and Wales", "the law of england and wales applies")
    assert not facts.fact_present("York", "the State of New Yorkshire")


def test_words_to_number():
    assert facts.words_to_number("one hundred twenty") == 120
    assert facts.words_to_number("thirty-five") == 35
    assert facts.words_to_number("one and one-half") == 1.5
    assert facts.words_to_number("two million five hundred thousand") == 2_500_000
    assert facts.words_to_number("party") is None


def test_spelled_numbers_only_count_before_a_unit():
    # "one of the parties" is not the number 1 (it would be flagged as invented otherwise)
    assert facts.invented_facts("One of the parties may end it with 30 days notice.", "thirty (30) days") == []


def test_fact_recall_counts_each_fact():
    row_facts = ["Acme Corp", "Beta LLC", "USD 1,250", "30 days"]
    assert facts.fact_recall("Acme Corp must pay Beta LLC $1,250.00 within thirty days.", row_facts) == 1.0
    assert facts.fact_recall("Acme Corp must pay Beta LLC within 30 days.", row_facts) == 0.75
    assert facts.fact_recall("Nothing relevant.", row_facts) == 0.0


# ------------------------------------------------------------------------------------------ invented facts
CLAUSE = ('Acme Corp. (the "Supplier") shall invoice Beta LLC (the "Customer") $1,250.00 per month, payable '
          "within thirty (30) days, starting on the 1st day of March, 2025, pursuant to Section 4.2.")


def test_a_faithful_normalized_summary_invents_nothing():
    assert facts.invented_facts("Beta LLC must pay Acme Corp USD 1,250 a month within 30 days from 1 March 2025 "
                                "(Section 4.2).", CLAUSE) == []


@pytest.mark.parametrize("summary, invented", [
    ("Beta LLC must pay USD 1,500 a month.", "USD 1,500"),          # changed amount
    ("Beta LLC must pay EUR 1,250 a month.", "EUR 1,250"),          # changed currency
    ("Beta LLC must pay within 45 days.", "45 days"),               # changed period
    ("Payments start on 1 April 2025.", "1 April 2025"),            # changed date
    ("Late payments carry 2% interest.", "2%"),                     # a rate the clause never states
    ("Beta LLC must pay Gamma Holdings Inc. monthly.", "Gamma Holdings Inc."),  # a party that is not there
    ("Beta LLC must pay under Section 7.", "7"),                    # a bare number that is not there
])
def test_invented_facts_are_found(summary, invented):
    assert invented in facts.invented_facts(summary, CLAUSE)


@pytest.mark.parametrize("summary", ["From Beta LLC, Acme Corp gets USD 1,250 a month.",
                                     "Where Beta LLC pays late, Acme Corp. may charge interest.",
                                     "After 30 days, Beta LLC owes the invoice."])
def test_a_sentence_start_word_is_not_part_of_a_company_name(summary):
    assert facts.invented_facts(summary, CLAUSE) == []


def test_a_misspelled_party_is_still_invented():
    assert facts.invented_facts("From Betta LLC, Acme Corp gets USD 1,250 a month.", CLAUSE) == ["Betta LLC"]


def test_check_needs_no_reference():
    clause = ('Acme Corp (the "Buyer") shall pay Zenith Ltd (the "Seller") One Thousand Euros (EUR 1,000) within '
              'thirty (30) days.')
    assert facts.check("Acme Corp pays Zenith Ltd EUR 1,000 within 30 days.", clause) == (4, 4, [])
    kept, total, invented = facts.check("The buyer pays EUR 1,000 within 45 days to Zenith Ltd.", clause)
    assert (kept, total) == (2, 4) and invented == ["45 days"]


def test_fact_check_redraws_only_failing_summaries_and_keeps_the_best(monkeypatch):
    """A passing greedy summary is kept (no sampling asked for it); a failing one is replaced by the candidate with
    the most facts kept, less two per invented fact; a clause leaves the next round once a candidate passes; with no
    better candidate the greedy one stays; at most fact_check_samples candidates are drawn per clause."""
    from argparse import Namespace

    scoring = load_sibling(RECIPE / "train.py", "scoring")
    monkeypatch.setattr(scoring, "ROUND", 2)
    clauses = ["Acme Corp shall pay USD 500 within 10 days.", "Zenith Ltd may terminate on 30 days notice.",
               "Acme Corp shall deliver within 5 days."]
    greedy = ["Acme Corp pays USD 500 within 10 days.", "Zenith Ltd may end it on notice.", "Acme Corp delivers."]
    rounds = iter([
        [["Zenith Ltd may end it on 45 days notice.", "Zenith Ltd may end it on 30 days notice."],
         ["Acme Corp delivers within 7 days.", "It delivers."]],
        [["Acme Corp delivers in 7 days."]]])
    asked = []

    def fake_sample(model, tok, prompts, n, *args, **kwargs):
        asked.append(([p[-1]["content"] for p in prompts], n))
        return next(rounds)

    monkeypatch.setattr(scoring, "generate_chat", lambda *a, **k: list(greedy))
    monkeypatch.setattr(scoring, "sample_chat", fake_sample)
    args = Namespace(system_prompt="s", max_new_tokens=8, eval_batch_size=4, fact_check_samples=3,
                     sample_temperature=0.7, sample_top_p=0.95, sample_seed=0)
    checked, plain_greedy = scoring.summarize(None, None, clauses, args)
    assert asked == [(clauses[1:], 2), (clauses[2:], 1)] and plain_greedy == greedy
    assert checked == [greedy[0], "Zenith Ltd may end it on 30 days notice.", greedy[2]]
    monkeypatch.setattr(scoring, "sample_chat", lambda *a: (_ for _ in ()).throw(AssertionError("sampled")))
    assert scoring.summarize(None, None, clauses, Namespace(**{**vars(args), "fact_check_samples": 0}))[0] == greedy


def test_validation_clauses_are_left_out_when_not_scored(monkeypatch):
    """score_validation False: the validation clauses are never summarized and the report has no validation block."""
    from argparse import Namespace

    scoring = load_sibling(RECIPE / "train.py", "scoring")
    splits = prepare.build_splits(_args(max_eval_rows=2), seed=0)
    splits["handwritten"] = []
    asked = []

    def fake_generate(model, tok, prompts, *args, **kwargs):
        asked.extend(p[-1]["content"] for p in prompts)
        return ["A summary." for _ in prompts]

    monkeypatch.setattr(scoring, "generate_chat", fake_generate)
    args = Namespace(system_prompt="s", max_new_tokens=8, eval_batch_size=4, fact_check_samples=0,
                     score_validation=False)
    result = scoring.evaluate(None, None, splits, args, "base")
    assert asked == [r["clause"] for r in splits["test"] + splits["style_shift"]]
    assert result["valid"] == {} and result["test"]["fact_recall"] == 0.0
    assert "metrics_validation" not in scoring.build_report(result, result, splits)
    asked.clear()
    both = scoring.evaluate(None, None, splits, Namespace(**{**vars(args), "score_validation": True}), "base")
    assert set(asked) >= {r["clause"] for r in splits["valid"]} and both["valid"]
    assert "metrics_validation" in scoring.build_report(both, both, splits)


def test_score_reports_every_metric():
    rows = [{"clause": CLAUSE, "summary": "Beta LLC must pay Acme Corp USD 1,250 a month within 30 days.",
             "facts": ["Beta LLC", "Acme Corp", "USD 1,250", "30 days"]}]
    good = facts.score(["Beta LLC must pay Acme Corp USD 1,250 a month within 30 days."], rows)
    bad = facts.score(["Beta LLC pays USD 9,999."], rows)
    assert good["fact_recall"] == 1.0 and good["invented_rate"] == 0.0 and good["rougeL"] == pytest.approx(1.0)
    assert bad["fact_recall"] == 0.25 and bad["invented_rate"] == 1.0 and bad["rougeL"] < 0.5
    assert good["summary_words"] == 13


# ------------------------------------------------------------------------------------------ data
def _args(**kw):
    from types import SimpleNamespace

    base = dict(templates_file="usecase-legal/data/templates.yaml", train_per_template=2, valid_per_template=1,
                test_per_template=1, style_shift_file="usecase-legal/data/style_shift.jsonl",
                handwritten_file="usecase-legal/data/handwritten.jsonl", train_file=None, validation_file=None,
                test_file=None, clause_field="clause", summary_field="summary", facts_field="facts",
                max_eval_rows=None, max_valid_rows=None, test_templates="held_out")
    return SimpleNamespace(**{**base, **kw})


def test_eval_caps_cut_validation_apart_from_test():
    full = prepare.build_splits(_args(), seed=0)
    capped = prepare.build_splits(_args(max_eval_rows=5, max_valid_rows=3), seed=0)
    assert capped["valid"] == full["valid"][:3] and capped["test"] == full["test"][:5]
    assert capped["style_shift"] == full["style_shift"][:5] and capped["train"] == full["train"]
    assert len(prepare.build_splits(_args(max_eval_rows=4), seed=0)["valid"]) == 4  # falls back to max_eval_rows


def test_test_clauses_in_training_wordings_are_new_clauses():
    held_out = prepare.build_splits(_args(), seed=0)
    known = prepare.build_splits(_args(test_templates="training"), seed=0)
    assert known["train"] == held_out["train"] and known["valid"] == held_out["valid"]
    train_sources = {r["source"] for r in known["train"]}
    assert {r["source"] for r in known["test"]} <= train_sources  # the training wordings...
    assert not {r["clause"] for r in known["test"]} & {r["clause"] for r in known["train"]}  # ...new clauses
    assert len(known["test"]) == len(known["train"]) // 2
    clauses = [r["clause"].lower() for r in known["test"]]
    assert not any(name.lower() in c for c in clauses for name in prepare.NAMES["train"])  # held-out parties
    assert all(any(name.lower() in c for name in prepare.NAMES["held_out"]) for c in clauses)
    with pytest.raises(DataError, match="test_templates"):
        prepare.build_splits(_args(test_templates="seen"), seed=0)


def test_training_wordings_with_your_own_file_is_an_error_not_ignored(tmp_path):
    mine = tmp_path / "mine.jsonl"
    mine.write_text("".join(json.dumps({"clause": f"Clause {i}: the tenant pays EUR {i}00 by the 5th.",
                                        "summary": f"The tenant pays EUR {i}00 monthly."}) + "\n" for i in range(1, 9)))
    assert prepare.build_splits(_args(train_file=str(mine)), seed=0)["train"]  # the file itself is fine
    with pytest.raises(DataError, match=r"test_templates: training .*mine\.jsonl.*test_file"):
        prepare.build_splits(_args(train_file=str(mine), test_templates="training"), seed=0)


def test_generated_data_is_deterministic_varied_and_held_out():
    a, b = prepare.build_splits(_args(), seed=0), prepare.build_splits(_args(), seed=0)
    assert a == b
    assert len({r["type"] for r in a["train"]}) >= 12
    sources = {s: {r["source"] for r in a[s]} for s in ("train", "valid", "test")}
    assert not sources["train"] & sources["test"] and not sources["train"] & sources["valid"]
    def parties(rows):
        return {f for r in rows for f in r["facts"] if re.search(r"(Inc\.|LLC|Ltd|Corp\.|GmbH|plc|B\.V\.|LLP)$", f)}

    assert parties(a["test"]) and not parties(a["train"]) & parties(a["test"])  # held-out party names
    assert len(a["style_shift"]) >= 20 and len(a["handwritten"]) == 3
    # the facts are written in varied legal forms in the clauses, normalized in the summaries
    clauses = " ".join(r["clause"] for r in a["train"])
    assert "(30) days" in clauses or "(60) days" in clauses or "(90) days" in clauses
    assert all(facts.fact_recall(r["summary"], r["facts"]) == 1.0 for r in a["train"])


def test_bad_rows_name_file_and_row(tmp_path):
    bad = tmp_path / "mine.jsonl"
    bad.write_text(json.dumps({"clause": "Pay $5 within 3 days.", "summary": "Pay USD 5 within 3 days."}) + "\n"
                   + json.dumps({"clause": "Pay $5.", "summary": ""}) + "\n"
                   + json.dumps({"clause": "Pay $5.", "summary": "Pay USD 6.", "facts": ["USD 6"]}) + "\n")
    with pytest.raises(DataError) as e:
        prepare.read_user_rows(str(bad))
    msg = str(e.value)
    assert f"{bad}, row 2: missing or empty 'summary'" in msg
    assert f"{bad}, row 3: key fact(s) ['USD 6'] not found in the clause" in msg
    assert "row 1" not in msg


def test_user_csv_with_semicolon_facts_and_derived_facts(tmp_path):
    csv_file = tmp_path / "mine.csv"
    csv_file.write_text('clause,summary,facts\n"Acme Ltd may end this on ninety (90) days notice.",'
                        '"Acme Ltd can end it with 90 days notice.","Acme Ltd; 90 days"\n'
                        '"Pay EUR 300 by 2 May 2026.","Pay EUR 300 by 2 May 2026.",\n')
    rows = prepare.read_user_rows(str(csv_file))
    assert rows[0]["facts"] == ["Acme Ltd", "90 days"]
    assert set(rows[1]["facts"]) == {"EUR 300", "2 May 2026"}  # no facts column value: taken from the summary


def test_hub_style_field_mapping(tmp_path):
    f = tmp_path / "hub.jsonl"
    f.write_text(json.dumps({"document": "Rent is $900 a month.", "tldr": "Rent is USD 900 a month."}) + "\n")
    rows = prepare.read_user_rows(str(f), clause_field="document", summary_field="tldr")
    assert rows[0]["clause"] == "Rent is $900 a month." and rows[0]["facts"] == ["USD 900"]


def test_template_with_unknown_slot_is_refused(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("termination:\n  train: [{clause: 'x {nope}', summary: 'y'}]\n  valid: [{clause: a, summary: b}]\n"
                   "  test: [{clause: a, summary: b}]\n")
    with pytest.raises(DataError, match=r"termination.train\[0\]: unknown slot\(s\) \['nope'\]"):
        prepare.read_templates(bad)


# ------------------------------------------------------------------------------------------ predict.py
CONTRACT = """SERVICES AGREEMENT

1. TERM
This Agreement runs for twelve (12) months from March 1, 2026.

2. PAYMENT
The Customer shall pay $1,250.00 within thirty (30) days of each invoice.

ARTICLE 3 - TERMINATION
3.1 Either party may terminate on sixty (60) days written notice.
3.2 The laws of the State of New York govern this Agreement.
"""


def test_contract_is_split_at_numbered_sections_and_headings():
    clauses = predict.split_clauses(CONTRACT)
    assert len(clauses) == 4  # the title line joins the first clause, as the article heading joins 3.1
    assert clauses[0].startswith("SERVICES AGREEMENT 1. TERM This Agreement runs")
    assert clauses[2].startswith("ARTICLE 3 - TERMINATION 3.1") and clauses[3].startswith("3.2 The laws")
    assert predict.split_clauses("One clause, no structure, thirty (30) days.") == [
        "One clause, no structure, thirty (30) days."]


@pytest.mark.parametrize("clause", [
    " ".join(["The Supplier shall deliver the goods."] * 200),  # sentences: cut at their ends
    "供应商应在三十天内交付货物并承担运输费用" * 60,  # written without spaces or sentence ends: cut by tokens
])
def test_long_clause_is_cut_by_tokens_and_said(clause, capsys):
    tokenizer = load_tokenizer(TINY_TEXT_ALIAS)
    pieces = predict.fit_clauses(tokenizer, ["Short clause.", clause])
    n_tokens = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in pieces]
    assert pieces[0] == "Short clause." and len(pieces) > 2 and max(n_tokens) <= predict.MAX_CLAUSE_TOKENS
    assert "clause 2 is longer than 300 tokens" in capsys.readouterr().err
    assert "".join(pieces[1:]).replace(" ", "") == clause.replace(" ", "")  # nothing lost


def test_json_output_is_only_json(tmp_path, capsys):
    f = tmp_path / "contract.txt"
    f.write_text(CONTRACT)
    predict.main(["--model_dir", "tiny-random-smollm2", "--input", str(f), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert [set(item) for item in out] == [{"clause", "summary"}] * 4


def test_readable_output_ends_with_not_legal_advice(tmp_path, capsys):
    f = tmp_path / "clause.txt"
    f.write_text("Either party may terminate on thirty (30) days notice.")
    predict.main(["--model_dir", "tiny-random-smollm2", "--input", str(f)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert "1 clause(s)" in lines[0] and lines[-1].startswith("Not legal advice")


@pytest.mark.parametrize("content, message", [
    (b"", "the input is empty"),
    (b"  \n\n ", "the input is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary file"),
    (b"caf\xe9 clause", "not UTF-8"),
    (b"Either party may terminate. " * 40_000, "more than --max_bytes"),  # ~1.1 MB
])
def test_bad_input_is_a_clear_error_before_any_model_loads(tmp_path, content, message):
    f = tmp_path / "input.txt"
    f.write_bytes(content)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # a model folder that does not exist: the input check must stop the run first
    proc = subprocess.run([sys.executable, RECIPE / "predict.py", "--model_dir", tmp_path / "no-model", "--input", f],
                          cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == ""


def test_negative_fact_check_samples_is_refused(tmp_path):
    from common.errors import ConfigError

    f = tmp_path / "clause.txt"
    f.write_text("Either party may terminate on thirty (30) days notice.")
    with pytest.raises(ConfigError, match="--fact_check_samples must be >= 0"):
        predict.main(["--model_dir", str(tmp_path / "no-model"), "--input", str(f), "--fact_check_samples", "-1"])


def test_too_many_clauses_is_refused(tmp_path):
    f = tmp_path / "big.txt"
    f.write_text("\n".join(f"{i}. Clause number {i} applies." for i in range(1, 100)))
    with pytest.raises(DataError, match="99 clauses, more than --max_clauses 60"):
        predict.main(["--model_dir", str(tmp_path / "no-model"), "--input", str(f)])
