"""Build trainers with the cookbook's policy, and run them with resume and measurement.

One engine for every recipe -- the HF ``Trainer`` family on accelerate (TRL's ``SFTTrainer`` / ``DPOTrainer``
for text, ``transformers.Trainer`` for vision) -- so checkpoints, resume, early stopping, TensorBoard and
``accelerate launch`` behave the same everywhere.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import EarlyStoppingCallback, Trainer, TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from common.errors import ConfigError, ModelPathError
from common.hardware import detect, peak_memory_mb, reset_peak_memory
from common.paths import portable_path

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
    model's (see :func:`replay_kl_trainer_class`).
    """
    from trl import SFTTrainer

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
        return SFTTrainer(**kwargs)
    if peft_config is None and not hasattr(model, "disable_adapter"):
        raise ValueError("replay_kl_weight needs LoRA (use_peft: true): the base model is the adapter switched off")
    if "replay" not in train_dataset.column_names:
        raise ValueError("replay_kl_weight needs a boolean 'replay' column in the training data")
    return replay_kl_trainer_class()(**kwargs, replay_kl_weight=replay_kl_weight)


class _AddReplayFlag:
    """Wraps a collator: adds the batch's ``replay`` flags (False for rows without the column)."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples: list[dict]) -> dict:
        return {**self.collator(examples), "replay": torch.tensor([bool(e.get("replay", False)) for e in examples])}


def replay_kl_trainer_class():
    """``SFTTrainer`` whose replay rows are learned by distillation from the base model (anti-forgetting).

    Loss of a batch = (cross-entropy summed over the answer tokens of the task rows
    + ``replay_kl_weight`` x KL(base || fine-tuned) summed over the answer tokens of the replay rows)
    / answer tokens in the batch.

    The teacher is the same network with its LoRA adapter switched off, so it costs no memory, and the KL
    is zero at the start of training (LoRA starts as the identity): the replay rows only push back as far
    as the task rows pull the model away from its base behaviour ("learning without forgetting"). Unlike
    cross-entropy on the base model's sampled answers, the full distribution is matched, so the answer
    style (length, when to stop) is not changed either.
    """
    from trl import SFTTrainer

    class ReplayKLSFTTrainer(SFTTrainer):
        def __init__(self, *args, replay_kl_weight: float = 1.0, **kwargs):
            super().__init__(*args, **kwargs)
            self.replay_kl_weight = replay_kl_weight
            self._teacher_cache: dict[bytes, torch.Tensor] = {}
            self.data_collator = _AddReplayFlag(self.data_collator)

        def _teacher_log_probs(self, model, input_ids, attention_mask, keep) -> torch.Tensor:
            """The base model's log-probabilities at the ``keep`` positions, flattened row by row.

            Each replay row's are computed once (adapter off, no gradient) and kept in memory in fp16 for the
            next epochs: answer tokens x vocabulary x 2 bytes (the chatbot's 120 rows: ~2,500 tokens, ~230 MiB).
            """
            keys = [ids[mask.bool()].cpu().numpy().tobytes() for ids, mask in zip(input_ids, attention_mask)]
            missing = [i for i, k in enumerate(keys) if k not in self._teacher_cache]
            if missing:
                base = self.accelerator.unwrap_model(model)  # no gradient: no need to go through DDP
                with torch.no_grad(), base.disable_adapter():
                    logits = base(input_ids=input_ids[missing], attention_mask=attention_mask[missing],
                                  use_cache=False, logits_to_keep=keep[missing]).logits.flatten(0, -2)
                per_row = logits.float().log_softmax(-1).split(keep[missing].sum(1).tolist())
                for i, lp in zip(missing, per_row):
                    self._teacher_cache[keys[i]] = lp.half()
            return torch.cat([self._teacher_cache[k] for k in keys]).float()

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if "replay" not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, "replay"]

        def _count_replay_tokens(self, attention_mask: torch.Tensor | None) -> None:
            """Trained-token count of the replay rows (0 without any); every rank calls it once per step, since
            the count is gathered across processes and a collective must be called by all ranks alike."""
            if attention_mask is None:
                attention_mask = torch.zeros((), dtype=torch.long, device=self.args.device)
            self._total_train_tokens += int(self.accelerator.gather_for_metrics(attention_mask.sum()).sum())

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            replay = inputs.pop("replay", None)
            if replay is None or not replay.any():
                loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
                if replay is not None and model.training:
                    self._count_replay_tokens(None)
                return loss
            if return_outputs:
                raise NotImplementedError("replay rows are training rows; evaluation data has none")
            replay = replay.to(inputs["input_ids"].device)
            n_items = num_items_in_batch
            if n_items is None:
                n_items = (inputs["labels"][:, 1:] != -100).sum()
            task, task_inputs = ~replay, inputs
            if not task.any() and self.accelerator.num_processes > 1:
                # A batch of replay rows only: the task loss still runs (on one row whose labels are all ignored,
                # so it adds 0) because it gathers metrics across processes, which every rank must do alike.
                task = torch.arange(len(task), device=task.device) == 0
                task_inputs = {**inputs, "labels": torch.full_like(inputs["labels"], -100)}
            loss = torch.zeros((), device=inputs["input_ids"].device)
            if task.any():
                loss = super().compute_loss(model, {k: v[task] if torch.is_tensor(v) and v.dim() and
                                                    v.shape[0] == len(task) else v for k, v in task_inputs.items()},
                                            num_items_in_batch=n_items)
            rows = {k: inputs[k][replay] for k in ("input_ids", "attention_mask")}
            # Logits only where an answer token is predicted (position t predicts token t+1): the vocabulary
            # projection is a large share of a small model's compute.
            keep = torch.zeros_like(rows["input_ids"], dtype=torch.bool)
            keep[:, :-1] = inputs["labels"][replay][:, 1:] != -100
            teacher = self._teacher_log_probs(model, rows["input_ids"], rows["attention_mask"], keep)
            # Past the DDP wrapper: one wrapped forward per step on every process whatever the batch holds (the
            # wrapper syncs buffers at each forward, a collective); the gradients still reach DDP's hooks.
            student = self.accelerator.unwrap_model(model)(**rows, use_cache=False, logits_to_keep=keep)
            student = student.logits.flatten(0, -2).float().log_softmax(-1)
            kl = F.kl_div(student, teacher, log_target=True, reduction="sum")  # KL(teacher || student)
            self._metrics["train"]["replay_kl"].append(kl.item() / max(int(keep.sum()), 1))
            self._count_replay_tokens(rows["attention_mask"])
            kl_loss = self.replay_kl_weight * kl / torch.as_tensor(n_items, device=kl.device).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                kl_loss = kl_loss * self.accelerator.num_processes  # as SFTTrainer scales its own loss
            return loss + kl_loss

    return ReplayKLSFTTrainer


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


def train_and_measure(trainer: Trainer, token_key: str | None = "num_tokens", unit: str = "tokens/s") -> dict:
    """Run ``trainer.train()`` (resuming if a checkpoint exists) and return what the report needs.

    Returns ``{trainable_parameters, total_parameters, seconds, steps, epochs, throughput: {value, unit},
    samples_per_second, peak_memory_mb, first_train_loss, final_train_loss, best_checkpoint, resumed_from}``. Throughput counts the tokens (or samples) processed in *this*
    invocation per second of wall time. Checkpoint paths are relative to ``output_dir`` (reports are committed).
    """
    reset_peak_memory()
    resume = resume_checkpoint(trainer.args)
    start_step = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json")).global_step if resume else 0
    t0 = time.perf_counter()
    out = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - t0
    history = trainer.state.log_history
    # TRL counts the (non-padding) tokens it trained on (pinned by a test); fall back to the last logged count.
    tokens = getattr(trainer, "_total_train_tokens", None) if token_key else None
    if not tokens:
        tokens = next((h[token_key] for h in reversed(history) if token_key and token_key in h), None)
    samples = out.metrics.get("train_samples_per_second")
    if tokens is not None:
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
    }
