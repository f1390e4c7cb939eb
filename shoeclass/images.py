"""Turning whatever a user passes as a photo into an upright RGB PIL image, or a clear error.

Every input ends one of two ways: an upright 8-bit RGB image, or an :class:`ImageError` that names
the photo, says what is wrong with it and what to do. Nothing else escapes (a corrupt file never
raises a bare ``OSError``), nothing is downloaded and nothing is written.

What is accepted and how it is normalised:

* JPEG (also CMYK and multi-picture MPO), PNG, WebP, GIF, BMP, TIFF and AVIF files, as paths or encoded bytes;
  PIL images; uint8 numpy arrays. Other formats (SVG, HEIC, PDF, text) are refused with a hint to
  export the photo as JPEG or PNG. EPS and other formats that need external programs are never
  opened.
* The EXIF orientation is applied (as ``ImageOps.exif_transpose``), so a phone photo comes out
  upright. Broken EXIF data is ignored: the pixels are still good.
* Transparency is composited on white (catalogue photos have white backgrounds); palette,
  greyscale and CMYK become RGB; 16-bit greyscale is scaled 0..65535 -> 0..255, not clipped.
* Animations (GIF, APNG, WebP) give their first frame.
* Size: the longer side is reduced to :data:`MAX_SIDE` px (the model sees 224 px). JPEGs are
  decoded at reduced scale (libjpeg DCT scaling) so a 50 MP photo never sits in memory at full
  size. Images declaring more than :data:`MAX_PIXELS` pixels are refused before decoding as
  possible decompression bombs; this limit is checked here, without touching PIL's global
  ``Image.MAX_IMAGE_PIXELS`` (which stays higher, so PIL never warns first). A non-JPEG at the
  limit costs at most ~0.6 GB while decoding; a JPEG a quarter of that or less.
* Images whose shorter side is under :data:`MIN_SIDE` px are refused: icons, thumbnails and
  tracking pixels carry no usable detail and would only add noise to the item's fused result.
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Union

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

__all__ = ["ImageError", "ImageInput", "load_image", "describe_source",
           "MAX_SIDE", "MIN_SIDE", "MAX_PIXELS", "MAX_FILE_BYTES", "FORMATS"]

ImageInput = Union[str, os.PathLike, bytes, bytearray, Image.Image, np.ndarray]

MAX_SIDE = 2048  # px, longer side of the returned image
MIN_SIDE = 32  # px, shorter side; smaller is an icon or a thumbnail, not a photo
MAX_PIXELS = 80_000_000  # declared width x height; above phone cameras' 12-64 MP, below PIL's 89 MP warning
MAX_FILE_BYTES = 128 * 1024 * 1024
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")  # PIL plugins allowed to open (MPO opens as JPEG)
_SEND = "export or save it as JPEG or PNG and pass that file"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://|^data:", re.ASCII)
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


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
    """Open a photo as an upright RGB image (see the module docstring for what is accepted).

    Args:
        source: a file path, encoded bytes, a PIL image or an (H, W[, C]) uint8 array.
        name: how to call the photo in errors (defaults to the path or the type).

    Returns:
        An 8-bit RGB ``PIL.Image.Image``, EXIF orientation applied, longer side <= ``MAX_SIDE``.
        A PIL image passed in is never modified.

    Raises:
        ImageError: the photo cannot be used; the message names it, the problem and the fix.

    Example:
        >>> load_image("examples/boot_side.jpg").mode
        'RGB'
    """
    name = name or describe_source(source)
    if isinstance(source, Image.Image):
        img = source
        _check_size(img.size, name)
    elif isinstance(source, np.ndarray):
        img = _from_array(source, name)
    elif isinstance(source, (bytes, bytearray, str, os.PathLike)):
        return _decode(_read(source, name), name)
    else:
        raise ImageError(name, f"unsupported input type {type(source).__name__}",
                         "pass a file path, encoded bytes, a PIL image or a uint8 numpy array")
    try:
        out = _finish(img, _orientation(img), name)
    except ImageError:
        raise
    except Exception as exc:  # a PIL image in an exotic mode
        raise ImageError(name, f"cannot convert the image to RGB ({exc})", _SEND) from exc
    return out.copy() if out is source else out


def _read(source: str | os.PathLike | bytes | bytearray, name: str) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        text = os.fspath(source)
        if isinstance(text, str) and _URL.match(text.strip()):
            raise ImageError(name, "is a URL, not a file",
                             "shoeclass does not download; save the photo and pass the file")
        path = Path(os.fsdecode(text))
        if path.is_dir():
            raise ImageError(name, "is a folder, not a photo", "pass the photo files inside it")
        if not path.is_file():
            raise ImageError(name, "no such file", "check the path")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ImageError(name, f"file too large ({size / 2**20:.0f} MB > {MAX_FILE_BYTES // 2**20} MB)",
                             "downscale the photo or save it as JPEG")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageError(name, f"cannot read the file ({exc.strerror or exc})", "check its permissions") from exc
    if not data:
        raise ImageError(name, "empty file (0 bytes)", "the download or copy failed; copy the photo again")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(name, f"too large ({len(data) / 2**20:.0f} MB > {MAX_FILE_BYTES // 2**20} MB)",
                         "downscale the photo or save it as JPEG")
    return data


def _decode(data: bytes, name: str) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError as exc:
        raise ImageError(name, _unknown_format(data), _SEND) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # PIL's own limit
        raise _bomb(name, None) from exc
    except Exception as exc:  # PIL raises many types for corrupt headers
        raise _corrupt(name, None, exc) from exc
    try:
        _check_size(img.size, name)
        orientation = _orientation(img)
        if img.format in ("JPEG", "MPO"):
            img.draft(None, (MAX_SIDE, MAX_SIDE))  # decode at 1/2, 1/4 or 1/8 scale when large
        img.load()
        return _finish(img, orientation, name)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb(name, img.size) from exc
    except MemoryError as exc:
        raise ImageError(name, "not enough memory to decode", "downscale the photo") from exc
    except Exception as exc:  # truncated or corrupt pixel data: OSError, ValueError, SyntaxError ...
        raise _corrupt(name, img.format, exc) from exc


def _corrupt(name: str, fmt: str | None, exc: Exception) -> ImageError:
    problem = "the file is truncated" if "truncated" in str(exc).lower() else (
        f"corrupt image data ({type(exc).__name__}: {exc})")
    return ImageError(name, f"cannot decode {fmt or 'image'}: {problem}",
                      "the photo was cut off or damaged; copy or export it again")


def _unknown_format(data: bytes) -> str:
    head = data[:512].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in data[:4096].lower()):
        return "an SVG drawing, not a photo; shoeclass reads raster photos"
    if head.startswith((b"<!doctype html", b"<html")):
        return "a web page (HTML), not a photo"
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftyphevc", b"ftypmif1", b"ftypmsf1"):
        return "a HEIC/HEIF photo, which shoeclass cannot read"
    if data.startswith(b"%PDF"):
        return "a PDF document, not a photo"
    try:
        data[:256].decode("utf-8")
        return "a text file, not an image"
    except UnicodeDecodeError:
        return f"not an image in a known format ({', '.join(FORMATS)})"


def _bomb(name: str, size: tuple[int, int] | None) -> ImageError:
    dims = f"{size[0]}×{size[1]} px, " if size else ""
    return ImageError(name, f"image too large ({dims}over the {MAX_PIXELS // 1_000_000} MP limit; "
                            "possible decompression bomb)", "downscale the photo, e.g. to 4000 px wide")


def _check_size(size: tuple[int, int], name: str) -> None:
    w, h = size
    if w * h > MAX_PIXELS:
        raise _bomb(name, size)
    if min(w, h) < MIN_SIDE:
        raise ImageError(name, f"image too small ({w}×{h} px; at least {MIN_SIDE} px a side needed)",
                         "pass the original photo, not a thumbnail or an icon")


def _from_array(arr: np.ndarray, name: str) -> Image.Image:
    if arr.dtype != np.uint8:
        raise ImageError(name, f"array of dtype {arr.dtype}", "pass uint8 values 0..255")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageError(name, f"array of shape {arr.shape}", "pass (H, W), (H, W, 3) or (H, W, 4)")
    _check_size((arr.shape[1], arr.shape[0]), name)
    return Image.fromarray(np.ascontiguousarray(arr))


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # malformed EXIF: the pixels are still good
        return 1
    return value if isinstance(value, int) else 1


def _finish(img: Image.Image, orientation: int, name: str) -> Image.Image:
    """Downscale, convert to 8-bit RGB, then turn upright; never modifies ``img`` itself."""
    if max(img.size) > MAX_SIDE:
        scale = MAX_SIDE / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    img = _to_rgb(img, name)
    if orientation in _TRANSPOSE:
        img = img.transpose(_TRANSPOSE[orientation])
    return img


def _to_rgb(img: Image.Image, name: str) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I", "F") or mode.startswith("I;16"):
        # 16-bit (PNG, TIFF) greyscale: scale 0..65535 to 0..255; convert("RGB") would clip instead
        arr = np.asarray(img, dtype=np.float64)
        top = 1.0 if mode == "F" and np.nanmax(arr, initial=0.0) <= 1.0 else 65535.0
        arr = np.nan_to_num(arr / top * 255.0, nan=0.0).clip(0, 255)
        return Image.fromarray(np.round(arr).astype(np.uint8)).convert("RGB")
    if "A" in img.getbands() or "a" in mode or mode in ("P", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise ImageError(name, f"unsupported colour mode {mode}", _SEND) from exc
