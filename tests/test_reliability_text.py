"""Bad input to the chatbot recipe stops with one clear error (type, file / entry / key named) before any model
loads, and train.py writes nothing: its output_dir is not even created (all checks run before the data splits
are written). Tiny files in tmp_path and the tiny random model only."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common import models
from common.data import read_rows, read_yaml
from common.errors import ConfigError, DataError, ModelPathError
from common.evaluation import key_terms_accuracy, key_terms_score, term_present
from common.paths import load_sibling

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "usecase-chatbot"
SMOKE = RECIPE / "config.smoke.yaml"

DOCS = "# Docs\n\n- {#price} The Team plan costs $9 per member.\n- {#trial} The trial lasts 21 days.\n"
ENTRY_PRICE = {"keys": ["$9"], "train": ["How much is Team?", "Team price?"], "valid": "What does Team cost?",
               "test": ["How expensive is Team?"]}
ENTRY_TRIAL = {"keys": ["21"], "train": ["How long is the trial?"], "valid": "Trial length?",
               "test": ["How many days of trial?"]}


@pytest.fixture(scope="module")
def train():
    return load_sibling(RECIPE / "train.py", "train")


@pytest.fixture(scope="module")
def prepare():
    return load_sibling(RECIPE / "train.py", "prepare_data")


@pytest.fixture(scope="module")
def chat():
    return load_sibling(RECIPE / "train.py", "chat")


def questions(**changes) -> dict:
    q = {"price": dict(ENTRY_PRICE), "trial": dict(ENTRY_TRIAL)}
    for key, value in changes.items():
        q["price"][key] = value
    return q


def write(tmp_path: Path, name: str, content) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


# --- prepare_data.py: the docs and questions files -------------------------------------------------------------

PREPARE_CASES = {
    # id: (docs content, questions content, error type, words the message must hold)
    "key-pipe": (DOCS, questions(keys=["|"]), DataError, ["questions.yaml", "entry 'price'", "'|'"]),
    "key-empty": (DOCS, questions(keys=[""]), DataError, ["questions.yaml", "entry 'price'", "key ''"]),
    "key-spaced-pipe": (DOCS, questions(keys=[" | "]), DataError, ["entry 'price'", "' | '"]),
    "key-empty-alternative": (DOCS, questions(keys=["$9|"]), DataError, ["entry 'price'", "'$9|'"]),
    "yaml-syntax": (DOCS, "price:\n  keys: [\"$9\"\n  train: [a]\n", DataError, ["questions.yaml", "line", "YAML"]),
    "yaml-empty": (DOCS, "", DataError, ["questions.yaml", "empty"]),
    "yaml-list": (DOCS, [ENTRY_PRICE], DataError, ["questions.yaml", "mapping", "list"]),
    "test-number": (DOCS, questions(test=[123]), DataError, ["entry 'price'", "test[0]", "123"]),
    "train-empty-string": (DOCS, questions(train=["ok?", ""]), DataError, ["entry 'price'", "train[1]"]),
    "missing-split": (DOCS, {"price": {k: v for k, v in ENTRY_PRICE.items() if k != "valid"},
                             "trial": ENTRY_TRIAL}, DataError, ["entry 'price'", "'valid'"]),
    "leak-train-test": (DOCS, questions(test=["how much is team"]), DataError,
                        ["entry 'price'", "'train' and 'test'", "leak"]),
    "unknown-id": (DOCS, {**questions(), "nope": ENTRY_PRICE}, DataError, ["entry 'nope'", "no statement"]),
    "docs-not-utf8": (b"- {#price} The Team plan costs " + b"\xff\xfe 9.\n", questions(), DataError,
                      ["help.md", "byte offset 31", "UTF-8"]),
    "docs-no-statements": ("# Just a title\n\nNo tagged lines.\n", questions(), DataError, ["help.md", "no '- {#id}"]),
}


@pytest.mark.parametrize("case", list(PREPARE_CASES))
def test_prepare_data_bad_input(prepare, tmp_path, case):
    docs, qs, error, words = PREPARE_CASES[case]
    docs_file = write(tmp_path, "help.md", docs)
    q_file = write(tmp_path, "questions.yaml", qs)
    with pytest.raises(error) as e:
        prepare.main(["--docs", str(docs_file), "--questions", str(q_file), "--config", str(SMOKE),
                      "--out_dir", str(tmp_path / "out")])
    for word in words:
        assert word in str(e.value), (word, str(e.value))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, content, with_keys, words", [
    ("general_knowledge.yaml", {"q": "What?"}, True, ["general_knowledge.yaml", "list", "dict"]),
    ("general_other.yaml", [{"question": "What?", "keys": ["|"]}], True, ["general_other.yaml", "item 1", "'|'"]),
    ("general_other.yaml", ["What is 2+2?"], True, ["item 1", "question"]),
    ("replay_questions.yaml", ["Fine?", 42], False, ["replay_questions.yaml", "item 2", "42"]),
    ("replay_questions.yaml", "", False, ["replay_questions.yaml", "empty file"]),
])
def test_general_question_files(prepare, tmp_path, name, content, with_keys, words):
    path = write(tmp_path, name, content)
    with pytest.raises(DataError) as e:
        prepare.read_question_list(path, with_keys)
    for word in words:
        assert word in str(e.value), (word, str(e.value))


# --- common.evaluation / common.data ---------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["|", "", " | ", "||"])
def test_empty_key_alternative_never_scores(key):
    assert not term_present(key, "")
    assert not term_present(key, "any answer at all")
    assert key_terms_accuracy(["", "nothing"], [[key], [key]]) == 0.0


def test_no_key_terms_is_never_correct():
    assert not key_terms_score("an answer", [])


@pytest.mark.parametrize("name, content, words", [
    ("rows.jsonl", b'{"messages": []}\n{"a": "\xe9t\xe9"}\n', ["rows.jsonl", "byte offset 24", "UTF-8"]),
    ("rows.json", b"[{\"a\": 1},\n oops]", ["rows.json", "line 2", "not valid JSON"]),
])
def test_read_rows_bad_files(tmp_path, name, content, words):
    with pytest.raises(DataError) as e:
        read_rows(write(tmp_path, name, content))
    for word in words:
        assert word in str(e.value)


def test_read_yaml_names_the_line(tmp_path):
    with pytest.raises(DataError, match=r"x\.yaml, line 4, column 1 \(in what starts at line 2\): YAML syntax"):
        read_yaml(write(tmp_path, "x.yaml", "a: 1\nb: [1,\n  c: 2\n"))


# --- common.models ---------------------------------------------------------------------------------------------

def _truncated(path: Path, size: int) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(64, 64)}, str(path))
    path.write_bytes(path.read_bytes()[:size])


@pytest.mark.parametrize("case", ["missing", "empty", "no-model-files", "adapter-truncated", "adapter-missing",
                                  "model-truncated", "model-header-cut"])
def test_load_trained_model_dir_problems(tmp_path, case, monkeypatch):
    import transformers

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda *a, **k: pytest.fail("the tokenizer loaded before the folder was checked"))
    run = tmp_path / "run"
    if case != "missing":
        run.mkdir()
    if case == "no-model-files":
        (run / "REPORT.md").write_text("# a report")
    if case.startswith("adapter"):
        (run / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": models.TINY_TEXT_ALIAS}))
    if case == "adapter-truncated":
        _truncated(run / "adapter_model.safetensors", 200)
    if case == "model-truncated":
        _truncated(run / "model.safetensors", 1000)
    if case == "model-header-cut":
        _truncated(run / "model.safetensors", 20)
    expected = {"missing": "does not exist", "empty": "is empty", "no-model-files": "holds no model",
                "adapter-truncated": "adapter_model.safetensors: incomplete or corrupt",
                "adapter-missing": "adapter_model.safetensors is missing",
                "model-truncated": "model.safetensors: incomplete or corrupt",
                "model-header-cut": "model.safetensors: incomplete or corrupt"}[case]
    with pytest.raises(ModelPathError) as e:
        models.load_trained_causal_lm(run)
    assert expected in str(e.value) and str(run) in str(e.value)


@pytest.mark.parametrize("name", ["./no-such-model", "runs-nope/../x", "/tmp/no/such/model", "a/b/c"])
def test_path_like_model_name_that_does_not_exist(name):
    with pytest.raises(ModelPathError, match="no such model folder.*tiny-random-smollm2"):
        models.resolve_model(name)


# --- train.py: config, data and model path checks, before any model loads and before anything is written ------

TRAIN_CASES = {
    # id: (flags, error type, words the message must hold); files are written by the test
    "learning-rate": (["--learning_rate", "-1"], ConfigError, ["learning_rate", "> 0", "-1"]),
    "lora-r": (["--lora_r", "0"], ConfigError, ["lora_r", ">= 1"]),
    "lora-alpha": (["--lora_alpha", "0"], ConfigError, ["lora_alpha", "> 0"]),
    "lora-dropout": (["--lora_dropout", "1.0"], ConfigError, ["lora_dropout", "[0, 1)"]),
    "no-steps": (["--max_steps", "-1", "--num_train_epochs", "0"], ConfigError, ["num_train_epochs", "max_steps"]),
    "max-new-tokens": (["--max_new_tokens", "0"], ConfigError, ["max_new_tokens", ">= 1"]),
    "eval-batch-size": (["--eval_batch_size", "0"], ConfigError, ["eval_batch_size", ">= 1"]),
    "num-replay": (["--num_replay_questions", "0"], ConfigError, ["num_replay_questions", ">= 1"]),
    "max-facts": (["--max_facts", "0"], ConfigError, ["max_facts", ">= 1"]),
    "replay-loss": (["--replay_loss", "mse"], ConfigError, ["replay_loss must be 'kl' or 'ce'"]),
    "max-length": (["--max_length", "16"], ConfigError, ["max_length must be >=", "fact '", "tokens), got 16"]),
    "model-path": (["--model_name_or_path", "./no-such-run"], ModelPathError, ["./no-such-run", "alias"]),
    "questions-key-pipe": (["--questions_file", "{q_pipe}"], DataError, ["q_pipe.yaml", "entry 'price'", "'|'"]),
    "docs-not-utf8": (["--docs_file", "{bad_docs}"], DataError, ["bad_docs.md", "byte offset"]),
    "general-mapping": (["--general_questions_file", "{general_map}"], DataError, ["general_map.yaml", "list"]),
    "replay-number": (["--replay_questions_file", "{replay_num}"], DataError, ["replay_num.yaml", "item 2"]),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train_bad_input_stops_before_the_model(train, tmp_path, monkeypatch, case):
    def no_model(*args, **kwargs):
        raise AssertionError("load_causal_lm was called: the check must run before the model loads")

    monkeypatch.setattr(train, "load_causal_lm", no_model)
    monkeypatch.setattr(models, "load_causal_lm", no_model)
    files = {"q_pipe": write(tmp_path, "q_pipe.yaml", questions(keys=["|"])),
             "docs": write(tmp_path, "docs.md", DOCS),
             "bad_docs": write(tmp_path, "bad_docs.md", b"- {#price} caf\xe9 $9.\n"),
             "general_map": write(tmp_path, "general_map.yaml", {"question": "What?", "keys": ["x"]}),
             "replay_num": write(tmp_path, "replay_num.yaml", ["Fine?", 42])}
    flags, error, words = TRAIN_CASES[case]
    flags = [f.format(**files) for f in flags]
    if "{q_pipe}" in TRAIN_CASES[case][0]:
        flags += ["--docs_file", str(files["docs"])]
    out = tmp_path / "run"
    with pytest.raises(error) as e:
        train.main(["--config", str(SMOKE), "--output_dir", str(out), *flags])
    for word in words:
        assert word in str(e.value), (word, str(e.value))
    assert not out.exists()  # nothing written: no data splits, no report.json, no adapter


# --- chat.py ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, error, words", [
    (["--model_dir", "{tmp}/run", "--question", ""], ConfigError, ["--question is empty"]),
    (["--model_dir", "{tmp}/run", "--question", "   "], ConfigError, ["--question is empty"]),
    (["--model_dir", "{tmp}/run"], ModelPathError, ["run does not exist"]),
    (["--model_dir", "{tmp}/empty"], ModelPathError, ["empty is empty"]),
    (["--model_dir", "./no-such-run", "--question", "hi"], ModelPathError, ["no-such-run does not exist"]),
    (["--model_dir", "{tmp}/empty", "--examples", "0"], ConfigError, ["--examples must be >= 1"]),
    (["--model_dir", "{tmp}/empty", "--examples", "2"], ConfigError, ["test.jsonl not found"]),
])
def test_chat_bad_input(chat, tmp_path, argv, error, words):
    (tmp_path / "empty").mkdir()
    with pytest.raises(error) as e:
        chat.main([a.format(tmp=tmp_path) for a in argv], stdin=io.StringIO(""))
    for word in words:
        assert word in str(e.value), (word, str(e.value))


def test_chat_reads_piped_questions_and_never_prompts(chat, capsys):
    chat.main(["--model_dir", models.TINY_TEXT_ALIAS], stdin=io.StringIO("How much is Team?\n\nIs there a trial?\n"))
    out = capsys.readouterr().out
    assert "you>" not in out and "Brightboard support bot" not in out
    assert len(out.rstrip("\n").split("\n")) >= 2  # one answer per question (an answer may span lines)


def test_chat_cuts_a_too_long_question_from_the_left(chat, capsys):
    model, tokenizer, _ = chat.load(models.TINY_TEXT_ALIAS)
    model.config.max_position_embeddings = 96
    settings = {"max_new_tokens": 4}
    question = "blah " * 300 + "How much is the Team plan?"
    cut, _ = chat.fit_question(model, tokenizer, settings, question, [])
    assert cut.endswith("How much is the Team plan?") and len(cut) < len(question)
    assert "only its last" in capsys.readouterr().err
    chat.answer(model, tokenizer, settings, question)  # generates within the context


# --- as scripts: exit code 2, the message, no traceback --------------------------------------------------------

@pytest.mark.parametrize("script, argv, words", [
    ("train.py", ["--config", str(SMOKE), "--learning_rate", "-1", "--output_dir", "{tmp}/run"], ["learning_rate"]),
    ("prepare_data.py", ["--questions", "{tmp}/missing.yaml", "--out_dir", "{tmp}/out"], ["missing.yaml", "no such file"]),
])
def test_scripts_exit_2_without_traceback(tmp_path, script, argv, words):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("COOKBOOK_DEBUG", None)
    proc = subprocess.run([sys.executable, str(RECIPE / script), *[a.format(tmp=tmp_path) for a in argv]],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "error: " in proc.stderr
    for word in words:
        assert word in proc.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()


def test_debug_flag_shows_the_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("COOKBOOK_DEBUG", None)
    proc = subprocess.run([sys.executable, str(RECIPE / "train.py"), "--config", str(SMOKE), "--learning_rate", "-1",
                           "--output_dir", str(tmp_path / "run"), "--debug"], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr
