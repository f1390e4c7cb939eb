"""Turning whatever a user passes as a photo into an upright RGB PIL image, or a clear error."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps

__all__ = ["ImageError", "ImageInput", "load_image", "describe_source"]

ImageInput = Union[str, os.PathLike, bytes, bytearray, Image.Image, np.ndarray]


class ImageError(ValueError):
    """A photo that cannot be used: names the photo, the problem and what to do."""

    def __init__(self, photo: str, problem: str, hint: str = "") -> None:
        self.photo, self.problem, self.hint = photo, problem, hint
        super().__init__(f"{photo}: {problem}" + (f" ({hint})" if hint else ""))


def describe_source(source: ImageInput, index: int | None = None) -> str:
    """A short human-readable name for a photo argument, used in results and errors."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    kind = type(source).__name__
    return f"<{kind} #{index}>" if index is not None else f"<{kind}>"


def load_image(source: ImageInput, name: str | None = None) -> Image.Image:
    """Open a photo as an upright RGB image.

    Args:
        source: a file path, encoded bytes, a PIL image or an (H, W[, C]) uint8 array.
        name: how to call the photo in errors (defaults to the path or the type).

    Returns:
        An RGB ``PIL.Image.Image`` with EXIF orientation applied.

    Raises:
        ImageError: the photo cannot be read; the message names it and the problem.
    """
    name = name or describe_source(source)
    if isinstance(source, Image.Image):
        img = source
    elif isinstance(source, np.ndarray):
        arr = source
        if arr.dtype != np.uint8:
            raise ImageError(name, f"array of dtype {arr.dtype}", "pass uint8 values 0..255")
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
            raise ImageError(name, f"array of shape {arr.shape}", "pass (H, W), (H, W, 3) or (H, W, 4)")
        img = Image.fromarray(arr)
    else:
        if isinstance(source, (bytes, bytearray)):
            data = bytes(source)
        elif isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.is_file():
                raise ImageError(name, "no such file", "check the path")
            data = path.read_bytes()
        else:
            raise ImageError(name, f"unsupported input type {type(source).__name__}",
                             "pass a path, bytes, a PIL image or a numpy array")
        if not data:
            raise ImageError(name, "empty file")
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
        except Exception as exc:  # PIL raises many types for corrupt data
            raise ImageError(name, f"cannot decode image: {exc}", "send a JPEG, PNG or WebP file") from exc
    img = ImageOps.exif_transpose(img)
    if img.mode != "RGB":
        if "A" in img.getbands() or img.mode == "P":
            rgba = img.convert("RGBA")
            bg = Image.new("RGB", rgba.size, (255, 255, 255))
            bg.paste(rgba, mask=rgba.getchannel("A"))
            img = bg
        else:
            img = img.convert("RGB")
    return img
