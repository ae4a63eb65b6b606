"""Build trainers with the cookbook's policy, and run them with resume and measurement.

One engine for every recipe -- the HF ``Trainer`` family on accelerate (TRL's ``SFTTrainer`` / ``DPOTrainer``
for text, ``transformers.Trainer`` for vision) -- so checkpoints, resume, early stopping, TensorBoard and
``accelerate launch`` behave the same everywhere.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from common.errors import ConfigError, ModelPathError
from common.hardware import detect, peak_memory_mb, reset_peak_memory
from common.paths import portable_path
from common.sft_losses import answer_tokens_trainer_class, replay_kl_trainer_class

logger = logging.getLogger(__name__)


def early_stopping_callbacks(args, patience: int | None) -> list:
    """An :class:`EarlyStoppingCallback` when the config asks for it (needs ``load_best_model_at_end``)."""
    if not patience:
        return []
    if not args.load_best_model_at_end:
        raise ValueError("early_stopping_patience needs load_best_model_at_end: true (and matching eval/save steps)")
    return [EarlyStoppingCallback(early_stopping_patience=patience)]


def build_sft_trainer(model, tokenizer, args, train_dataset, eval_dataset=None, peft_config=None,
                      early_stopping_patience: int | None = None, callbacks: list | None = None,
                      replay_kl_weight: float | None = None):
    """A TRL ``SFTTrainer`` for conversational prompt/completion data: loss on the completion only.

    The completion (the assistant's answer and its end-of-turn token) is what the model learns; the prompt
    (system + user turns) only conditions it. ``pad != eos`` is checked, so padding can never hide the
    end-of-turn token from the loss.

    With ``replay_kl_weight``, rows whose ``replay`` column is true are *distillation* rows: instead of the
    cross-entropy on their answer, they pull the fine-tuned model's next-token distribution towards the base
    model's (see :func:`common.sft_losses.replay_kl_trainer_class`). Off a GPU, the loss projects only the answer
    positions onto the vocabulary (:func:`common.sft_losses.answer_tokens_trainer_class`).
    """
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError("tokenizer.pad_token must differ from eos_token (use common.models.load_tokenizer)")
    if args.completion_only_loss is False:
        logger.warning("completion_only_loss=False: the prompt tokens are trained too")
    kwargs = dict(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[*early_stopping_callbacks(args, early_stopping_patience), *(callbacks or [])],
    )
    if replay_kl_weight is None:
        return answer_tokens_trainer_class()(**kwargs)
    if peft_config is None and not hasattr(model, "disable_adapter"):
        raise ValueError("replay_kl_weight needs LoRA (use_peft: true): the base model is the adapter switched off")
    if "replay" not in train_dataset.column_names:
        raise ValueError("replay_kl_weight needs a boolean 'replay' column in the training data")
    return replay_kl_trainer_class()(**kwargs, replay_kl_weight=replay_kl_weight)


def checkpoint_problem(folder: str | Path) -> str | None:
    """``None`` when a ``checkpoint-*`` folder is complete, else what is wrong with which file.

    The Trainer's save is not atomic: a run killed while saving leaves a partial folder. Checked without loading
    the weights: ``trainer_state.json`` parses, every safetensors file passes
    :func:`common.models.check_safetensors`, every torch pickle (``optimizer.pt``, ``scheduler.pt``,
    ``rng_state.pth``, ``*.bin``) is a zip archive whose CRCs match.
    """
    import json
    import zipfile

    from common.models import check_safetensors

    folder = Path(folder)
    state = folder / "trainer_state.json"
    try:
        json.loads(state.read_text())
    except (OSError, ValueError) as e:
        return f"{state}: missing or unreadable ({e.__class__.__name__})"
    weights = [*folder.glob("*.safetensors")]
    if not weights:
        return f"{folder}: no *.safetensors weights"
    for f in weights:
        try:
            check_safetensors(f)  # header + "the offsets cover the file": a cut file fails here
        except ModelPathError as e:
            return str(e)
    for f in [*folder.glob("*.pt"), *folder.glob("*.pth"), *folder.glob("*.bin")]:
        try:
            with zipfile.ZipFile(f) as z:
                bad = z.testzip()
            if bad:
                return f"{f}: corrupt member {bad}"
        except (OSError, zipfile.BadZipFile) as e:
            return f"{f}: truncated or corrupt ({e})"
    return None


def resume_checkpoint(args) -> str | None:
    """The checkpoint to resume from: ``args.resume_from_checkpoint`` if set, else the newest *complete* one in
    ``output_dir`` -- a partial checkpoint (a run killed while saving) is skipped with a warning naming the bad
    file, and the one before it is used.

    A killed run therefore continues where its last complete checkpoint left off when started again with the
    same ``--output_dir``. Use a fresh ``--output_dir`` to start over.

    Raises:
        ModelPathError: an explicit ``resume_from_checkpoint`` that is missing or incomplete.
    """
    if args.resume_from_checkpoint:
        problem = checkpoint_problem(args.resume_from_checkpoint)
        if problem:
            raise ModelPathError(f"resume_from_checkpoint: {problem}")
        return args.resume_from_checkpoint
    out = Path(args.output_dir)
    if not out.is_dir():
        return None
    checkpoints = sorted((p for p in out.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir()
                          and p.name.split("-")[-1].isdigit()), key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for ckpt in checkpoints:
        problem = checkpoint_problem(ckpt)
        if problem is None:
            logger.warning("Resuming from %s (use a new --output_dir to start over)", ckpt)
            return str(ckpt)
        logger.warning("Skipping incomplete checkpoint %s: %s", ckpt.name, problem)
    return None


def refuse_finished_run(output_dir: str | Path) -> None:
    """A folder that already holds a finished run (``report.json``) is never trained over.

    Re-running a finished command used to overwrite its report with a 0-step "training"; now it stops before any
    work, and the message says what to do.

    Raises:
        ConfigError: ``output_dir/report.json`` exists.
    """
    report = Path(output_dir) / "report.json"
    if report.exists():
        raise ConfigError(f"{output_dir} already holds a finished run ({report.name}); nothing was changed. "
                          "Pass a new --output_dir, or delete the folder to train again.")


class _SegmentClock(TrainerCallback):
    """Keeps each training segment's wall time and tokens in ``OUTPUT_DIR/train_segments.json``, updated at every
    step: a run killed and resumed reports the time of every segment it took, not only the last one's."""

    FILE = "train_segments.json"

    def __init__(self, trainer: Trainer, start_step: int):
        self.trainer, self.path = trainer, Path(trainer.args.output_dir) / self.FILE
        previous = json.loads(self.path.read_text()) if start_step and self.path.exists() else []
        self.segments = [*previous, {"from_step": start_step, "to_step": start_step, "seconds": 0.0, "tokens": 0}]
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.update(state.global_step)

    def update(self, step: int) -> list[dict]:
        tokens = getattr(self.trainer, "_total_train_tokens", 0)  # TRL's count of this segment's tokens
        self.segments[-1].update(to_step=step, seconds=round(time.perf_counter() - self.t0, 3), tokens=tokens)
        if self.trainer.is_world_process_zero():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.segments, indent=1))
            tmp.replace(self.path)
        return self.segments


def train_and_measure(trainer: Trainer, token_key: str | None = "num_tokens", unit: str = "tokens/s") -> dict:
    """Run ``trainer.train()`` (resuming if a checkpoint exists) and return what the report needs.

    Returns ``{trainable_parameters, total_parameters, seconds, steps, epochs, throughput: {value, unit},
    samples_per_second, peak_memory_mb, first_train_loss, final_train_loss, best_checkpoint, resumed_from,
    segments}``. After a resume, ``seconds`` is the wall time of every segment the run took (a killed segment's
    steps after its last checkpoint count: they were waited for) and the throughput the tokens (or samples) they
    processed per second of it; ``segments`` lists them. Checkpoint paths are relative to ``output_dir`` (reports
    are committed).
    """
    reset_peak_memory()
    resume = resume_checkpoint(trainer.args)
    start_step = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json")).global_step if resume else 0
    clock = _SegmentClock(trainer, start_step)
    trainer.add_callback(clock)
    try:
        out = trainer.train(resume_from_checkpoint=resume)
    finally:
        trainer.remove_callback(clock)
    segments = clock.update(trainer.state.global_step)
    seconds = sum(seg["seconds"] for seg in segments)
    history = trainer.state.log_history
    tokens = sum(seg["tokens"] for seg in segments) if token_key else None
    if not tokens and token_key:  # a trainer that does not count them: the last logged cumulative count
        tokens = next((h[token_key] for h in reversed(history) if token_key in h), None)
    samples = out.metrics.get("train_samples_per_second")
    if tokens:
        throughput = {"value": round(tokens / seconds, 1), "unit": unit}
    else:
        throughput = {"value": samples, "unit": "samples/s"}
    losses = [h["loss"] for h in history if "loss" in h]
    params = list(trainer.model.parameters())
    return {
        "trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
        "total_parameters": sum(p.numel() for p in params),
        "seconds": round(seconds, 3),  # 3 decimals: a smoke run trains in < 0.05 s
        "steps": trainer.state.global_step - start_step,
        "epochs": round(trainer.state.epoch or 0, 2),
        "throughput": throughput,
        "samples_per_second": samples,
        "peak_memory_mb": round(peak_memory_mb(detect().device), 1),
        "first_train_loss": losses[0] if losses else None,
        "final_train_loss": losses[-1] if losses else None,
        "best_checkpoint": portable_path(trainer.state.best_model_checkpoint, trainer.args.output_dir),
        "resumed_from": portable_path(resume, trainer.args.output_dir),
        "segments": len(segments),
    }
