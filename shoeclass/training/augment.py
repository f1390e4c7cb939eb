"""Training augmentation, both kinds in one place.

* :class:`TrainPreset`: albumentations on the decoded photo (crops keeping 50–100 % of the area,
  flips, rotation, colour shifts, blur, JPEG artefacts) between squaring and normalising; makes the
  augmented views of the feature cache and the validation views the fusion is fitted on.
* :func:`augment_views`: random views of already preprocessed pixels with tensor operations, drawn
  anew every epoch by the nets that train on pixels (lenet, a fine-tuned trunk tail).
* :func:`wild_views`: catalogue photos made to look like phone and street photos of worn shoes
  (scene behind the cut-out shoe, legs, occluders, blur, downscaling), for the adaptation to
  photos in the wild (``adapt.py``); on any device.
"""
from __future__ import annotations

import hashlib
import math

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data import SIZE, WHITE, EvalPreset, brighten, square

__all__ = ["TrainPreset", "augment_views", "draw_views", "apply_views", "wild_views", "background_mask"]


class TrainPreset(EvalPreset):
    """Training augmentation (albumentations) between squaring and normalising.

    Crops that keep 50–100 % of the area, flips, rotation up to ±15°, colour shifts, blur and
    JPEG artefacts: the same family of changes a declarant's photos show. With a ``seed`` each
    photo's draw depends only on the seed and the photo, not on the photos before it, so a view
    is the same whatever the order, the DataLoader workers or the torchrun shard that made it.
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
        self.seed = seed

    def pixels(self, img: Image.Image) -> np.ndarray:
        px = np.asarray(square(img).resize((SIZE, SIZE), Image.BILINEAR), dtype=np.uint8)  # (224, 224, 3)
        if self.seed is not None:
            photo = int.from_bytes(hashlib.blake2b(px.tobytes(), digest_size=4).digest(), "little")
            self.augment.set_random_seed((self.seed * 1_000_003 + photo) % 2**32)
        aug = self.augment(image=px)["image"]
        return np.asarray(brighten(Image.fromarray(aug)), dtype=np.uint8)


def augment_views(x: torch.Tensor, gen: torch.Generator, size: int) -> torch.Tensor:
    """Random views of (B, 3, H, W) photos in [0, 1], resampled to ``size``: a crop keeping
    50–100 % of the area, horizontal flip, rotation up to ±15°, brightness and contrast ±25 %.
    Areas outside the photo are white, like the padding of the preprocessing."""
    return apply_views(x, draw_views(x.shape[0], gen), size)


def draw_views(b: int, gen: torch.Generator) -> torch.Tensor:
    """(B, 7) random view parameters of :func:`augment_views` (scale, angle, flip, centre x and y,
    brightness, contrast). Drawn apart from the pixels so that under torchrun every rank draws a
    whole global batch's views from the same generator and applies only its own rows'."""
    scale = torch.empty(b).uniform_(0.5, 1.0, generator=gen).sqrt()
    angle = torch.empty(b).uniform_(-math.pi / 12, math.pi / 12, generator=gen)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    cx = torch.empty(b).uniform_(-1, 1, generator=gen) * (1 - scale)
    cy = torch.empty(b).uniform_(-1, 1, generator=gen) * (1 - scale)
    bright = torch.empty(b).uniform_(0.75, 1.25, generator=gen)
    contrast = torch.empty(b).uniform_(0.75, 1.25, generator=gen)
    return torch.stack([scale, angle, flip, cx, cy, bright, contrast], 1)  # (B, 7)


def apply_views(x: torch.Tensor, draws: torch.Tensor, size: int) -> torch.Tensor:
    """The views ``draws`` (from :func:`draw_views`, one row per photo) of (B, 3, H, W) photos."""
    b, dev = x.shape[0], x.device
    scale, angle, flip, cx, cy, bright, contrast = draws.unbind(1)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos * flip, -sin, cx], 1), torch.stack([sin * flip, cos, cy], 1)], 1).to(dev)
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    x = F.grid_sample(x - 1, grid, mode="bilinear", align_corners=False, padding_mode="zeros") + 1  # white outside
    bright, contrast = bright.view(b, 1, 1, 1).to(dev), contrast.view(b, 1, 1, 1).to(dev)
    mean = x.mean((1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean * bright).clamp(0, 1)


def _blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depthwise convolution of (B, 3, H, W) with one (B, k, k) kernel per photo."""
    b, c, h, w = x.shape
    k = kernel.shape[-1]
    weight = kernel.repeat_interleave(c, 0)[:, None]  # (B·3, 1, k, k)
    out = F.conv2d(F.pad(x.reshape(1, b * c, h, w), [k // 2] * 4, mode="replicate"), weight, groups=b * c)
    return out.view(b, c, h, w)


def _blur_kernels(b: int, gen: torch.Generator, device: torch.device, k: int = 9) -> torch.Tensor:
    """(B, k, k) kernels: half defocus (a Gaussian of sigma 0.5–2.5 px), half motion (a line of
    3–9 px at a random angle)."""
    r = torch.arange(k, device=device, dtype=torch.float32) - k // 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    sigma = torch.empty(b, 1, 1).uniform_(0.5, 2.5, generator=gen).to(device)
    gauss = torch.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2))
    angle = torch.empty(b, 1, 1).uniform_(0, math.pi, generator=gen).to(device)
    length = torch.empty(b, 1, 1).uniform_(1.5, 4.5, generator=gen).to(device)
    along = xx * torch.cos(angle) + yy * torch.sin(angle)
    across = -xx * torch.sin(angle) + yy * torch.cos(angle)
    motion = ((along.abs() <= length) & (across.abs() <= 0.5)).float()
    pick = (torch.rand(b, 1, 1, generator=gen) < 0.5).to(device)
    kern = torch.where(pick, gauss, motion)
    return kern / kern.sum((1, 2), keepdim=True)


def background_mask(x: torch.Tensor, white: float = 0.88, steps: int = 40) -> torch.Tensor:
    """(B, 1, H, W) 1 where a pixel is the white studio background: near-white pixels connected
    to the photo's border (a flood fill by repeated 3×3 dilation at quarter resolution), so the
    white parts of a white shoe inside its outline stay the shoe."""
    small = F.avg_pool2d(x, 4)  # (B, 3, H/4, W/4)
    whiteish = (small.amin(1, keepdim=True) > white).float()
    seed = torch.zeros_like(whiteish)
    seed[..., 0, :] = seed[..., -1, :] = 1
    seed[..., :, 0] = seed[..., :, -1] = 1
    bg = seed * whiteish
    for _ in range(steps):
        bg = F.max_pool2d(bg, 3, 1, 1) * whiteish
    bg = F.interpolate(bg, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return bg * (x.amin(1, keepdim=True) > white - 0.05).float()  # no halo of shoe pixels


def wild_views(x: torch.Tensor, backgrounds: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Catalogue photos made to look like phone and street photos of worn shoes.

    Each transform is drawn independently per photo:

    - the white studio background replaced by an in-the-wild scene (``backgrounds``: pavements,
      floors, legs; p = 0.7), the shoe cut out with :func:`background_mask`;
    - a leg entering the shoe from above (a band of skin, trouser or tights colour from the top
      edge down into the shoe's opening; p = 0.3);
    - an occluder over the top of the shoe (a trouser- or skirt-like band with a ragged lower
      edge hiding 15–60 % of the shoe's height; p = 0.3): the shaft top is then hidden, so the
      four height labels of that photo are masked (returned in ``hidden``);
    - a mild perspective change (viewpoint; p = 0.5);
    - downscaling to 40–120 px and back (the street crops are that small; p = 0.6);
    - defocus or motion blur (p = 0.4); Gaussian sensor noise (p = 0.3).

    Args:
        x: (B, 3, S, S) photos in [0, 1] (any device).
        backgrounds: (N, 3, h, w) in-the-wild photos in [0, 1] to cut scenes from.
        gen: a CPU generator (draws are moved to ``x``'s device).

    Returns:
        The (B, 3, S, S) transformed photos and a (B,) bool tensor: True where the occluder hides
        the shoe's top (its height labels must not be trusted).
    """
    b, _, s, _ = x.shape
    dev = x.device

    def coin(p: float) -> torch.Tensor:
        return (torch.rand(b, generator=gen) < p).to(dev)

    bg_mask = background_mask(x)  # (B, 1, S, S)
    shoe_rows = (1 - bg_mask).amax(3)[:, 0] > 0.5  # (B, S) rows that hold some shoe
    rows = torch.arange(s, device=dev).float()
    top = torch.where(shoe_rows, rows, torch.full_like(rows, float(s))).amin(1)  # (B,) first shoe row
    bottom = torch.where(shoe_rows, rows, torch.full_like(rows, -1.0)).amax(1)
    height = (bottom - top).clamp(min=1)

    # Scenes behind the shoe: random crops of in-the-wild photos, blurred like a shallow focus.
    pick = torch.randint(len(backgrounds), (b,), generator=gen)
    scene = F.interpolate(backgrounds[pick.to(backgrounds.device)].to(dev), size=(s, s), mode="bilinear",
                          align_corners=False)
    scene = _blur(scene, _blur_kernels(b, gen, dev))
    paste = coin(0.7).view(b, 1, 1, 1).float()
    x = x * (1 - bg_mask * paste) + scene * bg_mask * paste

    yy = rows.view(1, s, 1)
    xx = rows.view(1, 1, s)
    cx = s / 2 + (torch.rand(b, generator=gen).to(dev) - 0.5) * s * 0.3  # (B,)

    def colour(n: int) -> torch.Tensor:  # trouser / skin / tights colours: dark to mid, low saturation
        base = torch.rand(n, 1, generator=gen) * 0.6 + 0.1
        tint = (torch.rand(n, 3, generator=gen) - 0.5) * 0.2
        return (base + tint).clamp(0, 1).to(dev).view(n, 3, 1, 1)

    leg_w = (torch.rand(b, generator=gen).to(dev) * 0.15 + 0.12) * s
    leg_end = top + height * (torch.rand(b, generator=gen).to(dev) * 0.3 + 0.1)
    leg = ((xx - cx.view(b, 1, 1)).abs() < leg_w.view(b, 1, 1) / 2) & (yy < leg_end.view(b, 1, 1))
    leg = (leg & coin(0.3).view(b, 1, 1)).unsqueeze(1).float()
    x = x * (1 - leg) + colour(b) * leg

    cover = torch.rand(b, generator=gen).to(dev) * 0.45 + 0.15  # share of the shoe's height hidden
    ragged = (torch.rand(b, 1, s, generator=gen).to(dev) - 0.5) * 0.06 * s
    edge = (top + cover * height).view(b, 1, 1) + F.avg_pool1d(ragged, 9, 1, 4)  # (B, 1, S) lower edge
    occluded = coin(0.3)
    band = ((yy < edge) & occluded.view(b, 1, 1)).unsqueeze(1).float()
    texture = colour(b) + 0.05 * torch.randn(b, 1, s, s, generator=gen).to(dev)
    x = x * (1 - band) + texture.clamp(0, 1) * band

    persp = coin(0.5)
    if persp.any():
        theta = torch.eye(2, 3, device=dev).repeat(b, 1, 1)
        shear = (torch.rand(b, generator=gen).to(dev) - 0.5) * 0.3
        squash = 1 + (torch.rand(b, generator=gen).to(dev) - 0.5) * 0.3
        theta[:, 0, 1] = torch.where(persp, shear, 0)
        theta[:, 1, 1] = torch.where(persp, squash, 1)
        grid = F.affine_grid(theta, [b, 3, s, s], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    small = coin(0.6)
    if small.any():
        side = int(torch.randint(40, 121, (1,), generator=gen))  # one size per batch: one resample
        low = F.interpolate(F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False),
                            size=(s, s), mode="bilinear", align_corners=False)
        x = torch.where(small.view(b, 1, 1, 1), low, x)
    blurred = coin(0.4)
    if blurred.any():
        x = torch.where(blurred.view(b, 1, 1, 1), _blur(x, _blur_kernels(b, gen, dev)), x)
    noisy = coin(0.3).view(b, 1, 1, 1).float()
    x = x + noisy * 0.03 * torch.randn(x.shape, generator=gen).to(dev)
    return x.clamp(0, 1), occluded & (cover > 0.25)
