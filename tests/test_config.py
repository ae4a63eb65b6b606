"""Config precedence (defaults < YAML < CLI), unknown keys, and the precision policy as parser defaults."""

import pytest
import yaml
from trl import SFTConfig

from common import hardware
from common.config import ModelArguments, parse_config


def _yaml(tmp_path, data) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_precedence_defaults_then_yaml_then_cli(tmp_path):
    cfg = _yaml(tmp_path, {"lora_r": 8, "learning_rate": 1e-3, "output_dir": str(tmp_path / "run")})
    model_args, args = parse_config((ModelArguments, SFTConfig), ["--config", cfg, "--lora_r", "4"])
    assert model_args.lora_r == 4  # CLI beats YAML
    assert args.learning_rate == 1e-3  # YAML beats the dataclass default
    assert model_args.lora_alpha == 32  # untouched default
    assert model_args.model_name_or_path == "smollm2-135m-instruct"


def test_default_config_is_used_without_flag(tmp_path):
    cfg = _yaml(tmp_path, {"lora_r": 2, "output_dir": str(tmp_path)})
    (model_args, _) = parse_config((ModelArguments, SFTConfig), [], default_config=cfg)
    assert model_args.lora_r == 2


@pytest.mark.parametrize("where", ["yaml", "cli"])
def test_unknown_key_is_an_error_naming_it(tmp_path, where):
    if where == "yaml":
        argv = ["--config", _yaml(tmp_path, {"lora_rank": 8, "output_dir": str(tmp_path)})]
    else:
        argv = ["--output_dir", str(tmp_path), "--lora_rank", "8"]
    with pytest.raises(ValueError, match="lora_rank"):
        parse_config((ModelArguments, SFTConfig), argv)


def test_policy_replaces_trl_bf16_default_on_cpu(tmp_path, monkeypatch):
    # TRL's SFTConfig defaults to bf16=True; on an emulating CPU the policy must win.
    monkeypatch.setattr(hardware, "detect", lambda: hardware.Hardware("cpu", "x", 0, "fp32", 2, False, "t"))
    _, args = parse_config((ModelArguments, SFTConfig), ["--output_dir", str(tmp_path)])
    assert args.bf16 is False and args.fp16 is False and args.use_cpu is True
    assert SFTConfig(output_dir=str(tmp_path), use_cpu=True).bf16 is True  # the library default we override


def test_explicit_precision_in_yaml_wins_over_policy(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "detect", lambda: hardware.Hardware("cpu", "x", 0, "fp32", 2, False, "t"))
    cfg = _yaml(tmp_path, {"bf16": True, "output_dir": str(tmp_path)})
    _, args = parse_config((ModelArguments, SFTConfig), ["--config", cfg])
    assert args.bf16 is True
