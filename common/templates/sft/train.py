"""{{title}}: fine-tune a small chat model on question -> answer conversations (SFT + LoRA), measured before -> after.

    python {{folder}}/train.py --output_dir runs/{{name}}                 # config.yaml: embedded SmolLM2-135M, CPU
    python {{folder}}/train.py --num_train_epochs 4 --output_dir runs/{{name}}-quick
    python {{folder}}/train.py --config {{folder}}/config.smoke.yaml --output_dir /tmp/{{name}}-smoke

Steps: parse config -> load and check the data -> evaluate the base model -> LoRA fine-tune (loss on the answer only,
best checkpoint by validation loss, resume if killed) -> evaluate again with the same code -> save the adapter (and a
merged model) -> report (report.json, REPORT.md, plots).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset
from trl import SFTConfig

from common.config import ModelArguments, parse_config, peft_config, to_dict
from common.data import messages_to_prompt_completion, write_jsonl_splits
from common.errors import run_main
from common.evaluation import completion_perplexity, generate_chat, key_terms_accuracy
from common.export import merge_and_export
from common.hardware import detect, training_precision
from common.models import load_causal_lm, load_tokenizer
from common.paths import load_sibling, usecase_name
from common.report import Stopwatch, write_report
from common.run_folder import claim
from common.train import build_sft_trainer, train_and_measure

HERE = Path(__file__).resolve().parent
prepare = load_sibling(__file__, "prepare_data")  # load and check the rows
logger = logging.getLogger(usecase_name(__file__))


@dataclass
class TaskArguments:
    train_file: str = "{{folder}}/data/train.jsonl"  # repository-relative, or any path
    valid_file: str = "{{folder}}/data/valid.jsonl"
    test_file: str = "{{folder}}/data/test.jsonl"
    system_prompt: str = prepare.DEFAULT_SYSTEM_PROMPT
    max_new_tokens: int = 48
    eval_batch_size: int = 16
    early_stopping_patience: int | None = 2
    export_merged: bool = True  # also save the adapter folded into the base weights (merged/)


def evaluate(model, tokenizer, splits: dict, args: TaskArguments, desc: str) -> dict:
    """Greedy answers to the held-out questions; ``answer_accuracy``: share whose answer holds every key term."""
    results = {}
    for split in ("valid", "test"):
        prompts = [r["messages"][:-1] for r in splits[split]]
        answers = generate_chat(model, tokenizer, prompts, args.max_new_tokens, args.eval_batch_size,
                                desc=f"{desc} ({split})", cache=True)
        references = [r["messages"][-1]["content"] for r in splits[split]]
        results[split] = {"answer_accuracy": key_terms_accuracy(answers, [r["key_terms"] for r in splits[split]]),
                          "answer_perplexity": completion_perplexity(model, tokenizer, prompts, references)}
        results[f"{split}_answers"] = answers
    return results


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args, model_args, training_args = parse_config((TaskArguments, ModelArguments, SFTConfig), argv,
                                                   default_config=HERE / "config.yaml")
    hw, clock = detect(), Stopwatch()  # clock: wall time per phase, in the report
    out = Path(training_args.output_dir)

    # 1. Data: every row checked before any model loads; the rows used are kept with the run
    splits = prepare.load_splits({s: getattr(args, f"{s}_file") for s in ("train", "valid", "test")},
                                 args.system_prompt)
    tokenizer = load_tokenizer(model_args.model_name_or_path, training_args.trust_remote_code)
    claim(out, to_dict(args, model_args, training_args))  # this run's folder: a restart must use the same settings
    write_jsonl_splits(splits, out / "data")
    train_ds, valid_ds = (Dataset.from_list([messages_to_prompt_completion(r) for r in splits[s]])
                          for s in ("train", "valid"))
    clock.lap("data")

    # 2. The base model, evaluated before any training
    model = load_causal_lm(model_args, training_args.trust_remote_code, hw)
    base = evaluate(model, tokenizer, splits, args, "base")
    logger.info("base model: answer accuracy %.3f", base["test"]["answer_accuracy"])
    clock.lap("base_evaluation")

    # 3. LoRA fine-tuning on prompt/completion rows: the loss is on the answer (+ end-of-turn) only
    trainer = build_sft_trainer(model, tokenizer, training_args, train_ds, valid_ds, peft_config(model_args, model),
                                early_stopping_patience=args.early_stopping_patience)
    train_stats = train_and_measure(trainer)
    clock.lap("training")

    # 4. The same evaluation on the fine-tuned model (the best checkpoint by validation loss)
    tuned = evaluate(trainer.model, tokenizer, splits, args, "fine-tuned")
    logger.info("fine-tuned: answer accuracy %.3f", tuned["test"]["answer_accuracy"])
    clock.lap("after_evaluation")

    # 5. Save: adapter + tokenizer + the settings chat.py answers with (+ a merged model, checked against them)
    trainer.save_model(str(out))
    tokenizer.save_pretrained(out)
    (out / "inference.json").write_text(json.dumps(
        {"system_prompt": args.system_prompt, "max_new_tokens": args.max_new_tokens}, indent=2))
    if args.export_merged and model_args.use_peft:
        train_stats["merge_max_abs_logit_diff"] = merge_and_export(
            trainer.model, tokenizer, out / "merged", [r["messages"][:-1] for r in splits["test"][:4]],
            card={"task": "{{title}}", "usecase": "{{folder}}", "base_model": model_args.model_name_or_path,
                  "primary_metric": "answer_accuracy", "metrics_before": base["test"], "metrics": tuned["test"]})
    with (out / "predictions.jsonl").open("w", encoding="utf-8") as f:
        for row, before, after in zip(splits["test"], base["test_answers"], tuned["test_answers"]):
            f.write(json.dumps({"question": row["messages"][-2]["content"], "reference": row["messages"][-1]["content"],
                                "key_terms": row["key_terms"], "base": before, "fine_tuned": after}) + "\n")
    clock.lap("export")

    report = {
        "usecase": usecase_name(__file__), "model": model_args.model_name_or_path,
        "method": "SFT + LoRA" if model_args.use_peft else "SFT (full)",
        "hardware": hw.describe(training_precision(training_args)),
        "train": {**train_stats, "rows": len(train_ds)},
        "primary_metric": "answer_accuracy",
        "metrics": {"before": base["test"], "after": tuned["test"]},  # held-out test split
        "metrics_validation": {"before": base["valid"], "after": tuned["valid"]},
        "scoring": "answer_accuracy: share of held-out questions whose greedy answer contains every key term; "
                   "answer_perplexity: perplexity of the reference answers",
        "data": {name: len(rows) for name, rows in splits.items()},
        "config": to_dict(args, model_args), "phases": clock.summary(),
    }
    write_report(out, report, trainer.state.log_history)
    logger.info("report: %s", out / "REPORT.md")
    return report["metrics"]


if __name__ == "__main__":
    run_main(main)
