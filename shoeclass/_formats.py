"""Naming what a file is from its first bytes, for the formats the loader refuses or cannot identify.

Cameras, phones and shops produce JPEG, PNG and WebP; everything else is refused by name before
PIL sees it (a TIFF of a million tiles, a GIF, an AVIF or HEIC photo no installed package decodes
safely), and a file PIL cannot identify is described (an SVG, a web page, a text file, a path sent
as bytes) so the message says what the user actually passed.
"""
from __future__ import annotations

import re

__all__ = ["refused_format", "unknown_format"]

_PATHLIKE = re.compile(r"\.(jpe?g|png|webp|heic|gif|bmp|tiff?)$", re.IGNORECASE)
_REFUSED = [  # (magic at offset, name) of formats cameras and shops do not send
    (0, (b"GIF87a", b"GIF89a"), "GIF"), (0, (b"BM",), "BMP"),
    (0, (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"), "TIFF"), (0, (b"\0\0\1\0",), "ICO icon"),
    (0, (b"8BPS",), "Photoshop (PSD)"), (4, (b"ftypavif", b"ftypavis"), "AVIF"),
    (4, (b"ftypheic", b"ftypheix", b"ftyphevc", b"ftypmif1", b"ftypmsf1"), "HEIC/HEIF"),
    (0, (b"\0\0\0\x0cjP  ", b"\xffO\xffQ"), "JPEG 2000"), (0, (b"\xff\x0a", b"\0\0\0\x0cJXL "), "JPEG XL"),
    (0, (b"qoif",), "QOI"), (0, (b"DDS ",), "DDS"), (0, (b"%PDF",), "PDF document"),
    (0, (b"%!PS",), "PostScript/EPS"),
]


def refused_format(data: bytes) -> str | None:
    """What a file of a refused format is (a sentence), or None for anything else."""
    for offset, magics, fmt in _REFUSED:
        if data[offset:offset + 12].startswith(magics):
            return f"a {fmt} file, which shoeclass does not read (it reads JPEG, PNG and WebP photos)"
    return None


def unknown_format(data: bytes, formats: tuple[str, ...]) -> str:
    """What a file PIL could not identify as one of ``formats`` most likely is (a sentence)."""
    head = data[:512].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in data[:4096].lower()):
        return "an SVG drawing, not a photo; shoeclass reads raster photos"
    if head.startswith((b"<!doctype html", b"<html")):
        return "a web page (HTML), not a photo"
    try:
        text = data[:4096].decode("utf-8")
    except UnicodeDecodeError:
        return f"not an image in a known format ({', '.join(formats)})"
    if len(data) <= 4096 and "\n" not in text.strip() and ("/" in text or "\\" in text or
                                                            _PATHLIKE.search(text.strip())):
        return "encoded image bytes expected, got what looks like a file path given as bytes"
    return "a text file, not an image"
