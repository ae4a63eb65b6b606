"""How the legal fact check is set: sampling temperature and number of candidates, compared on validation.

    python bench/legal_fact_check.py --model_dir runs/legal                           # ~6 min on 2 cores
    python bench/legal_fact_check.py --model_dir runs/legal --temperatures 1.0 --candidates 4 8

On the validation clauses a legal run was trained with (``MODEL_DIR/data/valid.jsonl``; the test split is not
read), the trained model summarizes every clause greedily; for each temperature, every clause whose greedy summary
fails the fact check (``scoring.passes``) gets ``max(--candidates)`` sampled candidates in one draw, and the
summary kept for ``k`` candidates is the best (``scoring.check_score``) of the greedy one and the first ``k``
samples -- what ``scoring.summarize`` keeps with ``fact_check_samples: k``, up to its rounds drawing fresh samples.
Reports fact recall, invented-fact rate and ROUGE-L against the references for each setting, and the sampling
seconds. Writes ``runs/bench/legal_fact_check.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> dict:
    from trainers import _cpu, write_report

    from common.evaluation import generate_chat, sample_chat
    from common.models import load_for_inference
    from common.paths import load_sibling

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True, help="a folder that usecase-legal/train.py wrote")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.7, 1.0, 1.3])
    parser.add_argument("--candidates", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--out", default="runs/bench/legal_fact_check.json")
    args = parser.parse_args(argv)

    scoring = load_sibling(REPO / "usecase-legal" / "train.py", "scoring")
    rows = [json.loads(line) for line in (Path(args.model_dir) / "data" / "valid.jsonl").read_text().splitlines()]
    clauses = [r["clause"] for r in rows]
    model, tokenizer, settings = load_for_inference(args.model_dir)
    prompts = [scoring.prompt(c, settings["system_prompt"]) for c in clauses]
    greedy = generate_chat(model, tokenizer, prompts, settings["max_new_tokens"], 16, "greedy")
    failing = [i for i, (s, c) in enumerate(zip(greedy, clauses)) if not scoring.passes(s, c)]
    plain = scoring.facts.score(greedy, rows)
    report: dict = {"cpu": _cpu(), "model_dir": args.model_dir, "clauses": len(rows), "greedy_failing": len(failing),
                    "settings": {"greedy": {k: round(plain[k], 4) for k in ("fact_recall", "invented_rate", "rougeL")}}}
    for temperature in args.temperatures:
        start = time.perf_counter()
        samples = sample_chat(model, tokenizer, [prompts[i] for i in failing], max(args.candidates),
                              settings["max_new_tokens"], 8, temperature, 0.95, 0, f"T={temperature}")
        seconds = time.perf_counter() - start
        for k in sorted(args.candidates):
            kept = list(greedy)
            for i, candidates in zip(failing, samples):
                kept[i] = max([greedy[i], *candidates[:k]], key=lambda s: scoring.check_score(s, clauses[i]))
            m = scoring.facts.score(kept, rows)
            report["settings"][f"T={temperature} k={k}"] = {
                **{key: round(m[key], 4) for key in ("fact_recall", "invented_rate", "rougeL")},
                "sampling_seconds_all_candidates": round(seconds, 1)}
            print(f"T={temperature} k={k}", report["settings"][f"T={temperature} k={k}"], flush=True)
    return write_report(report, args.out, "settings")


if __name__ == "__main__":
    main()
