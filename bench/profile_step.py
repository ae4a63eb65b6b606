"""Where a LoRA training step's time goes: ``torch.profiler`` over a few steps of the cookbook's text trainer.

    python bench/profile_step.py                 # ~1 min on 2 cores
    python bench/profile_step.py --lora_layers 15

The same set-up as case (c') of ``bench/trainers.py`` (SmolLM2-135M-Instruct, the chatbot's training rows, LoRA r16
on every linear layer, ``lora_dropout`` 0, batch 8, the hardware policy's precision): two untimed warm-up steps,
then ``--steps`` steps (forward, backward, AdamW) under the profiler. Prints the operators by self time and writes
``runs/bench/profile_step.json``: the share of the time spent in matrix multiplies (``aten::mm`` / ``addmm`` /
``bmm``), in the loss's log-softmax, and in attention, with the tokens of the profiled batches (real, answer,
padded), so the ceiling of any lever that removes overhead but not arithmetic can be read off.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

GROUPS = {"matmul": ("aten::mm", "aten::addmm", "aten::bmm"),
          "log_softmax": ("aten::_log_softmax", "aten::_log_softmax_backward_data"),
          "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                        "aten::_scaled_dot_product_flash_attention_for_cpu_backward")}


def main(argv: list[str] | None = None) -> dict:
    from torch.profiler import ProfilerActivity, profile
    from trainers import _cpu, _text_rows, write_report
    from trl import SFTConfig

    from common.config import ModelArguments, peft_config
    from common.hardware import precision_defaults
    from common.models import load_causal_lm, load_tokenizer
    from common.train import build_sft_trainer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (after two warm-up steps)")
    parser.add_argument("--lora_layers", type=int, default=None, help="LoRA on the last N layers only")
    parser.add_argument("--out", default="runs/bench/profile_step.json")
    args = parser.parse_args(argv)

    batch = 8
    config = SFTConfig(output_dir=str(REPO / "runs" / "bench" / "profile"), per_device_train_batch_size=batch,
                       max_length=256, report_to=[], save_strategy="no", seed=0, data_seed=0, disable_tqdm=True,
                       activation_checkpointing=False, **precision_defaults())
    model_args = ModelArguments(model_name_or_path="smollm2-135m-instruct", lora_r=16, lora_alpha=32,
                                lora_dropout=0.0, lora_last_layers=args.lora_layers)
    model = load_causal_lm(model_args)
    lora = peft_config(model_args, model)
    layers = lora.layers_to_transform
    trainer = build_sft_trainer(model, load_tokenizer("smollm2-135m-instruct"), config,
                                _text_rows(batch * (args.steps + 2)), peft_config=lora)
    batches = list(trainer.get_train_dataloader())[: args.steps + 2]
    model = trainer.model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(b: dict) -> None:
        model(**{k: b[k] for k in ("input_ids", "attention_mask", "labels")}).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    for b in batches[:2]:
        step(b)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches[2:]:
            step(b)
    table = prof.key_averages()
    print(table.table(sort_by="self_cpu_time_total", row_limit=15))
    total = sum(e.self_cpu_time_total for e in table)
    shares = {group: round(sum(e.self_cpu_time_total for e in table if e.key in names) / total, 3)
              for group, names in GROUPS.items()}
    profiled = batches[2:]
    report = {"cpu": _cpu(), "torch": torch.__version__, "precision": "bf16" if config.bf16 else "fp32",
              "lora_layers": "all" if layers is None else f"{layers[0]}-{layers[-1]}", "steps": len(profiled),
              "seconds_per_step": round(total / 1e6 / len(profiled), 2), "share_of_time": shares,
              "ceiling_if_only_matmuls_remained": round(1 / shares["matmul"], 2),
              "tokens": {"real": sum(int(b["attention_mask"].sum()) for b in profiled),
                         "answer": sum(int((b["labels"] != -100).sum()) for b in profiled),
                         "padded": sum(b["attention_mask"].numel() for b in profiled)}}
    return write_report(report, args.out, "share_of_time")


if __name__ == "__main__":
    main()
