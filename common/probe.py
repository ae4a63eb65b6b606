"""Linear probes on a model's own hidden states: read a yes/no decision about a prompt out of the model.

A prompt (rendered with the chat template, as the model sees it) runs through the model once; one layer's hidden
states are averaged over its tokens, and a logistic regression on that vector (one weight per hidden unit) gives
P(yes). The layer is chosen on validation questions (lowest log-loss). Used by the medical recipe's triage check
(is this a red flag?) and the chatbot's router (is this a product question?). Saved as one safetensors file
(weights; bias, layer and threshold in the metadata) beside a run's adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch


@torch.inference_mode()
def prompt_features(model, tokenizer, conversations: Sequence[list[dict]], layers: list[int] | None = None,
                    batch_size: int = 16) -> torch.Tensor:
    """``[len(layers), n, hidden]``: each prompt's hidden states averaged over its tokens, per layer (0: the
    embeddings; None: every layer). The prompt is rendered with the generation prompt, as the model sees it."""
    model.eval()
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    device, chunks = next(model.parameters()).device, []
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            states = model(**enc, output_hidden_states=True).hidden_states
            mask = enc["attention_mask"].unsqueeze(-1).float()
            picked = range(len(states)) if layers is None else layers
            chunks.append(torch.stack([(states[i].float() * mask).sum(1) / mask.sum(1) for i in picked]).cpu())
    finally:
        tokenizer.padding_side = side
    return torch.cat(chunks, dim=1)


@dataclass
class LinearProbe:
    """A logistic regression on the mean hidden state (over the prompt's tokens) of one layer. Subclasses name
    the file it is saved as (``FILE``)."""

    layer: int
    weight: torch.Tensor
    bias: float
    threshold: float = 0.5
    FILE: ClassVar[str] = "probe.safetensors"

    def probabilities(self, model, tokenizer, conversations: Sequence[list[dict]], batch_size: int = 16) -> list[float]:
        """P(yes) of each chat prompt."""
        return self.predict(prompt_features(model, tokenizer, conversations, [self.layer], batch_size)[0])

    def predict(self, features: torch.Tensor) -> list[float]:
        """P(yes) from ``[n, hidden]`` features of the probe's layer (:func:`prompt_features`)."""
        return torch.sigmoid(features @ self.weight + self.bias).tolist()

    def save(self, folder: str | Path, info: dict | None = None) -> Path:
        """Write ``folder/FILE`` (``info``: extra strings for the metadata); returns its path."""
        from safetensors.torch import save_file

        path = Path(folder) / self.FILE
        meta = {"layer": str(self.layer), "threshold": repr(self.threshold), "bias": repr(self.bias)}
        save_file({"weight": self.weight.contiguous()}, str(path),
                  metadata={**meta, **{k: str(v) for k, v in (info or {}).items()}})
        return path

    @classmethod
    def load(cls, folder: str | Path):
        """The probe saved in ``folder`` (or its parent: a run's ``merged/``); None when there is none."""
        from safetensors import safe_open

        path = next((p / cls.FILE for p in (Path(folder), Path(folder).parent) if (p / cls.FILE).exists()), None)
        if path is None:
            return None
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            return cls(int(meta["layer"]), f.get_tensor("weight"), float(meta["bias"]), float(meta["threshold"]))


def fit_per_layer(x_train: torch.Tensor, y_train: Sequence[bool], x_valid: torch.Tensor, y_valid: Sequence[bool],
                  c: float = 1.0, balanced: bool = False) -> tuple[int, float, torch.Tensor, float, list[float]]:
    """A logistic regression per layer of ``[layers, n, hidden]`` features; the one with the lowest validation
    log-loss wins. Returns ``(layer, bias, weight, its validation log-loss, log-loss by layer)``. ``balanced``
    weighs the two classes equally (for unequal class sizes)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    x_train, x_valid = x_train.numpy(), x_valid.numpy()
    losses, probes = [], []
    for layer in range(x_train.shape[0]):
        probe = LogisticRegression(C=c, max_iter=5000, class_weight="balanced" if balanced else None)
        probe.fit(x_train[layer], list(y_train))
        losses.append(log_loss(list(y_valid), probe.predict_proba(x_valid[layer])[:, 1], labels=[False, True]))
        probes.append(probe)
    best = min(range(len(losses)), key=losses.__getitem__)
    return (best, float(probes[best].intercept_[0]), torch.tensor(probes[best].coef_[0], dtype=torch.float32),
            losses[best], losses)
