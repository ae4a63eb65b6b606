"""Merge LoRA adapters into the base weights, prove the merge is faithful, save safetensors + a model card."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch


@torch.inference_mode()
def _logits(model, tokenizer, conversations: Sequence[list[dict]]) -> torch.Tensor:
    device = next(model.parameters()).device
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        logits = model(**enc).logits.float()
        return logits * enc["attention_mask"][..., None]  # ignore padded positions
    finally:
        tokenizer.padding_side = padding_side


def parity_tolerance(dtype: torch.dtype) -> float:
    """Largest merged-vs-adapter logit difference accepted for weights stored in ``dtype``.

    Both sides are computed without autocast, in the weights' own dtype. In fp32 the only difference is
    rounding order (measured on SmolLM2-135M: 9e-5 over a 49k vocabulary), so 1e-3 leaves 10x headroom while
    catching a wrong merge (a missing LoRA scale moves logits by ~1). Half-precision weights round ``W + BA``
    to 8 (bf16) or 11 (fp16) mantissa bits when merged, ~0.4% / 0.05% of each weight, hence looser bounds.
    """
    return {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 1e-1}.get(dtype, 1e-3)


def merge_and_export(peft_model, tokenizer, out_dir: str | Path, probe: Sequence[list[dict]],
                     card: dict | None = None, atol: float | None = None) -> float:
    """Fold the LoRA weights into the base model, check parity on ``probe`` prompts, and save.

    The merged model's logits must equal base+adapter logits within ``atol`` (default:
    :func:`parity_tolerance` of the weights' dtype; dropout off); otherwise nothing is written and
    ``RuntimeError`` is raised. ``peft_model`` is merged *in place*.

    A model that trained under mixed precision carries accelerate's autocast wrapper on its ``forward``;
    it is removed first, so both sides run in the weights' own precision (bf16 autocast on one side only
    differs by ~0.75 in the logits: a precision difference, not a merge error).

    Returns:
        The largest absolute logit difference seen (for the report).
    """
    from accelerate.utils import extract_model_from_parallel

    out = Path(out_dir)
    peft_model = extract_model_from_parallel(peft_model, keep_fp32_wrapper=False)
    peft_model.eval()
    if atol is None:
        atol = parity_tolerance(next(peft_model.parameters()).dtype)
    reference = _logits(peft_model, tokenizer, probe)
    merged = peft_model.merge_and_unload()
    diff = float((_logits(merged, tokenizer, probe) - reference).abs().max())
    if diff > atol:
        raise RuntimeError(f"merged model differs from base+adapter by {diff:.2e} (> {atol}); not exported")
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    write_model_card(out, card or {}, diff)
    return diff


def write_model_card(out_dir: Path, card: dict, parity: float) -> Path:
    """A README.md model card: what the model is for, how it was made, measured metrics, and its limits."""
    metrics = json.dumps(card.get("metrics", {}), indent=2, default=str)
    text = f"""---
library_name: transformers
tags: [fine-tuning-cookbook, lora-merged]
---

# {card.get("task", "Fine-tuned model")}

Base weights with the LoRA adapter merged in (max |logit difference| against base + adapter: {parity:.2e}).
Saved as safetensors.

- **Training data:** {card.get("data", "see the use case README")}
- **Limits:** {card.get("limits", "trained on a small, narrow dataset; check answers before relying on them.")}

## Held-out metrics after fine-tuning

```json
{metrics}
```
"""
    path = Path(out_dir) / "README.md"
    path.write_text(text)
    return path
