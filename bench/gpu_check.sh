#!/usr/bin/env bash
# The cookbook's CUDA paths, checked on one GPU, one step after another (nothing else running meanwhile):
#
#   bash bench/gpu_check.sh [OUT_DIR]           # default runs/gpu-check; stops at GPU_CHECK_SECONDS (520 s)
#
# Steps (each under its own time limit; a step that fails is logged and the next one runs; steps that no longer
# fit in GPU_CHECK_SECONDS are skipped):
#   env           the GPU, library versions, and what the hardware policy picks (bf16 + TF32 on Ampere or newer)
#   qlora_load    SmolLM2 loaded as 4-bit NF4 through bitsandbytes (QLoRA) beside the bf16 load: memory, answers
#   chatbot_ci    the chatbot's CI tier on the GPU (bf16 LoRA): before -> after, throughput, peak GPU memory
#   chatbot_qlora the same with load_in_4bit: true (QLoRA), merged into the unquantized base at export
#   vision_ci     the defects recipe's CI tier (bf16 autocast, channels-last)
#   medical_ci    the medical CI tier: SFT, then DPO with the adapter-disabled model as reference
#   bench_text    bench/trainers.py's text cases on the GPU (plain TRL defaults, plain TRL fp32, the cookbook)
#   tests         the tiny-model recipe and trainer tests (what `make test-bf16` runs on a CPU) on the GPU
#   car_ci        the car-damage CI tier
#   chatbot_gpu   the chatbot's full GPU config (config.gpu.yaml)
# Each step writes OUT_DIR/<step>.log; OUT_DIR/steps.log lists every step's exit status and seconds. With
# GPU_CHECK_STEPS="vision_ci car_ci" only the steps named run. With GPU_CHECK_ARCHIVE=FILE, OUT_DIR's logs and reports (no weights) are packed into FILE after every step.
set -u
OUT_DIR=${1:-runs/gpu-check}
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_SECONDS:-520}
mkdir -p "$OUT_DIR"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
START=$(date +%s)

archive() {
  [ -n "${GPU_CHECK_ARCHIVE:-}" ] || return 0
  tar czf "$GPU_CHECK_ARCHIVE" --exclude='*.safetensors' --exclude='*.pt' --exclude='*.pth' --exclude='*.bin' \
    --exclude='checkpoint-*' --exclude='events.out.*' "$OUT_DIR" 2>/dev/null || true
}

step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2 left t0 rc
  shift 2
  [[ -z "${GPU_CHECK_STEPS:-}" || " $GPU_CHECK_STEPS " == *" $name "* ]] || return 0
  left=$(( BUDGET - ($(date +%s) - START) ))
  if (( left < 30 )); then echo "== $name: skipped ($left s left)" | tee -a "$OUT_DIR/steps.log"; return; fi
  (( limit > left )) && limit=$left
  t0=$(date +%s)
  timeout "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
  rc=$?
  echo "== $name: rc $rc, $(( $(date +%s) - t0 )) s (limit $limit s)" | tee -a "$OUT_DIR/steps.log"
  tail -n 4 "$OUT_DIR/$name.log"
  archive
}

step env 60 bash -c "nvidia-smi; $PY - <<'EOF'
import importlib.metadata as md, json, torch
from common.hardware import detect, precision_defaults
hw = detect()
print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, **{p: md.version(p) for p in
      ('transformers', 'trl', 'peft', 'accelerate', 'datasets', 'bitsandbytes', 'timm')}}))
print('policy:', hw.describe(), precision_defaults())
print('tf32 matmul:', torch.backends.cuda.matmul.allow_tf32)
EOF"

step qlora_load 120 "$PY" - <<'EOF'
import json, time, torch
from common.config import ModelArguments
from common.evaluation import generate_chat
from common.models import load_causal_lm, load_tokenizer
tok = load_tokenizer("smollm2-135m-instruct")
q = [[{"role": "user", "content": "What is the capital of France?"}],
     [{"role": "user", "content": "How many days are in a week?"}]]
for four in (False, True):
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    m = load_causal_lm(ModelArguments(model_name_or_path="smollm2-135m-instruct", load_in_4bit=four,
                                      bnb_4bit_quant_type="nf4"))
    m = m if four else m.to("cuda")  # a 4-bit model is placed on the GPU as it loads
    kinds = sorted({type(mod).__name__ for mod in m.modules() if "Linear" in type(mod).__name__})
    print(json.dumps({"load_in_4bit": four, "dtype": str(m.dtype), "linear_kinds": kinds,
                      "footprint_mb": round(m.get_memory_footprint() / 2**20, 1),
                      "load_s": round(time.perf_counter() - t0, 1), "answers": generate_chat(m, tok, q, 24)}))
    del m
EOF

step chatbot_ci 240 "$PY" usecase-chatbot/train.py --config usecase-chatbot/config.ci.yaml \
  --output_dir "$OUT_DIR/chatbot-ci"
step chatbot_qlora 240 "$PY" usecase-chatbot/train.py --config usecase-chatbot/config.ci.yaml \
  --load_in_4bit true --output_dir "$OUT_DIR/chatbot-ci-qlora"
step vision_ci 240 "$PY" usecase-vision-defects/train.py --config usecase-vision-defects/config.ci.yaml \
  --output_dir "$OUT_DIR/vision-defects-ci"
step medical_ci 240 "$PY" usecase-medical/train.py --config usecase-medical/config.ci.yaml \
  --output_dir "$OUT_DIR/medical-ci"
step bench_text 180 bash -c "for c in trl_default trl_fp32 cookbook; do echo \"== \$c\"; \
  $PY bench/trainers.py --case \$c --text_steps 20 2>&1 | tail -n 1; done"
step tests 200 "$PY" -m pytest -q -p no:cacheprovider -n 8 -m "not slow and not ci" \
  tests/test_contract.py tests/test_sft.py tests/test_hardware.py tests/test_models.py
step car_ci 240 "$PY" usecase-car-damage/train.py --config usecase-car-damage/config.ci.yaml \
  --output_dir "$OUT_DIR/car-damage-ci"
step chatbot_gpu 400 "$PY" usecase-chatbot/train.py --config usecase-chatbot/config.gpu.yaml \
  --output_dir "$OUT_DIR/chatbot-gpu"
echo "total $(( $(date +%s) - START )) s" | tee -a "$OUT_DIR/steps.log"
archive
