"""Settings of the medical recipe that cannot work stop the run before any data is written or model loaded.

Each raises :class:`common.errors.ConfigError` naming the key, the allowed values and the value it got.
"""

from __future__ import annotations

from common.errors import ConfigError

STAGES = ("all", "sft", "dpo")
#: DPO loss types of TRL's DPOConfig this recipe has run; "sft" adds the chosen answers' NLL (the RPO recipe).
DPO_LOSSES = ("sigmoid", "sft", "ipo", "hinge", "robust", "sigmoid_norm")


def check_arguments(args, model_args, training_args) -> None:
    """``args`` (MedicalArguments), ``model_args`` (ModelArguments), ``training_args`` (SFTConfig), checked."""
    def need(ok: bool, key: str, allowed: str, value) -> None:
        if not ok:
            raise ConfigError(f"{key} must be {allowed}, got {value!r}")

    need(args.stage in STAGES, "stage", f"one of {', '.join(STAGES)}", args.stage)
    need(model_args.use_peft, "use_peft", "true (the DPO reference is the SFT model with the DPO adapter off)",
         model_args.use_peft)
    need(args.beta > 0, "beta", "> 0 (0.1 is DPO's usual value)", args.beta)
    need(args.dpo_learning_rate > 0, "dpo_learning_rate", "> 0", args.dpo_learning_rate)
    need(args.dpo_num_train_epochs > 0, "dpo_num_train_epochs", "> 0", args.dpo_num_train_epochs)
    losses = args.dpo_loss_type or ["sigmoid"]
    need(set(losses) <= set(DPO_LOSSES), "dpo_loss_type", f"a list of {', '.join(DPO_LOSSES)}", args.dpo_loss_type)
    weights = args.dpo_loss_weights
    need(weights is None or (len(weights) == len(losses) and all(w >= 0 for w in weights) and sum(weights) > 0),
         "dpo_loss_weights", f"null or {len(losses)} weights >= 0 (one per dpo_loss_type), not all 0", weights)
    need(args.max_new_tokens >= 1, "max_new_tokens", ">= 1", args.max_new_tokens)
    need(args.general_max_new_tokens >= 1, "general_max_new_tokens", ">= 1", args.general_max_new_tokens)
    need(args.triage_retries >= 0, "triage_retries", ">= 0", args.triage_retries)
    need(args.eval_batch_size >= 1, "eval_batch_size", ">= 1", args.eval_batch_size)
    for key in ("max_conditions", "max_eval_conditions", "max_general_questions"):
        value = getattr(args, key)
        need(value is None or value >= 1, key, ">= 1 when set (null: no limit)", value)
    need(model_args.lora_r >= 1, "lora_r", ">= 1", model_args.lora_r)
    need(training_args.learning_rate > 0, "learning_rate", "> 0", training_args.learning_rate)
    need(training_args.num_train_epochs > 0 or training_args.max_steps > 0, "num_train_epochs (or max_steps)",
         "> 0", training_args.num_train_epochs)
    need(training_args.max_length is not None and training_args.max_length >= 16, "max_length", ">= 16",
         training_args.max_length)


def check_max_length(tokenizer, splits: dict, max_length: int) -> int:
    """The longest prompt + answer of the training and validation pairs in tokens; longer than ``max_length`` is a
    ConfigError naming the row (the trainers would cut off the very answer the model must learn)."""
    longest, where = 0, None
    for split in ("train", "valid"):
        for i, row in enumerate(splits[split], start=1):
            for side in ("chosen", "rejected"):
                n = len(tokenizer.apply_chat_template([*row["prompt"], *row[side]], tokenize=True, return_dict=False))
                if n > longest:
                    longest, where = n, (split, i, side)
    if longest > max_length:
        split, i, side = where
        raise ConfigError(f"max_length must be >= {longest} (the {side} answer of {split} pair #{i} is {longest} "
                          f"tokens with its prompt), got {max_length}")
    return longest
