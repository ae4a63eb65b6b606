"""`cookbook new`: a skeleton of each method passes the contract test at once, takes every name from its folder,
holds no results, and says in one line what is wrong with a bad name, method or source (exit code 2).

The skeletons are written into a temporary copy of the repository layout (never into the repository, where other
test runs discover ``usecase-*`` folders); the contract test runs them from there.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from docs_check import commands, link_problems, parse_problem
from test_contract import check_usecase

from common.scaffold import METHODS, PENDING_MARKER, new_usecase, results_pending

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("## Run it", "## The data", "## Results", "## Adapt it", "## Limits")


def cookbook(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "common.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("args, message", [
    (["Bad_Name", "--method", "sft"], "use lowercase letters, digits and hyphens"),
    (["usecase-", "--method", "sft"], "use lowercase letters"),
    (["receipts", "--method", "rlhf"], "--method rlhf: unknown method; choose one of sft, dpo"),
    (["receipts"], "give --method (sft | dpo | vision-classify | vision-multitask)"),
    (["receipts", "--from", "chatbott"], "--from chatbott: no such use case (one of: usecase-car-damage"),
    (["receipts", "--method", "sft", "--from", "chatbot"], "not both"),
    (["chatbot", "--method", "sft"], "usecase-chatbot already exists"),
])
def test_bad_name_method_or_source_is_one_line_and_exit_code_2(args, message):
    before = sorted(p.name for p in REPO.iterdir())
    proc = cookbook("new", *args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert sorted(p.name for p in REPO.iterdir()) == before  # nothing written


def test_help_describes_each_method():
    proc = cookbook("new", "--help")
    assert proc.returncode == 0
    for method in METHODS:
        assert re.search(rf"^  {method}\s+\S", proc.stdout, re.MULTILINE), f"--help does not describe {method}"
    assert "--from USECASE" in proc.stdout and "CONTRIBUTING.md" in proc.stdout


@pytest.mark.parametrize("method", METHODS)
def test_skeleton_is_short_named_after_its_folder_and_not_yet_run(method, tmp_path):
    folder = new_usecase(f"{method}-names", method=method, repo=tmp_path)
    assert folder == tmp_path / f"usecase-{method}-names"
    for name in ("README.md", "config.yaml", "config.smoke.yaml", "ci.yaml", "prepare_data.py", "train.py"):
        assert (folder / name).is_file(), name
    assert (folder / "chat.py").is_file() or (folder / "predict.py").is_file()
    assert not (folder / "results").exists() and results_pending(folder)
    texts = {p: p.read_text(encoding="utf-8") for p in folder.rglob("*") if p.suffix in (".py", ".yaml", ".md")}
    for path, text in texts.items():
        assert "{{" not in text, f"{path.name}: a placeholder left"
        assert set(re.findall(r"usecase-[\w-]*\w", text)) <= {folder.name}, f"{path.name} names another recipe"
    assert folder.name in texts[folder / "config.yaml"] and folder.name in texts[folder / "README.md"]
    readme = texts[folder / "README.md"]
    assert PENDING_MARKER in readme and "TODO" in readme and len(readme.split()) < 700
    assert [readme.index(s) for s in SECTIONS] == sorted(readme.index(s) for s in SECTIONS)
    lint = subprocess.run([sys.executable, "-m", "ruff", "check", "--config", str(REPO / "pyproject.toml"),
                           str(folder)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout


@pytest.mark.parametrize("method", METHODS)
def test_skeleton_readme_commands_parse_and_links_resolve(method, tmp_path):
    folder = new_usecase(f"{method}-docs", method=method, repo=tmp_path)
    readme = (folder / "README.md").read_text(encoding="utf-8")
    shown = commands(readme)
    assert {c.script for c in shown} >= {f"{folder.name}/train.py"} and len(shown) >= 3
    bad = [f"{c} -> {problem}" for c in shown if (problem := parse_problem(c, root=tmp_path))]
    assert not bad, bad
    assert link_problems(REPO / folder.name / "README.md", readme) == []  # as it will be, in the repository


@pytest.mark.parametrize("method", METHODS)
def test_skeleton_passes_the_contract_test(method, tmp_path):
    """What `make test` runs for every folder, on the new skeleton: smoke training, predict/chat, no retraining."""
    root = tmp_path / "repo"
    folder = new_usecase(f"{method}-contract", method=method, repo=root)
    check_usecase(folder, tmp_path, root=root)
    assert not (REPO / folder.name).exists()  # nothing generated into the real repository


def test_not_yet_run_lasts_until_the_full_run_is_committed(tmp_path, monkeypatch):
    from common import cli

    folder = new_usecase("pending", method="sft", repo=tmp_path)
    monkeypatch.setattr(cli, "REPO", tmp_path)
    assert results_pending(folder) and cli.readme_tables(check=True) == []  # no table to generate yet
    (folder / "results").mkdir()
    (folder / "results" / "report.json").write_text("{}")
    assert not results_pending(folder)  # a committed report: its README must now show the generated table
    (folder / "results" / "report.json").unlink()
    readme = folder / "README.md"
    readme.write_text(readme.read_text().replace(PENDING_MARKER, "<!-- results"))
    assert not results_pending(folder)  # no report and no marker: the contract test fails it


def test_copy_of_a_recipe_keeps_its_code_and_drops_its_readme_and_results(tmp_path):
    src = tmp_path / "usecase-legal"
    (src / "results").mkdir(parents=True)
    (src / "data" / "generated-smoke").mkdir(parents=True)
    (src / "train.py").write_text('DEFAULT = "usecase-legal/config.yaml"\n')
    (src / "predict.py").write_text("")
    (src / "README.md").write_text("# Legal\n")
    folder = new_usecase("leases", source="legal", repo=tmp_path)
    assert (folder / "train.py").read_text() == 'DEFAULT = "usecase-leases/config.yaml"\n'
    assert not (folder / "results").exists() and not (folder / "data" / "generated-smoke").exists()
    readme = (folder / "README.md").read_text()
    assert readme.startswith("# Leases\n") and "python usecase-leases/predict.py --model_dir" in readme
    assert "[`usecase-legal`](../usecase-legal/README.md)" in readme and results_pending(folder)
