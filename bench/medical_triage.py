"""Where the medical recipe's red-flag knowledge sits: the triage check fitted on the base, SFT and DPO models.

    python bench/medical_triage.py --run runs/medical          # ~4 min on 2 cores

For each of the three models of a finished medical run (the base model, base + the SFT adapter, the run's merged
DPO model), the triage check is fitted exactly as train.py does it (``triage.fit``: a logistic regression per layer
on the training questions' hidden states, the layer with the lowest validation log-loss kept), then applied to that
model's own greedy validation answers (``RUN/eval_{base,sft,dpo}.json``) as ``triage.answer`` does. Reports, on the
validation questions only (the test split is not read): the layer, its log-loss, the share of questions the check
calls right, and escalation / over-escalation of the answers before and after the check. Writes
``runs/bench/medical_triage.json``.
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
    from peft import PeftModel
    from trainers import _cpu, write_report
    from transformers import AutoModelForCausalLM

    from common.config import ModelArguments
    from common.models import load_causal_lm, load_tokenizer
    from common.paths import load_sibling

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a folder that usecase-medical/train.py wrote (both stages)")
    parser.add_argument("--out", default="runs/bench/medical_triage.json")
    args = parser.parse_args(argv)

    train_py = REPO / "usecase-medical" / "train.py"
    prepare, scoring, triage = (load_sibling(train_py, n) for n in ("prepare_data", "scoring", "triage"))
    run = Path(args.run)
    config = json.loads((run / "report.json").read_text())["config"]
    splits = {s: [json.loads(line) for line in (run / "data" / f"{s}.jsonl").read_text().splitlines() if line]
              for s in ("train", "valid")}
    questions = {s: prepare.questions(rows) for s, rows in splits.items()}
    prompts = [q["prompt"] for q in questions["valid"]]
    tokenizer = load_tokenizer(str(run))

    def base():
        return load_causal_lm(ModelArguments(model_name_or_path=config["model_name_or_path"]))

    models = {"base": base, "sft": lambda: PeftModel.from_pretrained(base(), run / "sft").merge_and_unload(),
              "dpo": lambda: AutoModelForCausalLM.from_pretrained(run / "merged", use_safetensors=True)}
    report: dict = {"cpu": _cpu(), "run": args.run, "questions": {s: len(q) for s, q in questions.items()},
                    "models": {}}
    for name, make in models.items():
        model = make().eval()
        start = time.perf_counter()
        probe, info = triage.fit(model, tokenizer, questions["train"], questions["valid"])
        greedy = json.loads((run / f"eval_{name}.json").read_text())["answers"]["valid"]
        checked = triage.answer(model, tokenizer, prompts, probe, config["max_new_tokens"],
                                config.get("triage_retries", 3), greedy=greedy)
        calls = [(p >= probe.threshold) == q["red_flag"] for q, p in zip(questions["valid"], checked["probabilities"])]
        own, final = (scoring.answer_metrics(questions["valid"], a) for a in (greedy, checked["answers"]))
        report["models"][name] = {
            "layer": info["layer"], "validation_log_loss": info["validation_log_loss"],
            "triage_accuracy": round(sum(calls) / len(calls), 4),
            "escalation_rate": {"model": own["escalation_rate"], "with_check": final["escalation_rate"]},
            "over_escalation_rate": {"model": own["over_escalation_rate"],
                                     "with_check": final["over_escalation_rate"]},
            "actions": {a: checked["actions"].count(a) for a in set(checked["actions"]) if a},
            "seconds": round(time.perf_counter() - start, 1)}
        print(name, report["models"][name], flush=True)
    return write_report(report, args.out, "models")


if __name__ == "__main__":
    main()
