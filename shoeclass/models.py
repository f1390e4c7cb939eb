"""The networks of shoeclass: a frozen ImageNet trunk (or a small net from scratch) and 14 heads.

Follows Polyakov & Polyakov 2025, section 2 (shared/seeds/004_55178f825ca8b99c.txt):

* ``vgg19``: VGG-19 pretrained on ImageNet, every layer frozen up to and including fc7; the
  4096×1000 last layer is replaced by one 4096×2 layer per attribute. The frozen trunk runs once
  per photo for all heads (the paper runs 13 separate networks; the outputs are identical).
* ``vgg16`` / ``efficientnet_lite0`` / ``efficientnet_lite2``: the same transfer recipe on backbones whose ImageNet weights
  can be installed offline, so that transfer learning is measured here. Their trunk output is the
  global average (and max) pooled last feature map.
* ``lenet``: a LeNet-5-like net trained from scratch with two 5×5 convolutions, 13 layers counting
  every linear map and every ReLU (conv, ReLU, conv, ReLU, fc, ReLU, fc, ReLU, fc, ReLU, head,
  plus the two poolings). ``groups=14`` gives every output its own weights as in the paper; ``groups=1``
  shares the two convolutions and the hidden layers between the heads.

Every model maps (B, 3, 224, 224) normalised photos to (B, 14) logits: the 13 attributes then
``not_footwear`` (``attributes.OUTPUT_KEYS``), plus optional cluster-gate and suitability logits,
and an ``embedding`` (B, D) that says which product a photo shows (``item_checks.py``): ImageNet
features the attribute training did not tune, so two photos of one product stay alike.
"""
from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from .attributes import OUTPUT_KEYS
from .backbones import get_backbone

__all__ = ["ModelConfig", "Trunk", "Heads", "LeNet", "ShoeNet", "MaterialTail", "EnsembleNet", "build_trunk",
           "build_model", "share_stem", "state_checksum"]

logger = logging.getLogger(__name__)

N_OUT = len(OUTPUT_KEYS)  # 14


@dataclass
class ModelConfig:
    """What the network is; stored in every checkpoint."""

    backbone: str = "efficientnet_lite0"  # a registered backbone (backbones.py): vgg19, efficientnet_lite0, lenet …
    hidden: int = 0  # 0: the paper's single linear layer per head; > 0: an MLP hidden layer
    dropout: float = 0.0
    n_clusters: int = 0  # size of the cluster gate; 0 = no gate
    suitability: bool = False  # a second set of 14 logits: is the photo suitable for judging it
    pooling: str = "avgmax"  # convolutional trunks: avgmax | grid (see Trunk)
    tuned_blocks: int = 0  # efficientnet_lite: last blocks (+ head conv) retrained on the photos; 0 = all frozen
    lenet_groups: int = 1  # lenet only: 1 = shared trunk, 14 = one network per output
    lenet_width: int = 24


class Trunk(nn.Module):
    """A frozen ImageNet feature extractor: (B, 3, 224, 224) -> (B, D).

    Convolutional trunks pool their last feature map: global average and max (``avgmax``), plus
    with ``grid`` the averages of its four overlapping quadrants, which keep where in the photo a
    feature is (shaft above the ankle, heel at the back, straps over the toes).
    """

    def __init__(self, backbone: str, body: nn.Module, dim: int, pooling: str = "avgmax",
                 tuned_blocks: int = 0) -> None:
        super().__init__()
        self.backbone, self.body, self.dim, self.pooling = backbone, body, dim, pooling
        self.kind = get_backbone(backbone).kind
        if tuned_blocks and not get_backbone(backbone).tunable:
            raise ValueError(f"tuned_blocks needs an efficientnet_lite backbone, not {backbone!r}")
        n_blocks = len(body._blocks) if self.kind == "efficientnet" else 0
        if not 0 <= tuned_blocks <= n_blocks:
            raise ValueError(f"tuned_blocks must be in 0..{n_blocks}, got {tuned_blocks}")
        self.tuned_blocks = tuned_blocks
        self.cut = n_blocks - tuned_blocks  # blocks [cut:] and the head conv form the tunable tail

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        parts = [fmap.mean((2, 3)), fmap.amax((2, 3))]  # (B, C) each
        if self.pooling == "grid":
            h, w = fmap.shape[2:]
            top, left = (h + 1) // 2, (w + 1) // 2  # 7x7 -> overlapping 4x4 quadrants
            parts += [fmap[:, :, r:r + top, c:c + left].mean((2, 3)) for r in (0, h - top) for c in (0, w - left)]
        return torch.cat(parts, 1)  # (B, 2C) or (B, 6C)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """EfficientNet-Lite: the always-frozen part, photos -> the map entering block ``cut``."""
        b = self.body
        x = b._swish(b._bn0(b._conv_stem(x)))
        for block in b._blocks[:self.cut]:
            x = block(x)
        return x  # lite0 with 8 tuned blocks: (B, 80, 14, 14); with 1: (B, 192, 7, 7)

    def blocks(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """EfficientNet-Lite: the map entering block ``start`` -> the map entering block ``stop``."""
        b = self.body
        rate, n = b._global_params.drop_connect_rate or 0.0, len(b._blocks)
        for idx in range(start, stop):
            x = b._blocks[idx](x, drop_connect_rate=rate * idx / n)  # drop connect acts only in training
        return x

    def tail(self, x: torch.Tensor, start: int | None = None) -> torch.Tensor:
        """EfficientNet-Lite: the stem's map -> pooled features (the blocks from ``cut``, the head
        conv, pooling); the part ``tuned_blocks`` retrains. Equals ``extract_features`` + pooling.
        ``start``: the block ``x`` enters when the blocks before it already ran (default ``cut``)."""
        b = self.body
        x = self.blocks(x, self.cut if start is None else start, len(b._blocks))
        return self.pool(b._swish(b._bn1(b._conv_head(x))))  # map (B, 1280, 7, 7) pooled

    def tail_modules(self) -> list[nn.Module]:
        """The modules ``tuned_blocks`` retrains (empty when all frozen)."""
        if not self.tuned_blocks:
            return []
        return [*self.body._blocks[self.cut:], self.body._conv_head, self.body._bn1]

    def tuned_state(self) -> dict[str, torch.Tensor]:
        """The tensors of the retrained tail, named as in ``state_dict`` (empty when all frozen)."""
        if not self.tuned_blocks:
            return {}
        prefixes = tuple(f"body._blocks.{i}." for i in range(self.cut, len(self.body._blocks))) + (
            "body._conv_head.", "body._bn1.")
        return {k: v for k, v in self.state_dict().items() if k.startswith(prefixes)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "efficientnet":
            return self.tail(self.stem(x))
        if self.kind == "map":
            return self.pool(self.body(x))  # vgg16: map (B, 512, 7, 7)
        return self.body(x)  # fc7: vgg19's activations (B, 4096)


POOLINGS = ("avgmax", "grid")


def build_trunk(backbone: str, weights: str | None = "imagenet", pooling: str = "avgmax",
                tuned_blocks: int = 0) -> Trunk:
    """A frozen, eval-mode trunk.

    Args:
        backbone: a registered backbone with a pretrained trunk (see ``backbones.py``).
        weights: ``"imagenet"`` (the locally installed / cached ImageNet weights), a file path, or
            None for random initialisation (tests).
        pooling: ``avgmax`` or ``grid`` (convolutional trunks; see :class:`Trunk`).
        tuned_blocks: EfficientNet-Lite only: how many last blocks form the tunable tail.

    Raises:
        ValueError: unknown backbone. FileNotFoundError: weights missing, with how to get them.
    """
    spec = get_backbone(backbone)
    if spec.build is None:
        raise ValueError(f"{backbone!r} has no pretrained trunk (it trains from scratch: use build_model)")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    dim = 4096 if spec.kind == "fc7" else spec.channels * (6 if pooling == "grid" else 2)
    trunk = Trunk(backbone, spec.build(weights), dim, pooling, tuned_blocks)
    trunk.requires_grad_(False)
    return trunk.eval()


class Heads(nn.Module):
    """The 14 attribute heads, the optional cluster gate and suitability heads on trunk features.

    With ``hidden == 0`` each head is the paper's D×2 linear layer (stored as one (D, 2·14) map);
    the binary logit is the difference of its two outputs.
    """

    def __init__(self, dim: int, cfg: ModelConfig) -> None:
        super().__init__()
        width = cfg.hidden or dim
        # Feature standardisation fitted on the training features (identity until then).
        self.register_buffer("mu", torch.zeros(dim))
        self.register_buffer("sigma", torch.ones(dim))
        self.body = (nn.Sequential(nn.Linear(dim, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout))
                     if cfg.hidden else nn.Dropout(cfg.dropout))
        self.attr = nn.Linear(width, 2 * N_OUT)
        self.gate = nn.Linear(width, cfg.n_clusters) if cfg.n_clusters else None
        self.suit = nn.Linear(width, N_OUT) if cfg.suitability else None

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body((z - self.mu) / self.sigma)  # (B, H)
        two = self.attr(h).view(-1, N_OUT, 2)  # (B, 14, 2) the paper's two-way outputs
        out = {"logits": two[..., 1] - two[..., 0]}  # (B, 14)
        if self.gate is not None:
            out["gate"] = self.gate(h)  # (B, C)
        if self.suit is not None:
            out["suitability"] = self.suit(h)  # (B, 14)
        return out


class LeNet(nn.Module):
    """LeNet-5-like feature net from scratch: two 5×5 convolutions and two hidden linear layers.

    With ``groups == 14`` every output has its own convolution and hidden weights (the paper's 13
    separate networks plus not_footwear), computed in one pass with grouped convolutions.
    """

    def __init__(self, width: int = 24, groups: int = 1) -> None:
        super().__init__()
        if groups not in (1, N_OUT):
            raise ValueError(f"lenet_groups must be 1 or {N_OUT}, got {groups}")
        c1, c2 = width * groups, 2 * width * groups
        self.groups = groups
        # 224×224×3 input as in the paper, averaged down to 112 first: LeNet-scale work on a CPU.
        self.downsample = nn.AvgPool2d(2)
        self.features = nn.Sequential(
            nn.Conv2d(3 * groups, c1, 5, stride=2, groups=groups), nn.BatchNorm2d(c1), nn.ReLU(),  # (B, c1, 54, 54)
            nn.MaxPool2d(2),  # (B, c1, 27, 27)
            nn.Conv2d(c1, c2, 5, groups=groups), nn.BatchNorm2d(c2), nn.ReLU(),
            nn.MaxPool2d(2),  # (B, c2, 11, 11)
            nn.AdaptiveAvgPool2d(5),  # (B, c2, 5, 5)
        )
        self.fc = nn.Sequential(
            nn.Conv1d(c2 * 25, 256 * groups, 1, groups=groups), nn.ReLU(), nn.Dropout(0.3),
            nn.Conv1d(256 * groups, 128 * groups, 1, groups=groups), nn.ReLU(),
            nn.Conv1d(128 * groups, 64 * groups, 1, groups=groups), nn.ReLU(),
        )
        self.dim = 64 * groups

    def forward(self, x: torch.Tensor, downsampled: bool = False) -> torch.Tensor:
        """(B, 3, 224, 224) photos, or (B, 3, 112, 112) already downsampled ones (training)."""
        if not downsampled:
            x = self.downsample(x)  # (B, 3, 112, 112)
        if self.groups > 1:
            x = x.repeat(1, self.groups, 1, 1)  # (B, 3·14, H, W) one copy per network
        f = self.features(x)  # (B, c2, 5, 5)
        if self.groups > 1:  # keep each network's channels together for the grouped fc layers
            f = f.view(f.shape[0], self.groups, -1, 25).flatten(1)
        return self.fc(f.flatten(1)[..., None])[..., 0]  # (B, 64·groups)


class GroupedHeads(nn.Module):
    """Per-network heads for ``LeNet(groups=14)``: network k's features feed only output k."""

    def __init__(self, dim: int, groups: int) -> None:
        super().__init__()
        self.attr = nn.Conv1d(dim, 2 * groups, 1, groups=groups)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        two = self.attr(z[..., None])[..., 0].view(-1, N_OUT, 2)  # (B, 14, 2)
        return {"logits": two[..., 1] - two[..., 0]}


class ShoeNet(nn.Module):
    """Trunk (frozen or from scratch) followed by the heads: photos -> dict of logits."""

    def __init__(self, cfg: ModelConfig, trunk: nn.Module, heads: nn.Module) -> None:
        super().__init__()
        self.cfg, self.trunk, self.heads = cfg, trunk, heads

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.trunk(x)  # (B, D)
        out = self.heads(z)
        out["embedding"] = z  # a frozen trunk's ImageNet features; lenet's hidden layer
        return out


def build_model(cfg: ModelConfig, weights: str | None = "imagenet") -> ShoeNet:
    """The network ``cfg`` describes; ``weights`` is for the pretrained trunk (ignored by lenet)."""
    if get_backbone(cfg.backbone).kind == "scratch":
        trunk = LeNet(cfg.lenet_width, cfg.lenet_groups)
        heads = GroupedHeads(trunk.dim, N_OUT) if cfg.lenet_groups > 1 else Heads(trunk.dim, cfg)
        return ShoeNet(cfg, trunk, heads)
    trunk = build_trunk(cfg.backbone, weights, cfg.pooling, cfg.tuned_blocks)
    return ShoeNet(cfg, trunk, Heads(trunk.dim, cfg))


class MaterialTail(nn.Module):
    """The reference trunk's blocks from ``first`` on and its head conv, tuned to read the material
    of the upper and of the outer sole (issue 16; trained by ``shoeclass fit-materials``).

    It branches off the untuned ImageNet tail that gives the photo embedding: (B, C, h, w), the map
    entering block ``first`` -> (B, K) logits, each part's classes side by side in ``parts`` order.
    What tuning changed is small enough to ship: every 1×1 convolution (the bulk of the weights)
    is its ImageNet weight plus a rank-``rank`` product ``b @ a``; the batch-norm scales and
    shifts and the output layer are its own. ``stored`` holds just those tensors (what a model
    folder keeps, named ``<conv>.a`` / ``<conv>.b`` and as in ``state_dict``); the modules hold
    the merged weights, so inference and export see plain convolutions.

    Args:
        reference: the untuned EfficientNet-Lite trunk it is copied from (its installed weights).
        first: the first block of the copy (``reference.cut`` <= first < number of blocks).
        parts: ``{part: classes}`` of its outputs (subsets of ``materials.MATERIAL_CLASSES``).
        rank: rank of the 1×1 convolutions' deltas.
        stored: the tuned tensors; empty: an untuned copy (deltas zero, outputs random).

    Raises:
        ValueError: a reference that is not EfficientNet-Lite, a first block out of range, or
            ``stored`` tensors that do not fit.
    """

    def __init__(self, reference: Trunk, first: int, parts: Mapping[str, Sequence[str]], rank: int,
                 stored: Mapping[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        b = reference.body
        if reference.kind != "efficientnet" or not reference.cut <= first < len(b._blocks) or rank < 1:
            raise ValueError(f"a material tail needs an EfficientNet-Lite reference, a first block in "
                             f"{reference.cut}..{len(b._blocks) - 1} and a rank >= 1; "
                             f"got {reference.kind}, {first}, {rank}")
        self.first, self.rank, self.parts = first, rank, {p: tuple(c) for p, c in parts.items()}
        self.blocks = nn.ModuleList(copy.deepcopy(b._blocks[i]) for i in range(first, len(b._blocks)))
        self.conv_head, self.bn, self.act = copy.deepcopy(b._conv_head), copy.deepcopy(b._bn1), copy.deepcopy(b._swish)
        self.dropout = nn.Dropout(0.3)
        self.out = nn.Linear(2 * b._conv_head.out_channels, sum(len(c) for c in self.parts.values()))
        self.stored = dict(stored or {})
        if self.stored:
            self._apply_stored()

    def pointwise(self) -> dict[str, nn.Conv2d]:
        """The 1×1 convolutions that learn a low-rank delta, by module name."""
        return {n: m for n, m in self.named_modules()
                if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1}

    def own_names(self) -> list[str]:
        """The names of the stored tensors besides the deltas: batch-norm affines and the outputs."""
        return [n for n, _ in self.named_parameters()
                if n.startswith("out.") or isinstance(self.get_submodule(n.rsplit(".", 1)[0]), nn.BatchNorm2d)]

    def _apply_stored(self) -> None:
        convs, own = self.pointwise(), self.own_names()
        expected = {f"{n}.{f}" for n in convs for f in ("a", "b")} | set(own)
        if set(self.stored) != expected:
            odd = sorted(expected ^ set(self.stored))
            raise ValueError(f"material tail tensors do not fit: {len(set(self.stored) - expected)} unexpected, "
                             f"{len(expected - set(self.stored))} missing (e.g. {odd[:2]})")
        params = dict(self.named_parameters())
        with torch.no_grad():
            for n, conv in convs.items():
                delta = self.stored[f"{n}.b"].float() @ self.stored[f"{n}.a"].float()  # (out, in)
                conv.weight.add_(delta.view_as(conv.weight))
            for n in own:
                params[n].copy_(self.stored[n].float())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) map entering block ``first`` -> (B, 2 * 1280) average and max pooled features."""
        for block in self.blocks:
            x = block(x)
        m = self.act(self.bn(self.conv_head(x)))
        return torch.cat([m.mean((2, 3)), m.amax((2, 3))], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(self.features(x)))  # (B, K)


class EnsembleNet(nn.Module):
    """Members sharing a frozen stem: photos -> the dict of logits averaged over members and views.

    Members are fine-tuned models of one backbone and one ``tuned_blocks`` (``shoeclass train``
    with other seeds or tuning resolutions): their frozen stems are the same ImageNet blocks, so
    the stem runs once per photo; each member's tail and heads run on its map, on the photo and on
    its mirror image, and the outputs are averaged.

    The ``embedding`` is the ImageNet tail that the members' tuning started from (``reference``,
    sharing the stem), run on the stem's map: features that still tell products apart, where the
    tuned tails have learned to ignore all but the attributes (BENCHMARKS.md, issue 15). The
    ``features`` are the tuned tails' own (each member's, standardised as its heads read them,
    side by side): they read a material better than the untuned ones (BENCHMARKS.md, issue 16).
    With a ``material_tail`` the ``material`` logits (:class:`MaterialTail`) come too.

    Args:
        members: fine-tuned :class:`ShoeNet` s of one backbone and one ``tuned_blocks``.
        flip: also run the mirrored photo (a shoe seen from its other side is the same shoe).
        reference: the untuned ImageNet trunk of the members' backbone and ``tuned_blocks``
            (``build_trunk``); None: no embedding.
        material_tail: a :class:`MaterialTail` of ``reference``; None: no ``material`` output.

    Raises:
        ValueError: no members, members of other backbones or tuned blocks, a frozen trunk, or a
            material tail without a reference.
    """

    def __init__(self, members: list[ShoeNet], flip: bool = True, reference: Trunk | None = None,
                 material_tail: MaterialTail | None = None) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        kinds = {(m.cfg.backbone, m.cfg.tuned_blocks) for m in members}
        if len(kinds) > 1 or not members[0].cfg.tuned_blocks:
            raise ValueError(f"ensemble members must share one backbone and one tuned_blocks > 0 (the "
                             f"stem they share); got (backbone, tuned_blocks) = {sorted(kinds)}")
        self.members, self.flip = nn.ModuleList(members), flip
        self.cfg = members[0].cfg
        self.reference = reference
        if reference is not None:  # one stem in memory: the reference runs on member 0's map
            if reference.cut != members[0].trunk.cut:
                raise ValueError(f"the reference trunk must have tuned_blocks={self.cfg.tuned_blocks}")
            share_stem(members[0].trunk, reference)
        if material_tail is not None and reference is None:
            raise ValueError("a material tail branches off the reference trunk: pass the reference too")
        self.material_tail = material_tail

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        views = 2 if self.flip else 1
        if self.flip:
            x = torch.cat([x, x.flip(3)])  # (2B, 3, H, W): photos, then their mirror images
        s = self.members[0].trunk.stem(x)  # shared frozen stem
        feats = [m.trunk.tail(s) for m in self.members]
        outs = [m.heads(f) for m, f in zip(self.members, feats)]
        avg = {k: torch.stack([o[k] for o in outs]).mean(0) for k in outs[0]}  # (2B, K) each
        # what the members' tuning made of the photo, standardised as each member's heads read it
        avg["features"] = torch.cat([(f - m.heads.mu) / m.heads.sigma for m, f in zip(self.members, feats)], 1)
        if self.reference is not None and self.material_tail is None:
            avg["embedding"] = self.reference.tail(s)  # (2B, D) untuned ImageNet features
        elif self.reference is not None:  # the material tail branches off the untuned one
            h = self.reference.blocks(s, self.reference.cut, self.material_tail.first)
            avg["embedding"] = self.reference.tail(h, start=self.material_tail.first)
            avg["material"] = self.material_tail(h)  # (2B, K) material logits
        # split by view count, not by len(x): an ONNX export then keeps the batch size free
        return {k: v.view(views, -1, v.shape[1]).mean(0) for k, v in avg.items()}  # (B, K)


def share_stem(first: Trunk, other: Trunk) -> None:
    """Make ``other`` run ``first``'s frozen stem modules (EfficientNet-Lite trunks with one
    ``tuned_blocks``): one copy in memory, as an ensemble's members and reference share it."""
    a, b = first.body, other.body
    b._conv_stem, b._bn0 = a._conv_stem, a._bn0
    for j in range(first.cut):
        b._blocks[j] = a._blocks[j]


def state_checksum(module: nn.Module) -> str:
    """sha256 over a module's parameters and buffers (names and values): identifies trunk weights."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
