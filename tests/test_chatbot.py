"""Chatbot recipe helpers that need no model (the full run is in test_chatbot_slow.py / test_contract.py)."""

import importlib.util
import sys
from pathlib import Path

import pytest

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
