"""Fine-tune a small chat model into a product support bot (SFT + LoRA), and measure it before -> after.

    python usecase-chatbot/train.py                                   # CPU default, embedded SmolLM2-135M
    python usecase-chatbot/train.py --num_train_epochs 3 --output_dir runs/quick
    accelerate launch usecase-chatbot/train.py --config usecase-chatbot/config.gpu.yaml

Steps: parse config -> build data from the help center -> evaluate the base model -> LoRA fine-tune
(completion-only loss, early stopping on eval loss, best checkpoint kept, resume if killed) -> evaluate again
-> report (report.json, REPORT.md, plots) -> save the adapter (and a merged model).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from datasets import concatenate_datasets
from trl import SFTConfig

from common.config import ModelArguments, parse_config, peft_config, to_dict
from common.data import load_dataset_validated, messages_to_prompt_completion, read_text, write_jsonl_splits
from common.errors import run_main
from common.evaluation import retention
from common.export import merge_and_export
from common.hardware import detect, is_main_process, training_precision
from common.models import load_causal_lm, load_tokenizer
from common.paths import load_sibling, repo_path
from common.report import Stopwatch, write_report
from common.run_folder import claim
from common.train import build_sft_trainer, train_and_measure

prepare = load_sibling(__file__, "prepare_data")  # help center -> conversations; replay rows
scoring = load_sibling(__file__, "scoring")  # fact accuracy, retention, the report
checks = load_sibling(__file__, "checks")  # settings that cannot work stop the run before any model loads
routing = load_sibling(__file__, "router")  # product questions -> the adapter, the rest -> the base weights
logger = logging.getLogger("chatbot")


@dataclass
class ChatbotArguments:
    docs_file: str = "usecase-chatbot/data/help_center.md"  # repository-relative, or any path
    questions_file: str = "usecase-chatbot/data/questions.yaml"
    general_questions_file: str = "usecase-chatbot/data/general_knowledge.yaml"
    general_other_file: str | None = "usecase-chatbot/data/general_other.yaml"  # other question shapes (test)
    general_other_valid_file: str | None = "usecase-chatbot/data/general_other_valid.yaml"  # ... (validation)
    unanswerable_file: str | None = None  # questions the docs do not answer (data/unanswerable.yaml): abstention
    train_declines: bool = False  # also train on its training questions with the decline answer (off by default)
    max_unanswerable: int | None = None  # the first N unanswerable questions of each split (None: all)
    abstention_gate: bool = True  # decline ungrounded or unsure answers (needs unanswerable_file; see README)
    max_false_abstention: float = 0.05  # the gate declines at most this share of answerable validation questions
    abstention_relevance: bool = False  # the gate also declines answers sharing no content word with the question
    abstention_redraw_samples: int = 8  # an answer naming what the docs never use is re-drawn from N samples (0: declined)
    abstention_grounding: float | None = 0.9  # ... and an answer restating no statement that closely (ROUGE-L; None: off)
    replay_questions_file: str | None = "usecase-chatbot/data/replay_questions.yaml"  # None: no replay
    num_replay_questions: int | None = None  # the first N replay questions (None: all)
    replay_sentences: int = 1  # keep the first N sentences of each replay answer (0: all of it)
    replay_with_system_prompt: bool = True  # ask every other replay question under system_prompt
    replay_loss: str = "kl"  # "kl": match the base model's next-token distribution; "ce": learn its answer text
    replay_kl_weight: float = 1.0  # weight of a replay token's KL against a product token's cross-entropy
    system_prompt: str = "You are the Brightboard support assistant."
    router: bool = False  # general questions answered by the base weights (adapter off); fitted on validation
    max_facts: int | None = None  # the first N statements of the docs only (reduced runs; None: all)
    max_general_questions: int | None = None  # the first N of each general set (reduced runs; None: all)
    max_train_rows: int | None = None  # cap for quick experiments
    early_stopping_patience: int | None = 2
    max_new_tokens: int = 48
    eval_batch_size: int = 16
    export_merged: bool = True


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args, model_args, training_args = parse_config(
        (ChatbotArguments, ModelArguments, SFTConfig), argv, default_config=repo_path("usecase-chatbot/config.yaml"))
    checks.check_arguments(args, model_args, training_args)
    hw, clock = detect(), Stopwatch()  # clock: wall time per phase, in the report
    logger.info("hardware: %s", hw.describe(training_precision(training_args)))
    out = Path(training_args.output_dir)

    # 1. Data: help center -> conversations (+ declines for what it does not say), general and replay questions,
    #    all checked before anything is written
    splits = prepare.build_splits(repo_path(args.docs_file), repo_path(args.questions_file), args.system_prompt,
                                  seed=training_args.data_seed or 0, max_facts=args.max_facts,
                                  unanswerable_file=args.unanswerable_file and repo_path(args.unanswerable_file),
                                  max_unanswerable=args.max_unanswerable, train_declines=args.train_declines)
    general_sets = {"general": args.general_questions_file, "general_other": args.general_other_file,
                    "general_other_valid": args.general_other_valid_file}
    general_sets = {k: prepare.read_question_list(repo_path(v), True, args.max_general_questions)
                    for k, v in general_sets.items() if v}
    replay_questions = (prepare.read_question_list(repo_path(args.replay_questions_file), False,
                                                   args.num_replay_questions) if args.replay_questions_file else [])
    # the tokenizer (seconds; a missing model path stops here) measures the rows against max_length
    tokenizer = load_tokenizer(model_args.model_name_or_path, training_args.trust_remote_code)
    checks.check_max_length(tokenizer, splits, training_args.max_length)

    main = is_main_process()  # under accelerate launch: every process trains; the main one evaluates and writes
    # the output folder is this run's: its settings saved (a restart must match them), a second run locked out
    claim(out, to_dict(args, model_args, training_args))
    with training_args.main_process_first(desc="data"):
        files = write_jsonl_splits(splits, out / "data", write=main)
    train_ds, _ = load_dataset_validated(files["train"], "messages")
    valid_ds, _ = load_dataset_validated(files["valid"], "messages")
    if args.max_train_rows:
        train_ds = train_ds.select(range(min(args.max_train_rows, len(train_ds))))
    train_ds = train_ds.map(messages_to_prompt_completion, remove_columns=train_ds.column_names)
    valid_ds = valid_ds.map(messages_to_prompt_completion, remove_columns=valid_ds.column_names)
    clock.lap("data")

    # 2. Base model, evaluated before any training (test, validation and general questions)
    model = load_causal_lm(model_args, training_args.trust_remote_code, hw)
    base = None
    if main:  # the other processes of a multi-process run only train
        base = scoring.evaluate(model, tokenizer, splits, general_sets, args, "base")
        logger.info("base model: fact accuracy %.3f", base["test"]["fact_accuracy"])
    clock.lap("base_evaluation")

    # Replay: the base model's own answers to unrelated general prompts join the training data, so that
    # fine-tuning keeps its general behaviour (limits catastrophic forgetting; see README).
    n_replay = 0
    if replay_questions:
        replay = prepare.build_replay(model, tokenizer, replay_questions, args.system_prompt,
                                      args.replay_with_system_prompt, args.replay_sentences, args.max_new_tokens,
                                      args.eval_batch_size)
        if main:
            replay.to_json(out / "data" / "replay.jsonl")  # kept beside the other splits, for inspection
        n_replay = len(replay)
        train_ds = train_ds.add_column("replay", [False] * len(train_ds))
        train_ds = concatenate_datasets([train_ds, replay]).shuffle(seed=training_args.data_seed or 0)
    kl_weight = args.replay_kl_weight if n_replay and args.replay_loss == "kl" else None
    clock.lap("replay_answers")

    # 3. LoRA fine-tuning (resumes from the last checkpoint in output_dir if one exists)
    trainer = build_sft_trainer(model, tokenizer, training_args, train_ds, valid_ds, peft_config(model_args, model),
                                early_stopping_patience=args.early_stopping_patience, replay_kl_weight=kl_weight)
    train_stats = train_and_measure(trainer)
    clock.lap("training")
    if not main:
        return {}

    # 4. The same evaluation on the fine-tuned model (best checkpoint by validation loss)
    tuned = scoring.evaluate(trainer.model, tokenizer, splits, general_sets, args, "fine-tuned",
                             with_logprobs=args.abstention_gate)
    logger.info("fine-tuned: fact accuracy %.3f", tuned["test"]["fact_accuracy"])
    # The abstention gate: a question or answer naming what the docs never mention, or an answer the model was
    # unsure of, becomes the decline. It is fixed on the validation questions; the test split is then scored
    # through it, as chat.py answers.
    gate = None
    if args.abstention_gate:
        docs_file = repo_path(args.docs_file)
        gate = scoring.gate_settings(read_text(docs_file),
                                     splits["decline_valid"][0]["messages"][-1]["content"],
                                     args.abstention_relevance, args.abstention_redraw_samples,
                                     list(prepare.read_statements(docs_file).values()), args.abstention_grounding)
        tuned["redrawn"], tuned["logprobs"] = scoring.redraw_all(trainer.model, tokenizer, tuned, splits, gate,
                                                                 args.max_new_tokens, args.eval_batch_size)
        gate = scoring.choose_gate(tuned, splits, gate, args.max_false_abstention)
        tuned = scoring.apply_gate(tuned, splits, gate)
        logger.info("abstention gate: abstention %.3f, false abstention %.3f (test)",
                    tuned["test"].get("abstention_rate", float("nan")), tuned["test"]["false_abstention_rate"])
    # The router (router.py): a probe on the fine-tuned model's hidden states sends product questions to the
    # adapter and the gate, and everything else to the base weights (adapter off): the base model's own answers.
    router, router_info = None, None
    if args.router:
        router, routes, router_info = routing.fit_and_route(trainer.model, tokenizer, splits, general_sets,
                                                            replay_questions, args.system_prompt)
        if router is not None:
            tuned = routing.apply(tuned, base, routes, splits)
            router_info["retention_adapter_only"] = {
                name: retention(qs, base["answers"][name], tuned["answers_adapter"][name])["retention"]
                for name, qs in general_sets.items()}
            logger.info("router: %s sent to the base model", router_info["sent_to_base_model"])
    clock.lap("after_evaluation")

    # 5. Save: adapter + tokenizer (+ a merged model checked against base + adapter), then the report
    trainer.save_model(str(out))
    tokenizer.save_pretrained(out)
    (out / routing.Router.FILE).unlink(missing_ok=True)  # a router an earlier run left in this folder
    if router is not None:
        router.save(out)
    (out / "inference.json").write_text(json.dumps(
        {"system_prompt": args.system_prompt, "max_new_tokens": args.max_new_tokens,
         "abstention_gate": gate and {k: gate[k] for k in ("threshold", "relevance", "redraw_samples", "decline",
                                                           "grounding", "vocabulary", "statements")}}, indent=2))
    if args.export_merged and model_args.use_peft:
        train_stats["merge_max_abs_logit_diff"] = merge_and_export(
            trainer.model, tokenizer, out / "merged", [r["messages"][:-1] for r in splits["test"][:4]],
            card={"task": "Brightboard support chatbot", "usecase": "usecase-chatbot",
                  "base_model": model_args.model_name_or_path, "primary_metric": "fact_accuracy",
                  "metrics_before": base["test"], "metrics": tuned["test"],
                  "eval_dataset": "Brightboard questions, unseen phrasings (test split)",
                  "data": "usecase-chatbot/data/help_center.md (fictional product, Apache-2.0)",
                  "limits": "the metrics include the abstention gate and the router, which run in Python around "
                            "these weights (usecase-chatbot/chat.py); the weights alone, and their GGUF / Ollama "
                            "export, answer without them. Trained on one fictional product's help docs."})
    scoring.write_predictions(out / "predictions.jsonl", splits["test"], base["answers"]["test"],
                              tuned["answers"]["test"], tuned.get("answers_ungated", {}).get("test"),
                              gate and gate["decline"], tuned.get("answers_adapter", {}).get("test"))
    clock.lap("export")
    report = scoring.build_report(
        base, tuned, general_sets, splits,
        model=model_args.model_name_or_path, method="SFT + LoRA" if model_args.use_peft else "SFT (full)",
        hardware=hw.describe(training_precision(training_args)),
        train={**train_stats, "rows": len(train_ds), "replay_rows": n_replay},
        config=to_dict(args, model_args), phases=clock.summary(),
        abstention_gate=gate and {**{k: v for k, v in gate.items() if k not in ("vocabulary", "statements")},
                                  "vocabulary_words": len(gate["vocabulary"]), "redraw": scoring.REDRAW,
                                  "redrawn_answers_kept": tuned["redrawn_kept"], "without_gate": tuned["ungated"]},
        router=router_info)
    write_report(out, report, trainer.state.log_history, sections=[
        ("Example answers (held-out phrasings)",
         scoring.examples_table(splits["test"], base["answers"]["test"], tuned["answers"]["test"])),
        ("When the docs do not say (held-out questions)", scoring.declines_table(splits, base, tuned)),
        *([("General questions: the router", routing.summary(router_info))] if router_info else [])])
    logger.info("report: %s", out / "REPORT.md")
    return report["metrics"]


if __name__ == "__main__":
    run_main(main)
