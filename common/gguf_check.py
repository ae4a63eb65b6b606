"""Checked, not assumed: llama.cpp loads a run's GGUF file and answers the run's test questions as transformers does.

    from common.gguf_check import compare
    compare(run_dir, run_dir / "merged", run_dir / "gguf/chatbot-f16.gguf", n=8)

Both sides get the same prompt token ids (the run's chat template applied by its tokenizer; llama.cpp's own
tokenization of that text is compared too) and decode greedily for ``max_new_tokens`` (``inference.json``), one
prompt at a time on ``threads`` CPU threads. Reported:

- how many answers are the same text and the same tokens; where two answers part, transformers' logit margin between
  the two tokens (a near-tie: smaller than the runtimes' logit differences, so any change of rounding may flip it);
- both models' logits at every prompt position: max / mean |difference| and top-1 agreement;
- the file size, load times, and tokens/s (generated tokens over the time of the whole call, prompt included, on
  both sides).

llama.cpp comes from the optional ``llama`` extra: ``llama-cpp-python`` built from source
(``pip install -e '.[llama]'``, or ``make llama-cpp``).
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import torch

from common.errors import ConfigError

LLAMA_HINT = ("pip install -e '.[llama]' (builds llama-cpp-python from source with the C++ compiler and cmake: "
              "6-8 min on 2 cores; make llama-cpp)")


def require_llama_cpp() -> None:
    """:class:`ConfigError` with the install command when ``llama_cpp`` (the optional ``llama`` extra) is missing."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise ConfigError(f"checking a GGUF file needs llama.cpp's Python bindings: {LLAMA_HINT}")


def held_out_conversations(run_dir: Path, n: int, system_prompt: str | None = None) -> list[tuple[int, list[dict]]]:
    """The first ``n`` distinct test prompts of a text run (``RUN_DIR/data/test.jsonl``), as ``(row index, chat
    messages without the answer)``.

    Rows are ``messages`` (the answer, last, is dropped), ``prompt`` (a message list; a prompt shared by several
    preference pairs is asked once) or ``clause`` (legal: asked under the run's system prompt).
    """
    path = run_dir / "data" / "test.jsonl"
    if not path.is_file():
        raise ConfigError(f"{path} is missing: the check asks the run's test questions")
    conversations: dict[str, tuple[int, list[dict]]] = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        row = json.loads(line)
        if "messages" in row:
            messages = row["messages"]
            messages = messages[:-1] if messages[-1]["role"] == "assistant" else messages
        elif isinstance(row.get("prompt"), list):
            messages = row["prompt"]
        elif "clause" in row:
            system = [{"role": "system", "content": system_prompt}] if system_prompt else []
            messages = [*system, {"role": "user", "content": row["clause"]}]
        else:
            raise ConfigError(f"{path}, row {i + 1}: none of messages / prompt / clause")
        conversations.setdefault(json.dumps(messages), (i, messages))
        if len(conversations) == n:
            break
    return list(conversations.values())


def stop_tokens(model) -> set[int]:
    """The end-of-turn token ids transformers stops at (``generation_config.eos_token_id``); llama.cpp uses the same."""
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos])


@torch.inference_mode()
def transformers_greedy(model, prompts: list[list[int]], max_new_tokens: int) -> tuple[list[list[int]], float]:
    """Greedy continuations (token ids, end-of-turn excluded) of each prompt, one at a time; and the seconds spent."""
    eos = stop_tokens(model)
    outputs, seconds = [], 0.0
    for ids in prompts:
        start = time.perf_counter()
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=max_new_tokens)[0, len(ids):].tolist()
        seconds += time.perf_counter() - start
        outputs.append([t for t in out if t not in eos])
    return outputs, seconds


def llama_greedy(llm, prompts: list[list[int]], max_new_tokens: int, stop: set[int]) -> tuple[list[list[int]], float]:
    """The same with llama.cpp: greedy sampling (temperature 0, no repetition penalty), the cache reset per prompt."""
    outputs, seconds = [], 0.0
    for ids in prompts:
        llm.reset()
        start = time.perf_counter()
        out = []
        for token in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            if token in stop or len(out) == max_new_tokens:
                break
            out.append(token)
        seconds += time.perf_counter() - start
        outputs.append(out)
    return outputs, seconds


def llama_prompt_logits(gguf: Path, prompts: list[list[int]], threads: int) -> list:
    """llama.cpp's logits at every position of each prompt (a second context with ``logits_all``)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=max(map(len, prompts)) + 8, n_threads=threads, n_threads_batch=threads,
                logits_all=True, verbose=False)
    out = []
    for ids in prompts:
        llm.reset()
        llm.eval(ids)
        out.append(torch.from_numpy(llm.scores[:len(ids)].copy()))
    return out


@torch.inference_mode()
def divergence_margins(model, prompts: list[list[int]], ours: list[list[int]], theirs: list[list[int]]) -> list[float]:
    """Where two greedy answers part, how far apart transformers put the two tokens: ``logit(ours) - logit(theirs)``
    after the common prefix (small: a near-tie that any change in rounding can flip)."""
    margins = []
    for ids, a, b in zip(prompts, ours, theirs):
        k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        if k is not None:
            logits = model(torch.tensor([ids + a[:k]])).logits[0, -1].float()
            margins.append(round(float(logits[a[k]] - logits[b[k]]), 4))
    return margins


def compare(run_dir: Path, model_dir: Path, gguf: Path, n: int = 8, threads: int = 2,
            max_new_tokens: int | None = None) -> dict:
    """Greedy answers of the GGUF file (llama.cpp) and of ``model_dir`` (transformers, fp32) to ``n`` test prompts,
    and both models' logits at every prompt position (max / mean |difference|, top-1 agreement)."""
    require_llama_cpp()
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings_file = run_dir / "inference.json"
    settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    max_new_tokens = max_new_tokens or int(settings.get("max_new_tokens", 64))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    asked = held_out_conversations(run_dir, n, settings.get("system_prompt"))
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for _, c in asked]
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True).eval()
        hf_load = time.perf_counter() - start
        hf_out, hf_seconds = transformers_greedy(model, prompts, max_new_tokens)

        start = time.perf_counter()
        llm = Llama(model_path=str(gguf), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
        cpp_load = time.perf_counter() - start
        same_tokenization = all(llm.tokenize(t.encode(), add_bos=False, special=True) == p
                                for t, p in zip(texts, prompts))
        cpp_out, cpp_seconds = llama_greedy(llm, prompts, max_new_tokens, stop_tokens(model))
        del llm

        with torch.inference_mode():
            hf_logits = [model(torch.tensor([ids])).logits[0].float() for ids in prompts]
        cpp_logits = llama_prompt_logits(gguf, prompts, threads)
        margins = divergence_margins(model, prompts, hf_out, cpp_out)
    finally:
        torch.set_num_threads(previous)
    diff = torch.cat([(a - b).abs().flatten() for a, b in zip(hf_logits, cpp_logits)])
    top1 = torch.cat([a.argmax(-1) == b.argmax(-1) for a, b in zip(hf_logits, cpp_logits)]).float()

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True).strip()

    pairs = [(decode(a), decode(b)) for a, b in zip(hf_out, cpp_out)]
    first_diff = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else
                       min(len(a), len(b))) for a, b in zip(hf_out, cpp_out)]
    return {
        "prompts": len(prompts), "rows": [i for i, _ in asked], "max_new_tokens": max_new_tokens, "threads": threads,
        "same_text": sum(a == b for a, b in pairs), "same_tokens": sum(a == b for a, b in zip(hf_out, cpp_out)),
        "first_token_difference": first_diff, "divergence_margins": margins,
        "same_prompt_tokenization": same_tokenization,
        "prompt_logits": {"positions": len(top1), "max_abs_diff": round(float(diff.max()), 4),
                          "mean_abs_diff": round(float(diff.mean()), 5), "top1_agreement": round(float(top1.mean()), 4)},
        "gguf_bytes": gguf.stat().st_size,
        "load_seconds": {"transformers": round(hf_load, 2), "llama_cpp": round(cpp_load, 2)},
        "tokens_per_second": {"transformers": round(sum(map(len, hf_out)) / hf_seconds, 1),
                              "llama_cpp": round(sum(map(len, cpp_out)) / cpp_seconds, 1)},
        "answers": [{"transformers": a, "llama_cpp": b} for a, b in pairs],
    }
