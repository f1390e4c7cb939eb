"""Duplicate detection: content hash (SHA-1) and perceptual dHash.

dHash (difference hash): the photo in grey, shrunk to 9×8, one bit per horizontally adjacent pair
(is the left pixel brighter?). Re-encoded, resized or slightly recoloured copies of a photo land
within a few bits of each other; different photos differ in about half of the 64 bits.
"""
from __future__ import annotations

import hashlib
import io
import logging
from typing import Hashable

import numpy as np
from PIL import Image

__all__ = ["sha1_bytes", "dhash", "hamming", "encode_jpeg", "PerceptualIndex"]

logger = logging.getLogger(__name__)


def sha1_bytes(data: bytes) -> str:
    """Hex SHA-1 of raw bytes (exact-duplicate key)."""
    return hashlib.sha1(data).hexdigest()  # noqa: S324 - a content key, not security


def dhash(image: Image.Image, size: int = 8) -> int:
    """64-bit (for ``size=8``) difference hash of a photo."""
    grey = image.convert("L").resize((size + 1, size), Image.Resampling.LANCZOS)
    px = np.asarray(grey, dtype=np.int16)  # (size, size + 1)
    bits = (px[:, :-1] > px[:, 1:]).ravel()  # (size * size,)
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    """Number of differing bits."""
    return (a ^ b).bit_count()


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    """RGB JPEG bytes."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


class PerceptualIndex:
    """Near-duplicate lookup over 64-bit hashes in sub-linear time.

    Multi-index hashing: the 64 bits are cut into ``max_distance + 1`` bands; two hashes within
    ``max_distance`` bits agree exactly on at least one band (pigeonhole), so only hashes sharing a
    band are compared.
    """

    def __init__(self, max_distance: int = 4, bits: int = 64) -> None:
        if not 0 <= max_distance < bits:
            raise ValueError(f"max_distance must be in [0, {bits}), got {max_distance}")
        self.max_distance = max_distance
        self.bits = bits
        edges = np.linspace(0, bits, max_distance + 2).astype(int)
        self._bands = [(int(lo), int(hi)) for lo, hi in zip(edges[:-1], edges[1:])]
        self._tables: list[dict[int, list[tuple[int, Hashable]]]] = [{} for _ in self._bands]
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def _keys(self, h: int) -> list[int]:
        return [(h >> lo) & ((1 << (hi - lo)) - 1) for lo, hi in self._bands]

    def find(self, h: int) -> Hashable | None:
        """The owner of a stored hash within ``max_distance`` bits of ``h``, else None."""
        for table, key in zip(self._tables, self._keys(h)):
            for other, owner in table.get(key, ()):
                if hamming(h, other) <= self.max_distance:
                    return owner
        return None

    def add(self, h: int, owner: Hashable) -> None:
        """Store a hash with the key of its owner (e.g. the stored image path)."""
        for table, key in zip(self._tables, self._keys(h)):
            table.setdefault(key, []).append((h, owner))
        self._size += 1
