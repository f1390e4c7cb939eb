"""Training augmentation, both kinds in one place.

* :class:`TrainPreset`: albumentations on the decoded photo (crops keeping 50–100 % of the area,
  flips, rotation, colour shifts, blur, JPEG artefacts) between squaring and normalising; makes the
  augmented views of the feature cache and the validation views the fusion is fitted on.
* :func:`augment_views`: random views of already preprocessed pixels with tensor operations, drawn
  anew every epoch by the nets that train on pixels (lenet, a fine-tuned trunk tail).
"""
from __future__ import annotations

import math

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data import SIZE, WHITE, EvalPreset, brighten, square

__all__ = ["TrainPreset", "augment_views"]


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
        px = np.asarray(square(img).resize((SIZE, SIZE), Image.BILINEAR), dtype=np.uint8)  # (224, 224, 3)
        aug = self.augment(image=px)["image"]
        return np.asarray(brighten(Image.fromarray(aug)), dtype=np.uint8)


def augment_views(x: torch.Tensor, gen: torch.Generator, size: int) -> torch.Tensor:
    """Random views of (B, 3, H, W) photos in [0, 1], resampled to ``size``: a crop keeping
    50–100 % of the area, horizontal flip, rotation up to ±15°, brightness and contrast ±25 %.
    Areas outside the photo are white, like the padding of the preprocessing."""
    b = x.shape[0]
    scale = torch.empty(b).uniform_(0.5, 1.0, generator=gen).sqrt()
    angle = torch.empty(b).uniform_(-math.pi / 12, math.pi / 12, generator=gen)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    cx = torch.empty(b).uniform_(-1, 1, generator=gen) * (1 - scale)
    cy = torch.empty(b).uniform_(-1, 1, generator=gen) * (1 - scale)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos * flip, -sin, cx], 1), torch.stack([sin * flip, cos, cy], 1)], 1)
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    x = F.grid_sample(x - 1, grid, mode="bilinear", align_corners=False, padding_mode="zeros") + 1  # white outside
    bright = torch.empty(b, 1, 1, 1).uniform_(0.75, 1.25, generator=gen)
    contrast = torch.empty(b, 1, 1, 1).uniform_(0.75, 1.25, generator=gen)
    mean = x.mean((1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean * bright).clamp(0, 1)
