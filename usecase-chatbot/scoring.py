"""How the support bot is scored, and how its report is put together (used by train.py).

- ``fact_accuracy``: share of questions whose greedy answer contains *every* key term of the fact
  (:func:`common.evaluation.key_terms_score`), on the held-out test phrasings (and, with the same code, on the
  validation phrasings, where defaults are chosen).
- ``answer_perplexity``: perplexity of the reference answers given the test questions.
- ``abstention_rate``: share of held-out questions the docs do *not* answer (``unanswerable.yaml``) that the
  model declines; ``false_abstention_rate``: share of held-out *answerable* questions it declines. What counts as
  a decline is :func:`is_decline`.
- ``general_retention``: of the general questions the *base* model answers right, the share the fine-tuned
  model still answers right -- on ``general_knowledge.yaml`` and, separately, on questions of other shapes
  (``general_other.yaml``: arithmetic in words, units, definitions, common sense, short instructions; its
  validation twin ``general_other_valid.yaml`` is where remedies against forgetting are chosen).

The abstention gate: an answer is replaced by the decline when the question names a word or figure the help
center never uses ("Notion", "Enterprise", "$99"), or when the model gave its whole answer a log-probability
below a threshold. An answer that names such a word itself, or restates no statement of the help center closely
enough (:func:`grounding`, with ``abstention_grounding``; with ``abstention_relevance``, also one that shares no
content word with the question) is re-drawn first: sampled answers that pass the checks replace it
(:func:`redraw`), and only when none passes is it declined; the threshold then reads the log-probability of the
answer given (:func:`given_logprobs`). The threshold is chosen on the *validation* questions only
(:func:`choose_gate`); the test split is scored through the gate, and chat.py applies the same rule.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from rouge_score import rouge_scorer

from common.evaluation import (
    answer_logprobs,
    completion_perplexity,
    generate_chat,
    generate_chat_with_logprobs,
    key_terms_accuracy,
    key_terms_score,
    retention,
    sample_chat,
)
from common.paths import usecase_name

# A decline says, in words, that the bot does not have the answer. Pointing to support alone is not a decline
# (a right answer may add "contact support"), and neither is a plain "no" (which is an answer).
DECLINE = re.compile(r"\b(i (do not|don't|dont) (have|know)|i'm not sure|i am not sure|i (can't|cannot|could not|"
                     r"couldn't) (find|answer|say)|(not|isn't|is not) (covered|mentioned|described|documented|listed)|"
                     r"no information|not (have|find) (that|this|any) information)\b")


def is_decline(answer: str) -> bool:
    """Whether ``answer`` declines to answer (see :data:`DECLINE`; curly apostrophes count as straight ones)."""
    return bool(DECLINE.search(answer.lower().replace("\u2019", "'")))


def decline_rate(answers: list[str]) -> float:
    return sum(map(is_decline, answers)) / len(answers) if answers else float("nan")


def split_metrics(answers: dict[str, list[str]], splits: dict, split: str) -> dict:
    """Fact accuracy and false abstention on the answerable questions of ``split``, abstention on the others."""
    metrics = {"fact_accuracy": key_terms_accuracy(answers[split], [r["key_terms"] for r in splits[split]]),
               "false_abstention_rate": decline_rate(answers[split])}
    if answers.get(f"decline_{split}"):
        metrics["abstention_rate"] = decline_rate(answers[f"decline_{split}"])
    return metrics


def evaluate(model, tokenizer, splits: dict, general_sets: dict[str, list[dict]], args, tag: str,
             with_logprobs: bool = False) -> dict:
    """Answer every held-out question once; returns ``{"test": metrics, "valid": metrics, "answers": ...,
    "logprobs": ...}`` -- with ``with_logprobs``, the log-probability of each answer token of the product
    questions (what the abstention gate needs; otherwise ``{}``)."""
    answers, logprobs = {}, {}
    for split in ("test", "valid"):
        for key in (split, f"decline_{split}"):
            if splits.get(key):
                what = f"{tag}: {split}" + ("" if key == split else " (not in the docs)")
                prompts = [r["messages"][:-1] for r in splits[key]]
                if with_logprobs:
                    answers[key], logprobs[key] = generate_chat_with_logprobs(
                        model, tokenizer, prompts, args.max_new_tokens, args.eval_batch_size, what, cache=True)
                else:
                    answers[key] = generate_chat(model, tokenizer, prompts, args.max_new_tokens,
                                                 args.eval_batch_size, what, cache=True)
    metrics = {split: split_metrics(answers, splits, split) for split in ("test", "valid")}
    metrics["test"]["answer_perplexity"] = completion_perplexity(
        model, tokenizer, [r["messages"][:-1] for r in splits["test"]],
        [r["messages"][-1]["content"] for r in splits["test"]])
    for name, questions in general_sets.items():
        answers[name] = generate_chat(model, tokenizer, [[{"role": "user", "content": g["question"]}]
                                                         for g in questions],
                                      args.max_new_tokens, args.eval_batch_size, f"{tag}: {name}", cache=True)
    return {**metrics, "answers": answers, "logprobs": logprobs}


# ------------------------------------------------------------------------------------------ abstention gate
NAME_OR_NUMBER = re.compile(r"\d[\d,.:]*\d|\d|\b[A-Z][a-zA-Z]+")


def vocabulary(docs: str) -> list[str]:
    """The lower-case words and figures of the help center (``$1,200`` -> ``1200``): what the bot may name."""
    return sorted(set(re.findall(r"[a-z0-9]+", docs.lower().replace(",", ""))))


def ungrounded(text: str, words: set[str], figures: bool = True) -> list[str]:
    """Names and figures in ``text`` that the help center never uses: capitalized words that do not open a
    sentence ("Notion", "Enterprise", "Linux") and numbers ("$99", "24/7"), compared as lower-case words.
    ``figures=False``: names only."""
    found = []
    for m in NAME_OR_NUMBER.finditer(text):
        before = text[:m.start()].rstrip()
        if m.group(0)[0].isalpha() and (not before or before[-1] in ".!?:"):
            continue  # capitalized because it opens a sentence
        if not figures and not m.group(0)[0].isalpha():
            continue
        found += [w for w in re.findall(r"[a-z0-9]+", m.group(0).lower().replace(",", "")) if w not in words]
    return found


def confidence(token_logprobs: list[float]) -> float:
    """How sure the model was of its answer: the log-probability of the whole greedy answer, the sum over its
    tokens (0 = certain). An empty answer has no confidence (-inf).

    An invented answer is rarely unsure at one token only: a memorized fact comes out at nearly 0 throughout,
    a confabulated one drifts. Measured on the validation questions of the default model (``python
    bench/chatbot_gate.py --confidence min sum mean``; see the README), the sum separated unanswerable from
    answerable questions better than the least likely token or the mean per token.
    """
    return sum(token_logprobs) if token_logprobs else -math.inf


# Words a question and its answer share without sharing a topic (function words, question words, the product).
FUNCTION_WORDS = frozenset(
    "a an the is are was were be been am of to in on for and or but with without by at as from per into about than "
    "then if do does did done can could would should will shall may might must have has had get gets got i me my "
    "we us our you your it its this that these those there what which who whom whose how why when where many much "
    "any some brightboard".split())


def _stem(word: str) -> str:
    for suffix in ("ing", "ies", "es", "ed", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[:-len(suffix)]
    return word


def topic_words(text: str) -> set[str]:
    """The content words of ``text``, crudely stemmed ("costs" -> "cost", "boards" -> "board")."""
    return {_stem(w) for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in FUNCTION_WORDS and len(w) > 1}


def off_topic(question: str, answer: str) -> bool:
    """The answer shares no content word with the question ("What is Brightboard's phone number?" -> "The desktop
    app keeps working offline ..."): a fluent sentence from the docs about something else."""
    return not topic_words(question) & topic_words(answer)


# How an answer that fails the gate's answer checks is re-drawn: sampled candidates, seeded (same answers every run)
REDRAW = {"temperature": 1.0, "top_p": 0.95, "seed": 0}


_ROUGE = rouge_scorer.RougeScorer(["rougeL"])


def grounding(answer: str, statements: list[str]) -> float:
    """How closely ``answer`` restates one statement of the help center: the largest ROUGE-L F1 (longest common
    word subsequence; ``rouge-score``'s tokenizer: lower case, punctuation dropped) against any statement. 1.0: a
    statement word for word, as the bot was trained to answer; "The Brightboard supports more than 50 languages."
    against the docs: 0.3."""
    return max((_ROUGE.score(s, answer)["rougeL"].fmeasure for s in statements), default=0.0)


def answer_passes(question: str, answer: str, words: set[str], relevance: bool = False,
                  statements: list[str] = (), min_grounding: float | None = None) -> bool:
    """The gate's checks on an answer: it names nothing the help center never uses, (with ``relevance``) shares a
    content word with its question, and (with ``min_grounding``) restates a statement of the docs at least that
    closely (:func:`grounding`)."""
    return (not ungrounded(answer, words) and not (relevance and off_topic(question, answer))
            and (min_grounding is None or grounding(answer, statements) >= min_grounding))


def _answer_check(gate: dict) -> Callable[[str, str], bool]:
    """:func:`answer_passes` with the settings of ``gate`` bound: ``(question, answer) -> passes?``."""
    words, relevance = set(gate["vocabulary"]), gate.get("relevance", False)
    statements, min_grounding = gate.get("statements", []), gate.get("grounding")
    return lambda question, answer: answer_passes(question, answer, words, relevance, statements, min_grounding)


def asks_unknown(question: str, gate: dict) -> bool:
    """The gate's check on a question: it names something the help center never uses -- a name, or (unless
    ``gate["question_figures"]`` is False) a figure."""
    return bool(ungrounded(question, set(gate["vocabulary"]), gate.get("question_figures", True)))


def redraw(model, tokenizer, conversations: list[list[dict]], answers: list[str], gate: dict, max_new_tokens: int,
           batch_size: int = 16, cache: bool = False) -> list[str | None]:
    """``answers`` with each one that fails the gate's answer checks (:func:`answer_passes`) re-drawn.

    A greedy answer naming a figure the docs never give ("65536 objects") is often a wrong guess at a fact the
    docs *do* give: ``gate["redraw_samples"]`` answers are sampled (:data:`REDRAW`) and the most frequent one that
    passes the checks replaces it (the first drawn, on a tie); ``None`` where none passes (the gate declines).
    Answers that pass, and those to a question that itself names something the docs never use (declined anyway),
    are returned as they are. ``redraw_samples: 0`` re-draws nothing: every failing answer is ``None``.
    """
    passes = _answer_check(gate)
    out: list[str | None] = list(answers)
    todo = [i for i, (c, a) in enumerate(zip(conversations, answers, strict=True))
            if not asks_unknown(c[-1]["content"], gate) and not passes(c[-1]["content"], a)]
    for i in todo:
        out[i] = None
    if todo and gate.get("redraw_samples", 0):
        samples = sample_chat(model, tokenizer, [conversations[i] for i in todo], gate["redraw_samples"],
                              max_new_tokens, batch_size, **REDRAW, desc="re-drawing", cache=cache)
        for i, candidates in zip(todo, samples, strict=True):
            passing = [a for a in candidates if passes(conversations[i][-1]["content"], a)]
            if passing:
                out[i] = Counter(passing).most_common(1)[0][0]
    return out


def gate_rule(gate: dict) -> Callable[[str, str | None, list[float]], bool]:
    """The abstention gate (``vocabulary``, ``threshold`` and ``relevance``, as :func:`choose_gate` returns it and
    train.py stores it in ``inference.json``) as a test ``(question, answer, greedy answer token log-probs) ->
    decline?``. ``answer`` is the one after :func:`redraw` (``None``: no candidate passed)."""
    threshold, passes = gate["threshold"], _answer_check(gate)

    def declines(question: str, answer: str | None, token_logprobs: list[float]) -> bool:
        return (answer is None or asks_unknown(question, gate)
                or not passes(question, answer)
                or (threshold is not None and confidence(token_logprobs) < threshold))
    return declines


def gate_settings(docs: str, decline: str, relevance: bool = False, redraw_samples: int = 0,
                  statements: list[str] = (), grounding: float | None = None, question_figures: bool = True) -> dict:
    """The threshold-free part of the gate: what the help center names, the decline, the answer checks
    (``grounding``: the least :func:`grounding` an answer needs against ``statements``; None: not checked) and
    whether a figure in the *question* the docs never use declines it (``question_figures``; names always do)."""
    if grounding is not None and not statements:
        raise ValueError("a grounding check needs the help center's statements")
    return {"vocabulary": vocabulary(docs), "threshold": None, "relevance": relevance,
            "redraw_samples": redraw_samples, "decline": decline, "grounding": grounding,
            "statements": list(statements) if grounding is not None else [], "question_figures": question_figures}


def given_logprobs(model, tokenizer, conversations: list[list[dict]], answers: list[str],
                   redrawn: list[str | None], logprobs: list[list[float]]) -> list[list[float]]:
    """The token log-probabilities the gate's threshold reads: of the answer the bot *gives*. The greedy answer's
    own where it is kept; where :func:`redraw` replaced it, the model's log-probabilities of the re-drawn answer
    (:func:`common.evaluation.answer_logprobs`), not those of the answer it no longer gives."""
    changed = [i for i, (a, r) in enumerate(zip(answers, redrawn, strict=True)) if r is not None and r != a]
    out = list(logprobs)
    if changed:
        scored = answer_logprobs(model, tokenizer, [conversations[i] for i in changed], [redrawn[i] for i in changed])
        for i, lp in zip(changed, scored, strict=True):
            out[i] = lp
    return out


def redraw_all(model, tokenizer, result: dict, splits: dict, gate: dict, max_new_tokens: int,
               batch_size: int = 16) -> tuple[dict, dict]:
    """:func:`redraw` on every product question the model answered (``result`` from :func:`evaluate` with
    log-probs): ``({split key: answers after re-drawing}, {split key: their token log-probs})`` (see
    :func:`given_logprobs`)."""
    redrawn, logprobs = {}, {}
    for key, answers in result["answers"].items():
        if key in result["logprobs"]:
            conversations = [r["messages"][:-1] for r in splits[key]]
            redrawn[key] = redraw(model, tokenizer, conversations, answers, gate, max_new_tokens, batch_size,
                                  cache=True)
            logprobs[key] = given_logprobs(model, tokenizer, conversations, answers, redrawn[key],
                                           result["logprobs"][key])
    return redrawn, logprobs


def most_declined(answerable: list[float], unanswerable: list[float], budget: int,
                  high: bool = False) -> tuple[float | None, int]:
    """``(threshold, gain)``: the threshold on a score that declines the most ``unanswerable`` questions *more*
    than ``answerable`` ones, declining at most ``budget`` answerable ones -- scores below it (``high``: at or
    above it). ``(None, 0)`` when no threshold gains anything."""
    threshold, best = None, 0
    for j, t in enumerate(sorted(answerable, reverse=high)[:max(budget + 1, 0)]):  # t declines j answerable ones
        t = t + 1e-9 if high else t
        gain = sum(u >= t if high else u < t for u in unanswerable) - j
        if gain > best:
            threshold, best = t, gain
    return threshold, best


def choose_gate(tuned: dict, splits: dict, gate: dict, max_false_abstention: float) -> dict:
    """The confidence threshold of the gate, fixed on the validation split only.

    The word checks (question and answer, after :func:`redraw`; ``tuned["redrawn"]``) decline what they decline;
    what they decline of the answerable validation questions counts against the budget,
    ``max_false_abstention`` of them. A threshold then declines the answers whose log-probability
    (:func:`confidence`) is below it: of the thresholds within the budget, the one that declines the most
    unanswerable validation questions *more* than answerable ones wins (no threshold on a tie: an unsure answer is
    not declined for nothing).
    """
    words_only = gate_rule({**gate, "threshold": None})

    def fixed(key: str) -> list[bool]:
        return [words_only(r["messages"][1]["content"], a, lp) for r, a, lp in
                zip(splits[key], tuned["redrawn"][key], tuned["logprobs"][key], strict=True)]

    valid, unanswerable = fixed("valid"), fixed("decline_valid")
    budget = math.floor(max_false_abstention * len(valid)) - sum(valid)
    threshold, best = most_declined([confidence(lp) for lp, d in zip(tuned["logprobs"]["valid"], valid) if not d],
                                    [confidence(lp) for lp, d in zip(tuned["logprobs"]["decline_valid"], unanswerable)
                                     if not d], budget)
    return {**gate, "rule": "decline when the question names a word or figure the help center never uses, when "
                            "the answer does" + (" or shares no content word with the question" if gate["relevance"]
                                                 else "")
                            + (f" or restates no statement of the docs (ROUGE-L < {gate['grounding']})"
                               if gate.get("grounding") is not None else "")
                            + " and no re-drawn answer passes, or when the answer's "
                            "log-probability (sum over its tokens) < threshold",
            "threshold": threshold, "max_false_abstention": max_false_abstention, "chosen_on": "validation",
            "validation_declined_by_words": sum(valid), "validation_threshold_gain": best,
            "validation_questions": len(valid)}


def apply_gate(result: dict, splits: dict, gate: dict) -> dict:
    """``result`` (from :func:`evaluate`, with ``"redrawn"``) with every answer the gate stops replaced by the
    decline and every re-drawn answer in place, rescored. The model's own scores are kept under ``"ungated"``;
    general-knowledge answers are left as they are."""
    declines = gate_rule(gate)
    answers, redrawn = dict(result["answers"]), {}
    for key, token_logprobs in result["logprobs"].items():
        answers[key] = [gate["decline"] if declines(r["messages"][1]["content"], a, lp) else a
                        for r, a, lp in zip(splits[key], result["redrawn"][key], token_logprobs, strict=True)]
        redrawn[key] = sum(a != own and a != gate["decline"] for a, own in zip(answers[key], result["answers"][key]))
    evaluated = [s for s in ("test", "valid") if s in result["answers"]]
    gated = {**result, "answers": answers, "answers_ungated": result["answers"], "redrawn_kept": redrawn,
             "ungated": {s: result[s] for s in evaluated}}
    for split in evaluated:
        gated[split] = {**result[split], **split_metrics(answers, splits, split)}
        # a declined answerable question costs only when the model's own answer was right
        right = [key_terms_score(a, r["key_terms"]) and g == gate["decline"] != a
                 for r, a, g in zip(splits[split], result["answers"][split], answers[split])]
        gated[split]["declined_right_rate"] = sum(right) / max(len(right), 1)
    return gated


def write_predictions(path: Path, test_rows: list[dict], before: list[str], after: list[str],
                      own: list[str] | None = None, decline: str | None = None,
                      adapter: list[str] | None = None) -> None:
    """Every held-out answer, before and after, one JSON line each (for error analysis); with ``own`` (the
    model's greedy answers before the abstention gate), the model's own answer wherever the answer given differs,
    and ``gate``: ``"declined"``, ``"re-drawn"`` or -- with ``adapter``, the answers through the gate before the
    router -- ``"routed to the base model"``."""
    with path.open("w") as f:
        for i, (r, b, a) in enumerate(zip(test_rows, before, after)):
            row = {"question": r["messages"][1]["content"], "reference": r["messages"][2]["content"],
                   "key_terms": r["key_terms"], "base": b, "fine_tuned": a, "correct": key_terms_score(a, r["key_terms"])}
            if own is not None and own[i] != a:
                why = ("routed to the base model" if adapter is not None and adapter[i] != a
                       else "declined" if a == decline else "re-drawn")
                row.update(model_answer=own[i], gate=why)
            f.write(json.dumps(row) + "\n")


def build_report(base: dict, tuned: dict, general_sets: dict[str, list[dict]], splits: dict, **fields) -> dict:
    """The report dict (see common/report.py): test metrics before -> after, validation beside them, retention."""
    before, after = dict(base["test"]), dict(tuned["test"])
    valid_before, valid_after = dict(base["valid"]), dict(tuned["valid"])
    general = {}
    for name, questions in general_sets.items():
        r = retention(questions, base["answers"][name], tuned["answers"][name])
        # general, general_other (test) -> metrics; general_other_valid -> metrics_validation, as general_other
        b, a = (valid_before, valid_after) if name.endswith("_valid") else (before, after)
        suffix = name.removeprefix("general").removesuffix("_valid")
        b[f"general_accuracy{suffix}"] = r["accuracy_before"]
        a[f"general_accuracy{suffix}"] = r["accuracy_after"]
        a[f"general_retention{suffix}"] = r["retention"]
        general[name] = {**r, "answers": [{"question": q["question"], "base": b, "fine_tuned": a} for q, b, a in
                                          zip(questions, base["answers"][name], tuned["answers"][name])]}
    return {
        "usecase": usecase_name(__file__),
        "primary_metric": "fact_accuracy",
        "metrics": {"before": before, "after": after},
        "metrics_validation": {"before": valid_before, "after": valid_after},
        "scoring": {"fact_accuracy": "share of held-out questions whose answer contains every key term of the fact",
                    "abstention_rate": "share of held-out questions the docs do not answer whose answer is a "
                                       "decline (scoring.is_decline)",
                    "false_abstention_rate": "share of held-out answerable questions whose answer is a decline",
                    "declined_right_rate": "share of held-out answerable questions the abstention gate declined "
                                           "although the model's own answer was right",
                    "decline_rule": DECLINE.pattern},
        "general": general,
        "data": {"facts": len({r["fact_id"] for r in splits["valid"]}), "train": len(splits["train"]),
                 "valid": len(splits["valid"]), "test": len(splits["test"]),
                 "unanswerable_valid": len(splits.get("decline_valid", [])),
                 "unanswerable_test": len(splits.get("decline_test", [])),
                 **{f"{n}_questions": len(q) for n, q in general_sets.items()}},
        **fields,
    }


def examples_table(test_rows: list[dict], before: list[str], after: list[str], n: int = 8) -> str:
    """A markdown table of the first ``n`` held-out questions, answered before and after."""
    rows = ["| question | base model | fine-tuned | correct |", "|---|---|---|---|"]
    rows += [f"| {r['messages'][1]['content']} | {b} | {a} | {'yes' if key_terms_score(a, r['key_terms']) else 'no'} |"
             for r, b, a in list(zip(test_rows, before, after))[:n]]
    return "\n".join(rows)


def declines_table(splits: dict, base: dict, tuned: dict, n: int = 6) -> str:
    """Held-out questions the docs do not answer, answered before and after (does the bot decline?), then any
    answerable test questions the fine-tuned model declined (false abstentions)."""
    rows = ["| question (not in the docs) | base model | fine-tuned | declined |", "|---|---|---|---|"]
    rows += [f"| {r['messages'][1]['content']} | {b} | {a} | {'yes' if is_decline(a) else 'no'} |"
             for r, b, a in list(zip(splits.get("decline_test", []), base["answers"].get("decline_test", []),
                                     tuned["answers"].get("decline_test", [])))[:n]]
    false = [(r, a) for r, a in zip(splits["test"], tuned["answers"]["test"]) if is_decline(a)]
    rows += ["", f"Answerable test questions the fine-tuned model declined: {len(false)} of {len(splits['test'])}.", ""]
    if false:
        rows += ["| question (answered in the docs) | fine-tuned |", "|---|---|"]
        rows += [f"| {r['messages'][1]['content']} | {a} |" for r, a in false[:n]]
    return "\n".join(rows)
