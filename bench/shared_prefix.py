"""What running the shared prefix once per batch saves: the same batches, with and without, in one process.

    python bench/shared_prefix.py                  # ~2 min on 2 cores

Every row of the chatbot's batches starts with the same 16 tokens (system prompt and chat-template headers).
``common.sft_losses.answer_logits`` runs them once per batch and lets the rows attend to their cached keys and
values. Timing two whole training runs against each other cannot resolve a few percent on a shared 2-core VM (the
same 8-step case of ``bench/trainers.py`` gave 143 and 167 tokens/s on one day), so this times the two ways on the
*same* batches, alternating them, in one process: the trainer's loss and its backward pass (case (c') of
``bench/trainers.py``: SmolLM2-135M, LoRA r16 on every linear layer, ``lora_dropout`` 0, 8 of the chatbot's training
rows a step), ``--batches`` batches twice, in both orders. Then, on one batch, the forward passes alone: the full
rows, the prefix alone (what one more pass costs: the ground for ``MIN_SAVED_TOKENS``) and the rows after it. Writes
``runs/bench/shared_prefix.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 3)


def main(argv: list[str] | None = None) -> dict:
    from trainers import _cpu, _text_rows, write_report
    from trl import SFTConfig

    import common.sft_losses as losses
    from common.config import ModelArguments, peft_config
    from common.hardware import precision_defaults
    from common.models import load_causal_lm, load_tokenizer
    from common.train import build_sft_trainer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--out", default="runs/bench/shared_prefix.json")
    args = parser.parse_args(argv)

    model_args = ModelArguments(model_name_or_path="smollm2-135m-instruct", lora_r=16, lora_alpha=32, lora_dropout=0.0)
    model = load_causal_lm(model_args)
    config = SFTConfig(output_dir=str(REPO / "runs" / "bench" / "shared_prefix"), report_to=[], max_length=256,
                       per_device_train_batch_size=args.batch_size, max_steps=1, save_strategy="no", seed=0,
                       data_seed=0, disable_tqdm=True, activation_checkpointing=False, **precision_defaults())
    trainer = build_sft_trainer(model, load_tokenizer("smollm2-135m-instruct"), config,
                                _text_rows(args.batch_size * args.batches), peft_config=peft_config(model_args, model))
    batches = list(trainer.get_train_dataloader())[:args.batches]
    model = trainer.model
    model.train()
    measured = losses.shared_prefix_length

    def step(batch: dict) -> None:
        model.zero_grad()
        trainer.compute_loss(model, dict(batch)).backward()

    seconds = {"shared": [], "full": []}
    for order in (("shared", "full"), ("full", "shared")):
        for batch in batches:
            for way in order:
                losses.shared_prefix_length = measured if way == "shared" else (lambda *a: 0)
                start = time.perf_counter()
                step(batch)
                seconds[way].append(time.perf_counter() - start)
    losses.shared_prefix_length = measured

    batch = batches[len(batches) // 2]
    ids, mask = batch["input_ids"], batch["attention_mask"]
    keep, _ = losses.answer_positions(batch["labels"])
    prefix = measured(ids, mask, keep)
    with torch.no_grad():
        forward = {"full_rows": _median_seconds(lambda: model(input_ids=ids, attention_mask=mask, use_cache=False,
                                                              logits_to_keep=keep), 6),
                   "prefix_alone": _median_seconds(lambda: model(input_ids=ids[:1, :prefix],
                                                                 attention_mask=mask[:1, :prefix], use_cache=True), 6),
                   "shared": _median_seconds(lambda: losses.answer_logits(model, ids, mask, keep), 6)}
    report = {"cpu": _cpu(), "batches": len(batches), "rows_per_batch": args.batch_size,
              "prefix_tokens": [measured(b["input_ids"], b["attention_mask"], losses.answer_positions(b["labels"])[0])
                                for b in batches],
              "tokens_per_batch": [int(b["input_ids"].numel()) for b in batches],
              "loss_and_backward_seconds": {way: {"median": round(statistics.median(t), 3), "total": round(sum(t), 1)}
                                            for way, t in seconds.items()},
              "forward_seconds_one_batch": {**forward, "tokens": int(ids.numel()), "prefix_tokens": prefix}}
    report["summary"] = {"time_saved": round(1 - sum(seconds["shared"]) / sum(seconds["full"]), 3),
                         **report["loss_and_backward_seconds"], "forward": report["forward_seconds_one_batch"]}
    return write_report(report, args.out, "summary")


if __name__ == "__main__":
    main()
