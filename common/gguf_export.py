"""A text run's merged model as GGUF for llama.cpp / Ollama: llama.cpp's own converter, and an Ollama ``Modelfile``.

    python -m common.gguf_export            # fetch the converter once (make gguf-converter; PyPI, ~75 MB download)
    cookbook export runs/chatbot --gguf q8_0

The converter is ``convert_hf_to_gguf.py`` with its ``conversion/`` package and ``gguf-py``, as they ship in the
source distribution of ``llama-cpp-python`` on PyPI (pinned version and sha256 below). :func:`fetch_converter`
downloads that archive with pip and keeps those files under ``$COOKBOOK_CACHE/llama.cpp-converter-VERSION/``;
nothing is compiled (``f32``, ``f16``, ``bf16`` and ``q8_0`` need no compiled tool; ``Q4_K_M`` would need
``llama-quantize``). Beside the ``.gguf`` goes an Ollama ``Modelfile``: ``FROM`` the file, a ``TEMPLATE`` (Go
template) derived from the run's chat template and checked to render the same text, the run's ``SYSTEM`` prompt
(``inference.json``) and the end-of-turn ``stop`` token.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import ConfigError
from common.models import atomic_save, cache_dir

#: The llama-cpp-python release whose source distribution carries the converter (and its sha256 on PyPI).
LLAMA_CPP_PYTHON = "0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
OUTTYPES = ("f32", "f16", "bf16", "q8_0")
_KEEP = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")  # under vendor/llama.cpp/ in the archive
FETCH_HINT = (f"fetch llama.cpp's converter once with `make gguf-converter` (or `python -m common.gguf_export`): "
              f"pip downloads llama-cpp-python=={LLAMA_CPP_PYTHON}'s source (~75 MB) from PyPI")


def converter_dir() -> Path:
    """Where the converter lives: ``$COOKBOOK_CACHE/llama.cpp-converter-VERSION`` (see :func:`common.models.cache_dir`)."""
    return cache_dir() / f"llama.cpp-converter-{LLAMA_CPP_PYTHON}"


def _extract(sdist: Path, out: Path) -> None:
    """Copy the converter's files out of the archive (regular files only, no path leaves ``out``)."""
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            parts = member.name.split("/", 1)
            rel = parts[1].removeprefix("vendor/llama.cpp/") if len(parts) == 2 else ""
            if not (member.isfile() and rel != parts[1] and rel.startswith(_KEEP)) or ".." in Path(rel).parts:
                continue
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())


def fetch_converter() -> Path:
    """Download the pinned llama-cpp-python source from PyPI (hash-checked) and keep its converter; idempotent.

    Raises:
        ConfigError: pip could not download it (no network to PyPI: run this where there is, once).
    """
    out = converter_dir()
    if (out / "convert_hf_to_gguf.py").exists():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        requirement = Path(tmp) / "requirements.txt"
        requirement.write_text(f"llama-cpp-python=={LLAMA_CPP_PYTHON} --hash=sha256:{SDIST_SHA256}\n")
        # only this package from source: its build tools (needed to read its metadata) come as wheels
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
                               "llama-cpp-python", "-r", str(requirement), "-d", tmp], capture_output=True, text=True)
        sdists = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if proc.returncode or not sdists:
            reason = (proc.stderr.strip().splitlines() or ["no archive downloaded"])[-1]
            raise ConfigError(f"could not download llama-cpp-python=={LLAMA_CPP_PYTHON}'s source from PyPI "
                              f"({reason}); run `make gguf-converter` where PyPI is reachable")
        atomic_save(out, lambda dst: _extract(sdists[0], dst))
    return out


def find_converter() -> Path:
    """Path of ``convert_hf_to_gguf.py``; :class:`ConfigError` with the fix when it was not fetched."""
    script = converter_dir() / "convert_hf_to_gguf.py"
    if not script.exists():
        raise ConfigError(f"llama.cpp's converter is not in {converter_dir()}: {FETCH_HINT}")
    return script


def convert(model_dir: Path, outfile: Path, outtype: str = "f16") -> Path:
    """Run llama.cpp's ``convert_hf_to_gguf.py`` on a transformers folder; the file appears only when complete.

    Raises:
        ConfigError: an unknown ``outtype``, a missing converter, or a model the converter refuses (its reason).
    """
    if outtype not in OUTTYPES:
        raise ConfigError(f"--gguf {outtype}: choose one of {', '.join(OUTTYPES)}")
    script = find_converter()
    partial = outfile.with_name(outfile.name + ".partial")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(script), str(model_dir), "--outtype", outtype, "--outfile", str(partial)],
                          capture_output=True, text=True, env=env)
    if proc.returncode or not partial.exists():
        partial.unlink(missing_ok=True)
        lines = [line for line in proc.stderr.splitlines() if line.strip()] or ["no output"]
        raise ConfigError(f"llama.cpp's converter could not convert {model_dir}: {lines[-1][:300]}")
    partial.replace(outfile)
    return outfile


# ------------------------------------------------------------------------------------------ Ollama Modelfile


@dataclass
class ChatFormat:
    """A chat template cut into what surrounds each message: ``prefix[role] + content + suffix[role]``, then
    ``generation`` (the assistant's opening) -- the shape of ChatML and most chat templates."""

    prefix: dict[str, str] = field(default_factory=dict)
    suffix: dict[str, str] = field(default_factory=dict)
    generation: str = ""
    default_system: str | None = None  # what the template puts when no system message is given

    def render(self, messages: list[dict]) -> str:
        """The prompt this format gives ``messages`` (with the generation prompt), as the Go template renders it."""
        return "".join(self.prefix[m["role"]] + m["content"] + self.suffix[m["role"]] for m in messages) + self.generation

    def go_template(self) -> str:
        """The Ollama ``TEMPLATE``: a Go ``text/template`` over ``.Messages``, one branch per role (no whitespace
        trimming: every newline in it is the chat template's own)."""
        branches = "".join(f"{{{{ {'if' if i == 0 else 'else if'} eq .Role \"{role}\" }}}}"
                           f"{self.prefix[role]}{{{{ .Content }}}}{self.suffix[role]}"
                           for i, role in enumerate(self.prefix))
        return f"{{{{ range .Messages }}}}{branches}{{{{ end }}}}{{{{ end }}}}{self.generation}"


def chat_format(tokenizer) -> ChatFormat:
    """Cut the tokenizer's chat template into a :class:`ChatFormat`, checked on a multi-turn conversation.

    Raises:
        ConfigError: the template does not have that shape (the Modelfile is then written without a TEMPLATE).
    """
    s, u, a, u2 = "SYSTEM_7f3a", "USER_51c9", "ASSISTANT_e20d", "USER_TWO_9b4e"

    def render(messages: list[dict], generation: bool = False) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    system, user = {"role": "system", "content": s}, {"role": "user", "content": u}
    assistant = {"role": "assistant", "content": a}
    try:
        only_system, pair, turn = render([system]), render([system, user]), render([system, user, assistant])
        fmt = ChatFormat(generation=render([system, user], True)[len(pair):])
        fmt.prefix["system"], fmt.suffix["system"] = only_system.split(s)
        fmt.prefix["user"], fmt.suffix["user"] = pair[len(only_system):].split(u)
        fmt.prefix["assistant"], fmt.suffix["assistant"] = turn[len(pair):].split(a)
        no_system = render([user])
        default = no_system[:no_system.index(fmt.prefix["user"] + u)] if fmt.prefix["user"] + u in no_system else ""
        if default.startswith(fmt.prefix["system"]) and default.endswith(fmt.suffix["system"]) and default:
            fmt.default_system = default[len(fmt.prefix["system"]):len(default) - len(fmt.suffix["system"])]
        check = [system, user, assistant, {"role": "user", "content": u2}]
        same = fmt.render(check) == render(check, True)
    except (ValueError, TypeError, KeyError) as e:  # no template, a template refusing these roles, no clean cut
        raise ConfigError(f"the chat template cannot be cut into per-message parts ({e})") from None
    if not same or any("{{" in part for part in (*fmt.prefix.values(), *fmt.suffix.values(), fmt.generation)):
        raise ConfigError("the chat template does not render messages one by one (or holds '{{')")
    return fmt


def modelfile(gguf_name: str, tokenizer, settings: dict) -> str:
    """An Ollama ``Modelfile`` for ``gguf_name`` (beside it): TEMPLATE, SYSTEM, stop token, greedy decoding."""
    lines = ["# ollama create NAME -f Modelfile && ollama run NAME", f"FROM ./{gguf_name}", ""]
    system = settings.get("system_prompt")
    stops = [tokenizer.eos_token] if tokenizer.eos_token else []
    try:
        fmt = chat_format(tokenizer)
        lines += [f'TEMPLATE """{fmt.go_template()}"""', ""]
        system = system or fmt.default_system
        end_of_turn = fmt.suffix["assistant"].strip()
        if end_of_turn and end_of_turn not in stops:
            stops.append(end_of_turn)
    except ConfigError as e:
        lines += [f"# No TEMPLATE: {e}; Ollama reads the chat template stored in the GGUF file instead.", ""]
    if system:
        lines += [f'SYSTEM """{system}"""', ""]
    lines += [f"PARAMETER stop {json.dumps(stop)}" for stop in stops]
    lines += ["# greedy decoding, as the recipe evaluated the model", "PARAMETER temperature 0"]
    if settings.get("max_new_tokens"):
        lines += [f"PARAMETER num_predict {int(settings['max_new_tokens'])}"]
    return "\n".join(lines) + "\n"


def export_gguf(model_dir: Path, out_dir: Path, outtype: str, settings: dict, name: str = "model") -> dict:
    """``out_dir/NAME-OUTTYPE.gguf`` (llama.cpp's converter) and ``out_dir/Modelfile``; returns what was written."""
    from transformers import AutoTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    gguf = convert(model_dir, out_dir / f"{name}-{outtype}.gguf", outtype)
    seconds = time.perf_counter() - start
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    (out_dir / "Modelfile").write_text(modelfile(gguf.name, tokenizer, settings))
    return {"gguf": str(gguf), "bytes": gguf.stat().st_size, "convert_seconds": round(seconds, 1),
            "modelfile": str(out_dir / "Modelfile")}


if __name__ == "__main__":
    from common.errors import run_main

    run_main(lambda: print(f"llama.cpp's converter: {fetch_converter()}"))
