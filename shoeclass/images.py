"""Turning whatever a user passes as a photo into an upright RGB PIL image, or a clear error.

Every input ends one of two ways: an upright 8-bit RGB image, or an :class:`ImageError` that names
the photo, says what is wrong with it and what to do. Nothing else escapes (a corrupt file never
raises a bare ``OSError``), nothing is downloaded and nothing is written.

What is accepted and how it is normalised:

* JPEG (also CMYK and multi-picture MPO), PNG and WebP files -- what cameras, phones and shops
  produce -- as paths, encoded bytes or a ``memoryview`` of them; PIL images; uint8 numpy arrays.
  Other formats are refused by name (GIF, BMP, TIFF, AVIF, HEIC, SVG, PDF, ...) with a hint to
  export the photo as JPEG or PNG; HEIC stays refused because no installed package decodes it.
  EPS and other formats that need external programs are never opened.
* The EXIF orientation is applied (as ``ImageOps.exif_transpose``), so a phone photo comes out
  upright. Broken EXIF data is ignored: the pixels are still good.
* Transparency is composited on white (catalogue photos have white backgrounds); palette,
  greyscale and CMYK become RGB; 16-bit greyscale is scaled 0..65535 -> 0..255, not clipped.
* Animations (GIF, APNG, WebP) give their first frame.
* Size: the longer side is reduced to :data:`MAX_SIDE` px (the model sees 224 px). JPEGs are
  decoded at reduced scale (libjpeg DCT scaling) so a 50 MP photo never sits in memory at full
  size. Images declaring more than :data:`MAX_PIXELS` pixels are refused before decoding as
  possible decompression bombs; this limit is checked here, without touching PIL's global
  ``Image.MAX_IMAGE_PIXELS`` (which stays higher, so PIL never warns first).
* Decode budget, read from the file's header before any pixel is decoded: the pixel buffer PIL
  would hold (PNG, WebP), or libjpeg's full-size coefficient buffer (progressive and multi-scan
  JPEGs), is at most :data:`MAX_DECODE_BYTES`; a JPEG has at most :data:`MAX_JPEG_SCANS` scans and
  at least one. ``benchmarks/decode_budget.py`` measures the worst file these limits let through.
* Images whose shorter side is under :data:`MIN_SIDE` px, before or after the reduction to
  ``MAX_SIDE``, are refused: icons, thumbnails, tracking pixels and 1:2500 strips carry no usable
  detail and would only add noise to the item's fused result.
* Paths that are not regular files (a folder, a device such as /dev/zero, a named pipe, a
  symbolic-link loop, a path too long for the file system, a folder without read permission)
  are refused by what they are.
"""
from __future__ import annotations

import errno
import io
import os
import re
import stat
from typing import Union

import numpy as np
from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

from ._formats import refused_format, unknown_format
from ._jpeg import jpeg_cost

__all__ = ["ImageError", "ImageInput", "load_image", "describe_source",
           "MAX_SIDE", "MIN_SIDE", "MAX_PIXELS", "MAX_FILE_BYTES", "MAX_DECODE_BYTES", "MAX_JPEG_SCANS",
           "FORMATS"]

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]

MAX_SIDE = 2048  # px, longer side of the returned image
MIN_SIDE = 32  # px, shorter side; smaller is an icon or a thumbnail, not a photo
MAX_PIXELS = 80_000_000  # declared width x height; above phone cameras' 12-64 MP, below PIL's 89 MP warning
MAX_FILE_BYTES = 128 * 1024 * 1024
# Decoded pixels (PIL holds RGB as 4 bytes a pixel) or a JPEG's coefficient buffer: 16 MP of RGB
# (a 12 MP phone photo saved as PNG passes), 22 MP of a 4:2:0 progressive JPEG. Peak memory and
# time at this budget are measured by benchmarks/decode_budget.py (about 2x in memory).
MAX_DECODE_BYTES = 64 * 1024 * 1024
# libjpeg's standard progressive script writes 10 scans (6 for greyscale) and scan optimisers
# (jpegtran -optimize, mozjpeg) fewer than 30; every scan is one more pass over the coefficient buffer.
MAX_JPEG_SCANS = 64
FORMATS = ("JPEG", "PNG", "WEBP")  # PIL plugins allowed to open (MPO opens as JPEG)
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2}  # PIL's storage; else 4
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
        return _from_pil(source, name)
    if isinstance(source, np.ndarray):
        img = _from_array(source, name)
        try:
            return _finish(img, 1, name)
        except ImageError:
            raise
        except Exception as exc:  # pragma: no cover - fromarray gave a mode _to_rgb cannot convert
            raise ImageError(name, f"cannot convert the array to RGB ({exc})", _SEND) from exc
    if isinstance(source, (bytes, bytearray, memoryview, str, os.PathLike)):
        return _decode(_read(source, name), name)
    raise ImageError(name, f"unsupported input type {type(source).__name__}",
                     "pass a file path, encoded bytes, a PIL image or a uint8 numpy array")


def _from_pil(img: Image.Image, name: str) -> Image.Image:
    """A caller's PIL image, maybe not decoded yet (``Image.open`` is lazy) or already closed."""
    try:
        _check_size(img.size, name)
        if isinstance(img, ImageFile.ImageFile) and img.tile:  # not decoded yet: decoded as its file is
            data = _lazy_bytes(img)
            if data is not None:
                return _decode(data, name)
            if img.format not in FORMATS and img.format != "MPO":
                raise ImageError(name, f"a {img.format} image, which shoeclass does not read", _SEND)
            _check_budget(img, name)
        out = _finish(img, _orientation(img), name)
        return out.copy() if out is img else out
    except ImageError:
        raise
    except MemoryError as exc:
        raise ImageError(name, "not enough memory to decode", "downscale the photo") from exc
    except ValueError as exc:
        if "closed" in str(exc).lower():
            raise ImageError(name, "the PIL image is closed", "pass it before closing it, or open the file again") from exc
        raise _corrupt(name, getattr(img, "format", None), exc) from exc
    except Exception as exc:  # a lazy image whose file is truncated, or an exotic mode
        raise _corrupt(name, getattr(img, "format", None), exc) from exc


def _lazy_bytes(img: ImageFile.ImageFile) -> bytes | None:
    """The encoded file behind an image ``Image.open`` has not decoded yet (None if unreachable), so
    it gets the same format checks, decode budget and reduced-scale JPEG decoding as a path."""
    fp = getattr(img, "fp", None)
    if fp is None:
        return None
    try:
        pos = fp.tell()
        fp.seek(0)
        data = fp.read(MAX_FILE_BYTES + 1)
        fp.seek(pos)
    except (OSError, ValueError):  # a closed or unseekable file
        return None
    return data if isinstance(data, bytes) and data else None


def _read(source: str | os.PathLike | bytes | bytearray | memoryview, name: str) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = source.tobytes() if isinstance(source, memoryview) else bytes(source)  # any view, in C order
    else:
        text = os.fspath(source)
        if isinstance(text, str) and _URL.match(text.strip()):
            raise ImageError(name, "is a URL, not a file",
                             "shoeclass does not download; save the photo and pass the file")
        data = _read_file(os.fsdecode(text), name)
    if not data:
        raise ImageError(name, "empty file (0 bytes)", "the download or copy failed; copy the photo again")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(name, f"too large ({len(data) / 2**20:.0f} MB > {MAX_FILE_BYTES // 2**20} MB)",
                         "downscale the photo or save it as JPEG")
    return data


def _read_file(path: str, name: str) -> bytes:
    """The bytes of a regular file; anything else is refused by what it is."""
    try:
        st = os.stat(path)
    except ValueError as exc:  # embedded NUL
        raise ImageError(name, "the path contains a NUL character", "check the path") from exc
    except OSError as exc:
        raise _path_error(path, name, exc) from exc
    kind = ("is a folder, not a photo" if stat.S_ISDIR(st.st_mode) else
            "is a device, not a photo file" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
            "is a named pipe (FIFO), not a photo file" if stat.S_ISFIFO(st.st_mode) else
            "is a socket, not a photo file" if stat.S_ISSOCK(st.st_mode) else
            None if stat.S_ISREG(st.st_mode) else "is not a regular file")
    if kind:
        raise ImageError(name, kind, "pass the photo files inside it" if "folder" in kind else "pass a photo file")
    if st.st_size > MAX_FILE_BYTES:
        raise ImageError(name, f"file too large ({st.st_size / 2**20:.0f} MB > {MAX_FILE_BYTES // 2**20} MB)",
                         "downscale the photo or save it as JPEG")
    try:
        with open(path, "rb") as fh:
            return fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise _path_error(path, name, exc) from exc


def _path_error(path: str, name: str, exc: OSError) -> ImageError:
    if isinstance(exc, FileNotFoundError):
        broken = os.path.islink(path)
        return ImageError(name, "a broken symbolic link" if broken else "no such file", "check the path")
    problems = {errno.EACCES: ("permission denied", "check the permissions of the file and its folders"),
                errno.EPERM: ("permission denied", "check the permissions of the file and its folders"),
                errno.ELOOP: ("a symbolic link loop", "point the link at the photo file"),
                errno.ENAMETOOLONG: ("the path is too long for the file system", "move the photo to a shorter path"),
                errno.ENOTDIR: ("no such file (a part of the path is a file, not a folder)", "check the path")}
    problem, hint = problems.get(exc.errno, (f"cannot read the file ({exc.strerror or exc})", "check the path"))
    return ImageError(name, problem, hint)


def _decode(data: bytes, name: str) -> Image.Image:
    refused = refused_format(data)
    if refused:
        raise ImageError(name, refused, _SEND)
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError as exc:
        raise ImageError(name, unknown_format(data, FORMATS), _SEND) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # PIL's own limit
        raise _bomb(name, None) from exc
    except Exception as exc:  # PIL raises many types for corrupt headers
        raise _corrupt(name, None, exc) from exc
    try:
        _check_size(img.size, name)
        _check_budget(img, name, data)
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


def _check_budget(img: Image.Image, name: str, data: bytes | None = None) -> None:
    """Refuse, from the header alone, what would cost more than the decode budget."""
    w, h = img.size
    if img.format in ("JPEG", "MPO"):
        if data is None:  # a caller's lazy PIL image: libjpeg decodes it at full size
            need = w * h * _BYTES_PER_PIXEL.get(img.mode, 4)
        else:
            try:
                cost = jpeg_cost(data, MAX_JPEG_SCANS)
            except ValueError as exc:
                raise _corrupt(name, "JPEG", exc) from exc
            if cost.scans == 0:
                raise ImageError(name, "cannot decode JPEG: no image data (a header without any scan)",
                                 "the photo was cut off or damaged; copy or export it again")
            if cost.scans > MAX_JPEG_SCANS:
                raise ImageError(name, f"a JPEG of more than {MAX_JPEG_SCANS} scans (decoding it would take "
                                       "minutes; cameras write 1, progressive web images about 10)", _SEND)
            need = cost.coefficient_bytes
    else:
        need = w * h * _BYTES_PER_PIXEL.get(img.mode, 4)
    if need > MAX_DECODE_BYTES:
        raise ImageError(name, f"image too costly to decode ({w}×{h} px {img.format} {img.mode} needs "
                               f"{need / 2**20:.0f} MB, over the {MAX_DECODE_BYTES // 2**20} MB decode budget)",
                         "downscale the photo or save it as a baseline (non-progressive) JPEG")


def _corrupt(name: str, fmt: str | None, exc: Exception) -> ImageError:
    problem = "the file is truncated" if "truncated" in str(exc).lower() else (
        f"corrupt image data ({type(exc).__name__}: {exc})")
    return ImageError(name, f"cannot decode {fmt or 'image'}: {problem}",
                      "the photo was cut off or damaged; copy or export it again")


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
    if max(w, h) > MAX_SIDE and min(w, h) * MAX_SIDE / max(w, h) < MIN_SIDE:
        raise ImageError(name, f"image too narrow ({w}×{h} px: reduced to {MAX_SIDE} px long its shorter side "
                               f"is under {MIN_SIDE} px)", "crop the photo to the item")


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
