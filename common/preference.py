"""Preference optimization (DPO) with the cookbook's policy, and the metrics that compare models on preference pairs.

    from common.preference import dpo_config_from, build_dpo_trainer, merge_adapter, sequence_logps, pair_metrics

    sft_model = merge_adapter(sft_trainer.model)        # SFT LoRA folded into the weights (in memory)
    args = dpo_config_from(sft_args, "runs/x/dpo", beta=0.1, learning_rate=5e-4, num_train_epochs=2)
    trainer = build_dpo_trainer(sft_model, tokenizer, args, train_pairs, valid_pairs, peft_config)

The reference model of DPO is the *SFT model*, and it costs no second copy: the SFT adapter is merged into the
base weights, DPO trains a fresh LoRA adapter on top, and TRL's ``DPOTrainer`` (``ref_model=None`` with a PEFT
model) computes the reference log-probabilities with that adapter switched off -- which is exactly the SFT model.

Implicit reward (DPO): ``r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x))``, ``log pi(y|x)`` summed over the
answer tokens (the end-of-turn token included), the prompt rendered by the chat template as in ``DPOTrainer``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import fields

import torch
from tqdm.auto import tqdm

from common.hardware import check_training_precision, precision_defaults
from common.sft_losses import score_answer_positions_only
from common.train import early_stopping_callbacks

logger = logging.getLogger(__name__)

#: Fields never copied from the SFT arguments into the DPO ones (SFT-only meanings, or set explicitly).
_NOT_SHARED = {"output_dir", "logging_dir", "learning_rate", "num_train_epochs", "max_steps", "max_length",
               "gradient_checkpointing", "gradient_checkpointing_kwargs", "completion_only_loss", "loss_type",
               "dataset_text_field", "packing", "packing_strategy", "padding_free", "assistant_only_loss",
               "dataset_kwargs", "eos_token", "pad_token", "hub_model_id", "resume_from_checkpoint"}


def dpo_config_from(training_args, output_dir: str, **overrides):
    """A TRL ``DPOConfig`` that shares the run's settings (precision, seed, logging, eval/save strategy, batch size)
    with ``training_args`` (the SFT stage's ``SFTConfig``), with ``overrides`` (``beta``, ``learning_rate``, ...).

    TRL's ``DPOConfig`` defaults to ``bf16=True`` and ``gradient_checkpointing=True``; neither reaches a run: precision
    comes from ``training_args`` (themselves built on :func:`common.hardware.precision_defaults`), and activation
    checkpointing is off unless ``training_args`` or ``overrides`` turn it on.
    """
    from trl import DPOConfig

    shared = {f.name: getattr(training_args, f.name) for f in fields(DPOConfig)
              if f.init and f.name not in _NOT_SHARED and hasattr(training_args, f.name)}
    for key, value in precision_defaults().items():
        shared.setdefault(key, value)
    shared["activation_checkpointing"] = bool(getattr(training_args, "activation_checkpointing", False))
    config = DPOConfig(**{**shared, "output_dir": str(output_dir), **overrides})
    check_training_precision(config)
    return config


def merge_adapter(model):
    """Fold a PEFT LoRA adapter into its base weights (in memory) and return the plain model; a plain model is
    returned as it is. The merged model is what a fresh DPO adapter starts from -- and its reference."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model


def build_dpo_trainer(model, tokenizer, args, train_dataset, eval_dataset=None, peft_config=None,
                      early_stopping_patience: int | None = None, callbacks: list | None = None):
    """A TRL ``DPOTrainer`` whose reference is ``model`` as given (the SFT model), with no second copy in memory.

    ``model`` must be a plain model (merge an SFT adapter first with :func:`merge_adapter`) and ``peft_config`` a
    LoRA config: TRL then wraps the model in a fresh adapter, and the adapter switched off is the reference.
    ``train_dataset`` / ``eval_dataset`` hold ``prompt`` / ``chosen`` / ``rejected`` (conversational or plain).

    Raises:
        ValueError: no ``peft_config`` (full DPO would need a second full model as reference), a model that still
            carries an adapter, or a tokenizer whose pad token is its end-of-turn token.
    """
    from trl import DPOTrainer

    if peft_config is None:
        raise ValueError("build_dpo_trainer needs a LoRA peft_config: the reference is the model with the adapter "
                         "switched off (full DPO would keep a second full model in memory)")
    if hasattr(model, "peft_config"):
        raise ValueError("model still carries a PEFT adapter: merge it first (common.preference.merge_adapter), so "
                         "the reference is the SFT model, not the base model")
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError("tokenizer.pad_token must differ from eos_token (use common.models.load_tokenizer)")
    score_answer_positions_only()  # on a CPU, log-probabilities of the answer tokens only (common.sft_losses)
    return DPOTrainer(model=model, ref_model=None, args=args, train_dataset=train_dataset,
                      eval_dataset=eval_dataset, processing_class=tokenizer, peft_config=peft_config,
                      callbacks=[*early_stopping_callbacks(args, early_stopping_patience), *(callbacks or [])])


def _answer_ids(tokenizer, prompt, completion) -> tuple[list[int], int]:
    """Token ids of prompt + completion and where the completion starts, tokenized as ``DPOTrainer`` does."""
    if isinstance(prompt, list):
        prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                   return_dict=False)
        full = tokenizer.apply_chat_template([*prompt, *completion], tokenize=True, return_dict=False)
    else:
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full = tokenizer(prompt + completion + (tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"]
    start = 0
    while start < min(len(prompt_ids), len(full)) and prompt_ids[start] == full[start]:
        start += 1
    return full, start


@torch.inference_mode()
def sequence_logps(model, tokenizer, prompts: Sequence, completions: Sequence, batch_size: int = 8,
                   desc: str = "log-probabilities") -> torch.Tensor:
    """``log pi(completion | prompt)`` for each pair, summed over the completion's tokens (float64, CPU).

    The same quantity ``DPOTrainer`` builds its loss and ``rewards/*`` metrics from, for any model -- base, SFT or
    DPO -- so their scores compare.
    """
    model.eval()
    device = next(model.parameters()).device
    encoded = [_answer_ids(tokenizer, p, c) for p, c in zip(prompts, completions, strict=True)]
    out = torch.zeros(len(encoded), dtype=torch.float64)
    pad = tokenizer.pad_token_id
    for lo in tqdm(range(0, len(encoded), batch_size), desc=desc, leave=False, disable=len(encoded) <= batch_size):
        batch = encoded[lo:lo + batch_size]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        answer = torch.zeros_like(ids, dtype=torch.bool)
        for i, (row, start) in enumerate(batch):
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
            answer[i, start:len(row)] = True
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None].to(device)).squeeze(-1)
        out[lo:lo + len(batch)] = (logp.cpu().double() * answer[:, 1:]).sum(1)
    return out


def pair_logps(model, tokenizer, rows: Sequence[dict], batch_size: int = 8, desc: str = "pairs") -> dict:
    """``{"chosen": tensor, "rejected": tensor}`` of :func:`sequence_logps` for preference rows.

    Each distinct (prompt, answer) is scored once: a question with one chosen and three rejected answers costs
    four sequences, not six.
    """
    import json

    keys = [[json.dumps([r["prompt"], r[side]]) for r in rows] for side in ("chosen", "rejected")]
    unique = list(dict.fromkeys(k for side in keys for k in side))
    items = [json.loads(k) for k in unique]
    scores = sequence_logps(model, tokenizer, [p for p, _ in items], [c for _, c in items], batch_size, desc)
    index = {k: i for i, k in enumerate(unique)}
    return {side: scores[[index[k] for k in side_keys]] for side, side_keys in zip(("chosen", "rejected"), keys)}


def pair_metrics(policy: dict, reference: dict, beta: float) -> dict:
    """Preference metrics of a model's pair log-probabilities (:func:`pair_logps`) against a reference's.

    DPO's implicit reward ``r = beta * (log pi - log pi_ref)`` of each answer, chosen against rejected:

    - ``preference_accuracy``: share of pairs with ``r(chosen) > r(rejected)`` (``DPOTrainer``'s
      ``rewards/accuracies``), a tie counted as half: the reference scored against itself has every reward
      exactly 0 and gets 0.5 -- no preference beyond its own -- where ``DPOTrainer`` would report 0;
    - ``reward_margin``, ``reward_chosen``, ``reward_rejected``: means of ``r(chosen) - r(rejected)``, ``r(chosen)``,
      ``r(rejected)`` (``rewards/margins``, ``rewards/chosen``, ``rewards/rejected``);
    - ``likelihood_accuracy``: share of pairs where the model itself ranks chosen above rejected,
      ``log pi(chosen) > log pi(rejected)``, no reference involved (longer answers start at a disadvantage).
    """
    chosen = beta * (policy["chosen"] - reference["chosen"])
    rejected = beta * (policy["rejected"] - reference["rejected"])
    wins = (chosen > rejected).double() + 0.5 * (chosen == rejected).double()
    return {
        "preference_accuracy": float(wins.mean()),
        "reward_margin": float((chosen - rejected).mean()),
        "reward_chosen": float(chosen.mean()),
        "reward_rejected": float(rejected.mean()),
        "likelihood_accuracy": float((policy["chosen"] > policy["rejected"]).double().mean()),
    }
