"""Photos as phones and messaging apps leave them: the held-out images scored again under common corruptions, and a
check that a photo to predict is not far outside what the model was trained on.

    from common.vision.robustness import corruption_report, image_stats, photo_warnings

    report = corruption_report(lambda corrupt: score(test_samples, corrupt), keys=("macro_f1",))
    # {"clean": {...}, "corrupted": {"jpeg_q30": {...}, ...}, "drop": {...}, "worst": {"macro_f1": ["blur", 0.12]}}

The corruptions are torchvision's own v2 transforms at one realistic severity each (ImageNet-C's families:
compression, blur, noise, brightness, contrast, resolution, a slight rotation), applied to the decoded photo before
the model's usual evaluation transform; each is deterministic (noise is seeded per image), so a report is
reproducible.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter


def _seeded_noise(sigma: float) -> Callable[[Image.Image], torch.Tensor]:
    """torchvision's ``GaussianNoise``, seeded per photo (it draws from the global generator, which is left as it was)."""
    from torchvision.transforms import v2

    to_float, noise = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]), v2.GaussianNoise(sigma=sigma)

    def corrupt(image: Image.Image) -> torch.Tensor:
        seed = int.from_bytes(hashlib.sha256(image.tobytes()).digest()[:4], "little")  # the same noise per photo
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return noise(to_float(image))
    return corrupt


def _downscale(factor: int) -> Callable[[Image.Image], Image.Image]:
    from torchvision.transforms import v2

    def corrupt(image: Image.Image) -> Image.Image:
        w, h = image.size
        return v2.functional.resize(image, [max(1, h // factor), max(1, w // factor)], antialias=True)
    return corrupt


def corruptions() -> dict[str, Callable]:
    """Name -> function of a decoded RGB photo (PIL) returning a PIL image or a float image tensor in [0, 1]."""
    from torchvision.transforms import v2

    F = v2.functional
    return {
        "jpeg_q30": v2.JPEG(30),  # a messaging app's recompression
        "gaussian_blur_s1.5": v2.GaussianBlur(kernel_size=9, sigma=1.5),  # slight focus / motion softness
        "gaussian_noise_s0.08": _seeded_noise(0.08),  # sensor noise in poor light
        "dark_x0.5": lambda im: F.adjust_brightness(im, 0.5),  # under-exposure
        "low_contrast_x0.5": lambda im: F.adjust_contrast(im, 0.5),  # haze, glare
        "downscale_x4": _downscale(4),  # a thumbnail sent on, upscaled again by the model's resize
        "rotate_5deg": lambda im: F.rotate(im, 5.0, interpolation=v2.InterpolationMode.BILINEAR),  # a tilted shot
    }


def corruption_report(score: Callable[[Callable | None], dict], keys: Sequence[str],
                      names: Sequence[str] | None = None) -> dict:
    """Score the same images clean and under each corruption.

    Args:
        score: ``score(corrupt)`` returns a metrics dict for the held-out images with ``corrupt`` applied to each
            decoded photo before the evaluation transform (``None``: clean).
        keys: the metrics to compare (higher is better), e.g. ``("macro_f1",)``.
        names: a subset of :func:`corruptions` (default: all).

    Returns:
        ``{"clean": {key: v}, "corrupted": {name: {key: v}}, "drop": {name: {key: clean - v}},
        "worst": {key: [name, drop]}}`` (drops in the metric's own units; positive = worse).
    """
    table = corruptions()
    clean = score(None)
    out: dict = {"clean": {k: clean[k] for k in keys}, "corrupted": {}, "drop": {}}
    for name in names or table:
        metrics = score(table[name])
        out["corrupted"][name] = {k: metrics[k] for k in keys}
        out["drop"][name] = {k: round(clean[k] - metrics[k], 4) for k in keys}
    out["worst"] = {k: list(max(((n, d[k]) for n, d in out["drop"].items()), key=lambda nd: nd[1])) for k in keys}
    return out


def evenly_spaced(items: Sequence, n: int | None) -> list:
    """At most ``n`` of ``items``, evenly spaced (a class-ordered split stays balanced); all when ``n`` is None."""
    items = list(items)
    if n is None or n >= len(items):
        return items
    return [items[round(i * len(items) / n)] for i in range(n)]


def corrupted_transform(corrupt: Callable | None, transform: Callable) -> Callable:
    """``transform`` with ``corrupt`` applied first (``None``: ``transform`` itself)."""
    if corrupt is None:
        return transform
    return lambda image: transform(corrupt(image))


def robustness_section(report: dict, key: str, label: str) -> str:
    """A REPORT.md table: the metric ``key`` on clean and corrupted held-out photos (test, and validation beside it
    when present), with the drop; the worst corruption named."""
    test, val = report["test"], report.get("validation")
    head = f"| corruption | {label} (test) | drop |" + (f" {label} (validation) | drop |" if val else "")
    rows = [head, "|---|---|---|" + ("---|---|" if val else ""),
            f"| none (clean) | {test['clean'][key]:.3f} | — |" + (f" {val['clean'][key]:.3f} | — |" if val else "")]
    for name, metrics in test["corrupted"].items():
        row = f"| {name} | {metrics[key]:.3f} | {test['drop'][name][key]:+.3f} |"
        if val:
            row += f" {val['corrupted'][name][key]:.3f} | {val['drop'][name][key]:+.3f} |"
        rows.append(row)
    worst, drop = test["worst"][key]
    return "\n".join(rows) + f"\n\nWorst on the test photos: **{worst}**, {label} down {drop:.3f}."


# ----------------------------------------------------------------------------------- outside the training photos

def image_stats(image: Image.Image) -> dict[str, float]:
    """What a photo is like, in three numbers: its shorter side (px), its contrast (the standard deviation of its
    grey levels, 0-255) and its sharpness (the variance of its Laplacian at 128 px, PIL's ``FIND_EDGES`` kernel)."""
    grey = image.convert("L")
    small = grey.resize((128, 128), Image.Resampling.BILINEAR)
    edges = np.asarray(small.filter(ImageFilter.FIND_EDGES), dtype=np.float32)[1:-1, 1:-1]
    return {"min_side": float(min(image.size)), "contrast": float(np.asarray(grey, dtype=np.float32).std()),
            "sharpness": float(edges.var())}


def training_ranges(images: Sequence[Image.Image], low: float = 1.0) -> dict[str, float]:
    """The ``low`` percentile of each :func:`image_stats` over the training photos: what "small", "flat" and "soft"
    mean for this model. Saved with the run; :func:`photo_warnings` compares new photos with it."""
    stats = [image_stats(im) for im in images]
    return {k: round(float(np.percentile([s[k] for s in stats], low)), 3) for k in stats[0]} if stats else {}


def photo_warnings(image: Image.Image, ranges: dict[str, float], margin: float = 0.5) -> list[str]:
    """Why a photo is far outside the training photos (below ``margin`` times their 1st percentile), if it is."""
    if not ranges:
        return []
    stats = image_stats(image)
    what = {"min_side": "too small ({:.0f} px on its shorter side; the training photos have >= {:.0f})",
            "contrast": "nearly uniform (grey-level spread {:.1f}; the training photos have >= {:.1f})",
            "sharpness": "too blurred (sharpness {:.1f}; the training photos have >= {:.1f})"}
    return [text.format(stats[k], ranges[k]) for k, text in what.items()
            if k in ranges and stats[k] < margin * ranges[k]]
