"""What a JPEG will cost to decode, read from its markers before libjpeg sees a byte of it.

libjpeg decodes a progressive (or multi-scan) JPEG through a coefficient buffer of the full declared
size, whatever the requested output scale, and walks that buffer once per scan. A 128-byte header
can therefore ask for hundreds of MB, and a 200 KB file of 20,000 empty scans for minutes of CPU.
:func:`jpeg_cost` reads the frame header (SOF) and counts the scans (SOS markers), skipping the
entropy-coded data between them, so the caller can refuse such files by their header.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass

__all__ = ["JpegCost", "jpeg_cost"]

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: no length field


@dataclass(frozen=True)
class JpegCost:
    """The decode cost a JPEG declares.

    Attributes:
        width, height: declared size in px (0 when no frame header was found).
        progressive: a progressive frame (SOF2/6/10/14).
        scans: SOS markers counted (counting stops at ``limit + 1``).
        coefficient_bytes: the full-size coefficient buffer libjpeg allocates for a progressive or
            multi-scan image (0 for a single-scan baseline one, which is decoded row by row).
    """

    width: int
    height: int
    progressive: bool
    scans: int
    coefficient_bytes: int


def jpeg_cost(data: bytes, scan_limit: int) -> JpegCost:
    """Parse the markers of a JPEG (``data`` starts with SOI); stops counting at ``scan_limit + 1``.

    Raises:
        ValueError: a marker segment runs past the end of the data before the first scan.
    """
    pos, n = 2, len(data)
    width = height = scans = 0
    progressive = False
    comps: list[tuple[int, int]] = []  # (h, v) sampling factors
    while pos < n and scans <= scan_limit:
        if data[pos] != 0xFF:  # entropy-coded data of the last scan: skip to the next real marker
            pos = data.find(b"\xff", pos)
            if pos < 0:
                break
            continue
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            break
        marker = data[pos]
        pos += 1
        if marker == 0x00 or marker in _STANDALONE:  # stuffed 0xFF00 or a restart marker inside scan data
            continue
        if marker == 0xD9:  # EOI (the first picture of an MPO ends here too)
            break
        if pos + 2 > n:
            break
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2 or pos + length > n:
            if scans:  # a truncated last scan: libjpeg reports it, the header is what matters here
                break
            raise ValueError(f"marker 0x{marker:02X} segment runs past the end of the file")
        if marker in _SOF and not comps and length >= 8:
            height, width, ncomp = struct.unpack_from(">HHB", data, pos + 3)
            comps = [(data[pos + 9 + 3 * i] >> 4, data[pos + 9 + 3 * i] & 15)
                     for i in range(ncomp) if pos + 10 + 3 * i < pos + length]
            progressive = marker in _PROGRESSIVE
        elif marker == 0xDA:
            scans += 1
        pos += length
    return JpegCost(width, height, progressive, scans,
                    _coefficients(width, height, comps) if progressive or scans > 1 else 0)


def _coefficients(width: int, height: int, comps: list[tuple[int, int]]) -> int:
    """Bytes of libjpeg's whole-image coefficient buffer: 64 int16 per 8×8 block per component."""
    if not comps:
        return 0
    hmax = max(h for h, _ in comps) or 1
    vmax = max(v for _, v in comps) or 1
    blocks = 0
    for h, v in comps:
        # libjpeg pads each component to whole MCUs: blocks per row/column rounded up to h / v
        bw = math.ceil(math.ceil(width * h / hmax) / 8)
        bh = math.ceil(math.ceil(height * v / vmax) / 8)
        blocks += math.ceil(bw / max(h, 1)) * max(h, 1) * math.ceil(bh / max(v, 1)) * max(v, 1)
    return blocks * 128
