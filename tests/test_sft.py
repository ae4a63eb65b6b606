"""SFT on a tiny random SmolLM2 (real tokenizer and chat template): masking, learning, resume, merge parity."""

import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset, concatenate_datasets
from peft import get_peft_model
from transformers import TrainerCallback
from trl import SFTConfig, get_peft_config

from common.config import ModelArguments, peft_config
from common.data import messages_to_prompt_completion
from common.errors import ConfigError, ModelPathError
from common.export import merge_and_export
from common.models import TINY_TEXT_ALIAS, load_causal_lm, load_tokenizer, load_trained_causal_lm
from common.train import build_sft_trainer, train_and_measure

QA = [("What is the Team price?", "Team costs $9 per member."), ("Which key adds a sticky?", "Press N."),
      ("How long is the trial?", "The trial lasts 21 days."), ("Max editors?", "Up to 120 people.")]


def _dataset(n_repeat=2):
    rows = [{"messages": [{"role": "system", "content": "Support bot."}, {"role": "user", "content": q},
                          {"role": "assistant", "content": a}]} for q, a in QA] * n_repeat
    ds = Dataset.from_list(rows)
    return ds.map(messages_to_prompt_completion, remove_columns=ds.column_names)


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, learning_rate=5e-3,
                max_steps=8, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=False,
                activation_checkpointing=False, seed=0, data_seed=0, disable_tqdm=True)
    base.update(kw)
    return SFTConfig(**base)


def _trainer(tmp_path, **kw):
    model_args = ModelArguments(model_name_or_path=TINY_TEXT_ALIAS, lora_r=8, lora_alpha=16)
    tokenizer = load_tokenizer(TINY_TEXT_ALIAS)
    model = load_causal_lm(model_args)
    return build_sft_trainer(model, tokenizer, _args(tmp_path, **kw), _dataset(), peft_config=get_peft_config(model_args))


def test_tokenizer_pads_with_a_token_other_than_eos():
    tok = load_tokenizer(TINY_TEXT_ALIAS)
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id


def test_loss_mask_covers_exactly_the_answer_and_end_of_turn(tmp_path):
    trainer = _trainer(tmp_path)
    tok = trainer.processing_class
    row = trainer.train_dataset[0]
    ids, mask = row["input_ids"], [label != -100 for label in row["labels"]]
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    untrained = tok.decode([i for i, m in zip(ids, mask) if not m])
    assert sum(mask) > 0
    assert trained.startswith(QA[0][1]) and trained.rstrip("\n").endswith("<|im_end|>")
    assert trained.replace(QA[0][1], "").strip() == "<|im_end|>"  # answer + end-of-turn, nothing else
    assert QA[0][0] in untrained and "Support bot." in untrained and QA[0][1] not in untrained


def test_lora_learns_and_base_weights_stay_frozen(tmp_path):
    trainer = _trainer(tmp_path)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    stats = train_and_measure(trainer)
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)]
    assert changed and all("lora_" in n for n in changed)
    assert len(changed) == sum("lora_B" in n or "lora_A" in n for n in before)  # every adapter moved
    assert stats["final_train_loss"] < stats["first_train_loss"]
    assert torch.isfinite(torch.tensor(stats["final_train_loss"]))
    assert stats["throughput"]["unit"] == "tokens/s" and stats["throughput"]["value"] > 0


class _Kill(TrainerCallback):
    """Simulates a killed run at step ``at``: right after its checkpoint is written (``when="save"``), or at the
    end of the step, before its checkpoint (``when="step"``)."""

    def __init__(self, at, when="save"):
        self.at, self.when = at, when

    def _maybe_kill(self, state, when):
        if state.global_step == self.at and self.when == when:
            raise KeyboardInterrupt

    def on_save(self, args, state, control, **kw):
        self._maybe_kill(state, "save")

    def on_step_end(self, args, state, control, **kw):
        self._maybe_kill(state, "step")


def test_killed_run_resumes_to_the_same_result(tmp_path):
    kw = dict(save_strategy="steps", save_steps=2, max_steps=6)
    straight = _trainer(tmp_path / "a", **kw)
    train_and_measure(straight)
    reference = {n: p.detach().clone() for n, p in straight.model.named_parameters() if p.requires_grad}

    killed = _trainer(tmp_path / "b", **kw)
    killed.add_callback(_Kill(at=4))
    with pytest.raises(KeyboardInterrupt):
        train_and_measure(killed)
    resumed = _trainer(tmp_path / "b", **kw)  # a new process would build exactly this
    stats = train_and_measure(resumed)
    assert stats["resumed_from"].endswith("checkpoint-4") and stats["steps"] == 2
    # the report's time and throughput cover both segments, not only the last one
    segments = json.loads(Path(resumed.args.output_dir, "train_segments.json").read_text())
    assert stats["segments"] == len(segments) == 2 and segments[0]["to_step"] >= 3 and segments[1]["to_step"] == 6
    assert all(seg["seconds"] > 0 and seg["tokens"] > 0 for seg in segments)
    assert stats["seconds"] == pytest.approx(sum(seg["seconds"] for seg in segments), abs=2e-3)
    assert stats["seconds"] > segments[1]["seconds"]
    assert stats["throughput"]["value"] == pytest.approx(sum(seg["tokens"] for seg in segments) / stats["seconds"],
                                                         rel=1e-2)
    # The loss curve after the resume point equals the uninterrupted run's (the tolerance the README states).
    curve = {h["step"]: h["loss"] for h in straight.state.log_history if "loss" in h}
    after = {h["step"]: h["loss"] for h in resumed.state.log_history if "loss" in h and h["step"] > 4}
    assert sorted(after) == [5, 6]
    for step, loss in after.items():
        assert loss == pytest.approx(curve[step], rel=1e-5), f"loss at step {step} differs after resume"
    for n, p in resumed.model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p, reference[n], rtol=1e-5, atol=1e-6, msg=f"{n} differs after resume")


def test_merge_export_matches_base_plus_adapter(tmp_path):
    trainer = _trainer(tmp_path, max_steps=4)
    trainer.train()
    trainer.save_model(str(tmp_path / "adapter"))
    trainer.processing_class.save_pretrained(tmp_path / "adapter")
    probe = [[{"role": "user", "content": q}] for q, _ in QA]
    diff = merge_and_export(trainer.model, trainer.processing_class, tmp_path / "merged", probe,
                            card={"task": "test", "metrics": {"x": 1}})
    assert diff < 1e-4
    assert (tmp_path / "merged" / "model.safetensors").exists() and (tmp_path / "merged" / "README.md").exists()
    merged, tok = load_trained_causal_lm(tmp_path / "merged")
    adapter, _ = load_trained_causal_lm(tmp_path / "adapter")
    enc = tok(["Press N to add a sticky note."], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(merged(**enc).logits, adapter(**enc).logits, rtol=1e-4, atol=1e-4)


def test_merge_export_after_bf16_autocast_training(tmp_path):
    """The bf16 path (COOKBOOK_PRECISION=bf16, or a bf16 GPU): the merge check must not compare bf16 autocast
    logits with fp32 ones (it did: 7.5e-1 on an AMX CPU, and nothing was exported)."""
    trainer = _trainer(tmp_path, max_steps=2, bf16=True)
    trainer.train()
    probe = [[{"role": "user", "content": q}] for q, _ in QA[:2]]
    diff = merge_and_export(trainer.model, trainer.processing_class, tmp_path / "merged", probe)
    assert diff < 1e-3 and (tmp_path / "merged" / "model.safetensors").exists()


def test_trl_private_attributes_the_cookbook_relies_on_still_exist(tmp_path):
    """``ReplayKLSFTTrainer`` extends TRL through three private attributes; an upgrade that renames one fails here."""
    trainer = _trainer(tmp_path, max_steps=1)
    trainer._set_signature_columns_if_needed()
    assert isinstance(trainer._signature_columns, list) and "input_ids" in trainer._signature_columns
    assert isinstance(trainer._metrics["train"], dict)  # appended to, then averaged into the logs
    assert isinstance(trainer._total_train_tokens, int)  # the tokens TRL counts (logged as num_tokens)


def _one_training_batch(tmp_path):
    """A trainer without LoRA dropout (two passes must compute the same function), its model in training mode,
    and its first batch."""
    model_args = ModelArguments(model_name_or_path=TINY_TEXT_ALIAS, lora_r=8, lora_alpha=16, lora_dropout=0.0)
    trainer = build_sft_trainer(load_causal_lm(model_args), load_tokenizer(TINY_TEXT_ALIAS),
                                _args(tmp_path, max_steps=1), _dataset(), peft_config=get_peft_config(model_args))
    trainer.model.train()
    return trainer, trainer.model, next(iter(trainer.get_train_dataloader()))


def test_cpu_loss_projects_only_answer_positions_and_equals_trls_loss(tmp_path):
    """Off a GPU the training loss projects only the positions that predict an answer token onto the vocabulary
    (TRL projects every position there, twice): same loss, same gradients, same logged metrics as TRL's path."""
    from trl import SFTTrainer

    trainer, model, batch = _one_training_batch(tmp_path)
    rows_projected = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, o: rows_projected.append(i[0].shape))
    n_answer = int((batch["labels"][:, 1:] != -100).sum())

    def loss_and_grads(compute_loss):
        model.zero_grad()
        trainer._metrics["train"].clear()
        trainer._total_train_tokens = 0
        loss = compute_loss(trainer, model, dict(batch), num_items_in_batch=torch.tensor(n_answer))
        loss.backward()
        metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, metrics

    ours, ours_grads, ours_metrics = loss_and_grads(type(trainer).compute_loss)
    assert rows_projected[-1][:-1].numel() == n_answer < batch["input_ids"].numel()
    trl, trl_grads, trl_metrics = loss_and_grads(SFTTrainer.compute_loss)
    hook.remove()
    torch.testing.assert_close(ours, trl, rtol=1e-5, atol=1e-6)
    for name, grad in trl_grads.items():
        torch.testing.assert_close(ours_grads[name], grad, rtol=1e-4, atol=1e-7, msg=lambda m, name=name: f"{name}: {m}")
    assert ours_metrics["num_tokens"] == trl_metrics["num_tokens"] == int(batch["attention_mask"].sum())
    for key in ("entropy", "mean_token_accuracy"):
        assert ours_metrics[key] == pytest.approx(trl_metrics[key], rel=1e-4), key


def test_the_prefix_every_row_shares_runs_once_with_the_same_loss_and_gradients(tmp_path, monkeypatch):
    """The system prompt and template headers every row starts with run through the model once per batch, not
    once per row; the loss and the LoRA gradients are those of the full rows."""
    import common.sft_losses as sft_losses

    trainer, model, batch = _one_training_batch(tmp_path)
    rows, length = batch["input_ids"].shape
    keep, _ = sft_losses.answer_positions(batch["labels"])
    prefix = sft_losses.shared_prefix_length(batch["input_ids"], batch["attention_mask"], keep)
    assert 0 < prefix <= int(keep.int().argmax(1).min())  # "Support bot." and the headers, not the questions
    embedded = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, i, o: embedded.append(i[0].numel()))

    def loss_and_grads():
        model.zero_grad()
        embedded.clear()
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, sum(embedded)

    assert (rows - 1) * prefix < sft_losses.MIN_SAVED_TOKENS  # too short to pay on this tiny batch: not shared
    loss_and_grads()
    assert sum(embedded) == rows * length
    monkeypatch.setattr(sft_losses, "MIN_SAVED_TOKENS", 0)
    shared, shared_grads, shared_tokens = loss_and_grads()
    monkeypatch.setattr(sft_losses, "shared_prefix_length", lambda *args: 0)
    full, full_grads, full_tokens = loss_and_grads()
    assert full_tokens == rows * length and shared_tokens == prefix + rows * (length - prefix)
    torch.testing.assert_close(shared, full, rtol=1e-5, atol=1e-6)
    for name, grad in full_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, rtol=1e-4, atol=1e-7, msg=lambda m, name=name: f"{name}: {m}")
    # with activation checkpointing the model keeps no cache while training: the full rows, the same loss
    monkeypatch.setattr(sft_losses, "shared_prefix_length", lambda *args: prefix)
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable({"use_reentrant": False})
    checkpointed, _, checkpointed_tokens = loss_and_grads()
    hook.remove()
    assert checkpointed_tokens == prefix + rows * length  # the prefix pass, then the full rows
    torch.testing.assert_close(checkpointed, full, rtol=1e-5, atol=1e-6)


def test_shared_prefix_length_stops_at_the_first_difference_the_padding_and_the_answer():
    from common.sft_losses import shared_prefix_length

    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 3, 9, 5, 0], [1, 2, 3, 4, 7, 7]])
    mask = torch.ones_like(ids)
    keep = torch.zeros_like(ids, dtype=torch.bool)
    keep[:, 4] = True  # position 4 predicts the first answer token
    assert shared_prefix_length(ids, mask, keep) == 3  # the rows differ at position 3
    assert shared_prefix_length(ids[[0, 2]], mask[[0, 2]], keep[[0, 2]]) == 4  # capped at the answer position
    keep[:, 4], keep[:, 2] = False, True
    assert shared_prefix_length(ids, mask, keep) == 2
    assert shared_prefix_length(ids[:1], mask[:1], keep[:1]) == 0  # one row: nothing to share
    assert shared_prefix_length(ids, mask, torch.zeros_like(keep)) == 0  # no answer token in the batch
    mask[1, :] = torch.tensor([0, 1, 1, 1, 1, 1])  # a left-padded row: the rows do not start alike
    assert shared_prefix_length(ids, mask, keep) == 0


def test_trls_fused_head_scores_only_answer_positions_on_a_cpu_with_the_same_log_probs(monkeypatch):
    """DPO reads log-probabilities through TRL's fused LM head, which on a CPU projects every position;
    ``score_answer_positions_only`` makes it project the labelled ones only: same values and gradients."""
    import trl.trainer.utils as trl_utils
    from trl.kernels.chunked_logprob import _use_triton
    from trl.trainer.utils import add_fused_lm_head

    from common.sft_losses import score_answer_positions_only

    # TRL's own device check (a DPO trainer built earlier in this process may have wrapped it); restored afterwards
    monkeypatch.setattr(trl_utils, "_use_triton", _use_triton)
    projected = []
    chunked = trl_utils._ChunkedLogProbFunction

    class Spy:
        @staticmethod
        def apply(hidden, *args):
            projected.append(hidden.shape[0])
            return chunked.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Spy)
    model = load_causal_lm(ModelArguments(model_name_or_path=TINY_TEXT_ALIAS))
    add_fused_lm_head(model)
    ids = torch.randint(5, 1000, (2, 12))
    labels = ids.masked_fill(torch.arange(12) < 8, -100)  # the last 4 tokens of each row are the answer

    def log_probs_and_grad():
        model.zero_grad()
        out = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs
        out.sum().backward()
        return out.detach(), model.model.layers[-1].mlp.down_proj.weight.grad.clone()

    every, every_grad = log_probs_and_grad()
    score_answer_positions_only()
    score_answer_positions_only()  # idempotent
    compact, compact_grad = log_probs_and_grad()
    assert projected == [2 * 11, 2 * 4]  # every shifted position, then the answer tokens only
    torch.testing.assert_close(compact, every, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compact_grad, every_grad, rtol=1e-4, atol=1e-8)
    assert (every[:, :7] == 0).all() and (every[:, 7:] < 0).all()


def test_qlora_export_merges_into_the_unquantized_base(tmp_path):
    """A QLoRA base (k-bit weights) is not merged into: the adapter goes onto the base reloaded unquantized, and
    the exported model equals that base + adapter. Quantization is simulated: the in-memory base weights are
    perturbed (as NF4 rounding would) and flagged the way transformers flags a bitsandbytes model."""
    from types import SimpleNamespace

    from common.export import is_quantized

    trainer = _trainer(tmp_path, max_steps=4)
    trainer.train()
    trainer.save_model(str(tmp_path / "adapter"))
    trainer.processing_class.save_pretrained(tmp_path / "adapter")
    base = trainer.model.get_base_model()
    with torch.no_grad():
        for n, p in base.named_parameters():
            if "lora_" not in n and p.ndim == 2:
                p.add_(0.05 * torch.randn_like(p))  # the "quantization error"
    base.hf_quantizer = SimpleNamespace(quantization_config=SimpleNamespace(bnb_4bit_compute_dtype=torch.float32))
    assert is_quantized(trainer.model)
    probe = [[{"role": "user", "content": q}] for q, _ in QA[:2]]
    diff = merge_and_export(trainer.model, trainer.processing_class, tmp_path / "merged", probe)
    assert diff < 1e-3
    assert hasattr(trainer.model, "peft_config")  # the trained (quantized) model is left as it was
    merged, tok = load_trained_causal_lm(tmp_path / "merged")
    adapter, _ = load_trained_causal_lm(tmp_path / "adapter")  # the saved adapter on the real, unperturbed base
    enc = tok(["Press N to add a sticky note."], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(merged(**enc).logits, adapter(**enc).logits, rtol=1e-4, atol=1e-4)
        assert (merged(**enc).logits - trainer.model(**enc).logits).abs().max() > 1e-2  # not the perturbed one


def test_merge_refuses_to_export_when_parity_fails(tmp_path):
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.train()
    with pytest.raises(RuntimeError, match="not exported"):
        merge_and_export(trainer.model, trainer.processing_class, tmp_path / "merged",
                         [[{"role": "user", "content": "Hi"}]], atol=-1.0)
    assert not (tmp_path / "merged").exists()


# --- replay by distillation (anti-forgetting) ------------------------------------------------------------------

REPLAY = [("What is the capital of France?", "Paris is the capital of France."),
          ("How many days are in a week?", "A week has seven days.")]


def _with_replay(n_repeat=4):
    replay = Dataset.from_list([{"prompt": [{"role": "user", "content": q}],
                                 "completion": [{"role": "assistant", "content": a}], "replay": True}
                                for q, a in REPLAY] * n_repeat)
    task = _dataset().add_column("replay", [False] * len(QA) * 2)
    return concatenate_datasets([task, replay]).shuffle(seed=0)


def _kl_trainer(tmp_path, train_dataset, weight=1.0, **kw):
    model_args = ModelArguments(model_name_or_path=TINY_TEXT_ALIAS, lora_r=8, lora_alpha=16)
    tokenizer = load_tokenizer(TINY_TEXT_ALIAS)
    model = load_causal_lm(model_args)
    return build_sft_trainer(model, tokenizer, _args(tmp_path, **kw), train_dataset,
                             peft_config=get_peft_config(model_args), replay_kl_weight=weight)


def _replay_kl_to_base(trainer) -> float:
    """Mean KL(base || model) over the answer tokens of the replay prompts."""
    tok, model = trainer.processing_class, trainer.model
    total, n = 0.0, 0
    model.eval()
    for q, a in REPLAY:
        prompt = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        ids = tok(prompt + a, return_tensors="pt").input_ids
        start = len(tok(prompt).input_ids) - 1
        with torch.no_grad():
            student = model(ids).logits[0, start:-1].log_softmax(-1)
            with model.disable_adapter():
                teacher = model(ids).logits[0, start:-1].log_softmax(-1)
        total += torch.nn.functional.kl_div(student, teacher, log_target=True, reduction="sum").item()
        n += student.shape[0]
    return total / n


def test_replay_rows_cost_nothing_until_the_model_drifts(tmp_path):
    trainer = _kl_trainer(tmp_path, _with_replay())
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["replay"].any() and (~batch["replay"]).any()
    replay_only = {k: v[batch["replay"]] for k, v in batch.items()}
    trainer.model.train()
    at_start = trainer.compute_loss(trainer.model, dict(replay_only)).item()
    assert at_start < 1e-5  # LoRA starts as the identity (up to the fp16 cache of the teacher)
    with torch.no_grad():
        for n, p in trainer.model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    drifted = trainer.compute_loss(trainer.model, dict(replay_only)).item()
    assert drifted > 1e-3 and drifted > 100 * at_start, drifted
    # the cached teacher is still the base model (adapter off), row for row
    ids, mask = replay_only["input_ids"], replay_only["attention_mask"]
    keep = torch.zeros_like(ids, dtype=torch.bool)
    keep[:, :-1] = replay_only["labels"][:, 1:] != -100
    with torch.no_grad(), trainer.model.disable_adapter():
        fresh = trainer.model(input_ids=ids, attention_mask=mask).logits[keep].log_softmax(-1)
    cached = trainer._teacher_log_probs(trainer.model, ids.flip(0), mask.flip(0), keep.flip(0))  # other row order
    n_last = int(keep[-1].sum())
    torch.testing.assert_close(cached[:n_last], fresh[-n_last:], atol=2e-2, rtol=1e-3)


def test_replay_kl_keeps_the_model_near_its_base_on_replay_prompts(tmp_path):
    kw = dict(max_steps=12, learning_rate=1e-2)
    free = _kl_trainer(tmp_path / "free", _with_replay(), weight=0.0, **kw)
    held = _kl_trainer(tmp_path / "held", _with_replay(), weight=5.0, **kw)
    stats = train_and_measure(free), train_and_measure(held)
    assert all(s["final_train_loss"] < s["first_train_loss"] for s in stats)  # the task is learned either way
    drift_free, drift_held = _replay_kl_to_base(free), _replay_kl_to_base(held)
    assert drift_held < 0.5 * drift_free, (drift_held, drift_free)
    assert any(h.get("replay_kl", 0) > 0 for h in held.state.log_history)


def test_replay_kl_needs_the_replay_column(tmp_path):
    with pytest.raises(ValueError, match="'replay' column"):
        _kl_trainer(tmp_path, _dataset())


# --- reliability of resume: a kill at any step, a checkpoint left half-written, a finished run ------------------


@pytest.mark.parametrize("kill_at", sorted(__import__("random").Random(7).sample(range(2, 7), 2)))
def test_kill_at_any_step_resumes_onto_the_same_loss_curve(tmp_path, kill_at):
    kw = dict(save_strategy="steps", save_steps=2, max_steps=7)
    straight = _trainer(tmp_path / "a", **kw)
    straight.train()
    curve = {h["step"]: h["loss"] for h in straight.state.log_history if "loss" in h}

    killed = _trainer(tmp_path / "b", **kw)
    killed.add_callback(_Kill(kill_at, when="step"))
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    resumed = _trainer(tmp_path / "b", **kw)
    stats = train_and_measure(resumed)
    last_saved = kill_at - kill_at % 2 if kill_at % 2 else kill_at - 2  # step kill_at's own save never happened
    assert stats["resumed_from"] == f"checkpoint-{last_saved}"
    after = {h["step"]: h["loss"] for h in resumed.state.log_history if "loss" in h and h["step"] > last_saved}
    assert sorted(after) == list(range(last_saved + 1, 8))
    for step, loss in after.items():
        assert loss == pytest.approx(curve[step], rel=1e-5), f"loss at step {step} differs after resume"


@pytest.mark.parametrize("damage", ["truncate-weights", "drop-state", "truncate-optimizer"])
def test_resume_skips_a_half_written_checkpoint(tmp_path, damage, caplog):
    from common.train import checkpoint_problem, resume_checkpoint

    kw = dict(save_strategy="steps", save_steps=2, max_steps=4)
    trainer = _trainer(tmp_path, **kw)
    trainer.train()
    newest = tmp_path / "run" / "checkpoint-4"
    target = {"truncate-weights": newest / "adapter_model.safetensors", "drop-state": newest / "trainer_state.json",
              "truncate-optimizer": newest / "optimizer.pt"}[damage]
    if damage == "drop-state":
        target.unlink()
    else:
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    assert target.name in checkpoint_problem(newest)
    assert checkpoint_problem(tmp_path / "run" / "checkpoint-2") is None
    assert resume_checkpoint(trainer.args).endswith("checkpoint-2")
    assert "Skipping incomplete checkpoint checkpoint-4" in caplog.text and target.name in caplog.text
    trainer.args.resume_from_checkpoint = str(newest)  # named explicitly: a clear error, not a traceback
    with pytest.raises(ModelPathError, match=target.name):
        resume_checkpoint(trainer.args)


def test_a_finished_run_is_never_trained_over(tmp_path):
    from common.config import parse_config
    from common.errors import ConfigError

    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(ConfigError, match="already holds a finished run"):
        parse_config((SFTConfig,), ["--output_dir", str(tmp_path)])
    assert (tmp_path / "report.json").read_text() == "{}"


def test_lora_on_the_last_layers_only_trains_them_and_stops_backprop_below(tmp_path):
    model_args = ModelArguments(model_name_or_path=TINY_TEXT_ALIAS, lora_r=8, lora_alpha=16, lora_last_layers=1)
    model = load_causal_lm(model_args)
    layers = model.config.num_hidden_layers
    assert layers >= 2
    trainer = build_sft_trainer(model, load_tokenizer(TINY_TEXT_ALIAS), _args(tmp_path), _dataset(),
                                peft_config=peft_config(model_args, model))
    adapted = {n.split(".layers.")[1].split(".")[0] for n, _ in trainer.model.named_parameters() if "lora_" in n}
    assert adapted == {str(layers - 1)}
    # every linear module of the top layer is adapted, as with all-linear over every layer
    everywhere = load_causal_lm(ModelArguments(model_name_or_path=TINY_TEXT_ALIAS))
    full = peft_config(ModelArguments(model_name_or_path=TINY_TEXT_ALIAS), everywhere)
    assert full.layers_to_transform is None and full.target_modules == "all-linear"
    per_layer = {n.split(f".layers.{layers - 1}.")[1] for n, _ in get_peft_model(everywhere, full).named_parameters()
                 if f".layers.{layers - 1}." in n and "lora_" in n}
    assert per_layer == {n.split(f".layers.{layers - 1}.")[1] for n, _ in trainer.model.named_parameters()
                         if f".layers.{layers - 1}." in n and "lora_" in n}
    reached = []
    first = trainer.model.get_base_model().model.layers[0]
    first.register_full_backward_hook(lambda *a: reached.append(1))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    stats = train_and_measure(trainer)
    assert all(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters() if n in before)
    assert stats["final_train_loss"] < stats["first_train_loss"]
    assert not reached  # back-propagation never ran through the frozen layer below


@pytest.mark.parametrize("kw, message", [(dict(lora_last_layers=0), "lora_last_layers=0"),
                                         (dict(lora_last_layers=99), "transformer layers"),
                                         (dict(lora_last_layers=1, lora_target_modules=[".*proj"]), "pattern")])
def test_lora_last_layers_rejects_what_it_cannot_apply(kw, message):
    model_args = ModelArguments(model_name_or_path=TINY_TEXT_ALIAS, **kw)
    with pytest.raises(ConfigError, match=message):
        peft_config(model_args, load_causal_lm(model_args))
