"""Photo -> tensor: the paper's preprocessing presets and a dataset over a labels.csv folder.

The paper feeds 224×224×3 inputs "transformed in PyTorch by algorithms that raise the image's
brightness" (section 2). Here: pad to a square on white (catalogue photos have white
backgrounds; keeping the aspect ratio keeps the shaft height readable), resize to 224, stretch the
histogram with autocontrast (brightens dark phone photos, leaves studio photos unchanged), scale to
[0, 1], then normalise for the backbone.
"""
from __future__ import annotations

from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from .images import load_image
from .labels import LabelTable

__all__ = ["NORMALIZATION", "EvalPreset", "TrainPreset", "PhotoDataset", "table_outputs", "preprocess_config"]

SIZE = 224
WHITE = (255, 255, 255)

# (mean, std) on [0, 1] inputs, per backbone, as its ImageNet weights were trained.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "vgg19": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "vgg16": ((0.48235, 0.45882, 0.40784), (1 / 255, 1 / 255, 1 / 255)),  # Caffe-style weights
    "efficientnet_lite0": ((0.498, 0.498, 0.498), (0.502, 0.502, 0.502)),
    "efficientnet_lite2": ((0.498, 0.498, 0.498), (0.502, 0.502, 0.502)),
    "lenet": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}


def preprocess_config(backbone: str) -> dict:
    """The preprocessing a model was trained with, stored in its metadata."""
    mean, std = NORMALIZATION[backbone]
    return {"size": SIZE, "pad": "square, white", "brighten": "autocontrast cutoff=1 preserve_tone",
            "mean": list(mean), "std": list(std)}


def _square(img: Image.Image) -> Image.Image:
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), WHITE)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def _brighten(img: Image.Image) -> Image.Image:
    return ImageOps.autocontrast(img, cutoff=1, preserve_tone=True)


@dataclass
class EvalPreset:
    """Deterministic preprocessing: PIL RGB image -> (3, 224, 224) normalised float tensor."""

    backbone: str

    def __post_init__(self) -> None:
        if self.backbone not in NORMALIZATION:
            raise ValueError(f"backbone must be one of {sorted(NORMALIZATION)}, got {self.backbone!r}")
        mean, std = NORMALIZATION[self.backbone]
        self._mean = torch.tensor(mean).view(3, 1, 1)
        self._std = torch.tensor(std).view(3, 1, 1)

    def pixels(self, img: Image.Image) -> np.ndarray:
        """(224, 224, 3) uint8 after squaring, resizing and brightening."""
        img = _brighten(_square(img).resize((SIZE, SIZE), Image.BILINEAR))
        return np.asarray(img, dtype=np.uint8)

    def normalize(self, pixels: np.ndarray) -> torch.Tensor:
        x = torch.tensor(pixels).permute(2, 0, 1).float() / 255.0  # (3, H, W)
        return (x - self._mean) / self._std

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.normalize(self.pixels(img))


class TrainPreset(EvalPreset):
    """Training augmentation (albumentations) between squaring and normalising.

    Crops that keep 50–100 % of the area, flips, rotation up to ±15°, colour shifts, blur and
    JPEG artefacts: the same family of changes a declarant's photos show.
    """

    def __init__(self, backbone: str, seed: int | None = None) -> None:
        super().__init__(backbone)
        self.augment = A.Compose([
            A.RandomResizedCrop(size=(SIZE, SIZE), scale=(0.5, 1.0), ratio=(0.75, 1.333)),
            A.HorizontalFlip(p=0.5),
            A.Rotate(limit=15, border_mode=cv2.BORDER_CONSTANT, fill=WHITE, p=0.5),
            A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03, p=0.8),
            A.GaussianBlur(blur_limit=(3, 5), p=0.2),
            A.ImageCompression(quality_range=(30, 90), p=0.3),
        ], seed=seed)

    def pixels(self, img: Image.Image) -> np.ndarray:
        square = np.asarray(_square(img).resize((SIZE, SIZE), Image.BILINEAR), dtype=np.uint8)
        aug = self.augment(image=square)["image"]
        return np.asarray(_brighten(Image.fromarray(aug)), dtype=np.uint8)


class PhotoDataset(torch.utils.data.Dataset):
    """Photos of a :class:`LabelTable` as ``(image tensor, (14,) labels, row index)``."""

    def __init__(self, table: LabelTable, preset: EvalPreset) -> None:
        self.table, self.preset = table, preset
        self._paths = table.paths()

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        img = load_image(self._paths[i])
        return self.preset(img), torch.from_numpy(self.table.y[i]), i


def table_outputs(fn, table: LabelTable, preset: EvalPreset, batch_size: int = 64, num_workers: int = 1,
                  progress: bool = True, desc: str = "predict") -> dict[str, np.ndarray]:
    """Every output of ``fn`` ((B, 3, 224, 224) photos -> dict of (B, K) arrays) for every photo
    of a table, read and preprocessed by ``preset`` in batches: each output as an (N, K) array of
    the dtype ``fn`` returns (the feature cache fills float16 directly)."""
    loader = torch.utils.data.DataLoader(PhotoDataset(table, preset), batch_size=batch_size,
                                         num_workers=num_workers)
    out: dict[str, np.ndarray] = {}
    for x, _, idx in tqdm(loader, desc=desc, disable=not progress):
        for k, v in fn(x).items():
            out.setdefault(k, np.empty((len(table), v.shape[1]), v.dtype))[idx.numpy()] = v
    return out
