"""Image classification fine-tuning: data, validation, backbones, linear probe / LoRA / full, metrics, heatmaps.

The pieces a vision recipe strings together::

    splits = load_splits(data_args)                         # folder, CSV/JSONL or hub dataset -> Samples
    labels = validate_splits(splits)                        # every image opened before training; ImageDataError
    backbone, norm = load_backbone(model_args.model_name_or_path, len(labels))
    probe = fit_linear_probe(backbone, ...)                 # the baseline: frozen ImageNet features
    model = prepare_for_method(backbone, model_args)        # lora | full | linear_probe
    trainer = build_trainer(ImageClassifier(model), training_args, train_ds, val_ds, patience)
    metrics = evaluate_classifier(model, test_ds, labels)   # accuracy, macro-F1, per class, confusion
    where = localization_score(model, test_ds, labels)      # heatmap peak inside the defect's box?

One job per module (everything is re-exported here, so ``from common import vision; vision.load_splits(...)``):

- :mod:`common.vision.args`    -- :class:`VisionDataArguments`, :class:`VisionModelArguments`, ``METHODS``.
- :mod:`common.vision.images`  -- any image -> RGB, :func:`check_image`, :class:`ImageDataError`, :class:`Sample`.
- :mod:`common.vision.data`    -- sources (folder, table, hub), stratified splits, validation, transforms, datasets.
- :mod:`common.vision.models`  -- timm backbones, embedded EfficientNet-Lite0, LoRA / full / probe, save / load.
- :mod:`common.vision.train`   -- cached features, the linear probe, the HF Trainer, training throughput.
- :mod:`common.vision.metrics` -- predictions, metrics, confusion-matrix plot, localization score.
- :mod:`common.vision.cam`     -- Grad-CAM / LayerCAM heatmaps.

Training runs on the HF :class:`~transformers.Trainer` (resume, early stopping on the task metric, TensorBoard,
``accelerate launch``); the hardware precision policy reaches it through :func:`common.config.parse_config`,
and the linear probe's Trainer runs with the same precision (one accelerate state per run).

Backbones (``model_name_or_path``): ``efficientnet-lite0`` (embedded ImageNet weights, converted once to
safetensors), ``tiny-random-efficientnet`` (random, for tests), a local folder in timm's layout (``config.json`` +
``model.safetensors``, which is also what :func:`save_classifier` writes) or any timm model name / ``hf-hub:`` id.
"""

from common.vision.args import (
    CAM_METHODS,
    EMBEDDED_VISION_ALIAS,
    METHODS,
    TINY_VISION_ALIAS,
    VisionDataArguments,
    VisionModelArguments,
    check_args,
)
from common.vision.cam import (
    GradCAM,
    check_cam_layer,
    default_cam_layer,
    gaussian_blur,
    overlay,
    peak,
    peak_in_box,
)
from common.vision.data import (
    FeatureDataset,
    ImageDataset,
    build_transforms,
    carve,
    load_splits,
    samples_from_folder,
    samples_from_hf,
    samples_from_table,
    validate_splits,
)
from common.vision.images import IMAGE_EXTENSIONS, ImageDataError, Sample, check_image, load_rgb, to_rgb
from common.vision.metrics import (
    classification_metrics,
    evaluate_classifier,
    localization_score,
    plot_confusion,
    predict,
)
from common.vision.models import (
    LITE0_MEAN,
    LITE0_STD,
    ImageClassifier,
    LinearHead,
    head_name,
    inference_device,
    load_backbone,
    load_classifier,
    lora_targets,
    model_dtype,
    prepare_efficientnet_lite0,
    prepare_for_method,
    save_classifier,
    trainable_parameters,
    unwrap,
)
from common.vision.robustness import (
    corrupted_transform,
    corruption_report,
    corruptions,
    evenly_spaced,
    photo_warnings,
    robustness_section,
    training_ranges,
)
from common.vision.train import build_trainer, compute_metrics, extract_features, fit_linear_probe, train_throughput

__all__ = [
    "EMBEDDED_VISION_ALIAS", "IMAGE_EXTENSIONS", "LITE0_MEAN", "LITE0_STD", "METHODS", "TINY_VISION_ALIAS",
    "FeatureDataset", "GradCAM", "ImageClassifier", "ImageDataError", "ImageDataset", "LinearHead", "Sample",
    "VisionDataArguments", "VisionModelArguments",
    "CAM_METHODS", "build_trainer", "build_transforms", "carve", "check_args", "check_cam_layer", "check_image",
    "classification_metrics", "compute_metrics", "corrupted_transform", "corruption_report", "corruptions", "evenly_spaced",
    "default_cam_layer", "evaluate_classifier", "extract_features", "fit_linear_probe", "gaussian_blur", "head_name",
    "inference_device", "load_backbone", "load_classifier", "load_rgb", "load_splits", "localization_score",
    "lora_targets", "model_dtype", "overlay", "peak", "peak_in_box", "photo_warnings", "plot_confusion", "predict",
    "prepare_efficientnet_lite0", "prepare_for_method", "samples_from_folder", "samples_from_hf",
    "robustness_section", "samples_from_table", "save_classifier", "to_rgb", "train_throughput", "training_ranges",
    "trainable_parameters",
    "unwrap", "validate_splits",
]
