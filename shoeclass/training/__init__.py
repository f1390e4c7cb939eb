"""Training shoeclass models (apart from the inference core, which it imports and which never
imports it): configs, feature and pixel caches, frozen-trunk heads, lenet, fine-tuning, ensembles.

>>> from shoeclass.training import load_config, train
>>> folder = train(load_config("configs/efficientnet_lite0.yaml", {"out": "runs/mine"}))
"""
from .config import TrainConfig, load_config
from .ensemble import build_ensemble, is_ensemble_config, train_ensemble
from .run import train

__all__ = ["TrainConfig", "load_config", "train", "train_ensemble", "build_ensemble", "is_ensemble_config"]
