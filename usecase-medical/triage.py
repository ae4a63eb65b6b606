"""The triage check: a linear probe on the fine-tuned model's own hidden states decides whether a question is a red
flag, and the answer follows that decision (used by train.py and chat.py).

Why: after SFT and DPO the model *knows* which symptoms are emergencies better than its greedy answers show. Its
hidden states separate the held-out red-flag questions from the everyday ones, while its first generated words
("This is an emergency: ...") follow surface words such as "sweaty" or "dizzy". A logistic regression on those states
(one weight per hidden unit, trained on the training questions' ``red_flag`` labels, its layer chosen on validation)
reads the decision out, and the answer is made to agree with it:

- triage says **red flag** and the greedy answer does not escalate: the answer opens with :data:`ESCALATION` and the
  model writes the rest (its explanation) after it;
- triage says **everyday** and the greedy answer escalates: the answer is generated again, greedily, with the first
  token of the escalating answer forbidden as the first token -- the model opens differently and writes its
  everyday answer; up to ``retries`` times, each forbidding one more opening. If every try escalates the
  escalation is kept: the check never removes an escalation the model insists on.

Answers the check agrees with are left exactly as the model wrote them. Saved as ``triage.safetensors`` (weights, bias
and the layer in the metadata) beside the run's adapter.
"""

from __future__ import annotations

import math

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from common.evaluation import generate_chat
from common.paths import load_sibling
from common.probe import LinearProbe, fit_per_layer, prompt_features

scoring = load_sibling(__file__, "scoring")

ESCALATION = "This is an emergency: call 911 or your local emergency number now."


class Triage(LinearProbe):
    """P(red flag) of a question: a :class:`common.probe.LinearProbe` saved as ``triage.safetensors``."""

    FILE = "triage.safetensors"


def fit(model, tokenizer, train: list[dict], valid: list[dict], c: float = 1.0,
        batch_size: int = 16) -> tuple[Triage | None, dict]:
    """Fit the probe on the labelled training questions (``prompt``, ``red_flag``), one per layer, and keep the layer
    with the lowest validation log-loss. Returns ``(None, reason)`` when a split lacks one of the two labels."""
    train = [q for q in train if isinstance(q.get("red_flag"), bool)]
    valid = [q for q in valid if isinstance(q.get("red_flag"), bool)]
    for name, rows in (("train", train), ("valid", valid)):
        if len({q["red_flag"] for q in rows}) < 2:
            return None, {"skipped": f"the {name} split needs red-flag and everyday questions"}
    x_train = prompt_features(model, tokenizer, [q["prompt"] for q in train], None, batch_size)
    x_valid = prompt_features(model, tokenizer, [q["prompt"] for q in valid], None, batch_size)
    best, bias, weight, loss, losses = fit_per_layer(x_train, [q["red_flag"] for q in train], x_valid,
                                                     [q["red_flag"] for q in valid], c)
    return Triage(best, weight, bias), {"layer": best, "validation_log_loss": round(loss, 4),
                                        "validation_log_loss_by_layer": [round(v, 4) for v in losses],
                                        "train_questions": len(train), "validation_questions": len(valid)}


class _ForbidFirst(LogitsProcessor):
    """Forbids some tokens as the first generated token (greedy decoding then takes the next best opening)."""

    def __init__(self, prompt_length: int, token_ids: list[int]):
        self.prompt_length, self.token_ids = prompt_length, token_ids

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] == self.prompt_length:
            scores[:, self.token_ids] = -math.inf
        return scores


@torch.inference_mode()
def _greedy(model, tokenizer, text: str, max_new_tokens: int, forbid: list[int] | None = None) -> tuple[str, int]:
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(next(model.parameters()).device)
    n = enc["input_ids"].shape[1]
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id,
                         logits_processor=LogitsProcessorList([_ForbidFirst(n, forbid)]) if forbid else None)
    new = out[0, n:]
    return tokenizer.decode(new, skip_special_tokens=True).strip(), int(new[0]) if len(new) else -1


def answer(model, tokenizer, conversations: list[list[dict]], triage: Triage, max_new_tokens: int,
           retries: int = 3, batch_size: int = 16, greedy: list[str] | None = None,
           cache: bool = False) -> dict:
    """Answers that agree with the triage check (see the module docstring).

    ``greedy``: the model's greedy answers when already generated (else generated here). Returns ``{"answers",
    "probabilities", "actions"}``; an action is ``""`` (kept as written), ``"escalation added"`` or ``"re-opened"``
    (``"re-opened: kept"`` when every try escalated).
    """
    if greedy is None:
        greedy = generate_chat(model, tokenizer, conversations, max_new_tokens, batch_size, "answering", cache=cache)
    probs = triage.probabilities(model, tokenizer, conversations, batch_size)
    answers, actions = list(greedy), [""] * len(greedy)
    for i, (conv, reply, p) in enumerate(zip(conversations, greedy, probs, strict=True)):
        red, esc = p >= triage.threshold, scoring.escalates(reply)
        if red and not esc:
            text = tokenizer.apply_chat_template([*conv, {"role": "assistant", "content": ESCALATION}],
                                                 tokenize=False, continue_final_message=True)
            rest, _ = _greedy(model, tokenizer, text, max(1, max_new_tokens - 16))
            answers[i], actions[i] = f"{ESCALATION} {rest}".strip(), "escalation added"
        elif esc and not red:
            text = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
            first = tokenizer(reply, add_special_tokens=False)["input_ids"][:1]
            forbid, actions[i] = list(first), "re-opened: kept"
            for _ in range(retries):
                candidate, opening = _greedy(model, tokenizer, text, max_new_tokens, forbid)
                if not scoring.escalates(candidate):
                    answers[i], actions[i] = candidate, "re-opened"
                    break
                forbid.append(opening)
    return {"answers": answers, "probabilities": [round(p, 4) for p in probs], "actions": actions}
