"""Is the cost of fine-tuning linear in the data? The cookbook's SFT trainer on 1x, 2x and 4x the chatbot's rows.

    python bench/scaling.py                      # ~3.5 min on 2 cores; writes runs/bench/scaling.json
    python bench/scaling.py --scales 1 4 --steps 6

Per scale, in its own process (so that peak memory is its own), with the model, LoRA settings and batch of
``bench/trainers.py``'s ``cookbook`` case:

- ``setup_s``: building the trainer, which tokenizes every row -- expected to grow linearly with the rows;
- ``tokens_per_s`` over the same number of optimizer steps -- should be flat: no per-step work may depend on how
  many rows there are;
- ``peak_rss_mb`` -- should be flat up to the rows themselves: datasets keeps rows in Arrow tables, not as Python
  objects, and the trainer must not materialize the data set on the side.

The 2x and 4x data sets repeat the chatbot's training rows (phrasings of the help-center facts, ~49 tokens each):
what is measured is cost per row and step, which repeats do not change.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def run_scale(scale: int, steps: int) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trainers import _step_timer
    from trl import SFTConfig

    from common.config import ModelArguments
    from common.data import messages_to_prompt_completion
    from common.hardware import precision_defaults
    from common.models import load_causal_lm, load_tokenizer
    from common.paths import load_sibling
    from common.train import build_sft_trainer

    prepare = load_sibling(REPO / "usecase-chatbot" / "train.py", "prepare_data")
    data = REPO / "usecase-chatbot" / "data"
    splits = prepare.build_splits(data / "help_center.md", data / "questions.yaml",
                                  "You are the Brightboard support assistant.", seed=0)
    rows = Dataset.from_list([{"messages": r["messages"]} for r in splits["train"]] * scale)
    rows = rows.map(messages_to_prompt_completion, remove_columns=rows.column_names)
    batch = 8
    args = SFTConfig(output_dir=str(REPO / "runs" / "bench" / f"scale{scale}"), per_device_train_batch_size=batch,
                     learning_rate=1e-3, max_steps=steps + 1, logging_steps=1, save_strategy="no", report_to=[],
                     max_length=256, seed=0, data_seed=0, disable_tqdm=True, activation_checkpointing=False,
                     **precision_defaults())
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    model = load_causal_lm(ModelArguments(model_name_or_path="smollm2-135m-instruct"))
    start = time.perf_counter()
    trainer = build_sft_trainer(model, tokenizer, args, rows, peft_config=lora)
    setup = time.perf_counter() - start
    timer = _step_timer()
    trainer.add_callback(timer)
    trainer.train()
    tokens = timer.tokens[-1] - timer.tokens[0]
    return {"rows": len(rows), "setup_s": round(setup, 2), "tokens_per_s": round(tokens / sum(timer.times[1:]), 1),
            "seconds_per_step": round(sum(timer.times[1:]) / steps, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per scale")
    parser.add_argument("--out", default="runs/bench/scaling.json")
    parser.add_argument("--scale", type=int, help=argparse.SUPPRESS)  # internal: one scale in this process
    args = parser.parse_args(argv)
    if args.scale:
        result = run_scale(args.scale, args.steps)
        print(json.dumps(result))
        return result
    from trainers import _cpu, write_report

    report: dict = {"cpu": _cpu(), "steps": args.steps, "scales": {}}
    for scale in args.scales:
        print(f"== {scale}x", flush=True)
        proc = subprocess.run([sys.executable, __file__, "--scale", str(scale), "--steps", str(args.steps)],
                              cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{scale}x failed:\n{proc.stderr[-3000:]}")
        report["scales"][f"{scale}x"] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(report["scales"][f"{scale}x"]), flush=True)
    runs = list(report["scales"].values())
    first, last = runs[0], runs[-1]
    report["ratios_last_vs_first"] = {
        "rows": round(last["rows"] / first["rows"], 2),
        "setup_s": round(last["setup_s"] / first["setup_s"], 2),
        "tokens_per_s": round(last["tokens_per_s"] / first["tokens_per_s"], 2),
        "peak_rss_mb": round(last["peak_rss_mb"] / first["peak_rss_mb"], 2)}
    return write_report(report, args.out, "ratios_last_vs_first")


if __name__ == "__main__":
    main()
