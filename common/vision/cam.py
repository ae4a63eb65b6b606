"""Class activation maps: where in the image did the classifier look? No extra dependency.

A forward hook keeps the activations ``A`` of one convolutional layer and a hook on that output tensor keeps
their gradient ``G = dY_c/dA``. Two ways to turn them into a heatmap:

- ``gradcam`` (Selvaraju et al., 2017): ``relu(sum_k w_k A_k)`` with one weight per channel,
  ``w_k = mean_xy G_k``. Meant for the last stage, whose cells are coarse (stride 32: 4x4 at 128 px).
- ``layercam`` (Jiang et al., 2021): ``relu(sum_k relu(G_k) * A_k)``, a weight per channel *and position*, so the
  map stays sharp at early, high-resolution layers. Small defects (10-20 px) need that resolution.

The map is upsampled to the input size, optionally smoothed (a Gaussian, ``smooth`` pixels), and scaled to [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from common.errors import ConfigError


def check_cam_layer(model: nn.Module, layer: str | None) -> None:
    """``gradcam_layer`` must name a module of ``model`` (``None``: the default layer) -- checked before training.

    Raises:
        ConfigError: naming the layer and some that exist.
    """
    if layer is None:
        return
    names = [name for name, _ in model.named_modules() if name]
    if layer not in names:
        stages = [n for n in names if n.count(".") <= 1][:12]
        raise ConfigError(f"gradcam_layer={layer!r} is not a layer of this backbone; allowed: a module name such "
                          f"as {stages} (or leave it unset for the last stage).")


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


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur a ``(B, H, W)`` stack of maps with a separable Gaussian of ``sigma`` pixels (edges replicated)."""
    if sigma <= 0:
        return maps
    radius = max(1, round(3 * sigma))
    k = torch.exp(-torch.arange(-radius, radius + 1, dtype=maps.dtype) ** 2 / (2 * sigma**2))
    k = (k / k.sum()).to(maps.device)
    x = F.pad(maps[:, None], (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(F.conv2d(x, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))
    return x[:, 0]


class GradCAM:
    """Compute Grad-CAM / LayerCAM heatmaps of ``model`` (an image classifier returning logits) at ``layer``.

    Example::

        cam = GradCAM(model)                                  # Grad-CAM at the last conv stage
        cam = GradCAM(model, "blocks.0", method="layercam", smooth=2)
        heat, logits = cam(batch)             # heat: (B, H, W) fp32 in [0, 1], for the predicted classes
    """

    METHODS = ("gradcam", "layercam")

    def __init__(self, model: nn.Module, layer: str | None = None, method: str = "gradcam",
                 smooth: float = 0.0) -> None:
        if method not in self.METHODS:
            raise ConfigError(f"cam_method={method!r} is not one of {self.METHODS}.")
        self.model = model
        self.layer_name = layer or default_cam_layer(model)
        self.layer = model.get_submodule(self.layer_name)
        self.method = method
        self.smooth = smooth

    def _placement(self) -> dict:
        """Device and dtype of the model's weights (where and in what the input must be)."""
        weight = next((p for p in self.model.parameters() if p.is_floating_point()), None)
        return {"device": weight.device, "dtype": weight.dtype} if weight is not None else {}

    def __call__(self, images: torch.Tensor, class_idx: torch.Tensor | int | None = None,
                 contrast_idx: int | None = None):
        """Heatmaps for ``class_idx`` (default: each image's predicted class); returns ``(heat, logits)``, both fp32
        whatever the model's dtype or autocast.

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
                # a graph even when every weight is frozen; on the model's device, in its dtype (bf16 weights)
                x = images.detach().to(**self._placement(), copy=True).requires_grad_(True)
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
            act, grad = store["act"].detach().float(), store["grad"].detach().float()
        finally:
            # The stored output tensor holds the tensor hook, whose closure holds ``store``: a reference cycle that
            # would keep the whole autograd graph (every saved activation) alive until the next gc pass.
            store.clear()
            handle.remove()
            self.model.train(was_training)
        weights = grad.mean(dim=(2, 3), keepdim=True) if self.method == "gradcam" else F.relu(grad)
        cam = F.relu((weights * act).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        cam = gaussian_blur(cam, self.smooth)
        cam = cam / cam.flatten(1).amax(dim=1).clamp_min(1e-8)[:, None, None]
        return cam.cpu(), logits.detach().float()


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

    heat = Image.fromarray((cam.float().numpy() * 255).astype(np.uint8)).resize(image.size, Image.BILINEAR)
    colored = colormaps["jet"](np.asarray(heat, np.float32) / 255)[..., :3]
    base = np.asarray(image.convert("RGB"), np.float32) / 255
    return Image.fromarray((255 * ((1 - alpha) * base + alpha * colored)).astype(np.uint8))
