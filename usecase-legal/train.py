"""Fine-tune a small chat model to summarize contract clauses in plain English, keeping every fact (SFT + LoRA).

    python usecase-legal/train.py                                     # CPU default, embedded SmolLM2-135M
    python usecase-legal/train.py --num_train_epochs 2 --output_dir runs/legal-quick
    python usecase-legal/train.py --train_file my_clauses.jsonl --output_dir runs/my-legal   # your own data
    accelerate launch usecase-legal/train.py --config usecase-legal/config.gpu.yaml

Steps: parse config -> build and check the clause/summary data -> evaluate the base model -> LoRA fine-tune
(loss on the summary only, best checkpoint by validation loss, resume if killed) -> evaluate again (fact recall,
invented facts, ROUGE, length) -> report (report.json, REPORT.md, plots) -> save the adapter and a merged model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset
from trl import SFTConfig

from common.config import ModelArguments, parse_config, peft_config, to_dict
from common.data import write_jsonl_splits
from common.errors import ConfigError, run_main
from common.export import merge_and_export
from common.hardware import detect, training_precision
from common.models import load_causal_lm, load_tokenizer
from common.paths import load_sibling, repo_path
from common.report import Stopwatch, write_report
from common.run_folder import claim
from common.train import build_sft_trainer, train_and_measure

prepare = load_sibling(__file__, "prepare_data")  # templates -> clauses; your files; all checked
scoring = load_sibling(__file__, "scoring")  # prompt, fact recall, invented facts, ROUGE, the report
logger = logging.getLogger("legal")


@dataclass
class LegalArguments:
    templates_file: str = "usecase-legal/data/templates.yaml"  # generated clauses (13 types)
    train_per_template: int = 9  # clauses generated from each training template (config.yaml: chosen on validation)
    valid_per_template: int = 2
    test_per_template: int = 3
    # "held_out": test clauses in wordings no other split uses; "training": new clauses (held-out parties, amounts,
    # dates) in the training wordings -- the CI tier's check that a short run learns at all (README "Tests")
    test_templates: str = "held_out"
    style_shift_file: str | None = "usecase-legal/data/style_shift.jsonl"  # hand-written test clauses
    handwritten_file: str | None = "usecase-legal/data/handwritten.jsonl"  # lease, employment, licence
    train_file: str | None = None  # your JSONL/CSV (or hub dataset id): replaces the generated clauses
    validation_file: str | None = None
    test_file: str | None = None
    clause_field: str = "clause"  # column names of your data (e.g. a hub dataset's "document")
    summary_field: str = "summary"
    facts_field: str = "facts"
    max_eval_rows: int | None = None  # cap on validation / test / style-shift rows (reduced runs)
    max_valid_rows: int | None = None  # cap on validation rows alone (default: max_eval_rows)
    score_validation: bool = True  # summarize and score the validation clauses too (false: eval loss only)
    system_prompt: str = scoring.DEFAULT_SYSTEM
    max_new_tokens: int = 112
    eval_batch_size: int = 16
    # re-draw a summary that fails the fact check up to this many times (0: greedy only; README "Decoding")
    fact_check_samples: int = scoring.FACT_CHECK["fact_check_samples"]
    sample_temperature: float = scoring.FACT_CHECK["sample_temperature"]  # sampling of the re-drawn candidates
    sample_top_p: float = scoring.FACT_CHECK["sample_top_p"]
    sample_seed: int = scoring.FACT_CHECK["sample_seed"]  # the same seed, clauses and batch size: the same candidates
    early_stopping_patience: int | None = 2
    export_merged: bool = True

    def __post_init__(self):
        if self.fact_check_samples < 0:
            raise ConfigError(f"fact_check_samples must be >= 0 (0 turns the fact check off), got "
                              f"{self.fact_check_samples}")
        if self.sample_temperature <= 0 or not 0 < self.sample_top_p <= 1:
            raise ConfigError(f"sample_temperature must be > 0 and sample_top_p in (0, 1], got "
                              f"{self.sample_temperature} and {self.sample_top_p}")


def check_lengths(tokenizer, splits: dict, max_length: int, system_prompt: str) -> None:
    """Every training row (prompt + summary) must fit in max_length: a cut summary would teach dropped facts."""
    for name in ("train", "valid"):
        for i, row in enumerate(splits[name], start=1):
            ids = tokenizer.apply_chat_template([*scoring.prompt(row["clause"], system_prompt),
                                                 {"role": "assistant", "content": row["summary"]}], tokenize=True,
                                                return_dict=False)
            if len(ids) > max_length:
                raise ConfigError(f"{name} row {i} ({row['source']}) is {len(ids)} tokens, more than max_length "
                                  f"{max_length}: raise max_length or split the clause")


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args, model_args, training_args = parse_config(
        (LegalArguments, ModelArguments, SFTConfig), argv, default_config=repo_path("usecase-legal/config.yaml"))
    hw, clock = detect(), Stopwatch()  # clock: wall time per phase, in the report
    logger.info("hardware: %s", hw.describe(training_precision(training_args)))
    out = Path(training_args.output_dir)

    # 1. Data: generated clauses (or your files) + the hand-written style-shift set, all checked before any model
    splits = prepare.build_splits(args, seed=training_args.data_seed or 0)
    tokenizer = load_tokenizer(model_args.model_name_or_path, training_args.trust_remote_code)
    check_lengths(tokenizer, splits, training_args.max_length, args.system_prompt)
    # the output folder is this run's: its settings saved (a restart must match them), a second run locked out
    claim(out, to_dict(args, model_args, training_args))
    write_jsonl_splits(splits, out / "data")
    train_ds, valid_ds = (Dataset.from_list([scoring.to_prompt_completion(r, args.system_prompt) for r in splits[s]])
                          for s in ("train", "valid"))
    logger.info("data: %s", {k: len(v) for k, v in splits.items()})
    clock.lap("data")

    # 2. The base model, evaluated before any training (the same code evaluates the fine-tuned one)
    model = load_causal_lm(model_args, training_args.trust_remote_code, hw)
    base = scoring.evaluate(model, tokenizer, splits, args, "base")
    logger.info("base model: fact recall %.3f", base["test"]["fact_recall"])
    clock.lap("base_evaluation")

    # 3. LoRA fine-tuning on prompt/completion rows: the loss is on the summary (+ end-of-turn) only
    trainer = build_sft_trainer(model, tokenizer, training_args, train_ds, valid_ds, peft_config(model_args, model),
                                early_stopping_patience=args.early_stopping_patience)
    train_stats = train_and_measure(trainer)
    clock.lap("training")

    # 4. The same evaluation on the fine-tuned model (best checkpoint by validation loss)
    tuned = scoring.evaluate(trainer.model, tokenizer, splits, args, "fine-tuned")
    logger.info("fine-tuned: fact recall %.3f", tuned["test"]["fact_recall"])
    clock.lap("after_evaluation")

    # 5. Save: adapter + tokenizer + inference settings (+ a merged model checked against base + adapter)
    trainer.save_model(str(out))
    tokenizer.save_pretrained(out)
    (out / "inference.json").write_text(json.dumps(
        {key: getattr(args, key) for key in ("system_prompt", "max_new_tokens", *scoring.FACT_CHECK)}, indent=2))
    if args.export_merged and model_args.use_peft:
        train_stats["merge_max_abs_logit_diff"] = merge_and_export(
            trainer.model, tokenizer, out / "merged",
            [scoring.prompt(r["clause"], args.system_prompt) for r in splits["test"][:4]],
            card={"task": "Plain-English summaries of contract clauses", "usecase": "usecase-legal",
                  "base_model": model_args.model_name_or_path, "primary_metric": "fact_recall",
                  "metrics_before": base["test"], "metrics": tuned["test"],
                  "eval_dataset": "contract clauses (test split)",
                  "data": "usecase-legal/data (generated clauses and hand-written clauses, Apache-2.0)",
                  "limits": "not legal advice; a small model can drop or change a fact: check every summary "
                            "against its clause."})
    scoring.write_predictions(out / "predictions.jsonl", splits, base, tuned)
    clock.lap("export")
    report = scoring.build_report(
        base, tuned, splits, model=model_args.model_name_or_path,
        method="SFT + LoRA" if model_args.use_peft else "SFT (full)",
        hardware=hw.describe(training_precision(training_args)),
        train={**train_stats, "rows": len(train_ds)}, config=to_dict(args, model_args), phases=clock.summary())
    write_report(out, report, trainer.state.log_history, sections=[
        ("Example summaries (held-out clauses)", scoring.examples_table(
            splits["test"], base["summaries"]["test"], tuned["summaries"]["test"])),
        ("Style-shift clauses (phrasings no training clause uses)", scoring.examples_table(
            splits["style_shift"], base["summaries"]["style_shift"], tuned["summaries"]["style_shift"])),
        ("Hand-written documents (lease, employment, software licence)", scoring.examples_table(
            splits["handwritten"], base["summaries"]["handwritten"], tuned["summaries"]["handwritten"]))])
    logger.info("report: %s", out / "REPORT.md")
    return report["metrics"]


if __name__ == "__main__":
    run_main(main)
