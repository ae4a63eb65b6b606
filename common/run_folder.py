"""A run folder belongs to one run: its settings are saved at the start, a second live run is locked out, and
a folder a script writes is one it made itself.

    from common.run_folder import claim, replace_output

    claim(out, to_dict(*configs))          # each train.py, once its settings are checked
    replace_output(out, "generation.json")  # prepare_data.py --out: an empty folder or one it made, never a user's

``claim`` writes ``OUTPUT_DIR/run_config.json`` (the resolved settings). A restart with the same settings resumes
as before; once the folder holds computed work (checkpoints, a finished stage, an evaluation), a restart whose
settings differ in a key that changes results is refused before any work, naming the keys -- otherwise the old
stages and checkpoints would be silently mixed with the new settings.
A lock file (``.lock``: host and PID) stops a second live run from writing into the same folder; a lock whose
process is gone (a killed run) is stale and taken over.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
from pathlib import Path

from common.errors import ConfigError

CONFIG_FILE = "run_config.json"
LOCK_FILE = ".lock"

#: Settings that do not change what a run computes: a restart may change them.
NEUTRAL_KEYS = frozenset({
    "output_dir", "logging_dir", "logging_steps", "logging_first_step", "logging_strategy", "report_to", "run_name",
    "disable_tqdm", "log_level", "log_level_replica", "save_total_limit", "dataloader_num_workers",
    "dataloader_pin_memory", "resume_from_checkpoint", "overwrite_output_dir", "push_to_hub", "hub_model_id",
    "hub_strategy", "hub_token", "hub_private_repo", "stage", "export_merged"})


def _is_main_process() -> bool:
    """Under ``accelerate launch`` / torchrun only rank 0 claims the folder (the others share its run)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0


def claim(output_dir: str | Path, settings: dict) -> None:
    """Make ``output_dir`` this run's: check the saved settings (or save them), then take the lock.

    Raises:
        ConfigError: ``output_dir`` is a file; another live process holds the lock; the folder holds a run with
            other settings (the differing keys named); or the folder cannot be written (the path named).
    """
    out = Path(output_dir)
    if not _is_main_process():
        return
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output_dir {out} is a file, not a folder: pass a folder path")
    try:
        out.mkdir(parents=True, exist_ok=True)
        _lock(out)
        _check_settings(out, settings)
    except PermissionError as e:
        raise ConfigError(f"cannot write into {out}: {e.strerror} (pass another --output_dir)") from e


def _check_settings(out: Path, settings: dict) -> None:
    path = out / CONFIG_FILE
    resolved = json.loads(json.dumps(settings, default=str))  # as it reads back from disk
    if path.exists() and _holds_work(out):  # nothing computed yet (a run stopped by a bad row): settings may change
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            saved = None  # a damaged file (the run was killed while writing it): rewritten below
        if isinstance(saved, dict):
            differ = sorted(k for k in saved.keys() | resolved.keys()
                            if k not in NEUTRAL_KEYS and saved.get(k) != resolved.get(k))
            if differ:
                shown = ", ".join(f"{k}: {saved.get(k)!r} -> {resolved.get(k)!r}" for k in differ[:6])
                more = f" (and {len(differ) - 6} more)" if len(differ) > 6 else ""
                raise ConfigError(f"{out} holds a run with other settings ({shown}{more}); resuming would mix "
                                  "them. Pass a new --output_dir, or the same settings to resume.")
            return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(resolved, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def _holds_work(out: Path) -> bool:
    """Whether a run in ``out`` got as far as computing something (checkpoints, stages, evaluations)."""
    return any(p.name not in (CONFIG_FILE, LOCK_FILE, "data") and not p.name.endswith(".tmp") for p in out.iterdir())


def _lock(out: Path) -> None:
    path, me = out / LOCK_FILE, {"host": socket.gethostname(), "pid": os.getpid()}
    holder = _read_lock(path)
    if holder and holder != me and _alive(holder):
        raise ConfigError(f"{out} is in use by another run (process {holder['pid']} on {holder['host']}); wait for "
                          f"it to end or pass another --output_dir (if no such run exists, delete {path})")
    if holder != me:
        path.write_text(json.dumps(me), encoding="utf-8")
        atexit.register(release, out)


def _read_lock(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        return holder if isinstance(holder, dict) and {"host", "pid"} <= holder.keys() else None
    except (OSError, ValueError):
        return None


def _alive(holder: dict) -> bool:
    """Whether the lock's process still runs (another host's process cannot be checked: assumed alive)."""
    if holder["host"] != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def release(output_dir: str | Path) -> None:
    """Remove this process's lock from ``output_dir`` (at exit; a lock of another process is left alone)."""
    path = Path(output_dir) / LOCK_FILE
    if _read_lock(path) == {"host": socket.gethostname(), "pid": os.getpid()}:
        path.unlink(missing_ok=True)


def replace_output(folder: str | Path, marker: str) -> None:
    """Clear ``folder`` for a script that writes it whole -- only if that script made it (``marker`` inside, the
    file it writes last) or it is empty. Missing is fine; anything else is the user's and is refused.

    Raises:
        ConfigError: ``folder`` is a file, or a non-empty folder without ``marker`` (nothing is deleted).
    """
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} is a file, not a folder: pass a folder path to write into")
    if not path.is_dir():
        return
    if any(path.iterdir()) and not (path / marker).is_file():
        raise ConfigError(f"{path} holds files this script did not write (no {marker}); nothing was deleted. "
                          "Pass a new or empty folder with --out.")
    shutil.rmtree(path)
