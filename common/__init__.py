"""Shared library of the Fine-Tuning Cookbook.

One job per module:

- :mod:`common.hardware` -- device and precision policy, decided once.
- :mod:`common.config`   -- dataclass configs from defaults < YAML < CLI, unknown keys are errors.
- :mod:`common.models`   -- resolve (embedded alias, path, hub id) and load models; LoRA / QLoRA.
- :mod:`common.data`     -- load and validate datasets before any training starts.
- :mod:`common.train`    -- build TRL / HF trainers with the policy, early stopping, resume, logging.
- :mod:`common.sft_losses` -- the text trainers' losses: answer positions only and the shared prefix once per batch
  on a CPU, replay KL.
- :mod:`common.evaluation` -- metrics and generation-based evaluation (before -> after).
- :mod:`common.report`   -- report.json, REPORT.md and PNG plots for every run.
- :mod:`common.export`   -- merge LoRA into the base weights, check parity, save safetensors + model card.
- :mod:`common.paths`    -- repository-relative paths, loading a recipe's sibling scripts, machine-free paths.
- :mod:`common.vision`   -- image classification: images, data, backbones, probe + Trainer, metrics, CAM.
"""

__version__ = "0.1.0"
