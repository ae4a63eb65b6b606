"""Grad-CAM: where in the image did the classifier look? (Selvaraju et al., 2017), with no extra dependency.

A forward hook keeps the activations ``A`` of one convolutional layer (by default the last stage) and a hook on
that output tensor keeps their gradient ``dY_c/dA``. The heatmap is ``relu(sum_k w_k A_k)`` with
``w_k = mean_xy dY_c/dA_k``, upsampled to the input size and scaled to [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn


def default_cam_layer(model: nn.Module) -> str:
    """Name of the last convolutional stage: timm's ``feature_info[-1]`` where present, else the last Conv2d."""
    info = getattr(model, "feature_info", None)
    if info:
        last = info[-1] if isinstance(info, list) else info.info[-1]
        return last["module"]
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("Grad-CAM needs a model with at least one Conv2d layer.")
    return convs[-1]


class GradCAM:
    """Compute Grad-CAM heatmaps of ``model`` (an image classifier returning logits) at ``layer``.

    Example::

        cam = GradCAM(model)                  # last conv stage
        heat, logits = cam(batch)             # heat: (B, H, W) in [0, 1], for the predicted classes
    """

    def __init__(self, model: nn.Module, layer: str | None = None) -> None:
        self.model = model
        self.layer_name = layer or default_cam_layer(model)
        self.layer = model.get_submodule(self.layer_name)

    def __call__(self, images: torch.Tensor, class_idx: torch.Tensor | int | None = None,
                 contrast_idx: int | None = None):
        """Heatmaps for ``class_idx`` (default: each image's predicted class); returns ``(heat, logits)``.

        With ``contrast_idx`` (e.g. the ``good`` class) the map explains ``logit[class] - logit[contrast]``:
        what makes this image a defect *rather than a good part*, which ignores the evidence both classes share
        (the texture itself) and so localizes defects more sharply. Images of the contrast class itself get the
        plain map.
        """
        store: dict[str, torch.Tensor] = {}

        def forward_hook(_module, _inputs, output):
            store["act"] = output
            output.register_hook(lambda grad: store.__setitem__("grad", grad))  # the backward hook

        handle = self.layer.register_forward_hook(forward_hook)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad():
                x = images.detach().clone().requires_grad_(True)  # a graph even when every weight is frozen
                logits = self.model(x)
                logits = logits["logits"] if isinstance(logits, dict) else logits
                if class_idx is None:
                    idx = logits.argmax(dim=1)
                elif isinstance(class_idx, int):
                    idx = torch.full((len(x),), class_idx, device=logits.device)
                else:
                    idx = class_idx.to(logits.device)
                target = logits.gather(1, idx[:, None])[:, 0]
                if contrast_idx is not None:
                    target = torch.where(idx == contrast_idx, target, target - logits[:, contrast_idx])
                # Gradients flow only to the hooked activations: no weight's .grad is touched.
                target.sum().backward(inputs=[store["act"]])
        finally:
            handle.remove()
            self.model.train(was_training)
        act, grad = store["act"].detach().float(), store["grad"].detach().float()
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * act).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        cam = cam / cam.flatten(1).amax(dim=1).clamp_min(1e-8)[:, None, None]
        return cam.cpu(), logits.detach()


def peak(cam: torch.Tensor) -> tuple[int, int]:
    """``(x, y)`` of the hottest pixel of one ``(H, W)`` heatmap."""
    flat = int(torch.argmax(cam))
    return flat % cam.shape[1], flat // cam.shape[1]


def peak_in_box(cam: torch.Tensor, box: list[int] | tuple[int, ...], image_size: tuple[int, int]) -> bool:
    """Whether the heatmap's peak falls inside ``box`` = ``(x0, y0, x1, y1)`` in original-image pixels.

    ``image_size`` is the original ``(width, height)``; the heatmap is at model resolution and the image was
    resized (not cropped) to it, so the peak is scaled back.
    """
    x, y = peak(cam)
    w, h = image_size
    ox, oy = (x + 0.5) * w / cam.shape[1], (y + 0.5) * h / cam.shape[0]
    return box[0] <= ox <= box[2] and box[1] <= oy <= box[3]


def overlay(image: Image.Image, cam: torch.Tensor, alpha: float = 0.45) -> Image.Image:
    """The image with the heatmap blended on top (jet colour map), at the image's own size."""
    from matplotlib import colormaps

    heat = Image.fromarray((cam.numpy() * 255).astype(np.uint8)).resize(image.size, Image.BILINEAR)
    colored = colormaps["jet"](np.asarray(heat, np.float32) / 255)[..., :3]
    base = np.asarray(image.convert("RGB"), np.float32) / 255
    return Image.fromarray((255 * ((1 - alpha) * base + alpha * colored)).astype(np.uint8))
