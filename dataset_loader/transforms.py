"""Paired augmentation: one random resized crop and one flip per pair, applied to both frames.

Crop and resize happen in one call on the 8-bit frame (torch's antialiased bilinear `interpolate`,
whose 8-bit kernel is about 3x faster than PIL's and within rounding of it); normalisation is one
vectorised step on the stacked output, on the CPU or, for 8-bit batches, on the training device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_SCALE = (0.5, 1.0)  # the paper's random resized crop: half to all of the frame's area


@dataclass(frozen=True)
class CropParams:
    """A crop box in pixels of the source frame, and whether to mirror the result."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


_SCALE = 1.0 / (255.0 * torch.tensor(IMAGENET_STD))  # (x / 255 - mean) / std = x * scale + bias
_BIAS = -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)


def normalize(frames: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) uint8 RGB -> contiguous float of the same shape, normalised with the ImageNet mean and std
    (on the device the frames are on: batches handed over as 8 bits are normalised on the GPU)."""
    scale, bias = _SCALE.to(frames.device), _BIAS.to(frames.device)
    return frames.contiguous().float().mul_(scale.view(3, 1, 1)).add_(bias.view(3, 1, 1))


def denormalize(t: torch.Tensor) -> torch.Tensor:
    """Undo `normalize` on (3, H, W) or (..., 3, H, W): values back in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=t.dtype, device=t.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=t.dtype, device=t.device).view(3, 1, 1)
    return (t * std + mean).clamp(0.0, 1.0)


class PairedTransform:
    """Random resized crop (area `scale`, aspect `ratio`) + horizontal flip, the same for every frame of a group.

    With `augment=False`: resize the short side to `img_size` and take the centre square (no flip).
    """

    def __init__(
        self,
        img_size: int = 224,
        scale: tuple[float, float] = CROP_SCALE,
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_prob: float = 0.5,
        augment: bool = True,
    ) -> None:
        if img_size < 1:
            raise ValueError(f"img_size must be positive, got {img_size}")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        if not 0 <= flip_prob <= 1:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.img_size = img_size
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.flip_prob = flip_prob
        self.augment = augment

    def sample_params(self, height: int, width: int, rng: np.random.Generator) -> CropParams:
        """The crop and flip for one group of frames of size (height, width)."""
        if not self.augment:
            side = min(height, width)
            return CropParams((height - side) // 2, (width - side) // 2, side, side, False)
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        flip = bool(rng.random() < self.flip_prob)
        for _ in range(10):
            target_area = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                return CropParams(top, left, h, w, flip)
        # no valid box in 10 tries (extreme frame shape): the largest centred box within the ratio range
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            w, h = int(round(height * self.ratio[1])), height
        else:
            w, h = width, height
        return CropParams((height - h) // 2, (width - w) // 2, h, w, flip)

    def apply(self, frames: list[np.ndarray], params: CropParams) -> torch.Tensor:
        """Crop, resize to (img_size, img_size) and maybe flip (H, W, 3) uint8 frames of one size -> (N, 3, S, S) uint8.

        The frames' crop windows are stacked and resized in one call, in channels-last memory (the layout
        of torch's fast 8-bit kernel); the result keeps that layout: a (N, 3, S, S) view of (N, S, S, 3).
        """
        t, l, h, w = params.top, params.left, params.height, params.width
        crops = np.stack([f[t:t + h, l:l + w] for f in frames])  # (N, h, w, 3): only the crop windows are copied
        x = torch.from_numpy(crops).permute(0, 3, 1, 2)  # (N, 3, h, w), channels-last memory
        if (h, w) != (self.img_size, self.img_size):
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False,
                              antialias=True)
        return x.flip(-1) if params.flip else x

    def __call__(self, frames: list[np.ndarray], rng: np.random.Generator) -> torch.Tensor:
        """One crop and flip for all `frames`: (N, 3, img_size, img_size) normalised."""
        return normalize(self.apply(frames, self.sample_params(*frames[0].shape[:2], rng)))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(img_size={self.img_size}, scale={self.scale}, ratio={self.ratio}, "
                f"flip_prob={self.flip_prob}, augment={self.augment})")
