"""Bounds on what a user types, counted in tokens (the model's unit), whatever the language or script.

    from common.context import fit_question, chunk_by_tokens

    question, history = fit_question(model, tokenizer, system_prompt, question, history, max_new_tokens)
    pieces = chunk_by_tokens(tokenizer, clause, max_tokens=300)   # cut at sentence ends, then at token boundaries

Words are no measure: a contract in a language written without spaces is one "word" of thousands of tokens.
Whatever is cut is said on stderr, never silently.
"""

from __future__ import annotations

import re
import sys

from common.errors import ConfigError

#: Where a long text may be cut first: after a sentence's end, in Latin scripts and in CJK ones.
SENTENCE_END = re.compile(r"(?<=[.;!?])\s+|(?<=[。；！？])")


def fit_question(model, tokenizer, system_prompt: str, question: str, history: list[dict],
                 max_new_tokens: int) -> tuple[str, list[dict]]:
    """Make a chat prompt fit the model's context (``max_position_embeddings`` minus ``max_new_tokens``).

    Too long: the history is dropped first, then the question is cut *from the left* (its end, usually the actual
    question, is kept), with a warning on stderr.

    Raises:
        ConfigError: the context is too small for even the system prompt and an empty question.
    """
    limit = getattr(model.config, "max_position_embeddings", None)
    if not limit:
        return question, history
    budget = limit - max_new_tokens

    def length(q: str, h: list[dict]) -> int:
        messages = [{"role": "system", "content": system_prompt}, *h, {"role": "user", "content": q}]
        return len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                 return_dict=False))

    n = length(question, history)
    if n <= budget:
        return question, history
    if history and length(question, []) <= budget:
        print("warning: the conversation is longer than the model's context; earlier turns were dropped",
              file=sys.stderr)
        return question, []
    ids = tokenizer(question, add_special_tokens=False)["input_ids"]
    keep = budget - length("", [])
    if keep < 1:
        raise ConfigError(f"the model's context ({limit} tokens) minus max_new_tokens ({max_new_tokens}) leaves no "
                          "room for a question")
    cut = tokenizer.decode(ids[-keep:])
    while keep > 1 and length(cut, []) > budget:  # re-tokenizing may merge differently: shrink until it fits
        keep -= max(1, keep // 20)
        cut = tokenizer.decode(ids[-keep:])
    print(f"warning: the question is {n} tokens with the prompt, more than the model's context allows "
          f"({limit} - max_new_tokens {max_new_tokens} = {budget}); only its last {keep} tokens were kept",
          file=sys.stderr)
    return cut, []


def chunk_by_tokens(tokenizer, text: str, max_tokens: int) -> list[str]:
    """``text`` cut into pieces of at most ``max_tokens`` tokens: at sentence ends where it can, else (a sentence
    longer than that) at the last word boundary that fits, or at any character for a script written without
    spaces. A text that fits is returned whole; nothing is dropped but the whitespace at a cut."""
    def count(s: str) -> int:
        return len(tokenizer(s, add_special_tokens=False)["input_ids"])

    if count(text) <= max_tokens:
        return [text]
    pieces, current = [], ""
    for sentence in (s for s in SENTENCE_END.split(text) if s.strip()):
        if count(sentence) > max_tokens:  # no sentence end to cut at: the longest prefixes that fit
            if current:
                pieces.append(current)
            while count(sentence) > max_tokens:
                lo, hi = 1, len(sentence)  # binary search on characters: a cut never splits a character
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    lo, hi = (mid, hi) if count(sentence[:mid]) <= max_tokens else (lo, mid - 1)
                space = sentence.rfind(" ", 0, lo + 1)
                cut = space if space > lo // 2 else lo  # at a word boundary when there is one near the end
                pieces.append(sentence[:cut].strip())
                sentence = sentence[cut:].strip()
            current = sentence
            continue
        joined = f"{current} {sentence}".strip() if current else sentence
        if current and count(joined) > max_tokens:
            pieces.append(current)
            joined = sentence
        current = joined
    if current:
        pieces.append(current)
    return [p for p in pieces if p.strip()]
