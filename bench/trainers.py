"""The cookbook's trainers side by side with what a user would otherwise run: plain TRL and a plain timm loop.

    make bench                                   # = python bench/trainers.py; ~3 min on 2 cores
    python bench/trainers.py --text_steps 6 --vision_steps 6
    python bench/trainers.py --case cookbook_dropout0 --text_batch 16      # one case alone, 16 rows a step

Same model, same rows, same LoRA settings, same number of optimizer steps in every text case; each case runs in
its own process one after the other (nothing else should run meanwhile) so that peak memory is its own:

- text (SmolLM2-135M-Instruct, embedded; the chatbot's own training rows; LoRA r16 on every linear layer; batch 8):
  (a) ``trl_default``: TRL ``SFTTrainer`` with ``SFTConfig``'s defaults as its docs show them (its default
      precision and gradient checkpointing; ``use_cpu=True``, which TRL needs on a CPU);
  (b) ``trl_fp32``: the same with fp32 and no gradient checkpointing;
  (c) ``cookbook``: ``common.train.build_sft_trainer`` with the hardware policy's precision (on a CPU its loss
      projects only the answer positions onto the vocabulary: ``common.sft_losses``);
  (c') ``cookbook_dropout0``: the same with ``lora_dropout=0`` -- one speed lever: PEFT then skips the dropout of
       every LoRA module's input (a full-size copy of the activations per module and step);
  (c'') ``cookbook_compiled``: (c') with ``torch_compile=True`` (the Trainer compiles the model with
       ``torch.compile``, Inductor); its compile time is the first steps' (``warmup_s``), outside the steady rate.
       ~8 min on 2 cores, so not in the default sequence: ``python bench/trainers.py --case cookbook_compiled``;
  (c''') ``cookbook_top_layers``: (c') with LoRA on the last ``--lora_layers`` transformer layers only (default 15
       of 30): back-propagation then stops at the lowest adapted layer (a lever on the work, not the kernels; run
       alone: ``python bench/trainers.py --case cookbook_top_layers --lora_layers 15``);
  (c'''') ``cookbook_grouped``: (c') with batches of rows of similar length (``train_sampling_strategy:
       group_by_length``, the Trainer's ``LengthGroupedSampler``): less padding, other batches (run alone);
- vision (EfficientNet-Lite0, embedded; the defects recipe's generated images at 128 px; full fine-tune; batch 32):
  (d) ``plain_vision``: a plain timm + PyTorch loop (AdamW, DataLoader defaults), fp32;
  (e) ``cookbook_vision``: ``common.vision.build_trainer`` (HF Trainer) with the policy's precision.

Writes ``runs/bench/bench.json``: per case seconds per step (first step excluded), tokens/s or images/s, peak RSS,
precision; the CPU model and flags; the ratios ``cookbook_vs_trl_default``, ``cookbook_vs_trl_fp32``,
``vision_vs_plain``; a matmul peak measured in the same run and the achieved FLOP/s of each text case.

FLOP accounting (text, LoRA): ~4·N FLOP per processed token -- the forward (2·N) plus the gradients with respect
to the activations (2·N) that back-propagation needs through the frozen weights; the frozen weights get no weight
gradient and the LoRA matrices are ~3% of N. N = the model's matmul parameters (all but the input embedding; the
tied LM head counts once), padding tokens excluded. With LoRA on the top layers only (c'''), the activation
gradients stop at the lowest adapted layer: 2·N + 2·N_above per token, N_above = the matmul parameters from that
layer up (LM head included). These are *model* FLOPs, as in MFU: work a case skips (the cookbook's loss projects
only the answer positions onto the vocabulary) or repeats (TRL's CPU loss projects every position twice,
checkpointing recomputes the forward) does not change the count, only the time.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TEXT_CASES = ("trl_default", "trl_fp32", "cookbook", "cookbook_dropout0", "cookbook_compiled", "cookbook_top_layers",
              "cookbook_grouped")
VISION_CASES = ("plain_vision", "cookbook_vision")
WARMUP_STEPS = {"cookbook_compiled": 3}  # beyond the first step: recompilations for new sequence lengths


def _step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time of every optimizer step and the trained-token count TRL logs after it."""

        def __init__(self):
            self.times, self.tokens, self._start = [], [], 0.0

        def on_step_begin(self, args, state, control, **kw):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self._start)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "num_tokens" in logs:
                self.tokens.append(float(logs["num_tokens"]))

    return StepTimer()


def _text_rows(n: int):
    from common.data import messages_to_prompt_completion
    from common.paths import load_sibling

    prepare = load_sibling(REPO / "usecase-chatbot" / "train.py", "prepare_data")
    data = REPO / "usecase-chatbot" / "data"
    splits = prepare.build_splits(data / "help_center.md", data / "questions.yaml",
                                  "You are the Brightboard support assistant.", seed=0)
    from datasets import Dataset

    ds = Dataset.from_list([{"messages": r["messages"]} for r in splits["train"][:n]])
    return ds.map(messages_to_prompt_completion, remove_columns=ds.column_names)


def run_text(case: str, steps: int, batch: int = 8, lora_layers: int = 15) -> dict:
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from common.config import ModelArguments, peft_config
    from common.hardware import precision_defaults
    from common.models import load_causal_lm, load_tokenizer
    from common.train import build_sft_trainer

    rows = _text_rows(batch * (steps + 1))
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05 if case in ("trl_default", "trl_fp32", "cookbook") else 0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    common = dict(output_dir=str(REPO / "runs" / "bench" / case), per_device_train_batch_size=batch,
                  learning_rate=1e-3, max_steps=steps + 1, logging_steps=1, save_strategy="no", report_to=[],
                  max_length=256, seed=0, data_seed=0, disable_tqdm=True)
    if case == "trl_default":
        args = SFTConfig(**common, use_cpu=not torch.cuda.is_available())  # everything else: TRL's defaults
    elif case == "trl_fp32":
        args = SFTConfig(**common, use_cpu=not torch.cuda.is_available(), bf16=False, fp16=False,
                         activation_checkpointing=False)
    else:
        args = SFTConfig(**common, **precision_defaults(), activation_checkpointing=False,
                         torch_compile=case == "cookbook_compiled",
                         train_sampling_strategy="group_by_length" if case == "cookbook_grouped" else "random")
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    timer = _step_timer()
    if case.startswith("cookbook"):
        model_args = ModelArguments(model_name_or_path="smollm2-135m-instruct", lora_r=16, lora_alpha=32,
                                    lora_dropout=lora.lora_dropout,
                                    lora_last_layers=lora_layers if case == "cookbook_top_layers" else None)
        model = load_causal_lm(model_args)
        lora = peft_config(model_args, model)  # = `lora` above, or the recipes' top-layers config
        trainer = build_sft_trainer(model, tokenizer, args, rows, peft_config=lora)
    else:  # plain TRL: the model path as a user would pass it, loaded by TRL itself
        from common.models import prepare_embedded

        trainer = SFTTrainer(model=str(prepare_embedded("smollm2-135m-instruct")), args=args, train_dataset=rows,
                             processing_class=tokenizer, peft_config=lora)
    trainer.add_callback(timer)
    trainer.train()
    model = trainer.model
    n_matmul = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lora_" not in n)
    if model.config.tie_word_embeddings:  # the LM head is the input embedding, used as a matmul
        n_matmul += model.get_input_embeddings().weight.numel()
    n_backward = n_matmul  # matmul parameters the activation gradients pass through
    first = lora.layers_to_transform[0] if lora.layers_to_transform else None
    if first is not None:
        n_backward -= sum(p.numel() for n, p in model.named_parameters()
                          if "lora_" not in n and any(f"layers.{i}." in n for i in range(first)))
    skip = 1 + WARMUP_STEPS.get(case, 0)  # the first step (and a compiled model's recompilations) are warm-up
    seconds = sum(timer.times[skip:]) / (len(timer.times) - skip)
    tokens = (timer.tokens[-1] - timer.tokens[skip - 1]) if len(timer.tokens) > skip else float("nan")
    tokens_per_s = tokens / sum(timer.times[skip:])
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    return {"seconds_per_step": round(seconds, 3), "tokens_per_s": round(tokens_per_s, 1),
            "warmup_s": round(sum(timer.times[:skip]), 1), "step_times": [round(t, 2) for t in timer.times],
            "tokens_per_step": round(tokens / (len(timer.times) - skip), 1), "precision": precision,
            "activation_checkpointing": bool(args.activation_checkpointing),
            "achieved_gflops": round(2 * (n_matmul + n_backward) * tokens_per_s / 1e9, 1),
            "matmul_parameters": n_matmul, "lora_layers": "all" if first is None else f"{first}-{lora.layers_to_transform[-1]}"}


def _vision_data(n: int):
    from common.paths import load_sibling
    from common.vision import ImageDataset, VisionDataArguments, build_transforms, load_splits

    prepare = load_sibling(REPO / "usecase-vision-defects" / "train.py", "prepare_data")
    data_args = VisionDataArguments(data_dir=prepare.resolve_data_dir("usecase-vision-defects/data/generated",
                                                                     prepare.GenerationArguments()), image_size=128)
    splits = load_splits(data_args, seed=0)
    classes = sorted({s.label for s in splits["train"]})
    norm = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    tf = build_transforms(128, norm["mean"], norm["std"], train=True)
    return ImageDataset(splits["train"][:n], classes, tf), classes


def run_vision(case: str, steps: int) -> dict:
    from common.vision import load_backbone

    batch = 32
    dataset, classes = _vision_data(batch * (steps + 1))
    torch.manual_seed(0)
    model, _ = load_backbone("efficientnet-lite0", len(classes))
    if case == "plain_vision":
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model.train()
        times = []
        for batch_ in loader:
            start = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(batch_["pixel_values"]), batch_["labels"])
            loss.backward()
            opt.step()
            opt.zero_grad()
            times.append(time.perf_counter() - start)
        precision = "fp32"
    else:
        from transformers import TrainingArguments

        from common.hardware import precision_defaults
        from common.vision import ImageClassifier, build_trainer

        args = TrainingArguments(output_dir=str(REPO / "runs" / "bench" / case), per_device_train_batch_size=batch,
                                 learning_rate=1e-3, max_steps=steps + 1, logging_steps=1, save_strategy="no",
                                 eval_strategy="no", report_to=[], seed=0, disable_tqdm=True, **precision_defaults())
        trainer = build_trainer(ImageClassifier(model), args, dataset, None)
        timer = _step_timer()
        trainer.add_callback(timer)
        trainer.train()
        times = timer.times
        precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    seconds = sum(times[1:]) / steps
    return {"seconds_per_step": round(seconds, 3), "images_per_s": round(batch / seconds, 1), "precision": precision}


def matmul_peak_gflops(dtype: torch.dtype, iters: int = 50) -> float:
    """Throughput of a LoRA-step-sized matmul (400 x 576 x 1536), the shapes the text cases run."""
    a, b = torch.randn(400, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    return round(2 * 400 * 576 * 1536 * iters / (time.perf_counter() - start) / 1e9, 1)


def _cpu() -> dict:
    flags = ""
    if Path("/proc/cpuinfo").exists():
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    from common.hardware import detect

    return {"model": detect().describe(), "processor": platform.processor() or platform.machine(),
            "flags": [f for f in wanted if f in flags.split()], "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text_steps", type=int, default=8, help="timed optimizer steps per text case")
    parser.add_argument("--vision_steps", type=int, default=8, help="timed optimizer steps per vision case")
    parser.add_argument("--text_batch", type=int, default=8, help="rows per text step (one lever: bigger matmuls)")
    parser.add_argument("--lora_layers", type=int, default=15, help="cookbook_top_layers: LoRA on the last N layers")
    parser.add_argument("--out", default="runs/bench/bench.json")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = parser.parse_args(argv)
    if args.case:  # one case, in its own process: print its figures as the last line
        result = (run_text(args.case, args.text_steps, args.text_batch, args.lora_layers) if args.case in TEXT_CASES
                  else run_vision(args.case, args.vision_steps))
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        print(json.dumps(result))
        return result

    report: dict = {"cpu": _cpu(), "torch": torch.__version__, "text_steps": args.text_steps,
                    "text_batch": args.text_batch, "vision_steps": args.vision_steps,
                    "matmul_peak_gflops": {"fp32": matmul_peak_gflops(torch.float32),
                                           "bf16": matmul_peak_gflops(torch.bfloat16)}, "cases": {}}
    for case in [c for c in TEXT_CASES + VISION_CASES
                 if c not in ("cookbook_compiled", "cookbook_top_layers", "cookbook_grouped")]:
        print(f"== {case}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--case", case, "--text_steps", str(args.text_steps),
                               "--text_batch", str(args.text_batch), "--vision_steps", str(args.vision_steps)], cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{case} failed:\n{proc.stderr[-3000:]}")
        report["cases"][case] = {**json.loads(proc.stdout.strip().splitlines()[-1]),
                                 "wall_s": round(time.perf_counter() - start, 1)}
        print(json.dumps(report["cases"][case]), flush=True)
    c = report["cases"]
    report["ratios"] = {
        "cookbook_vs_trl_default": round(c["cookbook"]["tokens_per_s"] / c["trl_default"]["tokens_per_s"], 2),
        "cookbook_vs_trl_fp32": round(c["cookbook"]["tokens_per_s"] / c["trl_fp32"]["tokens_per_s"], 2),
        "vision_vs_plain": round(c["cookbook_vision"]["images_per_s"] / c["plain_vision"]["images_per_s"], 2),
        "lora_dropout0_vs_cookbook": round(c["cookbook_dropout0"]["tokens_per_s"] / c["cookbook"]["tokens_per_s"], 2),
        "cookbook_dropout0_vs_trl_fp32": round(c["cookbook_dropout0"]["tokens_per_s"] / c["trl_fp32"]["tokens_per_s"], 2),
        "cookbook_dropout0_vs_trl_default": round(c["cookbook_dropout0"]["tokens_per_s"]
                                                  / c["trl_default"]["tokens_per_s"], 2)}
    for case in [t for t in TEXT_CASES if t in c]:
        peak = report["matmul_peak_gflops"][c[case]["precision"] if c[case]["precision"] != "fp16" else "fp32"]
        c[case]["share_of_matmul_peak"] = round(c[case]["achieved_gflops"] / peak, 3)
    return write_report(report, args.out, "ratios")


def write_report(report: dict, out: str, summary: str) -> dict:
    """Write ``report`` as JSON under the repository and print its ``summary`` entry."""
    path = REPO / out
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report[summary], indent=2))
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
