"""``cookbook export RUN_DIR``: take a finished run's model elsewhere.

    cookbook export runs/chatbot --gguf q8_0              # RUN_DIR/gguf/chatbot-q8_0.gguf + Modelfile (llama.cpp, Ollama)
    cookbook export runs/chatbot --gguf f16 --check 8     # ... and compare llama.cpp's answers with transformers'
    cookbook export runs/chatbot --card                   # only refresh merged/README.md's metrics from report.json
    cookbook export runs/car-damage --onnx                # RUN_DIR/onnx/model.onnx, parity + speed vs PyTorch

A text run (chatbot, legal, medical) exports its merged model (``RUN_DIR/merged``; a full fine-tune: the run folder
itself; a LoRA run saved without one: merged first, as train.py would) to GGUF; a vision run (vision-defects, car-damage) exports to ONNX. Every export of a text run first puts
the run's before -> after metrics into the model card. What cannot work stops with one line naming the fix
(:class:`~common.errors.ConfigError` / :class:`~common.errors.ModelPathError`, exit code 2 under ``run_main``):
an unfinished run, a vision run to GGUF, a text run to ONNX, a missing optional extra.
"""

from __future__ import annotations

import json
from pathlib import Path

from common.errors import ConfigError, ModelPathError

TEXT, VISION = "text", "vision"


def finished_report(run_dir: Path) -> dict:
    """The run's ``report.json`` (train.py writes it last, so its presence means the run finished)."""
    if not run_dir.is_dir():
        raise ModelPathError(f"{run_dir} is not a run folder: pass the folder that train.py --output_dir wrote")
    path = run_dir / "report.json"
    if not path.is_file():
        raise ModelPathError(f"{run_dir} holds no report.json: the run is not finished (train.py writes it last). "
                             f"Fix: finish it (the same train.py command resumes from its last checkpoint)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise ModelPathError(f"{path}: not valid JSON; re-run train.py or pass another run folder") from None


def run_kind(run_dir: Path) -> str:
    """``"vision"`` for a timm classifier / multi-task run (``config.json`` with ``pretrained_cfg``), else ``"text"``."""
    config = run_dir / "config.json"
    if config.is_file():
        try:
            if "pretrained_cfg" in json.loads(config.read_text()):
                return VISION
        except ValueError:
            raise ModelPathError(f"{config}: not valid JSON; re-run train.py or pass another run folder") from None
    return TEXT


def text_model_dir(run_dir: Path, report: dict) -> Path:
    """The folder to convert: ``RUN_DIR/merged``; a full fine-tune's run folder; or, for a LoRA run saved without
    a merged model (``export_merged: false``), ``RUN_DIR/merged`` written now by :func:`merge_adapter_run`."""
    from common.models import check_model_dir

    for folder in (run_dir / "merged", run_dir):
        if (folder / "config.json").is_file() and check_model_dir(folder) == "full":
            return folder
    if (run_dir / "adapter_config.json").is_file():
        return merge_adapter_run(run_dir, report)
    raise ModelPathError(f"{run_dir} holds no model (neither merged/ nor an adapter): pass the folder that "
                         f"train.py --output_dir wrote")


def merge_adapter_run(run_dir: Path, report: dict) -> Path:
    """Merge the run's LoRA adapter into its base weights as train.py does (parity-checked on the run's test
    prompts, with the model card), into ``RUN_DIR/merged``."""
    from common.export import merge_and_export
    from common.gguf_check import held_out_conversations
    from common.models import load_trained_causal_lm

    model, tokenizer = load_trained_causal_lm(run_dir)  # ModelPathError for an incomplete adapter
    system = settings(run_dir).get("system_prompt")
    probe = [c for _, c in held_out_conversations(run_dir, 4, system)] if (run_dir / "data" / "test.jsonl").is_file() \
        else [[{"role": "user", "content": "Hello"}]]
    usecase = report.get("usecase", "model")
    merge_and_export(model, tokenizer, run_dir / "merged", probe,
                     card={"task": f"{usecase} (Fine-Tuning Cookbook)", "usecase": f"usecase-{usecase}",
                           "base_model": report.get("model"), "primary_metric": report.get("primary_metric"),
                           "data": f"see usecase-{usecase}/README.md"})
    return run_dir / "merged"


def settings(run_dir: Path) -> dict:
    """The run's inference settings (``inference.json``: system prompt, max_new_tokens); ``{}`` when absent."""
    path = run_dir / "inference.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:
        raise ModelPathError(f"{path}: not valid JSON; re-run train.py or pass another run folder") from None


def export_run(run_dir: str | Path, gguf: str | None = None, onnx: bool = False, card: bool = False,
               check: int = 0, out_dir: str | Path | None = None, threads: int = 2) -> dict:
    """Export a finished run; returns what was written and measured (see the module docstring).

    Args:
        gguf: ``f16``, ``q8_0`` (or ``f32``, ``bf16``): a text run's GGUF + Ollama Modelfile.
        onnx: a vision run's ONNX file, with parity and speed against PyTorch.
        card: refresh the model card's metrics (done by every text export anyway).
        check: compare llama.cpp's greedy answers to the first ``check`` test questions with transformers'.
        out_dir: where the files go (default ``RUN_DIR/gguf`` or ``RUN_DIR/onnx``).
        threads: CPU threads for the speed measurements and the check.
    """
    run_dir = Path(run_dir)
    if not (gguf or onnx or card):
        raise ConfigError("cookbook export: say what to export: --gguf f16|q8_0 (text runs), --onnx (vision runs) "
                          "or --card")
    if check and not gguf:
        raise ConfigError("--check compares a GGUF file with the merged model: add --gguf f16|q8_0")
    report = finished_report(run_dir)
    kind = run_kind(run_dir)
    result: dict = {"run_dir": str(run_dir), "kind": kind}
    if kind == VISION:
        if gguf or card:
            raise ConfigError(f"{run_dir} is a vision run: GGUF and the text model card are for language models "
                              f"(llama.cpp, Ollama). Fix: cookbook export {run_dir} --onnx")
        from common.onnx_export import export_onnx

        return {**result, **export_onnx(run_dir, Path(out_dir or run_dir / "onnx"), threads)}
    if onnx:
        raise ConfigError(f"{run_dir} is a text run: ONNX export covers the vision runs. Fix: cookbook export "
                          f"{run_dir} --gguf f16 (llama.cpp, Ollama)")
    model_dir = text_model_dir(run_dir, report)
    if (model_dir / "README.md").is_file():
        from common.model_card import refresh_metrics

        result["card"] = str(refresh_metrics(model_dir, report))
    if gguf:
        from common.gguf_export import export_gguf

        if check:
            from common.gguf_check import require_llama_cpp

            require_llama_cpp()  # before the conversion, so a missing extra costs nothing
        result.update(export_gguf(model_dir, Path(out_dir or run_dir / "gguf"), gguf, settings(run_dir),
                                  name=str(report.get("usecase") or "model")))
        if check:
            from common.gguf_check import compare

            result["check"] = compare(run_dir, model_dir, Path(result["gguf"]), check, threads=threads)
    return result
