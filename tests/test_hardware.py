"""The precision policy, with the hardware mocked: never bf16 on a CPU that only emulates it."""

import pytest
import torch

from common import hardware


@pytest.fixture
def fresh(monkeypatch):
    hardware.detect.cache_clear()
    monkeypatch.delenv("COOKBOOK_PRECISION", raising=False)
    yield monkeypatch
    hardware.detect.cache_clear()


def _cuda(monkeypatch, bf16: bool):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Mock GPU")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def _cpu(monkeypatch, native_bf16: bool):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native_bf16)


def test_cuda_with_bf16_trains_in_bf16(fresh):
    _cuda(fresh, bf16=True)
    hw = hardware.detect()
    assert (hw.device, hw.precision, hw.device_count) == ("cuda", "bf16", 2)
    assert hardware.precision_defaults(hw) == {"bf16": True, "fp16": False, "use_cpu": False}


def test_older_cuda_falls_back_to_fp16(fresh):
    _cuda(fresh, bf16=False)
    assert hardware.detect().precision == "fp16"
    assert hardware.precision_defaults()["fp16"] is True


def test_plain_cpu_is_fp32(fresh):
    _cpu(fresh, native_bf16=False)
    hw = hardware.detect()
    assert (hw.device, hw.precision, hw.dtype) == ("cpu", "fp32", torch.float32)
    assert hardware.precision_defaults(hw) == {"bf16": False, "fp16": False, "use_cpu": True}


def test_cpu_with_native_bf16_units_still_trains_in_fp32(fresh):
    # Measured (bench/cpu_precision.py): no speed-up for these small models, worse merge parity.
    _cpu(fresh, native_bf16=True)
    hw = hardware.detect()
    assert (hw.precision, hw.cpu_native_bf16) == ("fp32", True)
    assert "native bf16 units" in hw.describe() and hw.describe().endswith("fp32")


def test_report_names_the_precision_the_run_used(fresh):
    _cpu(fresh, native_bf16=False)

    class Forced:
        bf16, fp16 = True, False

    assert hardware.training_precision(Forced()) == "bf16"
    assert hardware.detect().describe(hardware.training_precision(Forced())).endswith(", bf16")


def test_this_machine_gets_the_policy_path_unmocked():
    """Not mocked: whatever CPU the tests run on, the parsed training arguments follow the policy."""
    import os

    from transformers import TrainingArguments

    from common.config import parse_config

    hardware.detect.cache_clear()
    try:
        hw = hardware.detect()
        (args,) = parse_config((TrainingArguments,), ["--output_dir", "unused"])
        forced = os.environ.get("COOKBOOK_PRECISION")
        assert hardware.training_precision(args) == (forced or ("fp32" if hw.device == "cpu" else hw.precision))
        assert args.use_cpu == (hw.device == "cpu")
        print(hw.describe(hardware.training_precision(args)))
    finally:
        hardware.detect.cache_clear()


def test_mps_is_fp32(fresh):
    fresh.setattr(torch.cuda, "is_available", lambda: False)
    fresh.setattr(torch.backends.mps, "is_available", lambda: True)
    hw = hardware.detect()
    assert (hw.device, hw.precision) == ("mps", "fp32")


def test_env_override_and_its_validation(fresh):
    _cpu(fresh, native_bf16=False)
    fresh.setenv("COOKBOOK_PRECISION", "bf16")
    assert hardware.detect().precision == "bf16"
    hardware.detect.cache_clear()
    fresh.setenv("COOKBOOK_PRECISION", "fp8")
    with pytest.raises(ValueError, match="COOKBOOK_PRECISION"):
        hardware.detect()


def test_cpu_flag_parsing(monkeypatch, tmp_path):
    import builtins

    real_open = builtins.open
    for flags, expected in (("fpu sse avx2 fma", False), ("fpu avx512f avx512_bf16 amx_tile", True)):
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"processor : 0\nflags\t\t: {flags}\n")
        def fake_open(p, *a, _file=cpuinfo, **k):
            return real_open(_file if p == "/proc/cpuinfo" else p, *a, **k)

        monkeypatch.setattr(builtins, "open", fake_open)
        assert hardware.cpu_has_native_bf16() is expected


def test_explicit_bf16_on_emulating_cpu_warns(fresh, caplog):
    _cpu(fresh, native_bf16=False)

    class Args:
        bf16 = True

    hardware.check_training_precision(Args())
    assert "16x slower" in caplog.text
