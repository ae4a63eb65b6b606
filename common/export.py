"""Merge LoRA adapters into the base weights, prove the merge is faithful, save safetensors + a model card.

The card (``merged/README.md``) is built by :mod:`common.model_card`; ``cookbook export`` takes the merged model on to
GGUF (:mod:`common.gguf_export`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from common.model_card import write_model_card


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


def is_quantized(peft_model) -> bool:
    """Whether the base under a PEFT model holds k-bit (bitsandbytes) weights, i.e. it trained as QLoRA."""
    base = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
    return getattr(base, "hf_quantizer", None) is not None


def unquantized_copy(peft_model):
    """The QLoRA base reloaded *without* quantization, in its compute dtype, carrying the trained adapter.

    Merging LoRA into 4-bit weights would round ``W + BA`` back to NF4 and lose most of what the adapter
    learned; the standard QLoRA export merges into the half-precision base instead (what the merged model is
    then served as). The copy lives beside the quantized model for the time of the export.
    """
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from common.models import resolve_model

    base = peft_model.get_base_model()
    name = peft_model.active_adapter
    lora = peft_model.peft_config[name]
    quant = getattr(base.hf_quantizer, "quantization_config", None)
    dtype = getattr(quant, "bnb_4bit_compute_dtype", None) or base.dtype
    device = next(peft_model.parameters()).device
    plain = AutoModelForCausalLM.from_pretrained(resolve_model(lora.base_model_name_or_path), dtype=dtype,
                                                 use_safetensors=True).to(device)
    vocab = base.get_input_embeddings().num_embeddings
    if plain.get_input_embeddings().num_embeddings != vocab:  # the tokenizer gained a pad token before training
        plain.resize_token_embeddings(vocab)
    copy = get_peft_model(plain, lora)
    set_peft_model_state_dict(copy, get_peft_model_state_dict(peft_model, adapter_name=name))
    return copy


def merge_and_export(peft_model, tokenizer, out_dir: str | Path, probe: Sequence[list[dict]],
                     card: dict | None = None, atol: float | None = None) -> float:
    """Fold the LoRA weights into the base model, check parity on ``probe`` prompts, and save.

    The merged model's logits must equal base+adapter logits within ``atol`` (default:
    :func:`parity_tolerance` of the weights' dtype; dropout off); otherwise nothing is written and
    ``RuntimeError`` is raised. ``peft_model`` is merged *in place* -- unless its base is quantized (QLoRA): then
    the adapter is merged into an unquantized copy of the base (:func:`unquantized_copy`) and the parity check
    compares against that copy with the adapter unmerged.

    A model that trained under mixed precision carries accelerate's autocast wrapper on its ``forward``;
    it is removed first, so both sides run in the weights' own precision (bf16 autocast on one side only
    differs by ~0.75 in the logits: a precision difference, not a merge error).

    Returns:
        The largest absolute logit difference seen (for the report).
    """
    from accelerate.utils import extract_model_from_parallel

    out = Path(out_dir)
    peft_model = extract_model_from_parallel(peft_model, keep_fp32_wrapper=False)
    if is_quantized(peft_model):
        peft_model = unquantized_copy(peft_model)
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
