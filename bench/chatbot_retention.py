"""Retention of general knowledge by trained chatbot runs, compared on the validation question sets.

    python bench/chatbot_retention.py --model_dirs runs/chatbot runs/chatbot-kl1      # ~1 min per run on 2 cores

The remedies against forgetting (KL weight, epochs, replay mix, LoRA layers) are chosen on validation questions.
This re-asks the general sets of already trained runs without retraining them: the base model answers once, each
run folder's adapter answers the same questions greedily (the same prompts, length and scoring as train.py), and
the retention of each set is printed -- of the questions the base model answers right, how many the run keeps.
``--sets`` names the question files (default: the other-shapes validation twin and general_knowledge.yaml); the
test twin (``general_other.yaml``) is not a choice to make here. Writes ``runs/bench/chatbot_retention.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

DATA = "usecase-chatbot/data"


def main(argv: list[str] | None = None) -> dict:
    from trainers import _cpu, write_report

    from common.evaluation import generate_chat, key_terms_score, retention
    from common.models import load_for_inference
    from common.paths import load_sibling

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dirs", nargs="+", required=True, help="folders that usecase-chatbot/train.py wrote")
    parser.add_argument("--sets", nargs="+", default=[f"{DATA}/general_other_valid.yaml", f"{DATA}/general_knowledge.yaml"])
    parser.add_argument("--base", default="smollm2-135m-instruct")
    parser.add_argument("--max_new_tokens", type=int, default=48)
    parser.add_argument("--out", default="runs/bench/chatbot_retention.json")
    args = parser.parse_args(argv)

    prepare = load_sibling(REPO / "usecase-chatbot" / "train.py", "prepare_data")
    sets = {Path(s).stem: prepare.read_question_list(REPO / s, True) for s in args.sets}

    def answer(model_dir: str) -> dict[str, list[str]]:
        model, tokenizer, _ = load_for_inference(model_dir)
        return {name: generate_chat(model, tokenizer, [[{"role": "user", "content": q["question"]}] for q in qs],
                                    args.max_new_tokens, 48, f"{Path(model_dir).name}: {name}", cache=True)
                for name, qs in sets.items()}

    base = answer(args.base)
    report: dict = {"cpu": _cpu(), "base": args.base, "runs": {}, "lost": {}}
    for name, qs in sets.items():
        right = sum(key_terms_score(a, q["keys"]) for a, q in zip(base[name], qs))
        print(f"{name}: {len(qs)} questions, base model right on {right}")
    for model_dir in args.model_dirs:
        tuned = answer(model_dir)
        report["runs"][model_dir] = {}
        for name, qs in sets.items():
            r = retention(qs, base[name], tuned[name])
            report["runs"][model_dir][name] = {"retention": round(r["retention"], 4), "kept": f"{r['kept']} of {r['base_right']}",
                                               "accuracy_after": round(r["accuracy_after"], 4)}
            report["lost"].setdefault(model_dir, {})[name] = [
                {"question": q["question"], "base": b, "fine_tuned": a} for q, b, a in zip(qs, base[name], tuned[name])
                if key_terms_score(b, q["keys"]) and not key_terms_score(a, q["keys"])]
        print(model_dir, report["runs"][model_dir], flush=True)
    return write_report(report, args.out, "runs")


if __name__ == "__main__":
    main()
