"""Fine-tune a small chat model into a product support bot (SFT + LoRA), and measure it before -> after.

    python usecase-chatbot/train.py                                   # CPU default, embedded SmolLM2-135M
    python usecase-chatbot/train.py --num_train_epochs 3 --output_dir runs/quick
    accelerate launch usecase-chatbot/train.py --config usecase-chatbot/config.gpu.yaml

Steps: parse config -> build data from the help center -> evaluate the base model -> LoRA fine-tune
(completion-only loss, early stopping on eval loss, best checkpoint kept, resume if killed) -> evaluate again
-> report (report.json, REPORT.md, plots) -> save the adapter (and a merged model).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from datasets import Dataset, concatenate_datasets
from trl import SFTConfig, get_peft_config

from common.config import ModelArguments, parse_config, to_dict
from common.data import load_dataset_validated, messages_to_prompt_completion
from common.evaluation import completion_perplexity, generate_chat, key_terms_accuracy, key_terms_score
from common.export import merge_and_export
from common.hardware import detect
from common.models import load_causal_lm, load_tokenizer
from common.report import write_report
from common.train import build_sft_trainer, train_and_measure

HERE = Path(__file__).resolve().parent
logger = logging.getLogger("chatbot")


@dataclass
class ChatbotArguments:
    docs_file: str = "usecase-chatbot/data/help_center.md"
    questions_file: str = "usecase-chatbot/data/questions.yaml"
    general_questions_file: str = "usecase-chatbot/data/general_knowledge.yaml"
    replay_questions_file: str | None = "usecase-chatbot/data/replay_questions.yaml"  # None: no replay
    replay_sentences: int = 1  # keep the first N sentences of each replay answer (0: all of it)
    replay_with_system_prompt: bool = True  # ask every other replay question under system_prompt
    replay_loss: str = "kl"  # "kl": match the base model's next-token distribution; "ce": learn its answer text
    replay_kl_weight: float = 1.0  # weight of a replay token's KL against a product token's cross-entropy
    system_prompt: str = "You are the Brightboard support assistant."
    max_train_rows: int | None = None  # cap for quick experiments
    early_stopping_patience: int | None = 2
    max_new_tokens: int = 48
    eval_batch_size: int = 16
    export_merged: bool = True


def first_sentences(text: str, n: int) -> str:
    """The first ``n`` sentences of ``text`` (all of it when ``n`` is 0)."""
    return " ".join(re.split(r"(?<=[.!?])\s+", text.strip())[:n]) if n else text


def find(path: str) -> Path:
    """A path as given, or relative to the repository root (so the script runs from any folder)."""
    return Path(path) if Path(path).exists() else HERE.parent / path


def build_replay(model, tokenizer, args: ChatbotArguments) -> Dataset:
    """The base model's own (first-sentence) answers to the replay questions, as prompt/completion rows.

    Every other question is asked under the bot's own system prompt: general questions must keep their answers
    whatever the system prompt, so the adapter learns to act on product questions only.
    """
    system = [{"role": "system", "content": args.system_prompt}]
    questions = yaml.safe_load(find(args.replay_questions_file).read_text())
    prompts = [(system if i % 2 and args.replay_with_system_prompt else []) + [{"role": "user", "content": q}]
               for i, q in enumerate(questions)]
    answers = generate_chat(model, tokenizer, prompts, args.max_new_tokens, args.eval_batch_size, "base: replay")
    # Short answers: the answer is nearly always in the first sentence, and short rows train faster.
    answers = [first_sentences(a, args.replay_sentences) for a in answers]
    return Dataset.from_list([{"prompt": p, "completion": [{"role": "assistant", "content": a}], "replay": True}
                              for p, a in zip(prompts, answers) if a])


def evaluate(model, tokenizer, test_rows, general, args: ChatbotArguments, tag: str) -> tuple[dict, list, list]:
    """Fact accuracy on held-out phrasings, answer perplexity, and general-knowledge answers."""
    prompts = [r["messages"][:-1] for r in test_rows]
    answers = generate_chat(model, tokenizer, prompts, args.max_new_tokens, args.eval_batch_size, f"{tag}: test")
    general_prompts = [[{"role": "user", "content": g["question"]}] for g in general]
    general_answers = generate_chat(model, tokenizer, general_prompts, args.max_new_tokens,
                                    args.eval_batch_size, f"{tag}: general")
    metrics = {
        "fact_accuracy": key_terms_accuracy(answers, [r["key_terms"] for r in test_rows]),
        "answer_perplexity": completion_perplexity(model, tokenizer, prompts,
                                                   [r["messages"][-1]["content"] for r in test_rows]),
        "general_correct": [key_terms_score(a, g["keys"]) for a, g in zip(general_answers, general)],
    }
    return metrics, answers, general_answers


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    script_args, model_args, training_args = parse_config(
        (ChatbotArguments, ModelArguments, SFTConfig), argv, default_config=HERE / "config.yaml")
    if script_args.replay_loss not in ("kl", "ce"):
        raise ValueError(f"replay_loss must be 'kl' or 'ce', got {script_args.replay_loss!r}")
    if script_args.replay_loss == "kl" and script_args.replay_questions_file and not model_args.use_peft:
        raise ValueError("replay_loss: kl needs use_peft: true (the teacher is the base model with the adapter "
                         "switched off); use replay_loss: ce for full fine-tuning")
    hw = detect()
    logger.info("hardware: %s", hw.describe())
    out = Path(training_args.output_dir)

    # 1. Data: help center -> conversations -> validated datasets (a bad row stops here, before training)
    spec = importlib.util.spec_from_file_location("prepare_data", HERE / "prepare_data.py")
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    splits = prepare.build_splits(find(script_args.docs_file), find(script_args.questions_file),
                                  script_args.system_prompt, seed=training_args.data_seed or 0)
    files = prepare.write_splits(splits, out / "data")
    train_ds, _ = load_dataset_validated(files["train"], "messages")
    valid_ds, _ = load_dataset_validated(files["valid"], "messages")
    if script_args.max_train_rows:
        train_ds = train_ds.select(range(min(script_args.max_train_rows, len(train_ds))))
    train_ds = train_ds.map(messages_to_prompt_completion, remove_columns=train_ds.column_names)
    valid_ds = valid_ds.map(messages_to_prompt_completion, remove_columns=valid_ds.column_names)
    test_rows = splits["test"]
    general = yaml.safe_load(find(script_args.general_questions_file).read_text())

    # 2. Base model, evaluated before any training
    tokenizer = load_tokenizer(model_args.model_name_or_path, training_args.trust_remote_code)
    model = load_causal_lm(model_args, training_args.trust_remote_code, hw)
    before, before_answers, before_general = evaluate(model, tokenizer, test_rows, general, script_args, "base")
    logger.info("base model: fact accuracy %.3f", before["fact_accuracy"])

    # Replay: the base model's own answers to unrelated general prompts join the training data, so that
    # fine-tuning keeps its general behaviour (limits catastrophic forgetting; see README).
    n_replay = 0
    if script_args.replay_questions_file:
        replay = build_replay(model, tokenizer, script_args)
        replay.to_json(out / "data" / "replay.jsonl")  # kept beside the other splits, for inspection
        n_replay = len(replay)
        train_ds = train_ds.add_column("replay", [False] * len(train_ds))
        train_ds = concatenate_datasets([train_ds, replay]).shuffle(seed=training_args.data_seed or 0)
    kl_weight = script_args.replay_kl_weight if n_replay and script_args.replay_loss == "kl" else None

    # 3. LoRA fine-tuning (resumes from the last checkpoint in output_dir if one exists)
    trainer = build_sft_trainer(model, tokenizer, training_args, train_ds, valid_ds, get_peft_config(model_args),
                                early_stopping_patience=script_args.early_stopping_patience,
                                replay_kl_weight=kl_weight)
    train_stats = train_and_measure(trainer)

    # 4. The same evaluation on the fine-tuned model (best checkpoint)
    after, after_answers, after_general_answers = evaluate(trainer.model, tokenizer, test_rows, general, script_args, "fine-tuned")
    logger.info("fine-tuned: fact accuracy %.3f", after["fact_accuracy"])
    base_right = [i for i, ok in enumerate(before.pop("general_correct")) if ok]
    after_general = after.pop("general_correct")
    retention = sum(after_general[i] for i in base_right) / len(base_right) if base_right else float("nan")
    before["general_accuracy"] = len(base_right) / len(general)
    after["general_accuracy"] = sum(after_general) / len(general)
    after["general_retention"] = retention

    # 5. Save: adapter + tokenizer (+ merged model), then the report
    trainer.save_model(str(out))
    tokenizer.save_pretrained(out)
    (out / "inference.json").write_text(json.dumps(
        {"system_prompt": script_args.system_prompt, "max_new_tokens": script_args.max_new_tokens}, indent=2))
    if script_args.export_merged and model_args.use_peft:
        parity = merge_and_export(trainer.model, tokenizer, out / "merged", [r["messages"][:-1] for r in test_rows[:4]],
                                  card={"task": "Brightboard support chatbot", "metrics": after,
                                        "data": "usecase-chatbot/data/help_center.md (fictional product, Apache-2.0)"})
        train_stats["merge_max_abs_logit_diff"] = parity
    with (out / "predictions.jsonl").open("w") as f:  # every held-out answer, before and after, for error analysis
        for r, b, a in zip(test_rows, before_answers, after_answers):
            f.write(json.dumps({"question": r["messages"][1]["content"], "reference": r["messages"][2]["content"],
                                "key_terms": r["key_terms"], "base": b, "fine_tuned": a,
                                "correct": key_terms_score(a, r["key_terms"])}) + "\n")
    examples = "\n".join(
        f"| {r['messages'][1]['content']} | {b} | {a} | {'yes' if key_terms_score(a, r['key_terms']) else 'no'} |"
        for r, b, a in list(zip(test_rows, before_answers, after_answers))[:8])
    report = {
        "usecase": "chatbot",
        "model": model_args.model_name_or_path,
        "method": "SFT + LoRA" if model_args.use_peft else "SFT (full)",
        "hardware": hw.describe(),
        "train": {**train_stats, "rows": len(train_ds), "valid_rows": len(valid_ds)},
        "general_answers": [{"question": g["question"], "base": b, "fine_tuned": a}
                            for g, b, a in zip(general, before_general, after_general_answers)],
        "primary_metric": "fact_accuracy",
        "metrics": {"before": before, "after": after},
        "scoring": "fact_accuracy: share of held-out questions whose answer contains every key term of the fact",
        "data": {"facts": len(valid_ds), "train": len(train_ds), "valid": len(valid_ds), "test": len(test_rows),
                 "replay": n_replay,
                 "general_questions": len(general)},
        "config": to_dict(script_args, model_args),
    }
    write_report(out, report, trainer.state.log_history, sections=[(
        "Example answers (held-out phrasings)",
        "| question | base model | fine-tuned | correct |\n|---|---|---|---|\n" + examples)])
    logger.info("report: %s", out / "REPORT.md")
    return report["metrics"]


if __name__ == "__main__":
    main()
