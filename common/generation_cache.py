"""Generated answers kept on disk, keyed by the exact weights, prompts and decoding settings that produced them.

Evaluating the *base* model is the same work in every run of a recipe: the same weights answer the same prompts
with the same settings. The recipes' evaluations call ``common.evaluation`` with ``cache=True``, which asks this
cache first, so a second run (another learning rate, another seed, a resumed job) skips that work. Chat and
predict scripts do not pass it: what a user types is never written to disk. A fine-tuned model has weights no earlier run had -- unless the run is
repeated exactly, when CPU training reproduces them and the answers are read back too.

The key is a SHA-256 over everything that can change an answer: every weight and buffer of the model (names,
dtypes, shapes, bytes), the prompt texts after the chat template, the decoding settings (max_new_tokens, batch size
-- padding changes the arithmetic --, sampling, seed, end/pad tokens), whether scores are kept, and the torch and
transformers versions. Nothing else is trusted: a changed weight, prompt or setting is a miss, never a stale answer.

``$COOKBOOK_GENERATION_CACHE``: a folder to use, or ``0`` / ``off`` to turn the cache off; by default
``<cache_dir()>/generations`` (``~/.cache/finetune-cookbook``). Entries are small JSON files; delete the folder
to clear it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import transformers

from common.models import cache_dir


def folder() -> Path | None:
    """The cache folder, or None when ``$COOKBOOK_GENERATION_CACHE`` turns the cache off."""
    setting = os.environ.get("COOKBOOK_GENERATION_CACHE", "")
    if setting.lower() in ("0", "off", "false", "no"):
        return None
    return Path(setting) if setting else cache_dir() / "generations"


def fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of every weight and buffer of ``model``: names, dtypes, shapes and bytes (~0.4 s per 135 M fp32
    parameters on a 2-core CPU).

    Computed afresh on every call, never remembered: a tensor's version counter does not see every write (PEFT's
    ``merge_and_unload`` adds the LoRA deltas through ``.data``, which leaves it unchanged), so a memo trusting it
    served a merged model the base model's answers.
    """
    digest = hashlib.sha256()
    for name, t in model.state_dict().items():
        data = t.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if data.numel():
            digest.update(memoryview(data.view(torch.uint8).numpy()))
    return digest.hexdigest()


def key(model: torch.nn.Module, texts: list[str], settings: dict) -> str:
    """The cache key of one generation call (see the module docstring)."""
    payload = {"model": fingerprint(model), "texts": texts, "settings": settings,
               "versions": [torch.__version__, transformers.__version__]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def load(cache_key: str) -> dict | None:
    """The stored result for ``cache_key``, or None (no cache, a miss, or an unreadable entry)."""
    root = folder()
    path = root / f"{cache_key}.json" if root else None
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # a half-written or damaged entry is a miss; the next store replaces it


def store(cache_key: str, result: dict) -> None:
    """Keep ``result`` under ``cache_key`` (atomic: written to a temporary file, then renamed)."""
    root = folder()
    if root is None:
        return
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{cache_key}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(result))
    os.replace(tmp, root / f"{cache_key}.json")
