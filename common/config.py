"""Typed configuration: dataclass defaults < ``config.yaml`` < command-line flags.

Built on TRL's :class:`~trl.TrlParser` (an ``HfArgumentParser``): every key of the YAML file and every flag
must name a field of one of the dataclasses, otherwise parsing fails with the offending key. An ``env:``
mapping in the YAML exports environment variables before anything else runs.

The hardware precision policy (:mod:`common.hardware`) is injected as parser *defaults*, so TRL's own
``bf16=True`` default never reaches a CPU, and an explicit ``bf16``/``fp16`` in the YAML or CLI still wins.
"""

from __future__ import annotations

import re
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from torch import nn
from trl import ModelConfig, TrlParser, get_peft_config

from common.errors import ConfigError
from common.hardware import check_training_precision, precision_defaults
from common.train import refuse_finished_run


@dataclass
class ModelArguments(ModelConfig):
    """Which model to load and how to adapt it (TRL's ``ModelConfig`` plus the cookbook's defaults).

    ``model_name_or_path`` accepts an embedded alias (``smollm2-135m-instruct``), a local folder or a hub id.
    ``dtype: auto`` follows the hardware policy (fp32 on CPU, bf16/fp16 on CUDA).
    ``trust_remote_code`` lives on TRL's ``SFTConfig``/``DPOConfig`` (default ``False``).
    """

    model_name_or_path: str | None = field(
        default="smollm2-135m-instruct",
        metadata={"help": "Embedded alias, local folder or hub id."},
    )
    dtype: str | None = field(
        default="auto",
        metadata={
            "help": "Weight dtype: `auto` follows the hardware policy (fp32 on CPU, bf16/fp16 on CUDA).",
            "choices": ["auto", "bfloat16", "float16", "float32"],
        },
    )
    use_peft: bool = field(default=True, metadata={"help": "Train LoRA adapters instead of all weights."})
    lora_target_modules: list[str] | None = field(
        default_factory=lambda: ["all-linear"],
        metadata={"help": "LoRA target modules (`all-linear` adapts every linear layer but the LM head)."},
    )
    lora_last_layers: int | None = field(
        default=None,
        metadata={"help": "LoRA on the last N transformer layers only (null: every layer). Back-propagation then "
                          "stops at the lowest adapted layer, and the layers below keep the pretrained function."},
    )


def peft_config(model_args: ModelArguments, model: nn.Module):
    """TRL's ``get_peft_config`` plus ``lora_last_layers`` (PEFT's ``layers_to_transform``); ``None`` without LoRA.

    PEFT takes ``layers_to_transform`` only with a list of module names, so ``all-linear`` is spelled out as the
    names of the model's linear layers (the output embedding excepted), which is what PEFT itself adapts for it.
    """
    config = get_peft_config(model_args)
    last = getattr(model_args, "lora_last_layers", None)
    if config is None or last is None:
        return config
    layers = model.config.num_hidden_layers
    if not 1 <= last <= layers:
        raise ConfigError(f"lora_last_layers={last}: the model has {layers} transformer layers (1..{layers})")
    targets = config.target_modules
    if isinstance(targets, str):
        if targets != "all-linear":
            raise ConfigError("lora_last_layers needs lora_target_modules as module names (or all-linear), "
                              f"not the pattern {targets!r}")
        head = model.get_output_embeddings()
        targets = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                          if isinstance(module, nn.Linear) and module is not head})
    config.target_modules = set(targets)
    config.layers_to_transform = list(range(layers - last, layers))
    return config


def parse_config(
    dataclass_types: Sequence[type],
    args: Sequence[str] | None = None,
    default_config: str | Path | None = None,
) -> tuple[Any, ...]:
    """Parse ``--config FILE.yaml`` and flags into instances of ``dataclass_types`` (in that order).

    Args:
        dataclass_types: e.g. ``(ScriptArguments, ModelArguments, SFTConfig)``.
        args: command-line strings; ``sys.argv[1:]`` when ``None``.
        default_config: YAML used when no ``--config`` is given (a recipe passes its own ``config.yaml``).

    Raises:
        ConfigError: a YAML key or flag that no dataclass declares (the message names it), or an ``output_dir``
            that already holds a finished run (``report.json``): it is never trained over. (A recipe then claims
            the folder with :func:`common.run_folder.claim` once its own checks pass.)
    """
    args = list(sys.argv[1:] if args is None else args)
    if "--config" not in args and default_config is not None:
        args = ["--config", str(default_config), *args]
    _check_config_file(args[args.index("--config") + 1] if "--config" in args[:-1] else None)
    parser = TrlParser(dataclass_types)
    parser.allow_abbrev = False  # `--learning_rat` is an error, not a silent prefix match
    # The hardware policy becomes the default; YAML (set_defaults_with_config) and flags override it.
    declared = {f.name for dataclass_type in dataclass_types for f in fields(dataclass_type)}
    parser.set_defaults(**{k: v for k, v in precision_defaults().items() if k in declared})
    parsed = parser.parse_args_and_config(args, return_remaining_strings=True)
    *instances, remaining = parsed
    if remaining:
        raise ConfigError(f"Unknown configuration keys or flags: {remaining} (check the spelling; "
                          f"`--help` lists every key)")
    for instance in instances:
        _check_types(instance)
        if hasattr(instance, "bf16"):
            check_training_precision(instance)
        if getattr(instance, "output_dir", None):
            refuse_finished_run(instance.output_dir)  # before any data or model work
    return tuple(instances)


#: Integer settings that count something per step: 0 or less can never work (a batch of 0 rows, 0 new tokens).
COUNTS = re.compile(r"batch_size$|^gradient_accumulation_steps$|max_new_tokens$")


def _check_types(instance: Any) -> None:
    """A value of the wrong type (``eval_batch_size: 16.0``, ``lora_r: "8"`` in a YAML file -- values from the YAML
    reach the dataclasses unconverted), or a count below 1 (``--batch_size 0``), stops here naming the key, before
    any model loads."""
    try:
        hints = typing.get_type_hints(type(instance))
    except Exception:  # a library's annotation that does not resolve here: nothing to check against
        return
    for f in fields(instance):
        value, hint = getattr(instance, f.name, None), hints.get(f.name)
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        allowed = {a for a in typing.get_args(hint) if a is not type(None)} if union else {hint}
        if value is None or not allowed <= {int, float, bool, str}:
            continue
        if float in allowed and bool not in allowed:
            allowed.add(int)  # 1 is a fine learning rate
        if type(value) not in allowed or (isinstance(value, bool) and bool not in allowed):
            names = " or ".join(sorted(t.__name__ for t in allowed if not (t is int and float in allowed)))
            raise ConfigError(f"{f.name} must be {names}, got {value!r} ({type(value).__name__})")
        if COUNTS.search(f.name) and allowed == {int} and value < 1:
            raise ConfigError(f"{f.name} must be >= 1, got {value}")


def _check_config_file(path: str | None) -> None:
    """A ``--config`` that is missing, not YAML, or not a mapping of keys stops here with one line naming it."""
    if path is None:
        return
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config {path}: no such file (each recipe's configs are in its folder, e.g. "
                          "usecase-chatbot/config.yaml)")
    try:
        content = yaml.safe_load(file.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if content is not None and not isinstance(content, dict):
        raise ConfigError(f"{path}: a config is a mapping of `key: value` lines, not a {type(content).__name__}")


def to_dict(*instances: Any) -> dict:
    """Flatten dataclass instances into one JSON-friendly dict (for reports and model cards)."""
    out: dict = {}
    for inst in instances:
        for f in fields(inst):
            value = getattr(inst, f.name)
            if isinstance(value, (str, int, float, bool, type(None), list, dict)):
                out[f.name] = value
            else:
                out[f.name] = str(value)
    return out
