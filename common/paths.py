"""One path convention for every recipe: paths in configs are repository-relative; reports store no machine paths.

    from common.paths import load_sibling, repo_path, portable_path

    prepare = load_sibling(__file__, "prepare_data")   # usecase-x/prepare_data.py, loaded by path
    report["usecase"] = usecase_name(__file__)          # "x": the recipe's name is its folder's
    docs = repo_path("usecase-chatbot/data/help_center.md")   # works from any working directory
    report["data_dir"] = portable_path(data_dir, out_dir)      # "data/generated", never "/home/..."

Use-case folders have hyphens, so they are not importable packages: their scripts load each other by path
(:func:`load_sibling`), never by editing ``sys.path``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

#: The repository root (``common/`` is installed editable by ``make setup``, so this is the checkout).
REPO_ROOT = Path(__file__).resolve().parents[1]


def repo_path(path: str | os.PathLike) -> Path:
    """``path`` as given when it exists (absolute, or relative to the working directory), else relative to the
    repository root -- so ``usecase-chatbot/data/questions.yaml`` in a config works from any folder."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return REPO_ROOT / p


def portable_path(path: str | os.PathLike | None, *bases: str | os.PathLike) -> str | None:
    """A path fit for a committed report: relative to the first of ``bases`` (then the repository root) that
    contains it, else just its name. ``None`` stays ``None``."""
    if path is None:
        return None
    p = Path(path).expanduser().resolve()
    for base in (*bases, REPO_ROOT):
        try:
            return p.relative_to(Path(base).expanduser().resolve()).as_posix()
        except ValueError:
            continue
    return p.name


def load_sibling(script_file: str | os.PathLike, name: str) -> ModuleType:
    """Import ``name.py`` from the folder of ``script_file`` (a recipe's own module) by its path.

    The module is registered in ``sys.modules`` under a name unique to its folder (dataclasses defined in it
    need that), and loaded once per process.
    """
    folder = Path(script_file).resolve().parent
    key = f"{folder.name.replace('-', '_')}.{name}"
    if key in sys.modules:
        return sys.modules[key]
    path = folder / f"{name}.py"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (expected beside {Path(script_file).name})")
    spec = importlib.util.spec_from_file_location(key, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[key]
        raise
    return module


def usecase_name(script_file: str | os.PathLike) -> str:
    """The name of the recipe ``script_file`` belongs to: its folder's name without ``usecase-``
    (``usecase-car-damage/train.py`` -> ``car-damage``). Reports carry it, so a copied recipe names itself."""
    return Path(script_file).resolve().parent.name.removeprefix("usecase-")


def machine_paths(obj) -> list[str]:
    """Every string in a JSON-like object (keys too) that looks like an absolute path of some machine.

    Committed reports must hold none (tests check this with it).
    """
    if isinstance(obj, str):
        return [obj] if obj.startswith(("/", "~")) or obj[1:3] in (":\\", ":/") else []
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in (*machine_paths(k), *machine_paths(v))]
    if isinstance(obj, (list, tuple)):
        return [s for v in obj for s in machine_paths(v)]
    return []


def run_relative(path: str | os.PathLike, run_dir: str | os.PathLike) -> str:
    """``path`` as written into a run's files: relative to the run folder when inside it, else to the repository
    when inside it, else relative to the run folder through ``..`` -- never an absolute machine path."""
    p, run = Path(path).resolve(), Path(run_dir).resolve()
    for base in (run, REPO_ROOT):
        if p.is_relative_to(base):
            return p.relative_to(base).as_posix()
    return Path(os.path.relpath(p, run)).as_posix()


def resolve_run_path(path: str | os.PathLike, run_dir: str | os.PathLike) -> Path:
    """The inverse of :func:`run_relative`: relative to the run folder if it exists there, else to the repository."""
    p = Path(path)
    if p.is_absolute():
        return p
    in_run = (Path(run_dir) / p).resolve()
    return in_run if in_run.exists() else repo_path(p)
