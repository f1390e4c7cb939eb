"""Photo -> tensor: the paper's preprocessing presets and a dataset over a labels.csv folder.

The paper feeds 224×224×3 inputs "transformed in PyTorch by algorithms that raise the image's
brightness" (section 2). Here: pad to a square on white (catalogue photos have white
backgrounds; keeping the aspect ratio keeps the shaft height readable), resize to 224, stretch the
histogram with autocontrast (brightens dark phone photos, leaves studio photos unchanged), scale to
[0, 1], then normalise for the backbone.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from .backbones import get_backbone
from .images import ImageError, load_image
from .labels import LabelTable, unreadable_photo
from .runtime import collect

__all__ = ["EvalPreset", "PhotoDataset", "table_outputs", "preprocess_config", "square", "brighten"]

SIZE = 224
WHITE = (255, 255, 255)

def preprocess_config(backbone: str) -> dict:
    """The preprocessing a model was trained with, stored in its metadata."""
    b = get_backbone(backbone)
    return {"size": SIZE, "pad": "square, white", "brighten": "autocontrast cutoff=1 preserve_tone",
            "mean": list(b.mean), "std": list(b.std)}


def square(img: Image.Image) -> Image.Image:
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), WHITE)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def brighten(img: Image.Image) -> Image.Image:
    return ImageOps.autocontrast(img, cutoff=1, preserve_tone=True)


@dataclass
class EvalPreset:
    """Deterministic preprocessing: PIL RGB image -> (3, 224, 224) normalised float tensor."""

    backbone: str
    mean: tuple[float, ...] | None = None  # None: the backbone's; a model card's otherwise
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        b = get_backbone(self.backbone)  # ValueError for an unknown backbone
        self._mean = np.asarray(self.mean or b.mean, np.float32).reshape(3, 1, 1) * np.float32(255)
        self._std = np.asarray(self.std or b.std, np.float32).reshape(3, 1, 1) * np.float32(255)

    def pixels(self, img: Image.Image) -> np.ndarray:
        """(224, 224, 3) uint8 after squaring, resizing and brightening."""
        img = brighten(square(img).resize((SIZE, SIZE), Image.BILINEAR))
        return np.asarray(img, dtype=np.uint8)

    def normalize(self, pixels: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (3, H, W) float32, ``(pixels / 255 - mean) / std``. In numpy: one
        thread, so it never waits on torch's thread pool while another runtime holds the cores."""
        x = (pixels.transpose(2, 0, 1).astype(np.float32) - self._mean) / self._std
        return torch.from_numpy(x)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.normalize(self.pixels(img))

    def stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalisation's mean and std as (1, 3, 1, 1) tensors on the 0–1 pixel scale (for
        batches of cached pixels that training normalises itself)."""
        return (torch.from_numpy(self._mean / np.float32(255))[None], torch.from_numpy(self._std / np.float32(255))[None])


class PhotoDataset(torch.utils.data.Dataset):
    """Photos of a :class:`LabelTable` as ``(image tensor, (14,) labels, row index, error)``; a photo
    that cannot be used gives a zero tensor and its error ("" otherwise), so the reader can name
    its line in labels.csv (an exception raised in a DataLoader worker would carry a traceback)."""

    def __init__(self, table: LabelTable, preset: EvalPreset) -> None:
        self.table, self.preset = table, preset
        self._paths = table.paths()

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int, str]:
        try:
            x, error = self.preset(load_image(self._paths[i])), ""
        except ImageError as exc:
            x, error = torch.zeros(3, SIZE, SIZE), str(exc)
        return x, torch.from_numpy(self.table.y[i]), i, error


def table_outputs(fn, table: LabelTable, preset: EvalPreset, batch_size: int = 64, num_workers: int = 1,
                  progress: bool = True, desc: str = "predict") -> dict[str, np.ndarray]:
    """Every output of ``fn`` ((B, 3, 224, 224) photos -> dict of (B, K) arrays) for every photo
    of a table, read and preprocessed by ``preset`` in batches: each output as an (N, K) array of
    the dtype ``fn`` returns (the feature cache fills float16 directly).

    Raises:
        LabelsError: a photo cannot be used; names its line in labels.csv (the run stops there).
    """
    loader = torch.utils.data.DataLoader(PhotoDataset(table, preset), batch_size=batch_size,
                                         num_workers=num_workers, pin_memory=torch.cuda.is_available())
    out: dict[str, np.ndarray] = {}
    for x, _, idx, errors in tqdm(loader, desc=desc, disable=not progress):
        bad = next((j for j, e in enumerate(errors) if e), None)
        if bad is not None:
            raise unreadable_photo(table, int(idx[bad]), errors[bad])
        collect(out, idx.numpy(), len(table), fn(x))
    return out
