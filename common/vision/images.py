"""Reading images: any file PIL opens becomes 8-bit RGB, and a bad one is named before training starts.

:func:`load_rgb` decodes a path, a PIL image or a hub-style ``{"bytes", "path"}`` dict; :func:`to_rgb` applies the
EXIF rotation and converts grey, 16-bit, palette, CMYK and transparent images; :func:`check_image` says what is
wrong with a file (missing, empty, truncated, not an image, too small, too large) without raising.

Decompression bombs: a 13,000 x 13,000 PNG of 190 KB decodes to ~0.5 GB of pixels (15 GB through the pipeline).
Both functions read the size from the header first (``Image.open`` is lazy) and refuse anything above
:data:`MAX_IMAGE_PIXELS` before decoding it.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from common.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

#: Largest image (width x height, pixels) that is decoded: ~40 MP, e.g. 7300 x 5500. Bigger ones are refused
#: from their header, before decoding. Override by assigning ``common.vision.images.MAX_IMAGE_PIXELS``
#: (``None``: no limit beyond PIL's own).
MAX_IMAGE_PIXELS: int | None = 40_000_000


class ImageDataError(DataError):
    """Bad training data, found before training: ``problems`` lists ``(image, what is wrong)``."""

    def __init__(self, problems: list[tuple[str, str]], total: int, max_shown: int = 10) -> None:
        self.problems = problems
        kinds = Counter(what.split(":")[0] for _, what in problems)
        summary = ", ".join(f"{n} x {k}" for k, n in kinds.most_common())
        lines = [f"{len(problems)} problem(s) in {total} images ({summary}); fix or remove them before training:"]
        lines += [f"  {where}: {what}" for where, what in problems[:max_shown]]
        if len(problems) > max_shown:
            lines.append(f"  ... and {len(problems) - max_shown} more")
        super().__init__("\n".join(lines))


@dataclass
class Sample:
    """One labelled image: ``source`` is a path, a PIL image or a hub-style ``{"bytes", "path"}`` dict."""

    source: Any
    label: str
    split: str = "train"
    box: list[int] | None = None  # optional (x0, y0, x1, y1) of the object/defect, original-image pixels

    @property
    def name(self) -> str:
        """The image's path when it has one, else a description (for error messages and cache keys)."""
        if isinstance(self.source, (str, Path)):
            return str(self.source)
        if isinstance(self.source, dict) and self.source.get("path"):
            return str(self.source["path"])
        return f"<in-memory image, label {self.label!r}>"


def _to_8bit(img: Image.Image) -> Image.Image:
    """16/32-bit integer and float images -> 8-bit grayscale, scaling by the bit depth (not clipping)."""
    arr = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16") or (img.mode == "I" and arr.max() > 255):
        arr = arr / 257.0
    elif img.mode == "F" and arr.max() <= 1.0:
        arr = arr * 255.0
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any PIL image -> 8-bit RGB: EXIF rotation applied; grey, 16-bit, palette, CMYK converted; alpha on white."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _to_8bit(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def _open(source: Any) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, dict):
        return Image.open(io.BytesIO(source["bytes"])) if source.get("bytes") else Image.open(source["path"])
    return Image.open(source)


def _describe(source: Any) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, dict) and source.get("path"):
        return str(source["path"])
    return "<in-memory image>"


def _too_large(img: Image.Image) -> str | None:
    """What is wrong when the header's size exceeds :data:`MAX_IMAGE_PIXELS` (nothing decoded yet), else None."""
    limit = MAX_IMAGE_PIXELS
    w, h = img.size
    if limit is not None and w * h > limit:
        return (f"too large: {w}x{h} px = {w * h / 1e6:.1f} MP, above the {limit / 1e6:g} MP limit "
                "(common.vision.images.MAX_IMAGE_PIXELS; a decompression bomb or an unscaled scan: resize it)")
    return None


def _open_bounded(source: Any) -> Image.Image:
    """Open lazily (header only) and refuse an image above the pixel limit before it is decoded."""
    try:
        img = _open(source)
    except Image.DecompressionBombError as e:  # PIL's own, much higher limit
        raise ImageDataError([(_describe(source), f"too large: {e}")], 1) from None
    issue = _too_large(img)
    if issue:
        raise ImageDataError([(_describe(source), issue)], 1)
    return img


def load_rgb(source: Any) -> Image.Image:
    """Read a path / PIL image / ``{"bytes", "path"}`` and return it as fully decoded 8-bit RGB.

    Raises:
        ImageDataError: the header says it is larger than :data:`MAX_IMAGE_PIXELS` (checked before decoding).
    """
    img = _open_bounded(source)
    img.load()
    return to_rgb(img)


def _looks_like_text(path: Path) -> bool:
    head = path.read_bytes()[:512]
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c >= 9 for c in head)


def check_image(source: Any) -> str | None:
    """``None`` when the image decodes fully, else what is wrong (``"kind: detail"``)."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            return "missing file: no such file"
        if path.stat().st_size == 0:
            return "empty file: 0 bytes"
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail here, not become grey pixels
    try:
        img = _open(source)
        too_large = _too_large(img)
        if too_large:  # from the header: never decoded
            return too_large
        img.load()
        rgb = to_rgb(img)
    except Image.DecompressionBombError as e:
        return f"too large: {e}"
    except UnidentifiedImageError:
        if isinstance(source, (str, Path)) and _looks_like_text(Path(source)):
            return "not an image: this is a text file with an image extension"
        return "not an image: PIL cannot identify the format"
    except (OSError, SyntaxError, ValueError) as e:
        return f"truncated or corrupt image: {e}"
    if min(rgb.size) < 8:
        return f"too small: {rgb.size[0]}x{rgb.size[1]} px"
    return None
