"""Evaluation shared by the recipes: batched generation and the metrics built on it.

The same function runs on the base model and on the fine-tuned one, so every report compares like with like.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from common import generation_cache


def generate_chat(model, tokenizer, conversations: Sequence[list[dict]], max_new_tokens: int = 64,
                  batch_size: int = 16, desc: str = "generating", cache: bool = False) -> list[str]:
    """Greedy answers to chat prompts (each a list of messages ending with the user's turn).

    Prompts are left-padded into batches (sorted by length to waste little padding); generation stops at
    the tokenizer's end-of-turn token. Returns the decoded answers in input order.

    ``cache=True`` (evaluations of fixed held-out sets): answers the same weights gave the same prompts with the
    same settings before are read back from ``common.generation_cache``, and new ones kept there. Off by default:
    what a user types into a chat or a predict script is never written to disk.
    """
    return _generate(model, tokenizer, conversations, max_new_tokens, batch_size, desc, scores=False, cache=cache)[0]


def generate_chat_with_logprobs(model, tokenizer, conversations: Sequence[list[dict]], max_new_tokens: int = 64,
                                batch_size: int = 16, desc: str = "generating",
                                cache: bool = False) -> tuple[list[str], list[list[float]]]:
    """:func:`generate_chat`, plus the log-probability the model gave each answer token when it chose it.

    The log-probabilities (``model.compute_transition_scores``, normalized) cover the answer's tokens up to, not
    including, the end-of-turn token; they are how sure the model was of what it said (see the chatbot's
    abstention gate). Same answers as :func:`generate_chat`: greedy decoding is unchanged by keeping scores.
    """
    return _generate(model, tokenizer, conversations, max_new_tokens, batch_size, desc, scores=True, cache=cache)


def sample_chat(model, tokenizer, conversations: Sequence[list[dict]], num_samples: int, max_new_tokens: int = 64,
                batch_size: int = 16, temperature: float = 0.7, top_p: float = 0.95, seed: int = 0,
                desc: str = "sampling", cache: bool = False) -> list[list[str]]:
    """``num_samples`` sampled answers to each chat prompt (temperature + nucleus sampling), for a caller that
    checks candidates and keeps the best (see the legal recipe's fact check).

    ``batch_size`` counts prompts; each batch generates ``batch_size * num_samples`` sequences. The random
    generator is seeded once per batch from ``seed``, so the same prompts, batch size and seed give the same samples.
    ``cache``: as in :func:`generate_chat`.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    flat = _generate(model, tokenizer, conversations, max_new_tokens, batch_size, desc, scores=False,
                     sampling={"num_return_sequences": num_samples, "temperature": temperature, "top_p": top_p,
                               "seed": seed}, cache=cache)[0]
    return [flat[i * num_samples:(i + 1) * num_samples] for i in range(len(conversations))]


@torch.inference_mode()
def _generate(model, tokenizer, conversations, max_new_tokens, batch_size, desc, scores, sampling=None, cache=False):
    model.eval()
    n = sampling["num_return_sequences"] if sampling else 1
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    answers: list[str] = [""] * (len(texts) * n)
    logprobs: list[list[float]] = [[] for _ in texts]
    device = next(model.parameters()).device
    cache_key = None
    if cache and generation_cache.folder() is not None:  # the same weights, prompts and settings answered before: read back
        cache_key = generation_cache.key(model, texts, {
            "max_new_tokens": max_new_tokens, "batch_size": batch_size, "scores": scores, "sampling": sampling,
            "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id, "vocab": len(tokenizer),
            "device": device.type})
        hit = generation_cache.load(cache_key)
        if hit is not None and len(hit["answers"]) == len(answers):
            return hit["answers"], hit["logprobs"]
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False, disable=len(order) <= batch_size):
            idx = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            if sampling:
                torch.manual_seed(sampling["seed"] + start)
                decoding = {"do_sample": True, "temperature": sampling["temperature"], "top_p": sampling["top_p"],
                            "num_return_sequences": n}
            else:
                decoding = {"do_sample": False}
            out = model.generate(**enc, max_new_tokens=max_new_tokens, **decoding,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                 output_scores=scores, return_dict_in_generate=True)
            new = out.sequences[:, enc["input_ids"].shape[1]:]
            token_lp = (model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
                        if scores else None)
            for row, seq in enumerate(new):  # generate() returns a prompt's n sequences one after another
                i = idx[row // n] * n + row % n
                answers[i] = tokenizer.decode(seq, skip_special_tokens=True).strip()
                if scores:
                    ends = [t for t, tok in enumerate(seq.tolist()) if tok == tokenizer.eos_token_id]
                    logprobs[i] = token_lp[row, :ends[0] if ends else len(seq)].float().tolist()
    finally:
        tokenizer.padding_side = padding_side
    if cache_key:
        generation_cache.store(cache_key, {"answers": answers, "logprobs": logprobs})
    return answers, logprobs


def normalize(text: str) -> str:
    """Lower-case, strip accents, unify dashes/quotes and collapse whitespace (for key-term matching)."""
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))  # é -> e
    text = text.lower().replace("\u2013", "-").replace("\u2014", "-").replace("\u2019", "'")
    # any other non-ASCII symbol separates words ("100°C" -> "100 c"), it never glues them together
    return re.sub(r"\s+", " ", re.sub(r"[^\x00-\x7f]", " ", text)).strip()


def term_alternatives(term: str) -> list[str]:
    """The normalized ``|``-separated alternatives of a key term, empty ones dropped (``"|"`` has none)."""
    if not isinstance(term, str):
        return []
    return [a for a in (normalize(alt) for alt in term.split("|")) if a]


def term_present(term: str, text: str) -> bool:
    """True when ``term`` (or one of its ``|``-separated alternatives) occurs in ``text`` as a whole token run.

    An empty alternative (``"|"``, ``""``, ``" | "``, ``"a|"``) never matches: it would be found in any answer,
    the empty one included.
    """
    norm = normalize(text)
    for alt in term_alternatives(term):
        # word boundaries where the term starts/ends with a word character ("8" must not match "18")
        # numbers must not continue either ("7" is not in "7,200"; "3" is not in "3.5")
        pattern = ((r"(?<![\w])(?<!\d[.,])" if alt[:1].isalnum() else "") + re.escape(alt)
                   + (r"(?![\w])(?![.,]\d)" if alt[-1:].isalnum() else ""))
        if re.search(pattern, norm):
            return True
    return False


def key_terms_score(answer: str, key_terms: Sequence[str]) -> bool:
    """A fact counts as answered when *every* key term is present in the answer (no key terms: never)."""
    return bool(key_terms) and all(term_present(t, answer) for t in key_terms)


def key_terms_accuracy(answers: Sequence[str], key_terms: Sequence[Sequence[str]]) -> float:
    """Share of answers that contain all their key terms."""
    if not answers:
        return float("nan")
    return sum(key_terms_score(a, k) for a, k in zip(answers, key_terms, strict=True)) / len(answers)


@torch.inference_mode()
def answer_logprobs(model, tokenizer, conversations: Sequence[list[dict]], answers: Sequence[str]) -> list[list[float]]:
    """The log-probability the model gives each token of a given answer to a chat prompt (teacher-forced, one row at
    a time): the answer's tokens up to, not including, the end-of-turn token -- what
    :func:`generate_chat_with_logprobs` returns for an answer the model generated greedily itself, here for any
    answer (a sampled one, say)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for c, a in zip(conversations, answers, strict=True):
        prompt_ids = tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False)
        full_ids = tokenizer.apply_chat_template([*c, {"role": "assistant", "content": a}], tokenize=True,
                                                 return_dict=False)
        answer_ids = full_ids[len(prompt_ids):]
        if tokenizer.eos_token_id in answer_ids:
            answer_ids = answer_ids[:answer_ids.index(tokenizer.eos_token_id)]
        ids = torch.tensor([prompt_ids + answer_ids], device=device)
        logp = torch.log_softmax(model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].float(), dim=-1)
        out.append(logp.gather(1, ids[0, len(prompt_ids):, None])[:, 0].tolist())
    return out


@torch.inference_mode()
def completion_perplexity(model, tokenizer, prompts: Sequence[list[dict]], completions: Sequence[str]) -> float:
    """Perplexity of reference answers given their prompts (answer tokens + end-of-turn only), one row at a time."""
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for p, c in zip(prompts, completions, strict=True):
        prompt_ids = tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True,
                                                   return_dict=False)
        full_ids = tokenizer.apply_chat_template([*p, {"role": "assistant", "content": c}], tokenize=True,
                                                 return_dict=False)
        ids = torch.tensor([full_ids], device=device)
        labels = ids.clone()
        labels[:, :len(prompt_ids)] = -100
        n = int((labels != -100).sum())  # answer tokens; never at position 0, so the shift drops none
        loss = model(input_ids=ids, labels=labels).loss
        total_nll += float(loss) * n
        total_tokens += n
    return float(torch.exp(torch.tensor(total_nll / max(total_tokens, 1))))


def retention(questions: list[dict], before: list[str], after: list[str]) -> dict:
    """Accuracy before and after on general questions (``{"question", "keys"}``), and the share of the base
    model's right answers the fine-tuned model keeps (``retention``; NaN when the base got none right)."""
    right_before = [key_terms_score(a, q["keys"]) for a, q in zip(before, questions)]
    right_after = [key_terms_score(a, q["keys"]) for a, q in zip(after, questions)]
    base_right = sum(right_before)
    kept = sum(a for a, b in zip(right_after, right_before) if b)
    return {"accuracy_before": base_right / len(questions), "accuracy_after": sum(right_after) / len(questions),
            "retention": kept / base_right if base_right else float("nan"), "kept": kept, "base_right": base_right}
