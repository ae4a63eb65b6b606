"""Chatbot recipe helpers that need no model (the full run is in test_chatbot_slow.py / test_contract.py)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from common.errors import ConfigError

SCRIPT = Path(__file__).resolve().parents[1] / "usecase-chatbot" / "train.py"


@pytest.fixture(scope="module")
def chatbot_train():
    spec = importlib.util.spec_from_file_location("chatbot_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("text, n, expected", [
    ("The capital of France is Paris. It is also its largest city.", 1, "The capital of France is Paris."),
    ("Jupiter! The largest. By far.", 2, "Jupiter! The largest."),
    ("About 3.5 million people live there. More in summer.", 1, "About 3.5 million people live there."),
    ("No full stop at the end", 1, "No full stop at the end"),
    ("One. Two.", 0, "One. Two."),
])
def test_first_sentences(chatbot_train, text, n, expected):
    assert chatbot_train.prepare.first_sentences(text, n) == expected


@pytest.mark.parametrize("flags, message", [
    (["--replay_loss", "mse"], "replay_loss must be 'kl' or 'ce'"),
    (["--use_peft", "false"], "replay_loss: kl needs use_peft: true"),
])
def test_bad_replay_settings_stop_before_any_model_is_loaded(chatbot_train, tmp_path, flags, message):
    smoke = SCRIPT.parent / "config.smoke.yaml"
    with pytest.raises(ValueError, match=message):
        chatbot_train.main(["--config", str(smoke), "--output_dir", str(tmp_path / "run"), *flags])
    assert not (tmp_path / "run").exists()  # nothing was written: the check runs first


@pytest.mark.parametrize("answer, declined", [
    ("I'm sorry, I don't have that information in the Brightboard help center. Please contact support.", True),
    ("I don\u2019t know.", True),                                            # curly apostrophe
    ("That is not covered in the help center.", True),
    ("I can't find that in the documentation.", True),
    ("Live chat support is open Monday to Friday, 8:00 to 20:00 CET.", False),  # an answer that mentions support
    ("The Team plan costs $9 per member per month. Contact support for invoices.", False),
    ("No, Brightboard does not support Linux.", False),                  # a (possibly invented) answer, not a decline
    ("", False),
])
def test_decline_rule(chatbot_train, answer, declined):
    assert chatbot_train.scoring.is_decline(answer) is declined


def test_unanswerable_questions_are_split_by_topic_and_never_documented(chatbot_train):
    data = SCRIPT.parent / "data"
    splits = chatbot_train.prepare.build_splits(data / "help_center.md", data / "questions.yaml", "sys",
                                                unanswerable_file=data / "unanswerable.yaml", train_declines=True)
    decline = splits["decline_test"][0]["messages"][-1]["content"]
    assert chatbot_train.scoring.is_decline(decline) and "CET" in decline  # points to the documented support hours
    trained = {r["messages"][1]["content"] for r in splits["train"] if r["messages"][-1]["content"] == decline}
    held_out = {r["messages"][1]["content"] for r in splits["decline_valid"] + splits["decline_test"]}
    assert len(trained) >= 40 and len(splits["decline_test"]) >= 15 and not trained & held_out


def test_unanswerable_questions_are_scored_but_not_trained_by_default(chatbot_train):
    data = SCRIPT.parent / "data"
    with_file = chatbot_train.prepare.build_splits(data / "help_center.md", data / "questions.yaml", "sys",
                                                   unanswerable_file=data / "unanswerable.yaml")
    without = chatbot_train.prepare.build_splits(data / "help_center.md", data / "questions.yaml", "sys")
    assert len(with_file["decline_test"]) >= 15 and len(with_file["decline_valid"]) >= 5  # abstention is measured
    assert len(with_file["train"]) == len(without["train"])  # ... but no decline row is trained
    assert not without["decline_test"]


@pytest.mark.parametrize("text, message", [
    ("decline: ''\ntrain: ['a?']\nvalid: ['b?']\ntest: ['c?']\n", "'decline' must be"),
    ("decline: No.\ntrain: ['a?']\nvalid: ['a?']\ntest: ['c?']\n", "in both 'train' and 'valid'"),
    ("decline: No.\ntrain: ['How much is the Team plan?']\nvalid: ['b?']\ntest: ['c?']\n", "documented fact 'team-price'"),
    ("- a list\n", "expected a mapping"),
])
def test_bad_unanswerable_file_is_rejected_with_its_name(chatbot_train, tmp_path, text, message):
    from common.errors import DataError

    bad = tmp_path / "unanswerable.yaml"
    bad.write_text(text)
    data = SCRIPT.parent / "data"
    with pytest.raises(DataError, match=message) as e:
        chatbot_train.prepare.build_splits(data / "help_center.md", data / "questions.yaml", "sys",
                                           unanswerable_file=bad)
    assert str(bad) in str(e.value)


def test_replay_prompts_never_repeat_an_evaluation_question(chatbot_train):
    """Retention is measured on questions the model was never trained on (replay rows are training rows)."""
    import re

    def norm(q):
        return re.sub(r"\W+", " ", q.lower()).replace(" there ", " ").strip()

    data = SCRIPT.parent / "data"
    replay = {norm(q) for q in chatbot_train.prepare.read_question_list(data / "replay_questions.yaml", False)}
    for name in ("general_knowledge.yaml", "general_other.yaml", "general_other_valid.yaml"):
        questions = chatbot_train.prepare.read_question_list(data / name, True)
        assert not [q["question"] for q in questions if norm(q["question"]) in replay], name
    other = {norm(q["question"]) for q in chatbot_train.prepare.read_question_list(data / "general_other.yaml", True)}
    valid = chatbot_train.prepare.read_question_list(data / "general_other_valid.yaml", True)
    assert not [q["question"] for q in valid if norm(q["question"]) in other]


def test_validation_phrasings_are_worded_as_freely_as_the_test(chatbot_train):
    """Settings are chosen on validation, so it must be as hard as the test: phrasings close to the training
    wording scored 80% where the test scored 52% (README, "How the defaults were chosen"). Measured here as the
    share of phrasings with a content word that neither the docs nor the training phrasings use: test 52%,
    validation 56%; the first validation phrasing of each fact alone, the split before: 20%."""
    data = SCRIPT.parent / "data"
    splits = chatbot_train.prepare.build_splits(data / "help_center.md", data / "questions.yaml", "sys")
    known = chatbot_train.scoring.topic_words((data / "help_center.md").read_text())
    for row in splits["train"]:
        known |= chatbot_train.scoring.topic_words(row["messages"][1]["content"])

    def free_share(split: str) -> float:
        questions = [r["messages"][1]["content"] for r in splits[split]]
        return sum(bool(chatbot_train.scoring.topic_words(q) - known) for q in questions) / len(questions)

    assert len(splits["valid"]) == 2 * len({r["fact_id"] for r in splits["valid"]})  # two phrasings per fact
    assert free_share("test") >= 0.4 and free_share("valid") >= 0.9 * free_share("test")

# ------------------------------------------------------------------------------------------ abstention gate
DOCS = "The Team plan costs $8 per member per month. The Slack integration posts to a channel. Live chat: 8:00 to 20:00."


def _row(question, answer="The Team plan costs $8 per member per month."):
    return {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": question},
                         {"role": "assistant", "content": answer}], "key_terms": ["$8"]}


@pytest.mark.parametrize("text, found", [
    ("Is there a Notion integration?", ["notion"]),                     # a name the docs never use
    ("How much is the Enterprise plan, $99?", ["enterprise", "99"]),
    ("Does the Slack integration post to a channel?", []),              # documented names and words
    ("The Team plan costs $8 per member per month.", []),
    ("Notion? Sure.", []),                                               # capitalized because it opens a sentence
    ("Chat is open 8:00 to 20:00, or 24/7 by email.", ["24", "7"]),
])
def test_ungrounded_names_and_figures(chatbot_train, text, found):
    scoring = chatbot_train.scoring
    assert scoring.ungrounded(text, set(scoring.vocabulary(DOCS))) == found


def test_question_figures_can_be_left_to_the_answer(chatbot_train):
    """With ``question_figures`` off a figure in the question no longer declines it (names still do); answers are
    checked for figures either way."""
    scoring = chatbot_train.scoring
    words = set(scoring.vocabulary(DOCS))
    assert scoring.ungrounded("How much is the Enterprise plan, $99?", words, figures=False) == ["enterprise"]
    both = scoring.gate_settings(DOCS, "decline")
    names = scoring.gate_settings(DOCS, "decline", question_figures=False)
    assert scoring.asks_unknown("Can 100 people edit one board?", both)
    assert not scoring.asks_unknown("Can 100 people edit one board?", names)
    assert scoring.asks_unknown("Is there a Notion integration?", names)
    declines = scoring.gate_rule(names)
    assert not declines("Can 100 people edit one board?", "The Team plan costs $8 per member per month.", [-0.1])
    assert declines("Can 100 people edit one board?", "Up to 100 people can edit a board.", [-0.1])  # answer's figure


@pytest.mark.parametrize("question, answer, off", [
    ("What is Brightboard's phone number?", "The desktop app keeps working offline and syncs changes.", True),
    ("Do monthly plans get a refund?", "Brightboard keeps working offline when you reconnect.", True),
    ("How much does the Team plan cost?", "The Team plan costs $9 per member per month.", False),
    ("Which boards can guests edit?", "Guests can edit a board they are invited to.", False),  # board(s) ~ board
    ("What is Brightboard?", "Brightboard is a whiteboard.", True),  # the product name alone is no shared topic
])
def test_off_topic_answers_share_no_content_word_with_the_question(chatbot_train, question, answer, off):
    scoring = chatbot_train.scoring
    assert scoring.off_topic(question, answer) is off
    gate = {"vocabulary": scoring.vocabulary(question + " " + answer), "threshold": None}
    assert scoring.gate_rule({**gate, "relevance": True})(question, answer, [-0.1]) is off
    assert scoring.gate_rule(gate)(question, answer, [-0.1]) is False  # off by default


def _gate(scoring, **fields):
    return {**scoring.gate_settings(DOCS, "I'm sorry, I don't have that information."), **fields}


def test_the_gate_is_fixed_on_validation_and_declines_within_its_budget(chatbot_train):
    scoring = chatbot_train.scoring
    decline = "I'm sorry, I don't have that information."
    splits = {"valid": [_row(f"How much is the Team plan{' really' * i}?") for i in range(19)] + [_row("Team plan on Linux?")],
              "test": [_row("What does the Team plan cost?"), _row("Team plan price?"), _row("Slack?")],
              "decline_valid": [_row("Is there a Notion integration?", decline), _row("Can I pay by cheque?", decline)],
              "decline_test": [_row("How much is Premium?", decline), _row("Can I pay by cheque?", decline)]}
    answer = splits["test"][0]["messages"][-1]["content"]
    result = {"test": {"answer_perplexity": 1.2}, "valid": {},
              "answers": {"valid": [answer] * 20, "test": [answer, answer, "Slack posts to Microsoft Teams."],
                          "decline_valid": ["Notion is free.", "Yes, any card."],
                          "decline_test": ["It costs $8.", "Yes, any card."]},
              "logprobs": {"valid": [[-0.1, -0.3 - 0.1 * i] for i in range(20)],
                           "test": [[-0.2], [-5.0], [-0.1]], "decline_valid": [[-0.1], [-0.5] * 6],
                           "decline_test": [[-0.1], [-0.5] * 6]}}
    gate = _gate(scoring)  # redraw_samples 0: an answer failing the checks is declined, nothing is sampled
    result["redrawn"], logprobs = scoring.redraw_all(None, None, result, splits, gate, max_new_tokens=8)
    assert logprobs == result["logprobs"]  # nothing re-drawn: the greedy answers' own log-probs
    assert result["redrawn"]["test"] == [answer, answer, None]  # "Microsoft Teams": not in the docs
    # 5% of 20 validation questions = 1 may be declined; the question check already declines "Linux": the
    # threshold may decline no answerable question; the least sure one (-0.1 - 2.1 = -2.2: the whole answer's
    # log-probability) stays (strict <) and the unanswerable one, unsure throughout (6 x -0.5 = -3.0, though no
    # single token is below -0.5), is declined: a gain of 1
    chosen = scoring.choose_gate(result, splits, gate, max_false_abstention=0.05)
    assert chosen["chosen_on"] == "validation" and chosen["validation_declined_by_words"] == 1
    assert chosen["threshold"] == pytest.approx(-2.2) and chosen["validation_threshold_gain"] == 1
    gated = scoring.apply_gate(result, splits, chosen)
    assert gated["valid"]["false_abstention_rate"] == pytest.approx(0.05) and gated["valid"]["abstention_rate"] == 1
    # test: #1 is unsure (-5 < -2.2), #2 names "Microsoft Teams"; "Premium" is not in the docs; "Yes, any card"
    # at -3.0 is unsure: every unanswerable question is declined, and two answerable ones too
    assert gated["answers"]["test"] == [answer, decline, decline] and gated["test"]["false_abstention_rate"] == 2 / 3
    assert gated["test"]["abstention_rate"] == 1.0 and gated["test"]["answer_perplexity"] == 1.2
    assert gated["test"]["declined_right_rate"] == 1 / 3  # #1 was right but unsure; #2 was wrong anyway
    assert gated["ungated"]["test"] == result["test"]
    # 10% allows one more, but declining the least sure answerable question (-2.2) gains nothing: same threshold
    assert scoring.choose_gate(result, splits, gate, 0.10)["threshold"] == pytest.approx(-2.2)
    # without the unsure unanswerable question, no threshold gains anything: none is set
    sure = {**result, "logprobs": {**result["logprobs"], "decline_valid": [[-0.1], [-0.1]]}}
    assert scoring.choose_gate(sure, splits, gate, 0.10)["threshold"] is None


def test_the_threshold_search_declines_the_most_unanswerable_questions_within_the_budget(chatbot_train):
    most_declined = chatbot_train.scoring.most_declined
    answerable, unanswerable = [-0.1, -0.2, -3.0, -4.0], [-5.0, -3.5, -3.2, -2.5, -0.15]
    # low scores declined (strictly below): -4.0 declines no answerable question and -5.0 (gain 1); -3.0 declines
    # -4.0 and -5.0, -3.5, -3.2 (gain 2); -0.2 declines 2 answerable and 4 unanswerable (gain 2, not more): the
    # first, stricter one is kept
    assert most_declined(answerable, unanswerable, budget=2) == (-3.0, 2)
    assert most_declined(answerable, unanswerable, budget=0) == (-4.0, 1)
    assert most_declined(answerable, [-0.05], budget=3) == (None, 0)  # nothing to gain: no threshold
    # high scores declined (a probability of "invented"), at or above the threshold
    p_answerable, p_unanswerable = [0.1, 0.2, 0.6, 0.9], [0.95, 0.7, 0.65, 0.3]
    threshold, gain = most_declined(p_answerable, p_unanswerable, budget=1, high=True)
    assert threshold == pytest.approx(0.6) and threshold > 0.6 and gain == 2  # declines 0.9; 0.95, 0.7, 0.65
    threshold, gain = most_declined(p_answerable, p_unanswerable, budget=0, high=True)
    assert 0.9 < threshold < 0.95 and gain == 1


def test_failing_answers_are_redrawn_and_the_most_frequent_passing_one_kept(chatbot_train, monkeypatch):
    scoring = chatbot_train.scoring
    asked = []

    def fake_samples(model, tokenizer, conversations, n, *args, **kwargs):
        asked.extend(c[-1]["content"] for c in conversations)
        assert n == 4 and kwargs["seed"] == scoring.REDRAW["seed"]
        return [["It posts to Microsoft Teams.", "Slack posts to a channel.", "The Slack integration posts to a channel.",
                 "The Slack integration posts to a channel."],
                ["It costs $99.", "It costs $12.", "Call 555-0100.", "It costs $1."]][:len(conversations)]

    monkeypatch.setattr(scoring, "sample_chat", fake_samples)
    gate = _gate(scoring, redraw_samples=4)
    conversations = [[{"role": "user", "content": q}] for q in
                     ("Where does Slack post?", "How much is Team?", "Is there a Notion app?", "What does Team cost?")]
    answers = ["Slack posts to Microsoft Teams.", "Team costs $99.", "Notion costs $99.", "The Team plan costs $8."]
    out = scoring.redraw(None, None, conversations, answers, gate, max_new_tokens=8)
    # #1: the most frequent passing candidate; #2: no candidate passes -> None (declined); #3: the question names
    # "Notion" (declined anyway, not re-drawn); #4 passes as it is
    assert out == ["The Slack integration posts to a channel.", None, "Notion costs $99.", "The Team plan costs $8."]
    assert asked == ["Where does Slack post?", "How much is Team?"]
    rule = scoring.gate_rule(gate)
    assert [rule(c[-1]["content"], a, [-0.1]) for c, a in zip(conversations, out)] == [False, True, True, False]


STATEMENTS = ["The Team plan costs $8 per member per month.", "The Slack integration posts to a channel."]


@pytest.mark.parametrize("answer, score", [
    ("The Team plan costs $8 per member per month.", 1.0),                # a statement word for word
    ("the team plan costs 8 dollars per member per month", 0.95),         # case, punctuation, one word changed
    ("The Slack integration posts a message to a channel.", 0.88),  # 7 of its 9 words in order
    ("The Team plan includes a Slack channel.", 0.43),                    # the docs' words, no statement's claim
    ("Brightboard supports more than 50 languages.", 0.0),
])
def test_grounding_is_the_rouge_l_of_the_closest_statement(chatbot_train, answer, score):
    assert chatbot_train.scoring.grounding(answer, STATEMENTS) == pytest.approx(score, abs=0.01)


def test_ungrounded_answers_are_redrawn_when_the_grounding_check_is_on(chatbot_train, monkeypatch):
    scoring = chatbot_train.scoring
    monkeypatch.setattr(scoring, "sample_chat", lambda model, tok, conversations, *a, **k: [
        ["The Team plan includes a Slack channel.", "The Slack integration posts to a channel."]] * len(conversations))
    conversations = [[{"role": "user", "content": "Where does the Team plan post?"}]]
    invented = ["The Team plan posts a channel per member."]  # documented words only: the word checks pass it
    off = _gate(scoring, redraw_samples=2)
    assert scoring.redraw(None, None, conversations, invented, off, 8) == invented
    on = {**off, "statements": STATEMENTS, "grounding": 0.8}
    assert scoring.redraw(None, None, conversations, invented, on, 8) == ["The Slack integration posts to a channel."]
    assert scoring.gate_rule(on)("Where does the Team plan post?", invented[0], [-0.1]) is True  # as is: declined
    assert scoring.gate_rule(on)("What does Team cost?", STATEMENTS[0], [-0.1]) is False
    with pytest.raises(ValueError, match="needs the help center's statements"):
        scoring.gate_settings(DOCS, "decline", grounding=0.8)


def test_predictions_say_why_an_answer_differs_from_the_models_own(chatbot_train, tmp_path):
    rows = [_row(f"Question {i}?") for i in range(4)]
    own = ["The Team plan costs $8.", "It costs $99.", "Slack posts to Teams.", "The Team plan costs $8."]
    adapter = ["The Team plan costs $8.", "The Team plan costs $8 per member per month.", "decline", own[3]]
    after = [*adapter[:3], "The base model's answer."]
    chatbot_train.scoring.write_predictions(tmp_path / "p.jsonl", rows, ["base"] * 4, after, own, "decline", adapter)
    got = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [g.get("gate") for g in got] == [None, "re-drawn", "declined", "routed to the base model"]
    assert got[1]["model_answer"] == "It costs $99." and got[1]["correct"] and not got[0].get("model_answer")


def test_a_grounding_setting_outside_its_range_stops_the_run(chatbot_train, tmp_path):
    smoke = SCRIPT.parent / "config.smoke.yaml"
    with pytest.raises(ValueError, match=r"abstention_grounding must be in \(0, 1\] or null"):
        chatbot_train.main(["--config", str(smoke), "--output_dir", str(tmp_path / "run"),
                            "--abstention_grounding", "1.5"])


def test_chat_answers_through_the_run_gate(chatbot_train, monkeypatch):
    """chat.py applies inference.json's gate: a threshold above every log-probability declines every answer."""
    import importlib.util

    from common.config import ModelArguments
    from common.models import TINY_TEXT_ALIAS, load_causal_lm, load_tokenizer

    spec = importlib.util.spec_from_file_location("chatbot_chat", SCRIPT.parent / "chat.py")
    chat = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chat)
    model, tokenizer = load_causal_lm(ModelArguments(model_name_or_path=TINY_TEXT_ALIAS)), load_tokenizer(TINY_TEXT_ALIAS)
    settings = {"system_prompt": "sys", "max_new_tokens": 4}
    plain = chat.answer(model, tokenizer, settings, "How much is the Team plan?")
    gate = {"threshold": 0.0, "decline": "I don't have that information.", "vocabulary": ["how", "much", "team"]}
    assert chat.answer(model, tokenizer, {**settings, "abstention_gate": gate}, "How much is the Team plan?") == \
        gate["decline"] != plain
    never = {**gate, "threshold": None, "vocabulary": chatbot_train.scoring.vocabulary(plain + " How much Team")}
    assert chat.answer(model, tokenizer, {**settings, "abstention_gate": never}, "How much is the Team plan?") == plain
    # an answer naming what the docs never use is re-drawn; the passing sample replaces it, as in the report
    monkeypatch.setattr(chat, "generate_chat_with_logprobs", lambda *a, **k: (["It costs $99."], [[-0.1]]))
    monkeypatch.setattr(chat.scoring, "sample_chat", lambda *a, **k: [["It costs $98.", "The Team plan costs money."]])
    redraw = {**gate, "threshold": None, "redraw_samples": 2, "vocabulary": ["how", "much", "team"]}
    assert chat.answer(model, tokenizer, {**settings, "abstention_gate": redraw}, "How much is the Team plan?") == \
        "The Team plan costs money."
    assert chat.answer(model, tokenizer, {**settings, "abstention_gate": {**redraw, "redraw_samples": 0}},
                       "How much is the Team plan?") == gate["decline"]
    # the threshold reads the answer given: the greedy one was sure (-0.1), the random model is not sure of the
    # re-drawn one (teacher-forced, far below -1), so it is declined
    assert chat.answer(model, tokenizer, {**settings, "abstention_gate": {**redraw, "threshold": -1.0}},
                       "How much is the Team plan?") == gate["decline"]


def test_a_gate_without_unanswerable_questions_stops_the_run(chatbot_train, tmp_path):
    smoke = SCRIPT.parent / "config.smoke.yaml"
    no_questions = tmp_path / "config.yaml"
    no_questions.write_text(smoke.read_text().replace("unanswerable_file: usecase-chatbot/data/unanswerable.yaml",
                                                      "unanswerable_file: null"))
    with pytest.raises(ValueError, match="abstention_gate: true needs unanswerable_file"):
        chatbot_train.main(["--config", str(no_questions), "--output_dir", str(tmp_path / "run")])
    with pytest.raises(ValueError, match="max_false_abstention must be in"):
        chatbot_train.main(["--config", str(smoke), "--output_dir", str(tmp_path / "run"),
                            "--max_false_abstention", "1.5"])
    assert not (tmp_path / "run").exists()


def _fake_features(product_words=("plan", "board", "Brightboard")):
    """Two 'layers' of features: layer 0 is noise, layer 1 says whether the question is about the product."""
    import torch

    def features(model, tokenizer, conversations, layers=None, batch_size=16):
        rows = []
        for i, c in enumerate(conversations):
            q = c[-1]["content"]
            product = any(w in q for w in product_words)
            rows.append([[float((i * 7919) % 13) / 13, 0.3], [1.0 if product else -1.0, 0.1 * (i % 3)]])
        x = torch.tensor(rows).permute(1, 0, 2)  # [layers, n, hidden]
        return x if layers is None else x[layers]
    return features


def test_the_router_is_fitted_on_training_questions_and_its_threshold_sits_in_the_validation_gap(chatbot_train,
                                                                                                 monkeypatch):
    import common.probe

    routing = chatbot_train.routing
    monkeypatch.setattr(routing, "prompt_features", _fake_features())
    monkeypatch.setattr(common.probe, "prompt_features", _fake_features())
    product = {"train": ["How much is the Team plan?", "Can I share a board?", "Is Brightboard free?"] * 3,
               "valid": ["What does the Business plan cost?", "How do I lock a board?"]}
    general = {"train": ["What is the capital of Spain?", "What is 7 times 8?", "Name three fruits."] * 3,
               "valid": ["What is half of 18?", "What color is snow?"]}
    router, info = routing.fit(None, None, product, general, "sys")
    assert router.layer == 1  # the informative layer, chosen on validation log-loss
    low, high = info["validation_gap"]
    assert low < router.threshold < high and router.threshold == pytest.approx((low + high) / 2, abs=1e-3)
    assert routing.to_adapter(router, None, None, ["Where is the plan page?", "What is 2 plus 2?"], "sys") == \
        [True, False]
    assert routing.to_adapter(None, None, None, ["What is 2 plus 2?"], "sys") == [True]  # no router: the adapter
    # the validation questions' probabilities come back from fitting: routing them needs no second forward pass
    assert info["valid_p"]["What color is snow?"] < router.threshold <= info["valid_p"]["How do I lock a board?"]
    # overlapping validation: the threshold keeps every product question on the adapter
    monkeypatch.setattr(routing, "prompt_features", _fake_features(("plan", "board", "Brightboard", "snow")))
    router, info = routing.fit(None, None, product, general, "sys")
    assert router.threshold == pytest.approx(info["validation_gap"][1], abs=1e-3)


def test_questions_routed_away_from_the_adapter_get_the_base_models_answers_and_are_rescored(chatbot_train):
    routing = chatbot_train.routing
    splits = {"test": [{"key_terms": ["$8"]}, {"key_terms": ["Tokyo"]}], "valid": [{"key_terms": ["$8"]}]}
    tuned = {"test": {"fact_accuracy": 0.5}, "valid": {"fact_accuracy": 1.0},
             "answers": {"test": ["It costs $8.", "I don't know."], "valid": ["$8."], "general": ["Rome", "7 days"]}}
    base = {"answers": {"test": ["It is free.", "Tokyo."], "valid": ["free"], "general": ["Paris", "7 days"]}}
    routed = routing.apply(tuned, base, {"test": [True, False], "valid": [True], "general": [False, True]}, splits)
    assert routed["answers"]["test"] == ["It costs $8.", "Tokyo."] and routed["test"]["fact_accuracy"] == 1.0
    assert routed["test"]["false_abstention_rate"] == 0.0  # the declined answer was replaced
    assert routed["answers"]["general"] == ["Paris", "7 days"]
    assert routed["answers_adapter"]["general"] == ["Rome", "7 days"]  # the adapter's own, kept for the report


def test_chat_answers_general_questions_with_the_adapter_off_and_without_the_gate(chatbot_train, monkeypatch,
                                                                                  tmp_path):
    """With a router, a general question gets exactly the base model's answer (no gate, no system prompt); a product
    question goes through the adapter and the gate, as in the run's report. The router is saved and found again
    beside the run."""
    import importlib.util

    import torch
    from peft import LoraConfig, get_peft_model

    from common.config import ModelArguments
    from common.evaluation import generate_chat
    from common.models import TINY_TEXT_ALIAS, load_causal_lm, load_tokenizer

    spec = importlib.util.spec_from_file_location("chatbot_chat_router", SCRIPT.parent / "chat.py")
    chat = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chat)
    torch.manual_seed(0)
    tokenizer = load_tokenizer(TINY_TEXT_ALIAS)
    model = get_peft_model(load_causal_lm(ModelArguments(model_name_or_path=TINY_TEXT_ALIAS)),
                           LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).eval()
    question = [{"role": "system", "content": "sys"}, {"role": "user", "content": "What is the capital of France?"}]
    with model.disable_adapter():  # general questions are asked without the bot's system prompt, as in the report
        base_answer = generate_chat(model, tokenizer, [question[1:]], 6)[0]
    adapter_answer = generate_chat(model, tokenizer, [question[1:]], 6)[0]
    assert base_answer != adapter_answer  # the adapter changes this model's answers

    router = chat.routing.Router(layer=1, weight=torch.zeros(4), bias=0.0, threshold=0.5)
    router = chat.routing.Router.load(router.save(tmp_path).parent)
    assert router.threshold == 0.5 and router.layer == 1
    monkeypatch.setattr(chat.routing, "to_adapter", lambda r, m, t, questions, s: ["plan" in q for q in questions])
    gate = {"threshold": 0.0, "decline": "I don't have that information.", "vocabulary": ["how", "much", "team"]}
    settings = {"system_prompt": "sys", "max_new_tokens": 6, "abstention_gate": gate, "router": router}
    assert chat.answer(model, tokenizer, settings, "What is the capital of France?") == base_answer
    assert chat.answer(model, tokenizer, settings, "How much is the Team plan?") == gate["decline"]
    answers = chat.reply(model, tokenizer, settings, [question, [*question[:1], {"role": "user", "content": "plan?"}]])
    assert answers == [base_answer, gate["decline"]]  # a batch keeps its order


def test_a_killed_run_restarted_without_the_router_is_refused(chatbot_train, tmp_path):
    """chat.py uses any router.safetensors it finds in the run folder: a run killed before its report cannot be
    restarted with --router false into the same folder (the first attempt's router would be mixed in)."""
    smoke, run = SCRIPT.parent / "config.smoke.yaml", tmp_path / "run"
    chatbot_train.main(["--config", str(smoke), "--output_dir", str(run), "--max_general_questions", "4"])
    assert (run / "router.safetensors").exists()  # config.smoke.yaml: router: true
    (run / "report.json").unlink()  # as if killed after saving, before the report: the folder resumes
    with pytest.raises(ConfigError, match=r"router: True -> False"):
        chatbot_train.main(["--config", str(smoke), "--output_dir", str(run), "--max_general_questions", "4",
                            "--router", "false"])
    assert (run / "router.safetensors").exists() and not (run / "report.json").exists()
