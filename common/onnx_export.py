"""A vision run's model as ONNX: ``torch.onnx.export``, then parity and speed against PyTorch on the run's test photos.

    cookbook export runs/vision-defects --onnx     # RUN_DIR/onnx/model.onnx + config.json

Exported is what ``predict.py`` runs: the classifier's logits (``usecase-vision-defects``), or every head of a
multi-task model, one named output per task (``usecase-car-damage``: part, damage, severity logits and the
standardized cost). Input ``pixel_values``: float32 ``(batch, 3, H, W)``, resized and normalized as ``config.json``
(copied beside the model) says; the batch dimension is dynamic. Before the file is kept, onnxruntime's outputs on
the run's test photos must equal PyTorch's within :data:`PARITY_ATOL`; the speed of both on ``threads`` CPU threads
is measured on the same photos.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.errors import ConfigError

#: Largest accepted |ONNX - PyTorch| output difference (fp32 both; measured ~1e-5 on EfficientNet-Lite0).
PARITY_ATOL = 1e-3
ONNX_HINT = "pip install -e '.[onnx]' (onnx, onnxruntime, onnxscript; make setup installs them)"


class TaskOutputs(nn.Module):
    """A multi-task model with one output per task (in task order) instead of the concatenated logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.heads.split(self.model(pixel_values)["logits"]).values())


def require_onnx() -> None:
    """:class:`ConfigError` with the install command when the optional ``onnx`` extra is missing."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"ONNX export needs {', '.join(missing)}: {ONNX_HINT}")


def load_vision_run(run_dir: Path) -> tuple[nn.Module, dict, list[str]]:
    """``(module to export, config.json, output names)`` of a vision run folder (classifier or multi-task)."""
    from common.vision import load_classifier
    from common.vision.multitask import load_multitask

    config = json.loads((run_dir / "config.json").read_text())
    if "tasks" in config:
        model, config = load_multitask(run_dir)
        return TaskOutputs(model).eval(), config, [t.name for t in model.tasks]
    model, config = load_classifier(run_dir)
    return model, config, ["logits"]


def held_out_photos(run_dir: Path, config: dict, limit: int | None = None) -> torch.Tensor:
    """The run's test photos (``test_split.jsonl``), preprocessed as ``predict.py`` does: ``(N, 3, H, W)``."""
    from common.paths import resolve_run_path
    from common.vision import build_transforms, load_rgb

    split = run_dir / "test_split.jsonl"
    if not split.is_file():
        raise ConfigError(f"{split} is missing: the parity check needs the run's test photos")
    rows = [json.loads(line) for line in split.read_text().splitlines() if line.strip()][:limit]
    pre = config["pretrained_cfg"]
    transform = build_transforms(pre["input_size"][-1], pre["mean"], pre["std"], train=False)
    return torch.stack([transform(load_rgb(resolve_run_path(r["path"], run_dir))) for r in rows])


def _images_per_second(run, batches: list) -> float:
    run(batches[0])  # warm-up (allocations, first-call set-up)
    start = time.perf_counter()
    for batch in batches:
        run(batch)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def speed(model: nn.Module, session, pixels: torch.Tensor, batch_size: int, threads: int) -> dict[str, float]:
    """Images/s of PyTorch and onnxruntime on the same photos, in batches of ``batch_size``, ``threads`` threads."""
    batches = list(pixels.split(batch_size))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            pt = _images_per_second(model, batches)
    finally:
        torch.set_num_threads(previous)
    name = session.get_inputs()[0].name
    ort = _images_per_second(lambda b: session.run(None, {name: b.numpy()}), batches)
    return {"pytorch_img_per_s": round(pt, 1), "onnxruntime_img_per_s": round(ort, 1)}


def export_onnx(run_dir: Path, out_dir: Path, threads: int = 2, max_photos: int | None = 64) -> dict:
    """Export a vision run to ``out_dir/model.onnx``, check it against PyTorch, measure both; returns the figures.

    Raises:
        ConfigError: the ``onnx`` extra is missing, or the run has no test photos.
        RuntimeError: onnxruntime's outputs differ from PyTorch's by more than :data:`PARITY_ATOL` (no file kept).
    """
    require_onnx()
    import onnxruntime

    model, config, names = load_vision_run(run_dir)
    pixels = held_out_photos(run_dir, config, max_photos)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.onnx"
    start = time.perf_counter()
    program = torch.onnx.export(model, (pixels[:2],), dynamo=True, input_names=["pixel_values"], output_names=names,
                                dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    program.save(str(path), external_data=False)  # one self-contained file (~14 MB for EfficientNet-Lite0)
    export_seconds = time.perf_counter() - start

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = model(pixels)
    expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
    got = session.run(names, {"pixel_values": pixels.numpy()})
    diffs = {n: float(np.abs(g - e.numpy()).max()) for n, g, e in zip(names, got, expected)}
    same_class = {n: float((g.argmax(-1) == e.numpy().argmax(-1)).mean()) for n, g, e in zip(names, got, expected)
                  if g.shape[-1] > 1}
    if max(diffs.values()) > PARITY_ATOL:
        path.unlink()
        raise RuntimeError(f"onnxruntime differs from PyTorch by {max(diffs.values()):.2e} (> {PARITY_ATOL}) on "
                           f"{run_dir}'s test photos ({diffs}); not exported")
    shutil.copy(run_dir / "config.json", out_dir / "config.json")
    return {"onnx": str(path), "bytes": path.stat().st_size, "outputs": names, "export_seconds": round(export_seconds, 1),
            "photos": len(pixels), "max_abs_diff": diffs, "same_argmax": same_class, "threads": threads,
            "batch_1": speed(model, session, pixels, 1, threads),
            "batch_32": speed(model, session, pixels, 32, threads)}
