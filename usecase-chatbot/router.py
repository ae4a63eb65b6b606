"""The router: product questions go to the fine-tuned adapter (and its abstention gate), everything else to the
base model's own weights (adapter off). Used by train.py and chat.py.

Why: the adapter is trained on ~270 support answers. Replay of the base model's answers limits what it forgets, but
on general questions of shapes unlike the replay prompts its greedy answers still drift ("February has 25 days"),
and the abstention gate, made for product questions, would decline "What is the capital of France?" (France is not
in the help center). The fine-tuned model itself knows which questions are about the product: its hidden states
separate them almost perfectly. A logistic regression on one layer (:class:`common.probe.LinearProbe`) is trained
on the training questions -- the product's training phrasings and the training questions the docs do not answer
(both: "product") against the replay prompts ("general") -- its layer is chosen on validation (log-loss), and its
threshold sits in the middle of the validation gap between the two kinds. A question it calls general is answered
with the adapter switched off (``model.disable_adapter()``): exactly the base model's answer.

Saved as ``router.safetensors`` beside the adapter. A merged model (adapter folded in) cannot switch it off: chat.py
then answers every question with the adapter, as without a router.
"""

from __future__ import annotations

from common.paths import load_sibling
from common.probe import LinearProbe, fit_per_layer, prompt_features

scoring = load_sibling(__file__, "scoring")


class Router(LinearProbe):
    """P(product question) of a chat prompt; ``threshold`` and above: the adapter answers."""

    FILE = "router.safetensors"


def prompts(questions: list[str], system_prompt: str) -> list[list[dict]]:
    """Every question as the bot is asked it in chat: under the system prompt (what the router is fitted on)."""
    return [[{"role": "system", "content": system_prompt}, {"role": "user", "content": q}] for q in questions]


def fit(model, tokenizer, product: dict[str, list[str]], general: dict[str, list[str]], system_prompt: str,
        batch_size: int = 32) -> tuple[Router, dict]:
    """Fit the router on ``product["train"]`` vs ``general["train"]``; choose its layer and threshold on the
    ``"valid"`` questions. Threshold: halfway between the highest general and the lowest product probability
    when validation separates them; otherwise the lowest product probability (a product question sent to the base
    model costs a fact; a general one sent to the adapter costs at most one general answer). ``info["valid_p"]``:
    the probability of each validation question (so they need not run through the model again)."""
    x, y = {}, {}
    for split in ("train", "valid"):
        x[split] = prompt_features(model, tokenizer, prompts(product[split] + general[split], system_prompt), None,
                                   batch_size)
        y[split] = [True] * len(product[split]) + [False] * len(general[split])
    layer, bias, weight, loss, _ = fit_per_layer(x["train"], y["train"], x["valid"], y["valid"], balanced=True)
    router = Router(layer, weight, bias)
    p = router.predict(x["valid"][layer])
    n = len(product["valid"])
    low_product, high_general = min(p[:n]), max(p[n:])
    router.threshold = (low_product + high_general) / 2 if high_general < low_product else low_product
    return router, {"layer": layer, "threshold": round(router.threshold, 4), "validation_log_loss": round(loss, 4),
                    "validation_gap": [round(high_general, 4), round(low_product, 4)],
                    "train_questions": {"product": len(product["train"]), "general": len(general["train"])},
                    "validation_questions": {"product": n, "general": len(p) - n},
                    "valid_p": dict(zip(product["valid"] + general["valid"], p))}


def to_adapter(router: Router | None, model, tokenizer, questions: list[str], system_prompt: str,
               batch_size: int = 32) -> list[bool]:
    """True for each question the adapter answers (a product question); all True without a router."""
    if router is None or not questions:
        return [True] * len(questions)
    p = router.probabilities(model, tokenizer, prompts(questions, system_prompt), batch_size)
    return [v >= router.threshold for v in p]


def fit_and_route(model, tokenizer, splits: dict, general_sets: dict[str, list[dict]], replay_questions: list[str],
                  system_prompt: str, valid_set: str = "general_other_valid") -> tuple[Router | None, dict, dict]:
    """Fit the router -- training: the product's training phrasings and the unanswerable training questions against
    the replay prompts; validation: the validation phrasings and unanswerable validation questions against the
    ``valid_set`` general questions -- and route every evaluated question (``{split or set: [to adapter?]}``).
    Returns ``(router, routes, info)``; ``(None, {}, {"skipped": why})`` when it cannot be fitted."""
    general_valid = [q["question"] for q in general_sets.get(valid_set, [])]
    if not hasattr(model, "disable_adapter"):
        return None, {}, {"skipped": "no adapter to switch off (use_peft: false)"}
    if not replay_questions or not general_valid:
        return None, {}, {"skipped": f"needs replay questions and the {valid_set} set"}
    product = {s: list(dict.fromkeys(r["messages"][1]["content"] for r in splits[s] + splits.get(f"decline_{s}", [])))
               for s in ("train", "valid")}
    router, info = fit(model, tokenizer, product, {"train": replay_questions, "valid": general_valid}, system_prompt)
    questions = {k: [r["messages"][1]["content"] for r in splits[k]]
                 for k in ("test", "valid", "decline_test", "decline_valid") if splits.get(k)}
    questions |= {name: [q["question"] for q in qs] for name, qs in general_sets.items()}
    valid_p = info.pop("valid_p")  # the validation questions' probabilities, from fitting
    routes = {k: [valid_p[q] >= router.threshold for q in qs] if all(q in valid_p for q in qs)
              else to_adapter(router, model, tokenizer, qs, system_prompt) for k, qs in questions.items()}
    info["sent_to_base_model"] = {k: f"{sum(not t for t in v)} of {len(v)}" for k, v in routes.items()}
    return router, routes, info


def apply(tuned: dict, base: dict, routes: dict[str, list[bool]], splits: dict) -> dict:
    """``tuned`` (an evaluation of the fine-tuned model, through the gate) with the answer to every question routed
    away from the adapter replaced by the base model's: the adapter-off model is the base model, asked the same
    prompts greedily. Fact accuracy and abstention are rescored; the adapter's own answers stay under
    ``"answers_adapter"``."""
    answers = dict(tuned["answers"])
    for key, to_adapter_ in routes.items():
        answers[key] = [a if t else b for a, b, t in zip(tuned["answers"][key], base["answers"][key], to_adapter_,
                                                         strict=True)]
    routed = {**tuned, "answers": answers, "answers_adapter": tuned["answers"]}
    for split in ("test", "valid"):
        routed[split] = {**tuned[split], **scoring.split_metrics(answers, splits, split)}
    return routed


def summary(info: dict) -> str:
    """A markdown paragraph and table for REPORT.md: where the router sent each question set, and the retention
    of general answers with the router and with the adapter answering everything."""
    if "skipped" in info:
        return f"No router: {info['skipped']}."
    lines = [f"Layer {info['layer']}, threshold {info['threshold']} (validation: general questions up to "
             f"{info['validation_gap'][0]}, product questions from {info['validation_gap'][1]}).", "",
             "| questions | sent to the base model | retention, adapter answering everything |", "|---|---|---|"]
    only = info.get("retention_adapter_only", {})
    shown = {k: "" if k not in only else "n/a" if only[k] is None or only[k] != only[k] else f"{only[k]:.3f}"
             for k in info["sent_to_base_model"]}  # n/a: the base model got none of the set right
    lines += [f"| {k} | {v} | {shown[k]} |" for k, v in info["sent_to_base_model"].items()]
    return "\n".join(lines)
