"""Teach a small chat model to answer symptom questions safely: SFT on good answers, then DPO on preference pairs.

    python usecase-medical/train.py                                   # both stages, CPU default, embedded SmolLM2-135M
    python usecase-medical/train.py --stage sft --output_dir runs/med  # stage 1 only; --stage dpo continues from it
    python usecase-medical/train.py --beta 0.5 --output_dir runs/med-beta0.5
    accelerate launch usecase-medical/train.py --config usecase-medical/config.gpu.yaml

Steps: parse config -> build and validate the preference pairs -> evaluate the base model -> stage 1, SFT (LoRA) on
the chosen answers -> evaluate -> merge the SFT adapter -> stage 2, DPO with a fresh LoRA adapter (its reference:
the SFT model = the adapter switched off) -> evaluate -> the triage check (a probe on the DPO model's hidden
states decides red flag or not; answers follow it) -> report (base -> SFT -> DPO) -> save.
Each stage checkpoints into OUTPUT_DIR/sft or OUTPUT_DIR/dpo and resumes from there if the run is killed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset
from peft import PeftModel
from trl import SFTConfig

from common.config import ModelArguments, parse_config, peft_config, to_dict
from common.data import write_jsonl_splits
from common.errors import ConfigError, run_main
from common.export import merge_and_export
from common.hardware import detect, training_precision
from common.models import load_causal_lm, load_tokenizer
from common.paths import load_sibling, repo_path
from common.preference import build_dpo_trainer, dpo_config_from, merge_adapter
from common.report import Stopwatch, write_report
from common.run_folder import claim
from common.train import build_sft_trainer, train_and_measure

prepare = load_sibling(__file__, "prepare_data")  # conditions -> preference pairs, validated
scoring = load_sibling(__file__, "scoring")  # preference metrics, escalation rule, the report
checks = load_sibling(__file__, "checks")  # settings that cannot work stop the run before any model loads
triage = load_sibling(__file__, "triage")  # the red-flag probe on the model's own hidden states
logger = logging.getLogger("medical")


@dataclass
class MedicalArguments:
    stage: str = "all"  # all | sft | dpo (dpo continues from OUTPUT_DIR/sft)
    conditions_file: str = "usecase-medical/data/conditions.yaml"
    extra_conditions_file: str | None = None  # more conditions, same fields, added to the bundled ones
    train_file: str | None = None  # your own pairs instead (JSONL or hub "name:split"; see prepare_data.py)
    valid_file: str | None = None
    test_file: str | None = None
    system_prompt: str = prepare.SYSTEM_PROMPT
    max_conditions: int | None = None  # the first N red-flag and N everyday training conditions (reduced runs)
    max_eval_conditions: int | None = None  # the same for the validation and test splits
    failures: list[str] | None = None  # keep only these rejected kinds (reduced runs; None: all five)
    general_questions_file: str = "usecase-medical/data/general_knowledge.yaml"
    general_other_file: str | None = "usecase-medical/data/general_other.yaml"
    max_general_questions: int | None = None
    beta: float = 0.1  # DPO: how far the policy may move from the reference (higher = closer to the SFT model)
    dpo_learning_rate: float = 5e-4
    dpo_num_train_epochs: float = 1.0
    dpo_max_steps: int = -1  # > 0: stop DPO after this many steps (smoke runs)
    dpo_loss_type: list[str] | None = None  # TRL DPOConfig.loss_type; None: TRL's ["sigmoid"] (plain DPO)
    dpo_loss_weights: list[float] | None = None  # one weight per loss type, e.g. [1.0, 1.0] for ["sigmoid", "sft"]
    early_stopping_patience: int | None = None
    max_new_tokens: int = 72
    general_max_new_tokens: int = 48
    eval_batch_size: int = 16
    export_merged: bool = True
    triage: bool = True  # fit the red-flag probe on the DPO model and make its answers follow it (triage.py)
    triage_retries: int = 3  # everyday question answered with an escalation: re-open the answer up to N times


def _stage_stats(folder: Path, stats: dict | None = None) -> dict | None:
    """Training figures of a finished stage, kept beside its adapter (a later `--stage dpo` run reports them)."""
    path = folder / "train_stats.json"
    if stats is not None:
        path.write_text(json.dumps(stats, indent=2))
    return json.loads(path.read_text()) if path.exists() else None


def main(argv: list[str] | None = None) -> dict | None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args, model_args, training_args = parse_config(
        (MedicalArguments, ModelArguments, SFTConfig), argv, default_config=repo_path("usecase-medical/config.yaml"))
    checks.check_arguments(args, model_args, training_args)
    hw, clock = detect(), Stopwatch()
    logger.info("hardware: %s", hw.describe(training_precision(training_args)))
    out = Path(training_args.output_dir)

    # 1. Data: preference pairs, validated (schema, no prompt in two splits) before any model loads
    splits = prepare.load_splits(args.conditions_file, args.system_prompt, {
        "train": args.train_file, "valid": args.valid_file, "test": args.test_file},
        args.max_conditions, args.max_eval_conditions, args.failures, args.extra_conditions_file)
    questions = {s: prepare.questions(rows) for s, rows in splits.items()}
    general_sets = {k: scoring.read_general(repo_path(v), args.max_general_questions) for k, v in
                    {"general": args.general_questions_file, "general_other": args.general_other_file}.items() if v}
    tokenizer = load_tokenizer(model_args.model_name_or_path, training_args.trust_remote_code)
    checks.check_max_length(tokenizer, splits, training_args.max_length)
    # the output folder is this run's: its settings saved (a restart must match them), a second run locked out
    claim(out, to_dict(args, model_args, training_args))
    write_jsonl_splits(splits, out / "data")

    def pairs(split):
        return Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in splits[split]])
    sft_train, sft_valid = (Dataset.from_list(prepare.sft_rows(splits[s])) for s in ("train", "valid"))
    clock.lap("data")

    # 2. The base model, evaluated before any training (cached in OUTPUT_DIR: a resumed run reuses it)
    model = load_causal_lm(model_args, training_args.trust_remote_code, hw)
    evals = {"base": scoring.evaluate(model, tokenizer, splits, questions, general_sets, args, "base",
                                      out / "eval_base.json")}
    clock.lap("base_evaluation")

    # 3. Stage 1, SFT: LoRA on the chosen answers (completion-only loss); resumes from OUTPUT_DIR/sft/checkpoint-*
    sft_dir = out / "sft"
    if (sft_dir / "adapter_model.safetensors").exists():  # finished earlier: reuse it
        model = PeftModel.from_pretrained(model, sft_dir)
        sft_stats = _stage_stats(sft_dir)
    else:
        if args.stage == "dpo":
            raise ConfigError(f"--stage dpo needs a finished SFT stage in {sft_dir}: run --stage sft first")
        sft_args = dataclasses.replace(training_args, output_dir=str(sft_dir))
        trainer = build_sft_trainer(model, tokenizer, sft_args, sft_train, sft_valid, peft_config(model_args, model),
                                    early_stopping_patience=args.early_stopping_patience)
        sft_stats = _stage_stats(sft_dir, {**train_and_measure(trainer), "rows": len(sft_train)})
        trainer.save_model(str(sft_dir))
        model, sft_log = trainer.model, trainer.state.log_history
        (sft_dir / "log_history.json").write_text(json.dumps(sft_log))
    clock.lap("training")
    evals["sft"] = scoring.evaluate(model, tokenizer, splits, questions, general_sets, args, "sft", out / "eval_sft.json")
    clock.lap("sft_evaluation")
    if args.stage == "sft":
        logger.info("SFT stage done: %s (continue with --stage dpo --output_dir %s)", sft_dir, out)
        return None

    # 4. Stage 2, DPO: fold the SFT adapter into the weights, train a fresh LoRA adapter; the reference is the
    #    adapter switched off = the SFT model, with no second copy in memory
    sft_model = merge_adapter(model)
    dpo_args = dpo_config_from(training_args, str(out / "dpo"), beta=args.beta, learning_rate=args.dpo_learning_rate,
                               num_train_epochs=args.dpo_num_train_epochs, max_steps=args.dpo_max_steps,
                               max_length=training_args.max_length, loss_type=args.dpo_loss_type or ["sigmoid"],
                               loss_weights=args.dpo_loss_weights)
    trainer = build_dpo_trainer(sft_model, tokenizer, dpo_args, pairs("train"), pairs("valid"),
                                peft_config(model_args, sft_model), early_stopping_patience=args.early_stopping_patience)
    dpo_stats = {**train_and_measure(trainer), "pairs": len(splits["train"])}
    clock.lap("training")

    # 5. DPOTrainer's own rewards/* metrics on the test pairs; save the DPO adapter, then fold it in (a merged
    #    model for chat.py, checked against adapter + weights) and run the same evaluation as for base and SFT
    trl_test = trainer.evaluate(pairs("test"), metric_key_prefix="test")
    trainer.save_model(str(out / "dpo"))
    tokenizer.save_pretrained(out)
    if args.export_merged:
        dpo_stats["merge_max_abs_logit_diff"] = merge_and_export(
            trainer.model, tokenizer, out / "merged", [q["prompt"] for q in questions["test"][:4]],
            card={"task": "Symptom questions with red-flag escalation (tutorial model; not medical advice)",
                  "usecase": "usecase-medical", "base_model": model_args.model_name_or_path, "tags": ["lora", "dpo"],
                  "data": "usecase-medical/data/conditions.yaml (CC0)",
                  "eval_dataset": "questions about unseen conditions (test split)",
                  "limits": "not medical advice. The run's metrics include the triage check, which runs in Python "
                            "(usecase-medical/chat.py) around these weights."})
    dpo_model = merge_adapter(trainer.model)  # generation without the adapter's extra matmuls
    evals["dpo"] = scoring.evaluate(dpo_model, tokenizer, splits, questions, general_sets, args, "dpo",
                                    out / "eval_dpo.json")
    clock.lap("dpo_evaluation")

    # 6. The triage check: a logistic regression on the DPO model's hidden states, fit on the training questions'
    #    red_flag labels (its layer chosen on validation); the answers then follow its decision
    (out / triage.Triage.FILE).unlink(missing_ok=True)
    probe, info = (triage.fit(dpo_model, tokenizer, questions["train"], questions["valid"],
                              batch_size=args.eval_batch_size) if args.triage else (None, {"skipped": "triage: false"}))
    if probe is not None:
        probe.save(out, info)
        evals["dpo"]["triage"] = {s: triage.answer(dpo_model, tokenizer, [q["prompt"] for q in questions[s]], probe,
                                                   args.max_new_tokens, args.triage_retries, args.eval_batch_size,
                                                   greedy=evals["dpo"]["answers"][s]) for s in ("valid", "test")}
        evals["dpo"]["triage_info"] = {**info, "threshold": probe.threshold}
        (out / "eval_dpo.json").write_text(json.dumps(evals["dpo"]))
    logger.info("triage check: %s", {k: v for k, v in info.items() if k != "validation_log_loss_by_layer"})
    clock.lap("triage")

    # 7. The predictions and the report
    (out / "inference.json").write_text(json.dumps(
        {"system_prompt": args.system_prompt, "max_new_tokens": args.max_new_tokens,
         "triage_retries": args.triage_retries}, indent=2))
    scoring.write_predictions(out / "predictions.jsonl", questions["test"], evals)
    report = scoring.build_report(
        evals, questions, general_sets, args.beta,
        model=model_args.model_name_or_path, method="SFT (LoRA), then DPO (LoRA, SFT model as reference)",
        hardware=hw.describe(training_precision(training_args)),
        train={**{k: dpo_stats[k] for k in ("throughput", "trainable_parameters", "total_parameters")},
               "seconds": round((sft_stats or {}).get("seconds", 0) + dpo_stats["seconds"], 3),
               "peak_memory_mb": max((sft_stats or {}).get("peak_memory_mb", 0), dpo_stats["peak_memory_mb"]),
               "sft": sft_stats, "dpo": dpo_stats},
        dpo_trainer_test_metrics={k: v for k, v in trl_test.items() if "rewards" in k or k == "test_loss"},
        triage=evals["dpo"].get("triage_info", info),
        data={s: {"pairs": len(r), "questions": len(questions[s]), "conditions": len({x["condition"] for x in r})}
              for s, r in splits.items()},
        config=to_dict(args, model_args))
    if "merge_max_abs_logit_diff" in dpo_stats:
        report["train"]["merge_max_abs_logit_diff"] = dpo_stats["merge_max_abs_logit_diff"]
    clock.lap("report")
    report["phases"] = clock.summary()
    write_report(out, report, trainer.state.log_history, sections=scoring.report_sections(report, questions, evals))
    logger.info("report: %s", out / "REPORT.md")
    return report["metrics"]


if __name__ == "__main__":
    run_main(main)
