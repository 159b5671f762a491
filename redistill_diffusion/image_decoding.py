"""Whatever a dataset row holds -> an 8-bit PIL image in the mode a model reads: the one decoder that
training (diffusion and classification), held-out data and evaluation references all go through.

PIL's own ``convert("RGB")`` clips 16-bit pixels (modes ``I;16``/``I``) to 255, so a 16-bit PNG became an
all-white image; here 16-bit values are scaled to 8 bits instead (v / 257, so 65535 -> 255). Images with
transparency (``RGBA``, grey + alpha ``LA``, palette images with a transparent colour) are composited
over white rather than having their alpha dropped, which would reveal whatever colour the transparent
pixels happen to store. CMYK goes through PIL's conversion; the EXIF orientation tag is applied (images
decoded by `datasets` already had it applied and carry no tag any more, so it is never applied twice).
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
from PIL import Image, ImageOps

# Modes whose samples are 16-bit (PIL reads 16-bit greyscale PNG/TIFF as one of these).
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
TARGET_MODES = ("RGB", "L")
BACKGROUND = 255  # transparent pixels become white


def _to_pil(image: Any) -> Image.Image:
    """A PIL image from a PIL image, encoded bytes, a `datasets` ``{"bytes", "path"}`` dict, a path or an array."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, dict) and ("bytes" in image or "path" in image):
        image = image.get("bytes") or image.get("path")
        if image is None:
            raise ValueError("an image entry holds neither bytes nor a path.")
    if isinstance(image, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(image)))
    if isinstance(image, (str, os.PathLike)):
        return Image.open(image)
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype == np.uint16:
        return Image.fromarray(_scale_16_to_8(array))
    if array.dtype == bool:
        return Image.fromarray(array.astype(np.uint8) * 255)
    if array.dtype != np.uint8:
        raise ValueError(
            f"an image array of dtype {array.dtype} cannot be read as pixels; store images as PNG/JPEG or "
            "as uint8 (or uint16) arrays."
        )
    return Image.fromarray(array)


def _scale_16_to_8(array: np.ndarray) -> np.ndarray:
    """16-bit samples -> 8-bit, scaled (65535 -> 255) rather than clipped."""
    scaled = np.clip(array.astype(np.float64), 0, 65535) / 257.0
    return np.round(scaled).astype(np.uint8)


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Composite an image with transparency over a white background (RGB or L, as it had colour)."""
    grey = image.mode in ("LA", "La")
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (BACKGROUND, BACKGROUND, BACKGROUND, 255))
    flat = Image.alpha_composite(background, rgba).convert("RGB")
    return flat.convert("L") if grey else flat


def decode_image(image: Any, mode: str = "RGB") -> Image.Image:
    """``image`` (PIL image, encoded bytes, ``{"bytes", "path"}``, a path or a uint8/uint16 array) as an
    8-bit PIL image in ``mode`` (``"RGB"`` or ``"L"``), upright as its EXIF orientation says."""
    if mode not in TARGET_MODES:
        raise ValueError(f"images are decoded to RGB or L, not {mode!r}.")
    image = _to_pil(image)
    if image.getexif().get(0x0112, 1) != 1:  # 0x0112: the EXIF Orientation tag
        image = ImageOps.exif_transpose(image)
    if image.mode in SIXTEEN_BIT_MODES:
        image = Image.fromarray(_scale_16_to_8(np.asarray(image)))
    elif image.mode == "P" and "transparency" in image.info:
        image = _flatten_alpha(image.convert("RGBA"))
    elif image.mode in ALPHA_MODES:
        image = _flatten_alpha(image)
    return image if image.mode == mode else image.convert(mode)
