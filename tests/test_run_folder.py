"""What a user owns is never lost or silently mixed: one run per output folder (same settings to resume, no second
live run), folders a script replaces only if it made them, operating-system errors as one line."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from trl import SFTConfig

from common.config import ModelArguments, parse_config, to_dict
from common.errors import ConfigError, run_main
from common.paths import load_sibling
from common.run_folder import CONFIG_FILE, LOCK_FILE, claim, release, replace_output

REPO = Path(__file__).resolve().parents[1]
LEGAL = REPO / "usecase-legal"


def _claim(out: Path, *flags: str) -> dict:
    """What a recipe's train.py does first: parse the config, then claim the output folder with its settings."""
    train = load_sibling(LEGAL / "train.py", "train")
    instances = parse_config((train.LegalArguments, ModelArguments, SFTConfig),
                             ["--config", str(LEGAL / "config.smoke.yaml"), "--output_dir", str(out), *flags])
    claim(out, to_dict(*instances))
    return json.loads((out / CONFIG_FILE).read_text())


def test_a_restart_with_other_settings_is_refused_naming_the_keys(tmp_path):
    out = tmp_path / "run"
    assert _claim(out, "--learning_rate", "0.001")["learning_rate"] == 0.001
    assert _claim(out, "--learning_rate", "0.002")["learning_rate"] == 0.002  # nothing computed yet: may change
    (out / "checkpoint-2").mkdir()  # now the folder holds work done with these settings
    saved = _claim(out, "--learning_rate", "0.002", "--logging_steps", "5")  # same settings (logging aside): resume
    with pytest.raises(ConfigError, match=r"learning_rate: 0.002 -> 0.003.*Pass a new --output_dir"):
        _claim(out, "--learning_rate", "0.003")
    with pytest.raises(ConfigError, match=r"lora_r: 8 -> 4.*seed: 42 -> 7"):
        _claim(out, "--learning_rate", "0.002", "--lora_r", "4", "--seed", "7")
    assert json.loads((out / CONFIG_FILE).read_text()) == saved  # the refused settings were not written


def test_a_medical_run_killed_after_sft_refuses_another_system_prompt(tmp_path):
    """The case that mixed two configurations: stage 1 with one system prompt, stage 2 restarted with another."""
    train = load_sibling(REPO / "usecase-medical" / "train.py", "train")
    smoke = ["--config", str(REPO / "usecase-medical" / "config.smoke.yaml"), "--output_dir", str(tmp_path / "run")]
    train.main([*smoke, "--stage", "sft", "--triage", "false"])
    with pytest.raises(ConfigError, match=r"system_prompt: .* -> 'Answer briefly\.'"):
        train.main([*smoke, "--stage", "dpo", "--triage", "false", "--system_prompt", "Answer briefly."])
    assert not (tmp_path / "run" / "dpo").exists()


def test_a_second_live_run_is_locked_out_and_a_stale_lock_taken_over(tmp_path):
    out = tmp_path / "run"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out.mkdir()
        (out / LOCK_FILE).write_text(json.dumps({"host": os.uname().nodename, "pid": live.pid}))
        with pytest.raises(ConfigError, match=rf"in use by another run \(process {live.pid} "):
            claim(out, {"learning_rate": 1.0})
    finally:
        live.kill()
        live.wait()
    claim(out, {"learning_rate": 1.0})  # its process is gone: a stale lock, taken over
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    claim(out, {"learning_rate": 1.0})  # this process again (a second main() in one process): still its own
    release(out)
    assert not (out / LOCK_FILE).exists()


def test_an_output_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("mine")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        claim(tmp_path / "f", {})
    assert (tmp_path / "f").read_text() == "mine"


def test_a_folder_the_script_did_not_make_is_never_deleted(tmp_path):
    user = tmp_path / "claims"
    user.mkdir()
    (user / "photo.jpg").write_bytes(b"\xff\xd8 my own photo")
    with pytest.raises(ConfigError, match="holds files this script did not write.*nothing was deleted"):
        replace_output(user, "generation.json")
    assert (user / "photo.jpg").exists()
    made = tmp_path / "generated"
    made.mkdir()
    (made / "generation.json").write_text("{}")
    (made / "old.png").write_bytes(b"")
    replace_output(made, "generation.json")  # its own: replaced
    assert not made.exists()
    (tmp_path / "empty").mkdir()
    replace_output(tmp_path / "empty", "generation.json")


@pytest.mark.parametrize("script", ["usecase-car-damage/prepare_data.py", "usecase-vision-defects/prepare_data.py"])
def test_prepare_data_refuses_to_overwrite_a_users_folder(tmp_path, script):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "boxes.jsonl").write_text('{"path": "a.png", "label": "scratch"}\n')  # what the defects README asks for
    (user / "notes.txt").write_text("keep me")
    proc = subprocess.run([sys.executable, script, "--out", str(user)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "nothing was deleted" in proc.stderr, proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr and sorted(p.name for p in user.iterdir()) == ["boxes.jsonl", "notes.txt"]


@pytest.mark.parametrize("error, shown", [
    (OSError(errno.ENOSPC, "No space left on device", "runs/x/model.safetensors"),
     "error: runs/x/model.safetensors: No space left on device (free some disk space"),
    (PermissionError(errno.EACCES, "Permission denied", "/ro/run"), "error: /ro/run: Permission denied (pass a"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "cfg.yaml"),
     "error: cfg.yaml: No such file or directory"),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "a/file/x"), "error: a/file/x: Not a directory (a part"),
])
def test_operating_system_errors_are_one_line_and_exit_2(capsys, error, shown):
    def main():
        raise error
    with pytest.raises(SystemExit) as stop:
        run_main(main)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith(shown) and err.count("\n") == 1


def test_a_closed_pipe_ends_quietly(tmp_path):
    script = tmp_path / "talk.py"
    script.write_text("from common.errors import run_main\n"
                      "def main():\n    for i in range(100000):\n        print('line', i)\n"
                      "run_main(main)\n")
    proc = subprocess.run(f"{sys.executable} {script} | head -1", shell=True, cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.stdout == "line 0\n" and proc.stderr == ""


def test_a_missing_or_odd_config_is_one_line(tmp_path):
    for config, message in [(tmp_path / "nope.yaml", "nope.yaml"), (tmp_path / "list.yaml", "")]:
        if config.name == "list.yaml":
            config.write_text("- a\n- b\n")
        proc = subprocess.run([sys.executable, "usecase-legal/train.py", "--config", str(config), "--output_dir",
                               str(tmp_path / "run")], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-1500:]
        assert proc.stderr.startswith("error: ") and message in proc.stderr


def test_a_value_of_the_wrong_type_in_the_yaml_names_its_key(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text((LEGAL / "config.smoke.yaml").read_text() + "\neval_batch_size: 16.0\n")
    train = load_sibling(LEGAL / "train.py", "train")
    with pytest.raises(ConfigError, match=r"eval_batch_size must be int, got 16.0 \(float\)"):
        parse_config((train.LegalArguments, ModelArguments, SFTConfig),
                     ["--config", str(config), "--output_dir", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()  # stopped before the folder was claimed


@pytest.mark.parametrize("flag", ["--eval_batch_size", "--per_device_train_batch_size", "--max_new_tokens",
                                  "--gradient_accumulation_steps"])
def test_a_count_below_one_is_refused_before_anything_runs(tmp_path, flag):
    train = load_sibling(LEGAL / "train.py", "train")
    with pytest.raises(ConfigError, match=rf"{flag[2:]} must be >= 1, got 0"):
        parse_config((train.LegalArguments, ModelArguments, SFTConfig),
                     ["--config", str(LEGAL / "config.smoke.yaml"), "--output_dir", str(tmp_path / "run"), flag, "0"])
