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
