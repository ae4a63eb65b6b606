"""Device and precision policy, decided once per process.

The rule (measured on a 2-core AVX2 CPU: emulated bf16 made a LoRA step ~16x slower than fp32):

==========================  =====================================
hardware                    training precision
==========================  =====================================
CUDA with bf16 (Ampere+)    bf16 autocast, TF32 matmuls
older CUDA                  fp16 autocast with loss scaling
CPU with AMX / avx512_bf16  bf16 autocast (native bf16 units)
any other CPU               fp32
Apple MPS                   fp32
==========================  =====================================

Library defaults (TRL configs default to ``bf16=True``) never decide precision: :func:`precision_defaults`
feeds the policy into the argument parser, so only an explicit ``bf16: true`` in a config or on the
command line overrides it.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
from dataclasses import asdict, dataclass

import torch

logger = logging.getLogger(__name__)

_NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class Hardware:
    """What this process runs on, and the precision policy derived from it."""

    device: str  # "cuda" | "mps" | "cpu"
    device_name: str
    device_count: int
    precision: str  # "bf16" | "fp16" | "fp32"
    cpu_count: int
    cpu_native_bf16: bool
    torch_version: str

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype matching :attr:`precision` (weights for inference, autocast for training)."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.precision]

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One line for logs and reports, e.g. ``cpu (2 cores, x86_64), fp32``."""
        if self.device == "cuda":
            where = f"{self.device_count}x {self.device_name}"
        else:
            where = f"{self.device_name} ({self.cpu_count} cores)"
        return f"{self.device}: {where}, {self.precision}"


def cpu_has_native_bf16() -> bool:
    """True when the CPU advertises bf16 arithmetic units (Intel AMX or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:  # not Linux: be conservative
        return False
    return any(flag in flags.split() for flag in _NATIVE_BF16_CPU_FLAGS)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def detect() -> Hardware:
    """Inspect the machine once and return the :class:`Hardware` policy.

    ``COOKBOOK_PRECISION`` (``bf16``/``fp16``/``fp32``) overrides the policy for experiments.
    """
    cpu_count = os.cpu_count() or 1
    native_bf16 = cpu_has_native_bf16()
    if torch.cuda.is_available():
        device, name, count = "cuda", torch.cuda.get_device_name(0), torch.cuda.device_count()
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device, name, count, precision = "mps", "Apple MPS", 1, "fp32"
    else:
        device, name, count = "cpu", _cpu_name(), 0
        precision = "bf16" if native_bf16 else "fp32"
    override = os.environ.get("COOKBOOK_PRECISION")
    if override:
        if override not in ("bf16", "fp16", "fp32"):
            raise ValueError(f"COOKBOOK_PRECISION must be bf16, fp16 or fp32, not {override!r}")
        precision = override
    hw = Hardware(device, name, count, precision, cpu_count, native_bf16, torch.__version__)
    if device == "cuda" and precision == "bf16":
        # TF32 matmuls on Ampere+: free speed for the fp32 parts (optimizer, norms).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return hw


def precision_defaults(hw: Hardware | None = None) -> dict:
    """Trainer-argument defaults that implement the policy (``bf16``, ``fp16``, ``use_cpu``).

    These are parser *defaults*: a value given in the YAML config or on the command line still wins.
    """
    hw = hw or detect()
    return {
        "bf16": hw.precision == "bf16",
        "fp16": hw.precision == "fp16",
        "use_cpu": hw.device == "cpu",
    }


def check_training_precision(args, hw: Hardware | None = None) -> None:
    """Warn when explicit settings put training on an emulated (very slow) path."""
    hw = hw or detect()
    if hw.device == "cpu" and getattr(args, "bf16", False) and not hw.cpu_native_bf16:
        logger.warning(
            "bf16=True on a CPU without native bf16 units: every matmul is emulated "
            "(measured ~16x slower than fp32). Remove `bf16: true` to use fp32."
        )


def peak_memory_mb(device: str | None = None) -> float:
    """Peak memory of this process so far, in MiB: CUDA allocator peak on GPU, max RSS on CPU."""
    device = device or detect().device
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if platform.system() != "Darwin" else rss / 2**20


def reset_peak_memory() -> None:
    """Reset the CUDA peak counter (max RSS on CPU cannot be reset; it is monotonic per process)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
