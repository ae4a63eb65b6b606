"""Settings of the chatbot recipe that cannot work stop the run before any data is written or model loaded.

Each raises :class:`common.errors.ConfigError` naming the key, the allowed range and the value it got.
"""

from __future__ import annotations

from common.errors import ConfigError


def check_arguments(args, model_args, training_args=None) -> None:
    """``args`` (ChatbotArguments), ``model_args`` (ModelArguments) and ``training_args`` (SFTConfig), checked."""
    def need(ok: bool, key: str, allowed: str, value) -> None:
        if not ok:
            raise ConfigError(f"{key} must be {allowed}, got {value!r}")

    if args.replay_loss not in ("kl", "ce"):
        raise ConfigError(f"replay_loss must be 'kl' or 'ce', got {args.replay_loss!r}")
    if args.replay_loss == "kl" and args.replay_questions_file and not model_args.use_peft:
        raise ConfigError("replay_loss: kl needs use_peft: true (the teacher is the base model with the adapter "
                          "switched off); use replay_loss: ce for full fine-tuning")
    need(args.max_new_tokens >= 1, "max_new_tokens", ">= 1", args.max_new_tokens)
    need(args.eval_batch_size >= 1, "eval_batch_size", ">= 1", args.eval_batch_size)
    need(args.replay_sentences >= 0, "replay_sentences", ">= 0 (0: the whole answer)", args.replay_sentences)
    need(args.replay_kl_weight >= 0, "replay_kl_weight", ">= 0", args.replay_kl_weight)
    need(args.abstention_redraw_samples >= 0, "abstention_redraw_samples", ">= 0 (0: decline instead of re-drawing)",
         args.abstention_redraw_samples)
    need(args.abstention_grounding is None or 0 < args.abstention_grounding <= 1, "abstention_grounding",
         "in (0, 1] or null (no grounding check)", args.abstention_grounding)
    need(0 <= args.max_false_abstention < 1, "max_false_abstention", "in [0, 1)", args.max_false_abstention)
    if args.abstention_gate and not args.unanswerable_file:
        raise ConfigError("abstention_gate: true needs unanswerable_file (its held-out questions measure the gate, "
                          "its decline is what the gate answers); set abstention_gate: false to run without one")
    for key in ("num_replay_questions", "max_facts", "max_general_questions", "max_train_rows",
                "early_stopping_patience"):
        value = getattr(args, key)
        need(value is None or value >= 1, key, ">= 1 when set (null: no limit)", value)
    if model_args.use_peft:
        need(model_args.lora_r >= 1, "lora_r", ">= 1 (the LoRA rank; 8-64 is usual)", model_args.lora_r)
        need(model_args.lora_alpha > 0, "lora_alpha", "> 0 (usually 2 x lora_r)", model_args.lora_alpha)
        need(0 <= model_args.lora_dropout < 1, "lora_dropout", "in [0, 1)", model_args.lora_dropout)
    if training_args is not None:
        t = training_args
        need(t.learning_rate > 0, "learning_rate", "> 0 (e.g. 2e-4 for LoRA)", t.learning_rate)
        need(t.num_train_epochs > 0 or t.max_steps > 0, "num_train_epochs (or max_steps)",
             "> 0 (one of them must be positive)", f"num_train_epochs={t.num_train_epochs}, max_steps={t.max_steps}")
        need(t.per_device_train_batch_size >= 1, "per_device_train_batch_size", ">= 1", t.per_device_train_batch_size)
        need(t.max_length is None or t.max_length >= 1, "max_length", ">= 1 (or null: no truncation)", t.max_length)


def check_max_length(tokenizer, splits: dict, max_length: int | None) -> int:
    """The longest training / validation conversation in tokens; longer than ``max_length`` is a ConfigError
    naming the row (TRL would truncate it, cutting off the very answer the model must learn)."""
    longest, where = 0, None
    for split in ("train", "valid"):
        for i, row in enumerate(splits[split], start=1):
            n = len(tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=False))
            if n > longest:
                longest, where = n, (split, i, row)
    if max_length is not None and longest > max_length:
        split, i, row = where
        raise ConfigError(f"max_length must be >= {longest} (the longest {split} row, #{i}, fact "
                          f"'{row['fact_id']}': {row['messages'][1]['content']!r}, is {longest} tokens), got "
                          f"{max_length}; longer rows would lose their answer to truncation")
    return longest
