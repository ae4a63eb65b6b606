"""Device and precision policy, decided once per process.

==========================  =====================================
hardware                    training precision
==========================  =====================================
CUDA with bf16 (Ampere+)    bf16 autocast, TF32 matmuls
older CUDA                  fp16 autocast with loss scaling
any CPU                     fp32
Apple MPS                   fp32
==========================  =====================================

Why fp32 on every CPU, including those with native bf16 units (AMX, AVX512-BF16): the cookbook's models are
small (135 M parameters, 4.7 M for vision), and on small token batches per-op overhead, not arithmetic, bounds a
training step. Measured with ``python bench/cpu_precision.py`` (docs/benchmarks.md): bf16 autocast gave no
reliable speed-up on an AMX Xeon nor on an AVX512-BF16 AMD EPYC, and on CPUs without those units it is emulated
(~16x slower). bf16 also costs accuracy (a merged-vs-adapter parity check of 7.5e-1 instead of 9e-5).
``COOKBOOK_PRECISION=bf16`` (or ``bf16: true`` in a config) still selects it, and every recipe runs under it.

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

    def describe(self, precision: str | None = None) -> str:
        """One line for logs and reports, e.g. ``cpu: AMD EPYC (2 cores), fp32``.

        ``precision`` is what the run actually used (see :func:`training_precision`); the policy's by default.
        """
        if self.device == "cuda":
            where = f"{self.device_count}x {self.device_name}"
        else:
            bf16_units = ", native bf16 units" if self.cpu_native_bf16 else ""
            where = f"{self.device_name} ({self.cpu_count} cores{bf16_units})"
        return f"{self.device}: {where}, {precision or self.precision}"


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
        precision = "fp32"  # even with native bf16 units: measured no faster for these models (see above)
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


def training_precision(args) -> str:
    """The precision a run's ``TrainingArguments`` actually train in: ``bf16``, ``fp16`` or ``fp32``."""
    if getattr(args, "bf16", False):
        return "bf16"
    return "fp16" if getattr(args, "fp16", False) else "fp32"


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


def is_main_process() -> bool:
    """True in a single process, and in the rank-0 process of an ``accelerate launch`` / ``torchrun`` job.

    Recipes train on every process, and evaluate, export and write their report on the main one only.
    """
    return int(os.environ.get("RANK", "0")) == 0
