"""Worker of tests/test_multiprocess.py: the cookbook's vision trainer (full fine-tuning of a tiny EfficientNet
with BatchNorm) on images in DATA, run as one process or under ``accelerate launch``; the main process writes the
loss curve and the weights to ``OUT``.

    python tests/multiprocess_vision_worker.py DATA OUT PER_DEVICE_BATCH GRAD_ACCUMULATION

BatchNorm normalizes each *process's* batch, and ``SyncBatchNorm`` needs a GPU, so the single-process twin of
2 processes x B images is 1 process x B images x 2 accumulation steps (BatchNorm over B images each time), not
1 process x 2B images.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import TrainingArguments

from common import vision
from common.hardware import is_main_process


def main(data: Path, out: Path, per_device_batch: int, accumulation: int) -> None:
    splits = vision.load_splits(vision.VisionDataArguments(data_dir=str(data)))
    classes = vision.validate_splits(splits)
    train = vision.ImageDataset(splits["train"], classes, vision.build_transforms(32, (0.5,) * 3, (0.5,) * 3,
                                                                                  train=False))
    torch.manual_seed(0)
    backbone, _ = vision.load_backbone(vision.TINY_VISION_ALIAS, len(classes))
    for module in backbone.modules():  # deterministic runs: no dropout / drop-path
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    backbone.drop_rate = 0.0
    model = vision.prepare_for_method(backbone, vision.VisionModelArguments(method="full"))
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=per_device_batch,
                             gradient_accumulation_steps=accumulation, learning_rate=3e-3, max_steps=4,
                             logging_steps=1, save_strategy="no", eval_strategy="no", report_to=[], use_cpu=True,
                             seed=0, data_seed=0, disable_tqdm=True, ddp_find_unused_parameters=False)
    trainer = vision.build_trainer(vision.ImageClassifier(model), args, train, None)
    trainer.train()
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        (out / "history.json").write_text(json.dumps([h["loss"] for h in trainer.state.log_history if "loss" in h]))
        weights = {k: v.detach().contiguous() for k, v in trainer.model.state_dict().items() if v.is_floating_point()}
        save_file(weights, out / "model.safetensors")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
