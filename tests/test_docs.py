"""Docs that cannot drift: every use-case command shown in the markdown docs parses against its script's flags, and
every relative link between the docs resolves (the README results tables are checked by test_committed_results.py).

A command is parsed by the script's own parser and stopped there (``docs_check.parse_problem``): ``train.py``'s
``parse_config`` (HF / TRL dataclasses: every flag must name a field, every value must convert), the ``argparse``
parsers of ``prepare_data.py``, ``predict.py`` and ``chat.py``. Nothing loads a model, trains or writes.
"""

from pathlib import Path

import pytest
from docs_check import REPO, Command, commands, link_problems, markdown_files, parse_problem

DOCS = markdown_files()


def test_the_docs_are_found_and_hold_commands():
    names = {str(p.relative_to(REPO)) for p in DOCS}
    assert {"README.md", "usecase-chatbot/README.md", "docs/fine-tuning-concepts.md"} <= names
    assert not any("/results/" in n or "/data/" in n for n in names)  # outputs and data are not docs
    assert len(commands((REPO / "usecase-chatbot" / "README.md").read_text(encoding="utf-8"))) >= 3


def test_commands_are_read_as_a_shell_would():
    text = ("Run `python usecase-a/train.py --lr 2 --output_dir runs/a  # note` then\n\n"
            "```bash\nHF_HUB_OFFLINE=1 .venv/bin/python usecase-b/chat.py --model_dir runs/b \\\n"
            "    --question \"What is #1?\" | head -1\naccelerate launch --num_processes 2 usecase-c/train.py --x 1\n"
            "python usecase-d/predict.py ...\n```\n\nSynopsis: `python usecase-e/train.py [--config c.yaml] "
            "--flag true|false`; `python usecase-f/chat.py --question \"...\"`.\n")
    assert commands(text) == [
        Command("usecase-b/chat.py", ["--model_dir", "runs/b", "--question", "What is #1?"], False),
        Command("usecase-c/train.py", ["--x", "1"], False),
        Command("usecase-d/predict.py", [], True),
        Command("usecase-a/train.py", ["--lr", "2", "--output_dir", "runs/a"], False),
        Command("usecase-e/train.py", ["--config", "c.yaml", "--flag", "true"], False),
        Command("usecase-f/chat.py", ["--question", "..."], False)]


@pytest.mark.parametrize("doc", DOCS, ids=[str(p.relative_to(REPO)) for p in DOCS])
def test_every_usecase_command_parses(doc):
    bad = [f"{command}\n    -> {problem}" for command in commands(doc.read_text(encoding="utf-8"))
           if (problem := parse_problem(command))]
    assert not bad, f"{doc.relative_to(REPO)}: commands that do not parse:\n" + "\n".join(bad)


def test_a_wrong_flag_or_value_is_found():
    assert parse_problem(Command("usecase-chatbot/train.py", ["--num_train_epochs", "2", "--lora_r", "8"], False)) \
        is None
    assert "--lora_rank" in parse_problem(Command("usecase-chatbot/train.py", ["--lora_rank", "8"], False))
    assert "invalid int value" in parse_problem(Command("usecase-legal/predict.py", ["--model_dir", "x",
                                                                                       "--examples", "two"], False))
    assert "required" in parse_problem(Command("usecase-medical/chat.py", [], False))
    assert parse_problem(Command("usecase-medical/chat.py", [], True)) is None  # `chat.py ...` elides them
    assert "no such file" in parse_problem(Command("usecase-legal/train.py", ["--config", "nope.yaml"], False))
    assert "no such script" in parse_problem(Command("usecase-legal/tran.py", [], False))


@pytest.mark.parametrize("doc", DOCS, ids=[str(p.relative_to(REPO)) for p in DOCS])
def test_every_relative_link_resolves(doc):
    bad = link_problems(doc)
    assert not bad, f"{doc.relative_to(REPO)}: broken links:\n  " + "\n  ".join(bad)


def test_a_broken_link_or_anchor_is_found(tmp_path: Path):
    (tmp_path / "other.md").write_text("# Other\n\n## The `ci.yaml` keys: what each does\n\n## Twice\n\n## Twice\n")
    doc = tmp_path / "doc.md"
    doc.write_text("[a](other.md#the-ciyaml-keys-what-each-does) [b](other.md#twice-1) [c](https://x.org/#y) "
                   "![d](missing.png) [e](other.md#nope) [f](#here) `[g](nowhere.md)`\n\n## Here\n\n"
                   "```\n[h](nowhere.md)\n```\n[i]: missing.md\n")
    assert link_problems(doc) == ["missing.png: no such file (missing.png)", "other.md#nope: no heading #nope in "
                                  "other.md", "missing.md: no such file (missing.md)"]
