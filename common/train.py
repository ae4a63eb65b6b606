"""Build trainers with the cookbook's policy, and run them with resume and measurement.

One engine for every recipe -- the HF ``Trainer`` family on accelerate (TRL's ``SFTTrainer`` / ``DPOTrainer``
for text, ``transformers.Trainer`` for vision) -- so checkpoints, resume, early stopping, TensorBoard and
``accelerate launch`` behave the same everywhere.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from transformers import EarlyStoppingCallback, Trainer
from transformers.trainer_utils import get_last_checkpoint

from common.hardware import detect, peak_memory_mb, reset_peak_memory

logger = logging.getLogger(__name__)


def early_stopping_callbacks(args, patience: int | None) -> list:
    """An :class:`EarlyStoppingCallback` when the config asks for it (needs ``load_best_model_at_end``)."""
    if not patience:
        return []
    if not args.load_best_model_at_end:
        raise ValueError("early_stopping_patience needs load_best_model_at_end: true (and matching eval/save steps)")
    return [EarlyStoppingCallback(early_stopping_patience=patience)]


def build_sft_trainer(model, tokenizer, args, train_dataset, eval_dataset=None, peft_config=None,
                      early_stopping_patience: int | None = None, callbacks: list | None = None):
    """A TRL ``SFTTrainer`` for conversational prompt/completion data: loss on the completion only.

    The completion (the assistant's answer and its end-of-turn token) is what the model learns; the prompt
    (system + user turns) only conditions it. ``pad != eos`` is checked, so padding can never hide the
    end-of-turn token from the loss.
    """
    from trl import SFTTrainer

    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError("tokenizer.pad_token must differ from eos_token (use common.models.load_tokenizer)")
    if args.completion_only_loss is False:
        logger.warning("completion_only_loss=False: the prompt tokens are trained too")
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[*early_stopping_callbacks(args, early_stopping_patience), *(callbacks or [])],
    )


def resume_checkpoint(args) -> str | None:
    """The checkpoint to resume from: ``args.resume_from_checkpoint`` if set, else the newest in ``output_dir``.

    A killed run therefore continues where its last complete checkpoint left off when started again with the
    same ``--output_dir``. Use a fresh ``--output_dir`` to start over.
    """
    if args.resume_from_checkpoint:
        return args.resume_from_checkpoint
    if Path(args.output_dir).is_dir():
        last = get_last_checkpoint(args.output_dir)
        if last:
            logger.warning("Resuming from %s (use a new --output_dir to start over)", last)
        return last
    return None


def train_and_measure(trainer: Trainer, token_key: str | None = "num_tokens", unit: str = "tokens/s") -> dict:
    """Run ``trainer.train()`` (resuming if a checkpoint exists) and return what the report needs.

    Returns ``{seconds, steps, epochs, throughput: {value, unit}, samples_per_second, peak_memory_mb,
    final_train_loss, resumed_from}``. Throughput counts the tokens (or samples) processed in *this*
    invocation per second of wall time.
    """
    reset_peak_memory()
    resume = resume_checkpoint(trainer.args)
    start_step = 0
    if resume:
        import json

        start_step = json.loads((Path(resume) / "trainer_state.json").read_text())["global_step"]
    t0 = time.perf_counter()
    out = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - t0
    history = trainer.state.log_history
    # TRL counts the (non-padding) tokens it trained on; fall back to the last logged count.
    tokens = getattr(trainer, "_total_train_tokens", None) if token_key else None
    if not tokens:
        tokens = next((h[token_key] for h in reversed(history) if token_key and token_key in h), None)
    samples = out.metrics.get("train_samples_per_second")
    if tokens is not None:
        throughput = {"value": round(tokens / seconds, 1), "unit": unit}
    else:
        throughput = {"value": samples, "unit": "samples/s"}
    losses = [h["loss"] for h in history if "loss" in h]
    return {
        "seconds": round(seconds, 1),
        "steps": trainer.state.global_step - start_step,
        "epochs": round(trainer.state.epoch or 0, 2),
        "throughput": throughput,
        "samples_per_second": samples,
        "peak_memory_mb": round(peak_memory_mb(detect().device), 1),
        "first_train_loss": losses[0] if losses else None,
        "final_train_loss": losses[-1] if losses else None,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "resumed_from": resume,
    }
