"""The losses of the cookbook's text trainers (TRL's ``SFTTrainer`` and ``DPOTrainer``), and where their work goes.

- :func:`answer_tokens_trainer_class`: on a CPU, the cross-entropy projects only the positions that predict an
  answer token onto the vocabulary. TRL's fused LM head does that on Triton devices (CUDA, XPU); elsewhere it
  projects every position -- prompt and padding included -- and projects them all again in the backward pass.
  For a 135M model with a 49,152-word vocabulary that projection is about a fifth of the model's matmul work
  (docs/benchmarks.md). Same loss, same normalization, same logged metrics; on GPUs TRL's own path is kept.
- :func:`answer_logits`: on the same CPU path, the prefix every row of a batch starts with (system prompt, template
  headers) runs once per batch, not once per row; the rest of the rows attend to its cached keys and values.
- :func:`replay_kl_trainer_class`: replay rows are learned by distillation from the base model (anti-forgetting).
- :func:`score_answer_positions_only`: the same saving for the trainers that read log-probabilities through TRL's
  fused LM head (``DPOTrainer``).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


def answer_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keep, targets)``: the positions that predict a trained token (position t predicts token t+1), as a
    boolean ``(batch, seq)`` mask for ``logits_to_keep``, and those tokens in the same row-major order."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100
    return keep, labels[:, 1:][keep[:, :-1]]


# Running the shared prefix is one more pass through every layer, and on a 2-core CPU a pass over a few tokens costs
# about as much as ~75 tokens of a batch (SmolLM2-135M with LoRA: 0.19 s for a 16-token prefix, 1.11 s for 8 rows of
# 54 tokens; bench/shared_prefix.py): share only when the rows after the first skip at least this many tokens.
MIN_SAVED_TOKENS = 96


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor) -> int:
    """How many leading tokens every row of a batch has in common -- the system prompt and the chat template's
    headers -- up to the first position that predicts an answer token (``keep``); 0 for a batch of one row."""
    if len(input_ids) < 2 or not keep.any():
        return 0
    same = ((input_ids == input_ids[:1]) & (attention_mask == 1)).all(0)
    first_answer = int(keep[keep.any(1)].int().argmax(1).min())
    return min(int(same.int().cumprod(0).sum()), first_answer)


def answer_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor,
                  prefix_model=None) -> torch.Tensor:
    """The logits at the ``keep`` positions (``[kept, vocab]``, row by row), with the prefix every row shares
    computed once for the batch instead of once per row.

    Every row of a chat batch starts with the same system prompt and template headers (the chatbot: 16 of ~55
    tokens). They run through the model once, as one row; their keys and values (a transformers cache, with
    gradients) are repeated for every row, and the rest of the batch attends to them: the causal attention of the
    full rows, so the loss and the gradients are the same (tests/test_sft.py), over a quarter fewer token positions
    for 8 of the chatbot's rows (~7% less time a step, docs/benchmarks.md). Only where that saves more than the
    extra pass costs (:data:`MIN_SAVED_TOKENS`). ``prefix_model`` runs the prefix (the model unwrapped from DDP: one
    wrapped forward per step on every process, whether a batch shares a prefix or not). Right-padded batches only:
    with left padding the rows do not start alike, and nothing is shared.
    """
    prefix = shared_prefix_length(input_ids, attention_mask, keep)
    if prefix == 0 or (len(input_ids) - 1) * prefix < MIN_SAVED_TOKENS:
        return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=keep).logits
    shared = (prefix_model or model)(input_ids=input_ids[:1, :prefix], attention_mask=attention_mask[:1, :prefix],
                                     use_cache=True)
    name = "cache" if "cache" in shared else "past_key_values"  # transformers >= 5.24 calls it "cache"
    cache = shared.get(name)
    if cache is None:  # no cache while training (activation checkpointing): the full rows after all
        return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=keep).logits
    cache.batch_repeat_interleave(len(input_ids))
    return model(input_ids=input_ids[:, prefix:], attention_mask=attention_mask, use_cache=False,
                 logits_to_keep=keep[:, prefix:], **{name: cache}).logits


def score_answer_positions_only() -> None:
    """Make TRL's fused LM head project only the labelled positions off Triton devices too (idempotent).

    TRL chooses between scoring the labelled positions only ("compact") and scoring every position with one
    private helper, ``trl.trainer.utils._use_triton``: compact on CUDA/XPU, every position elsewhere -- which keeps
    shapes static for XLA compilers, but on a CPU means projecting prompt and padding tokens onto the vocabulary,
    forward and again backward. TRL has no public switch, so the helper is wrapped to answer "compact" on a CPU as
    well; the per-token log-probabilities are the same (tests/test_sft.py checks them, and fails if an upgrade
    renames the helper -- which then only costs speed: a warning, and TRL's own path). The Triton kernels
    themselves are chosen by their own module and are not touched.
    """
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:  # a TRL that reorganized its fused head: keep its own behaviour
        logger.warning("trl.trainer.utils._use_triton not found: DPO scores every position on this device (slower)")
        return
    if getattr(original, "compact_on_cpu", False):
        return

    def use_compact(device: torch.device) -> bool:
        return device.type == "cpu" or original(device)

    use_compact.compact_on_cpu = True
    trl_utils._use_triton = use_compact


def answer_tokens_trainer_class():
    """``SFTTrainer`` whose training loss, off Triton devices, projects only the answer positions (module doc)."""
    from trl import SFTTrainer

    class AnswerTokensSFTTrainer(SFTTrainer):
        def _answer_tokens_only(self, inputs: dict, return_outputs: bool) -> bool:
            """The plain next-token loss of a training batch on a CPU (anything else: TRL's own path)."""
            return (not return_outputs and self.model.training and "labels" in inputs and "attention_mask" in inputs
                    and inputs["input_ids"].device.type not in ("cuda", "xpu") and self.compute_loss_func is None
                    and self.label_smoother is None and getattr(self.args, "loss_type", "nll") == "nll"
                    and not getattr(self, "aux_loss_enabled", False))

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not self._answer_tokens_only(inputs, return_outputs):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            keep, targets = answer_positions(inputs["labels"])
            logits = answer_logits(model, inputs["input_ids"], inputs["attention_mask"], keep,
                                   prefix_model=self.accelerator.unwrap_model(model))
            log_probs = logits.float().log_softmax(-1)
            n_items = targets.numel() if num_items_in_batch is None else num_items_in_batch
            loss = -log_probs.gather(-1, targets.unsqueeze(-1)).sum() / torch.as_tensor(n_items).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # as SFTTrainer scales its own loss
            # the metrics TRL logs: entropy and top-1 accuracy on the answer tokens, trained tokens so far
            with torch.no_grad():
                gather = self.accelerator.gather_for_metrics
                n = gather(torch.as_tensor(targets.numel(), device=loss.device)).sum()
                entropy = gather(-(log_probs.exp() * log_probs).sum()).sum()
                correct = gather((log_probs.argmax(-1) == targets).sum()).sum()
                metrics = self._metrics["train"]
                metrics["entropy"].append((entropy / n).item() if n > 0 else 0.0)
                metrics["mean_token_accuracy"].append((correct / n).item() if n > 0 else 0.0)
                self._total_train_tokens += int(gather(inputs["attention_mask"].sum()).sum())
                metrics["num_tokens"] = [self._total_train_tokens]
            return loss

    return AnswerTokensSFTTrainer


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
    class ReplayKLSFTTrainer(answer_tokens_trainer_class()):
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
            keep, _ = answer_positions(inputs["labels"][replay])
            teacher = self._teacher_log_probs(model, rows["input_ids"], rows["attention_mask"], keep)
            # Past the DDP wrapper: one wrapped forward per step on every process whatever the batch holds (the
            # wrapper syncs buffers at each forward, a collective); the gradients still reach DDP's hooks.
            student = answer_logits(self.accelerator.unwrap_model(model), rows["input_ids"], rows["attention_mask"],
                                    keep).flatten(0, -2).float().log_softmax(-1)
            kl = F.kl_div(student, teacher, log_target=True, reduction="sum")  # KL(teacher || student)
            self._metrics["train"]["replay_kl"].append(kl.item() / max(int(keep.sum()), 1))
            self._count_replay_tokens(rows["attention_mask"])
            kl_loss = self.replay_kl_weight * kl / torch.as_tensor(n_items, device=kl.device).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                kl_loss = kl_loss * self.accelerator.num_processes  # as SFTTrainer scales its own loss
            return loss + kl_loss

    return ReplayKLSFTTrainer
