"""shoeclass: visual attributes of footwear photos and their TN VED / HS 6401–6405 codes.

>>> from shoeclass import classify_images
>>> result = classify_images(["front.jpg", "side.jpg"])
>>> result.to_dict()["attributes"]["vamp_straps"]

The names below load on first use, so ``import shoeclass`` (and ``shoeclass --help``) does not
pay for torch; training lives apart in :mod:`shoeclass.training`.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import Classifier, classify_images
    from .attributes import ATTRIBUTE_KEYS, ATTRIBUTES, OUTPUT_KEYS
    from .check import check_code
    from .facts import FACTS, DeclaredFacts
    from .images import ImageError
    from .result import ItemResult, PhotoResult
    from .tariff import classify_code

__all__ = ["classify_images", "classify_code", "check_code", "DeclaredFacts", "FACTS", "Classifier", "ItemResult",
           "PhotoResult", "ImageError", "ATTRIBUTES", "ATTRIBUTE_KEYS", "OUTPUT_KEYS"]
__version__ = "0.1.0"

_HOME = {"classify_images": "api", "Classifier": "api", "ItemResult": "result", "PhotoResult": "result",
         "ImageError": "images", "ATTRIBUTES": "attributes", "ATTRIBUTE_KEYS": "attributes",
         "OUTPUT_KEYS": "attributes", "classify_code": "tariff", "check_code": "check", "DeclaredFacts": "facts", "FACTS": "facts"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'shoeclass' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    globals()[name] = value  # once loaded, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
