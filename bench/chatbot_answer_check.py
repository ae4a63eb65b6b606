"""Can the fine-tuned chatbot tell, from its own hidden states, that an answer it just gave is invented?

    python bench/chatbot_answer_check.py --model_dir runs/chatbot          # ~8 min on 2 cores

The abstention gate misses confident answers in the docs' own words to questions the docs do not answer ("How
long does Brightboard keep deleted comments?" -> the 45 days of the Trash). The question alone does not give them
away (``bench/chatbot_probe.py``: a linear probe on the question's hidden states), and neither does the model's
confidence. This measures a linear probe on the *question and the model's own answer*: the trained model answers
every question greedily; the conversation (question + that answer) runs through it once more, and per layer the
hidden states of the answer tokens (their mean, and the last token's) feed a logistic regression that separates
the training questions the docs answer (``train.jsonl``, with the model's answers) from the training questions they
do not (``decline_train.jsonl``, or ``unanswerable.yaml``'s ``train``, with the model's invented answers).

Everything is chosen on validation only: the layer and the regularization (validation log-loss), then the probe's
threshold within the false-abstention budget that the gate's word checks leave (``--max_false_abstention`` of the
answerable validation questions, the recipe's budget), then the gate's confidence threshold in what is left. The
test split is scored once, beside the run's own gate (its threshold from ``inference.json``, as train.py fixed
it). A second variant trains the probe on the validation questions too (their held-out phrasings are what the
training phrasings, memorized by the model, are not), with its threshold fixed on out-of-fold validation scores
(:func:`cross_fitted`). The same linear-probe mechanism as the router (``common/probe.py``); the thresholds come
from the recipe's own search (``scoring.most_declined``). A measurement, not part of the recipe. Writes
``runs/bench/chatbot_answer_check.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SPLITS = ("train", "decline_train", "valid", "decline_valid", "test", "decline_test")
GATED = SPLITS[2:]  # the splits the gates are scored on (the training questions only train the probe)


def answer_features(model, tokenizer, conversations: list[list[dict]], answers: list[str]):
    """``[layers + 1, n, 2 * hidden]``: per layer, the mean hidden state of the answer's tokens and the last
    token's, for each question (rendered as the model sees it) followed by the model's own answer."""
    import torch

    rows = []
    with torch.inference_mode():
        for conversation, answer in zip(conversations, answers, strict=True):
            prompt = tokenizer(tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True),
                               add_special_tokens=False)["input_ids"]
            reply = tokenizer(answer, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
            states = model(torch.tensor([prompt + reply]), output_hidden_states=True).hidden_states
            rows.append(torch.stack([torch.cat([h[0, len(prompt):].mean(0), h[0, -1]]) for h in states]).float())
    return torch.stack(rows, 1).numpy()


def fit_probe(x_train, y_train, x_valid, y_valid, cs=(0.01, 0.1, 1.0)):
    """A standardized logistic regression per layer and per ``C``; the lowest validation log-loss wins.
    Returns ``(layer, C, validation log-loss, P(invented) by split function)``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    best = None
    for c in cs:
        for layer in range(1, x_train.shape[0]):  # 0 is the embeddings
            probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000))
            probe.fit(x_train[layer], y_train)
            loss = log_loss(y_valid, probe.predict_proba(x_valid[layer])[:, 1], labels=[False, True])
            if best is None or loss < best[2]:
                best = (layer, c, loss, probe)
    layer, c, loss, probe = best
    return layer, c, loss, lambda x: probe.predict_proba(x[layer])[:, 1]


def cross_fitted(x_train, y_train, x_valid, y_valid, layer: int, c: float, folds: int = 5):
    """The probe of the chosen layer and ``C`` trained on the training questions *and* validation questions, as
    the recipe would have to train it for the threshold to hold on held-out phrasings. Returns out-of-fold
    P(invented) for every validation question (each fold scored by a probe fitted on the training questions and
    the other folds: no validation question is scored by a probe that saw it; where the threshold is fixed), and
    the probe fitted on the training and all validation questions (what scores the test split)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fitted(rows):
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000))
        return probe.fit(np.concatenate([x_train[layer], x_valid[layer][rows]]),
                         np.concatenate([y_train, y_valid[rows]]))

    out = np.zeros(len(y_valid))
    for fit_rows, held_out in StratifiedKFold(folds, shuffle=True, random_state=0).split(x_valid[layer], y_valid):
        out[held_out] = fitted(fit_rows).predict_proba(x_valid[layer][held_out])[:, 1]
    final = fitted(np.arange(len(y_valid)))
    return out, lambda x: final.predict_proba(x[layer])[:, 1]


def _rates(declined: dict[str, list[bool]], rows: dict[str, list[dict]], split: str) -> dict:
    from common.evaluation import key_terms_score

    answerable, unanswerable = declined[split], declined[f"decline_{split}"]
    right = [not d and key_terms_score(r["answer"], r["key_terms"]) for d, r in zip(answerable, rows[split])]
    return {"abstention_rate": round(sum(unanswerable) / len(unanswerable), 4),
            "false_abstention_rate": round(sum(answerable) / len(answerable), 4),
            "fact_accuracy": round(sum(right) / len(right), 4),
            "declined_unanswerable": f"{sum(unanswerable)} of {len(unanswerable)}",
            "declined_answerable": f"{sum(answerable)} of {len(answerable)}"}


def main(argv: list[str] | None = None) -> dict:
    import numpy as np
    import yaml
    from trainers import _cpu, write_report

    from common.evaluation import generate_chat_with_logprobs
    from common.models import load_for_inference
    from common.paths import load_sibling

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True, help="a folder that usecase-chatbot/train.py wrote")
    parser.add_argument("--max_false_abstention", type=float, default=0.05)
    parser.add_argument("--out", default="runs/bench/chatbot_answer_check.json")
    args = parser.parse_args(argv)

    scoring = load_sibling(REPO / "usecase-chatbot" / "train.py", "scoring")
    data = Path(args.model_dir) / "data"

    def read(name: str) -> list[dict]:
        return [json.loads(line) for line in (data / f"{name}.jsonl").read_text().splitlines() if line.strip()]

    rows = {name: read(name) for name in SPLITS if name != "decline_train"}
    system = rows["train"][0]["messages"][0]["content"]
    if (data / "decline_train.jsonl").exists():
        rows["decline_train"] = read("decline_train")
    else:  # a run made before the training declines were written with every run
        questions = yaml.safe_load((REPO / "usecase-chatbot" / "data" / "unanswerable.yaml").read_text())["train"]
        rows["decline_train"] = [{"messages": [{"role": "system", "content": system}, {"role": "user", "content": q}]}
                                 for q in questions]
    model, tokenizer, settings = load_for_inference(args.model_dir)
    gate = settings["abstention_gate"]
    n_tokens = settings["max_new_tokens"]

    answers, logprobs, redrawn, features = {}, {}, {}, {}
    for name in SPLITS:
        conversations = [r["messages"][:2] for r in rows[name]]
        answers[name], logprobs[name] = generate_chat_with_logprobs(model, tokenizer, conversations, n_tokens, 48, name)
        if name in GATED:
            redrawn[name] = scoring.redraw(model, tokenizer, conversations, answers[name], gate, n_tokens, 48)
        features[name] = answer_features(model, tokenizer, conversations, answers[name])
        print(f"{name}: {len(conversations)} questions", flush=True)

    def stacked(split: str):
        x = np.concatenate([features[split], features[f"decline_{split}"]], axis=1)
        return x, np.array([False] * len(rows[split]) + [True] * len(rows[f"decline_{split}"]))

    (x_train, y_train), (x_valid, y_valid) = stacked("train"), stacked("valid")
    layer, c, loss, invented = fit_probe(x_train, y_train, x_valid, y_valid)
    p = {name: invented(features[name]).tolist() for name in GATED}

    # the gate's checks that need no threshold: a question or (re-drawn) answer naming what the docs never use
    words_only = scoring.gate_rule({**gate, "threshold": None})
    words = {name: [words_only(r["messages"][1]["content"], a, lp) for r, a, lp in
                    zip(rows[name], redrawn[name], logprobs[name], strict=True)] for name in GATED}
    sure = {name: [scoring.confidence(lp) for lp in logprobs[name]] for name in GATED}
    budget = math.floor(args.max_false_abstention * len(rows["valid"])) - sum(words["valid"])

    def undecided(name: str, *declined) -> list[int]:  # the questions no check has declined yet
        return [i for i in range(len(rows[name])) if not any(d[name][i] for d in declined)]

    keep = undecided("valid", words)
    t_probe, _ = scoring.most_declined([p["valid"][i] for i in keep], [p["decline_valid"][i] for i in undecided("decline_valid", words)],
                            budget, high=True)
    by_probe = {name: [t_probe is not None and v >= t_probe for v in p[name]] for name in GATED}
    left = budget - sum(by_probe["valid"][i] for i in keep)
    t_sure, _ = scoring.most_declined([sure["valid"][i] for i in undecided("valid", words, by_probe)],
                           [sure["decline_valid"][i] for i in undecided("decline_valid", words, by_probe)], left, high=False)
    by_sure = {name: [t_sure is not None and s < t_sure for s in sure[name]] for name in GATED}
    run_gate = {name: [w or (gate["threshold"] is not None and s < gate["threshold"]) for w, s in
                       zip(words[name], sure[name])] for name in GATED}
    gates = {"run's gate (words + confidence threshold, from inference.json)": run_gate,
             "words + answer check": {n: [a or b for a, b in zip(words[n], by_probe[n])] for n in GATED},
             "words + answer check + confidence": {n: [a or b or s for a, b, s in
                                                      zip(words[n], by_probe[n], by_sure[n])] for n in GATED}}
    scored = {name: [{"answer": a or "", "key_terms": r.get("key_terms", [])} for a, r in zip(redrawn[name], rows[name])]
              for name in GATED}
    report = {"cpu": _cpu(), "model_dir": args.model_dir, "questions": {n: len(r) for n, r in rows.items()},
              "probe": {"layer": layer, "C": c, "validation_log_loss": round(loss, 4),
                        "threshold": t_probe, "confidence_threshold": t_sure},
              "gates": {name: {split: _rates(declined, scored, split) for split in ("valid", "test")}
                        for name, declined in gates.items()}}
    # the probe trained on validation questions too; its threshold fixed on out-of-fold validation scores
    oof, refitted = cross_fitted(x_train, y_train, x_valid, y_valid, layer, c)
    n_valid = len(rows["valid"])
    t_oof, _ = scoring.most_declined([oof[i] for i in keep],
                                     [oof[n_valid + i] for i in undecided("decline_valid", words)], budget, high=True)
    declined = {"valid": oof[:n_valid].tolist(), "decline_valid": oof[n_valid:].tolist(),
                "test": refitted(features["test"]).tolist(), "decline_test": refitted(features["decline_test"]).tolist()}
    declined = {name: [w or (t_oof is not None and v >= t_oof) for w, v in zip(words[name], scores)]
                for name, scores in declined.items()}
    report["probe"]["cross_fitted_threshold"] = t_oof
    report["gates"]["words + answer check, trained on validation too (cross-fitted)"] = {
        split: _rates(declined, scored, split) for split in ("valid", "test")}
    report["summary"] = {name: {split: {k: v[k] for k in ("abstention_rate", "false_abstention_rate", "fact_accuracy")}
                                for split, v in g.items()} for name, g in report["gates"].items()}
    return write_report(report, args.out, "summary")


if __name__ == "__main__":
    main()
