"""Does bf16 autocast speed up the cookbook's models on this CPU? fp32 vs bf16, same steps, same data.

    python bench/cpu_precision.py                 # ~3 min on 2 cores; prints a table, writes runs/bench/precision.json
    python bench/cpu_precision.py --steps 10

Measures (one process, nothing else should run meanwhile):
- matmul throughput (GFLOP/s) in fp32 and bf16 for a LoRA-step-sized matmul (400 x 576 x 1536) and a large one;
- SmolLM2-135M-Instruct (embedded), LoRA r16 on all linear layers, batch 8 x 80 tokens: seconds per optimizer
  step and the loss trajectory, fp32 vs bf16 autocast;
- EfficientNet-Lite0 (embedded), full fine-tune, batch 32 at 128 px: seconds per step, fp32 vs bf16 autocast.
The precision policy (common/hardware.py) follows these figures: see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def matmul_gflops(dtype: torch.dtype, n: int, k: int, m: int, iters: int) -> float:
    a, b = torch.randn(n, k, dtype=dtype), torch.randn(k, m, dtype=dtype)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    return 2 * n * k * m * iters / (time.perf_counter() - start) / 1e9


def time_steps(step, steps: int) -> tuple[float, list[float]]:
    """Seconds per step (the first, warm-up step excluded) and the losses."""
    losses, times = [], []
    for _ in range(steps + 1):
        start = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - start)
    return sum(times[1:]) / steps, losses


def text_step(precision: str, steps: int) -> tuple[float, list[float]]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from common.models import prepare_embedded

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(prepare_embedded("smollm2-135m-instruct"), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batch = torch.randint(0, 49_000, (8, 80), generator=torch.Generator().manual_seed(0))

    def step() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.item()

    return time_steps(step, steps)


def vision_step(precision: str, steps: int) -> tuple[float, list[float]]:
    from common.vision import load_backbone

    torch.manual_seed(0)
    model, _ = load_backbone("efficientnet-lite0", 5)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    images, labels = torch.randn(32, 3, 128, 128, generator=gen), torch.randint(0, 5, (32,), generator=gen)

    def step() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = torch.nn.functional.cross_entropy(model(images).float(), labels)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.item()

    return time_steps(step, steps)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per case (after one warm-up step)")
    parser.add_argument("--out", default="runs/bench/precision.json")
    args = parser.parse_args(argv)
    from common.hardware import detect

    result: dict = {"hardware": detect().describe(), "threads": torch.get_num_threads(), "torch": torch.__version__}
    result["matmul_gflops"] = {
        f"{name} {shape}": {p: round(matmul_gflops(dt, *dims, iters), 1)
                            for p, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
        for name, shape, dims, iters in (("lora-step", "400x576x1536", (400, 576, 1536), 50),
                                          ("large", "2048^3", (2048, 2048, 2048), 5))}
    for name, fn in (("smollm2_lora_step_s", text_step), ("efficientnet_full_step_s", vision_step)):
        result[name] = {}
        for precision in ("fp32", "bf16"):
            seconds, losses = fn(precision, args.steps)
            result[name][precision] = {"seconds": round(seconds, 3), "losses": [round(v, 4) for v in losses]}
        result[name]["bf16_speedup"] = round(result[name]["fp32"]["seconds"] / result[name]["bf16"]["seconds"], 2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
