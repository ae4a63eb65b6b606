"""{{title}}: teach a small chat model which answers to prefer -- SFT on the preferred answers, then DPO on the pairs.

    python {{folder}}/train.py --output_dir runs/{{name}}                 # config.yaml: embedded SmolLM2-135M, CPU
    python {{folder}}/train.py --beta 0.3 --output_dir runs/{{name}}-beta0.3
    python {{folder}}/train.py --config {{folder}}/config.smoke.yaml --output_dir /tmp/{{name}}-smoke

Steps: parse config -> load and check the pairs -> score the base model -> stage 1, SFT (LoRA) on the chosen answers
-> fold the adapter in: the SFT model -> stage 2, DPO with a fresh LoRA adapter (its reference: the adapter switched
off = the SFT model, no second copy) -> score every stage on the held-out pairs -> save a merged model -> report.
Each stage checkpoints into OUTPUT_DIR/sft or OUTPUT_DIR/dpo and resumes from there if the run is killed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset
from trl import SFTConfig

from common.config import ModelArguments, parse_config, peft_config, to_dict
from common.data import write_jsonl_splits
from common.errors import run_main
from common.export import merge_and_export
from common.hardware import detect, training_precision
from common.models import load_causal_lm, load_tokenizer
from common.paths import load_sibling, usecase_name
from common.preference import build_dpo_trainer, dpo_config_from, merge_adapter, pair_logps, pair_metrics
from common.report import Stopwatch, write_report
from common.run_folder import claim
from common.train import build_sft_trainer, train_and_measure

HERE = Path(__file__).resolve().parent
prepare = load_sibling(__file__, "prepare_data")  # load and check the pairs
logger = logging.getLogger(usecase_name(__file__))
HELD_OUT = ("valid", "test")


@dataclass
class TaskArguments:
    train_file: str = "{{folder}}/data/train.jsonl"  # repository-relative, or any path
    valid_file: str = "{{folder}}/data/valid.jsonl"
    test_file: str = "{{folder}}/data/test.jsonl"
    system_prompt: str = prepare.DEFAULT_SYSTEM_PROMPT
    beta: float = 0.1  # DPO: how far the policy may move from the reference (higher = closer to the SFT model)
    dpo_learning_rate: float = 5e-4
    dpo_num_train_epochs: float = 2.0
    dpo_max_steps: int = -1  # > 0: stop DPO after this many steps (smoke runs)
    max_new_tokens: int = 64  # chat.py's answer length
    eval_batch_size: int = 8
    early_stopping_patience: int | None = None


def scores(model, tokenizer, splits: dict, args: TaskArguments, desc: str) -> dict:
    """Log-probabilities of the chosen and rejected answers of every held-out pair (the metrics are built on them)."""
    return {s: pair_logps(model, tokenizer, splits[s], args.eval_batch_size, desc=f"{desc} ({s})") for s in HELD_OUT}


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args, model_args, training_args = parse_config((TaskArguments, ModelArguments, SFTConfig), argv,
                                                   default_config=HERE / "config.yaml")
    hw, clock = detect(), Stopwatch()  # clock: wall time per phase, in the report
    out = Path(training_args.output_dir)

    # 1. Data: every pair checked before any model loads; the pairs used are kept with the run
    splits = prepare.load_splits({s: getattr(args, f"{s}_file") for s in ("train", *HELD_OUT)}, args.system_prompt)
    tokenizer = load_tokenizer(model_args.model_name_or_path, training_args.trust_remote_code)
    claim(out, to_dict(args, model_args, training_args))  # this run's folder: a restart must use the same settings
    write_jsonl_splits(splits, out / "data")

    def pairs(split: str) -> Dataset:
        return Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in splits[split]])

    def sft_rows(split: str) -> Dataset:  # stage 1 learns the chosen answers (loss on the answer only)
        return Dataset.from_list([{"prompt": r["prompt"], "completion": r["chosen"]} for r in splits[split]])
    clock.lap("data")

    # 2. The base model, scored before any training
    model = load_causal_lm(model_args, training_args.trust_remote_code, hw)
    logps = {"base": scores(model, tokenizer, splits, args, "base")}
    clock.lap("base_evaluation")

    # 3. Stage 1, SFT: LoRA on the chosen answers, then folded into the weights -- DPO's starting point and reference
    sft_args = dataclasses.replace(training_args, output_dir=str(out / "sft"))
    trainer = build_sft_trainer(model, tokenizer, sft_args, sft_rows("train"), sft_rows("valid"),
                                peft_config(model_args, model), early_stopping_patience=args.early_stopping_patience)
    sft_stats = train_and_measure(trainer)
    sft_model = merge_adapter(trainer.model)
    clock.lap("training")
    logps["sft"] = scores(sft_model, tokenizer, splits, args, "sft")
    clock.lap("sft_evaluation")

    # 4. Stage 2, DPO: a fresh LoRA adapter on the SFT model; the adapter switched off is the reference
    dpo_args = dpo_config_from(training_args, str(out / "dpo"), beta=args.beta, learning_rate=args.dpo_learning_rate,
                               num_train_epochs=args.dpo_num_train_epochs, max_steps=args.dpo_max_steps,
                               max_length=training_args.max_length)
    trainer = build_dpo_trainer(sft_model, tokenizer, dpo_args, pairs("train"), pairs("valid"),
                                peft_config(model_args, sft_model), early_stopping_patience=args.early_stopping_patience)
    dpo_stats = train_and_measure(trainer)
    clock.lap("training")
    logps["dpo"] = scores(trainer.model, tokenizer, splits, args, "dpo")
    clock.lap("dpo_evaluation")

    # 5. Save: the DPO adapter folded into the SFT weights (checked to give the same logits) for chat.py
    (out / "inference.json").write_text(json.dumps(
        {"system_prompt": args.system_prompt, "max_new_tokens": args.max_new_tokens}, indent=2))
    merge_diff = merge_and_export(
        trainer.model, tokenizer, out / "merged", [r["prompt"] for r in splits["test"][:4]],
        card={"task": "{{title}}", "usecase": "{{folder}}", "base_model": model_args.model_name_or_path,
              "tags": ["lora", "dpo"]})
    tokenizer.save_pretrained(out)
    clock.lap("export")

    # 6. Report: every stage scored against the same reference (the SFT model), on the held-out pairs
    metrics = {stage: {s: pair_metrics(logps[stage][s], logps["sft"][s], args.beta) for s in HELD_OUT}
               for stage in logps}
    report = {
        "usecase": usecase_name(__file__), "model": model_args.model_name_or_path,
        "method": "SFT (LoRA), then DPO (LoRA, SFT model as reference)",
        "hardware": hw.describe(training_precision(training_args)),
        "train": {**{k: dpo_stats[k] for k in ("throughput", "trainable_parameters", "total_parameters")},
                  "seconds": round(sft_stats["seconds"] + dpo_stats["seconds"], 3),
                  "peak_memory_mb": max(sft_stats["peak_memory_mb"], dpo_stats["peak_memory_mb"]),
                  "merge_max_abs_logit_diff": merge_diff, "sft": sft_stats, "dpo": dpo_stats},
        "primary_metric": "preference_accuracy",
        "metrics": {"before": metrics["base"]["test"], "after": metrics["dpo"]["test"]},  # held-out test pairs
        "metrics_sft": metrics["sft"]["test"],
        "metrics_validation": {"before": metrics["base"]["valid"], "after": metrics["dpo"]["valid"]},
        "scoring": f"preference_accuracy: share of held-out pairs with r(chosen) > r(rejected) (ties: half), "
                   f"r = beta * (log p - log p_SFT), beta={args.beta}; likelihood_accuracy: share where the model "
                   "itself gives the chosen answer the higher log-probability",
        "data": {name: len(rows) for name, rows in splits.items()},
        "config": to_dict(args, model_args), "phases": clock.summary(),
    }
    write_report(out, report, trainer.state.log_history)
    logger.info("preference accuracy %.3f -> %.3f; report: %s", report["metrics"]["before"]["preference_accuracy"],
                report["metrics"]["after"]["preference_accuracy"], out / "REPORT.md")
    return report["metrics"]


if __name__ == "__main__":
    run_main(main)
