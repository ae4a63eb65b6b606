"""Heatmaps (common/vision/cam.py) and the confusion-matrix plot: Grad-CAM / LayerCAM must point at what drives
the logit, leave no gradients behind and work on bf16 models; the plot shows counts, rows true, columns predicted."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
import torch
from PIL import Image
from torch import nn

from common import vision
from common.vision.cam import GradCAM, overlay, peak, peak_in_box
from common.vision.metrics import _confusion_figure


class _BrightSpotNet(nn.Module):
    """conv (brightness detector) -> ReLU -> global pool -> linear: class 1 = 'has a bright spot'."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.features[0].weight.zero_()
            self.features[0].weight[0, :, 1, 1] = 1.0  # channel 0 fires on bright pixels
            self.features[0].bias.fill_(-1.5)
            self.fc.weight.zero_()
            self.fc.weight[1, 0] = 10.0

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def _spots() -> torch.Tensor:
    img = torch.zeros(2, 3, 32, 32)
    img[0, :, 20:26, 4:10] = 1.0  # the planted spots
    img[1, :, 3:7, 24:30] = 1.0
    return img


def test_gradcam_peak_lands_on_the_planted_region():
    heat, logits = GradCAM(_BrightSpotNet(), "features.1")(_spots(), class_idx=1)
    assert heat.shape == (2, 32, 32) and float(heat.max()) == pytest.approx(1.0) and float(heat.min()) >= 0
    assert peak_in_box(heat[0], (4, 20, 10, 26), (32, 32)) and peak_in_box(heat[1], (24, 3, 30, 7), (32, 32))
    assert not peak_in_box(heat[0], (24, 3, 30, 7), (32, 32))
    x, y = peak(heat[1])
    assert 24 <= x < 30 and 3 <= y < 7
    assert overlay(Image.new("RGB", (64, 64)), heat[0]).size == (64, 64)


@pytest.mark.parametrize("autocast", [False, True])
def test_gradcam_on_bf16_weights_or_under_bf16_autocast_gives_fp32_maps(autocast):
    model = _BrightSpotNet() if autocast else _BrightSpotNet().to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        heat, logits = GradCAM(model, "features.1")(_spots(), class_idx=1)  # fp32 pixels in
    assert heat.dtype == logits.dtype == torch.float32
    assert peak_in_box(heat[0], (4, 20, 10, 26), (32, 32)) and peak_in_box(heat[1], (24, 3, 30, 7), (32, 32))
    assert overlay(Image.new("RGB", (32, 32)), heat[1]).size == (32, 32)  # numpy needs fp32


class _CancellingNet(nn.Module):
    """Two spot detectors with opposite class weights plus a dark-background detector.

    Grad-CAM weighs whole channels, so the spot's positive and negative evidence cancel and the background wins;
    LayerCAM keeps only positive gradients per position, so the spot stays the hottest place.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.features[0].weight.zero_()
            self.features[0].weight[0:2, :, 0, 0] = 1.0  # channels 0 and 1: bright pixels
            self.features[0].weight[2, :, 0, 0] = -1.0  # channel 2: dark pixels
            self.features[0].bias.copy_(torch.tensor([-1.5, -1.5, 0.5]))
            self.fc.weight.zero_()
            self.fc.weight[1] = torch.tensor([10.0, -8.0, 10.0])
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def test_layercam_keeps_positive_evidence_where_gradcam_cancels_it():
    img = torch.zeros(1, 3, 32, 32)
    img[0, :, 20:26, 4:10] = 1.0
    box = (4, 20, 10, 26)
    grad_heat, _ = GradCAM(_CancellingNet(), "features.1", method="gradcam")(img, class_idx=1)
    layer_heat, _ = GradCAM(_CancellingNet(), "features.1", method="layercam")(img, class_idx=1)
    assert not peak_in_box(grad_heat[0], box, (32, 32))
    assert peak_in_box(layer_heat[0], box, (32, 32))
    smooth, _ = GradCAM(_CancellingNet(), "features.1", method="layercam", smooth=2.0)(img, class_idx=1)
    assert peak_in_box(smooth[0], box, (32, 32)) and float(smooth.max()) == pytest.approx(1.0)
    assert (smooth[0] > 0.9).sum() < (layer_heat[0] > 0.9).sum()  # blurred: the spot's edges soften
    with pytest.raises(ValueError, match="not one of"):
        GradCAM(_CancellingNet(), "features.1", method="scorecam")


def test_gradcam_on_a_timm_backbone_defaults_to_the_last_stage():
    backbone, _ = vision.load_backbone(vision.TINY_VISION_ALIAS, 3)
    cam = GradCAM(backbone)
    assert cam.layer_name == backbone.feature_info[-1]["module"]
    heat, logits = cam(torch.randn(2, 3, 64, 64))
    assert heat.shape == (2, 64, 64) and logits.shape == (2, 3)
    assert backbone.conv_stem.weight.grad is None  # the explanation leaves no gradients behind


# ----------------------------------------------------------------------------------- confusion matrix


def test_confusion_plot_shows_counts_with_true_rows_and_predicted_columns(tmp_path):
    matrix = [[5, 1, 0], [2, 7, 0], [0, 3, 9]]  # rows: true class, columns: predicted
    fig = _confusion_figure(matrix, ["good", "dent", "crack"], "t")
    ax = fig.axes[0]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert cells == {(i, j): str(matrix[i][j]) for i in range(3) for j in range(3)}  # text at (x=col, y=row)
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("predicted", "true", "t")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["good", "dent", "crack"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["good", "dent", "crack"]
    plt.close(fig)

    path = vision.plot_confusion(matrix, ["good", "dent", "crack"], tmp_path / "cm.png")
    assert path == tmp_path / "cm.png"
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size[0] > 200
