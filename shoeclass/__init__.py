"""shoeclass: visual attributes of footwear photos and their TN VED / HS 6401–6405 codes.

>>> from shoeclass import classify_images
>>> result = classify_images(["front.jpg", "side.jpg"])
>>> result.to_dict()["attributes"]["vamp_straps"]
"""
from .api import Classifier, classify_images
from .attributes import ATTRIBUTE_KEYS, ATTRIBUTES, OUTPUT_KEYS
from .images import ImageError
from .result import ItemResult, PhotoResult

__all__ = ["classify_images", "Classifier", "ItemResult", "PhotoResult", "ImageError",
           "ATTRIBUTES", "ATTRIBUTE_KEYS", "OUTPUT_KEYS"]
__version__ = "0.1.0"
