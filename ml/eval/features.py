"""Frames in, L2-normalised patch features out: input sizes, resizing, the encoder pass, and labels on the grid.

Each frame is encoded once: the encoder's last-layer patch tokens after its final norm (cls token
dropped), L2-normalised per token, on the whole frame at the protocol's input size (position
embeddings interpolated as the protocol says). Resizing of frames, label maps and predictions
follows the protocol too (`ml.eval.protocols`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from dataset_loader.transforms import IMAGENET_MEAN
from ml.eval.data import open_image
from ml.eval.protocols import Protocol


# ----------------------------------------------------------------- sizes
def input_size(image_hw: tuple[int, int], patch_size: int, protocol: Protocol) -> tuple[int, int]:
    """The (H, W) a frame of size `image_hw` is resized to before encoding, under the protocol's size rule.

    ValueError naming --size when the result is not a whole number of patches of at least one patch.
    """
    H, W = image_hw
    rule, size, p = protocol.size_rule, protocol.size, patch_size
    if rule == "fixed":
        h, w = int(size[0]), int(size[1])
    elif rule in ("long_side_64", "short_side_64"):
        long_side = (W >= H) == (rule == "long_side_64")  # is the width the side set to `size`?
        if long_side:
            w, h = size, int(H * size / W) // 64 * 64
        else:
            h, w = size, int(W * size / H) // 64 * 64
    elif rule == "short_side":
        scale = size / min(H, W)
        h, w = int(round(H * scale / p)) * p, int(round(W * scale / p)) * p
    else:  # native
        h, w = int(round(H / p)) * p, int(round(W / p)) * p
    if h < p or w < p or h % p or w % p:
        raise ValueError(f"--size: frames of {H}x{W} become {h}x{w}, which is not a whole number of {p}-pixel "
                         f"patches of at least one patch: choose a larger size (HxW multiples of {p})")
    return h, w


def grid_size(input_hw: tuple[int, int], patch_size: int) -> tuple[int, int]:
    return input_hw[0] // patch_size, input_hw[1] // patch_size


# ----------------------------------------------------------------- resizing
def load_frame(path: str | os.PathLike, size_hw: tuple[int, int], resize: str = "bilinear") -> torch.Tensor:
    """An RGB image file -> float (3, H, W) in [0, 1] at `size_hw`.

    "bilinear": the float pixels (8-bit / 255) resized by OpenCV's INTER_LINEAR (no antialiasing), as the CRW
    code's `cv2.resize` on the float frame: OpenCV itself, since another implementation of the same formula
    rounds differently in the last bit, which changes which of two equal propagated values wins a top-k;
    "opencv_uint8": OpenCV's INTER_LINEAR on the 8-bit pixels (fixed-point, rounded to whole grey levels),
    then converted to float, as DINO's eval_video_segmentation.py (read_frame: cv2.resize, then astype
    float32 / 255); "bilinear_antialias": PIL's antialiased bilinear on 8-bit pixels.
    """
    with open_image(path) as img:
        img = img.convert("RGB")
        if resize == "bilinear_antialias" and (img.height, img.width) != tuple(size_hw):
            img = img.resize((size_hw[1], size_hw[0]), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8).copy()
    same = arr.shape[:2] == tuple(size_hw)
    if resize == "opencv_uint8" and not same:
        arr = cv2.resize(arr, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_LINEAR)
    if resize == "bilinear":
        pixels = arr.astype(np.float32) / 255.0
        if not same:
            pixels = cv2.resize(pixels, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_LINEAR)
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
    if resize not in ("opencv_uint8", "bilinear_antialias"):
        raise ValueError(f"unknown resize {resize!r}")
    return torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0


def resize_ids(ids: np.ndarray | torch.Tensor, size_hw: tuple[int, int], nearest: str = "floor") -> torch.Tensor:
    """A label map (H, W) of ids 0..255 resized by nearest neighbour: "floor" (OpenCV INTER_NEAREST: source =
    floor(dst x scale)) or "centre" (PIL NEAREST itself: source = (dst + 0.5) x scale in PIL's 16.16 fixed point,
    which the exact formula misses by a column now and then, e.g. 832 -> 854)."""
    ids = torch.as_tensor(np.asarray(ids)).long()
    if tuple(ids.shape) == tuple(size_hw):
        return ids
    if nearest == "centre":
        image = Image.fromarray(ids.to(torch.uint8).cpu().numpy())
        return torch.from_numpy(np.array(image.resize((size_hw[1], size_hw[0]), Image.NEAREST))).long()
    return F.interpolate(ids[None, None].float(), size=size_hw, mode="nearest")[0, 0].round().long()


def one_hot(ids: np.ndarray | torch.Tensor, num_classes: int, void: str = "none",
            void_label: int = 255) -> torch.Tensor:
    """Label ids (H, W) -> (num_classes, H, W) float. Void pixels: no label ("none") or background ("background").

    An id outside 0..num_classes-1 (other than void) is a ValueError naming it.
    """
    ids = torch.as_tensor(np.asarray(ids)).long()
    is_void = ids == void_label
    if void == "background":
        ids = torch.where(is_void, torch.zeros_like(ids), ids)
        is_void = torch.zeros_like(is_void)
    valid = (ids >= 0) & (ids < num_classes)
    unknown = torch.unique(ids[~valid & ~is_void])
    if unknown.numel():
        raise ValueError(f"label ids {unknown.tolist()} are outside 0..{num_classes - 1}")
    out = torch.zeros(num_classes, *ids.shape)
    out.scatter_(0, ids.clamp(0, num_classes - 1)[None], valid[None].float())
    return out


def labels_to_grid(ids: np.ndarray, num_classes: int, input_hw: tuple[int, int], grid_hw: tuple[int, int],
                   protocol: Protocol) -> torch.Tensor:
    """The first frame's label map (H0, W0) as soft labels (C, h, w) on the feature grid, the protocol's way."""
    rule = protocol.labels_to_grid
    if rule == "nearest_then_bilinear":
        at_input = resize_ids(ids, input_hw, "floor")  # OpenCV INTER_NEAREST, as the CRW data loader
        hot = one_hot(at_input, num_classes, protocol.void_as)
        return F.interpolate(hot[None], size=grid_hw, mode="bilinear", align_corners=False, antialias=False)[0]
    if rule == "nearest":
        return one_hot(resize_ids(ids, grid_hw, "centre"), num_classes, protocol.void_as)
    hot = one_hot(ids, num_classes, protocol.void_as)  # area: each cell's share of every label
    return F.adaptive_avg_pool2d(hot[None], grid_hw)[0]


def labels_from_grid(soft: torch.Tensor, input_hw: tuple[int, int], annotation_hw: tuple[int, int],
                     protocol: Protocol) -> torch.Tensor:
    """Soft labels (C, h, w) -> the label map (H0, W0) at the annotation's size, the protocol's way."""
    if protocol.output == "annotation":
        up = F.interpolate(soft[None], size=annotation_hw, mode="bilinear", align_corners=False)[0]
        return up.argmax(0)
    up = F.interpolate(soft[None], size=input_hw, mode="bilinear", align_corners=False)[0]
    if protocol.norm_mask:  # DINO: each channel that has any mass scaled to [0, 1]
        lo = up.flatten(1).min(1).values[:, None, None]
        hi = up.flatten(1).max(1).values[:, None, None]
        scaled = (up - lo) / (hi - lo).clamp_min(1e-12)
        up = torch.where(hi > 0, scaled, up)
    return resize_ids(up.argmax(0), annotation_hw, protocol.nearest)


# ----------------------------------------------------------------- encoders
class FeatureExtractor:
    """Frames -> L2-normalised patch features (N, h, w, D) of the encoder's last layer (after the final norm).

    `encoder`: any module with `patch_size` and `forward_features(imgs, pos_mode) -> (N, 1 + h*w, D)`
    (an `mae.MAEEncoder`, `PixelEncoder`), or a model holding one as `.encoder` (SiamMAE).
    """

    def __init__(self, encoder: nn.Module, protocol: Protocol, device: str | torch.device | None = None,
                 batch_size: int = 1) -> None:
        if not hasattr(encoder, "forward_features") and hasattr(encoder, "encoder"):
            encoder = encoder.encoder
        if not hasattr(encoder, "forward_features") or not hasattr(encoder, "patch_size"):
            raise TypeError(f"{type(encoder).__name__} has no forward_features/patch_size (expected an MAE encoder)")
        if device is None:  # where the encoder already is: a model in use elsewhere is not moved
            device = next((p.device for p in encoder.parameters()), torch.device("cpu"))
        if batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device)
        self.patch_size = int(encoder.patch_size)
        self.protocol = protocol
        self.batch_size = batch_size
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(protocol.pixel_std, device=self.device).view(1, 3, 1, 1)

    def input_size(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        return input_size(image_hw, self.patch_size, self.protocol)

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor, names: list[str] | None = None) -> torch.Tensor:
        """frames (N, 3, H, W) in [0, 1], H and W multiples of the patch -> (N, h, w, D) unit vectors.

        ValueError naming the frame when the encoder gives a non-finite feature.
        """
        x = (frames.to(self.device, torch.float32) - self._mean) / self._std
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        was_training = getattr(self.encoder, "training", False)
        self.encoder.eval()
        try:
            tokens = self.encoder.forward_features(x, pos_mode=self.protocol.pos_interpolation)[:, 1:, :]
        finally:
            self.encoder.train(was_training)
        if tokens.shape[1] != h * w:
            raise ValueError(f"encoder returned {tokens.shape[1]} patch tokens for a {h}x{w} grid")
        finite = torch.isfinite(tokens).flatten(1).all(1)
        if not bool(finite.all()):
            bad = int((~finite).nonzero()[0])
            where = names[bad] if names else f"frame {bad} of the batch"
            raise ValueError(f"the encoder produced non-finite features for {where}: its weights (or the frame) "
                             f"are broken")
        return F.normalize(tokens.float(), dim=-1).reshape(x.shape[0], h, w, -1)

    def iter_frame_features(self, paths: Iterable[Path], size_hw: tuple[int, int]) -> Iterator[torch.Tensor]:
        """Features (h, w, D) of each frame file in order, encoded `batch_size` frames at a time, each once."""
        batch: list[Path] = []
        for path in paths:
            batch.append(Path(path))
            if len(batch) == self.batch_size:
                yield from self._encode(batch, size_hw)
                batch = []
        if batch:
            yield from self._encode(batch, size_hw)

    def _encode(self, paths: list[Path], size_hw: tuple[int, int]) -> torch.Tensor:
        frames = torch.stack([load_frame(p, size_hw, self.protocol.resize) for p in paths])
        return self(frames, [str(p) for p in paths])


def encoder_width(encoder: nn.Module) -> tuple[int, int]:
    """(feature width, attention heads) of an encoder, for the memory estimate (pixels: 3 x patch^2, no heads)."""
    encoder = getattr(encoder, "encoder", encoder)
    if not hasattr(encoder, "embed_dim"):  # raw pixels: 3 x patch^2 values, no attention
        s = encoder.patch_size // getattr(encoder, "pool", 1)
        return 3 * s * s, 0
    return int(encoder.embed_dim), int(getattr(encoder, "num_heads", 1))


def peak_memory_bytes(encoder: nn.Module, input_hw: tuple[int, int], protocol: Protocol, num_classes: int,
                      max_affinity_elements: int, batch_size: int = 1) -> int:
    """An upper estimate of the memory one video's evaluation needs at `input_hw` (bytes).

    Encoder: the tokens, the MLP hidden layer and every head's attention matrix of a batch; context:
    the keys and labels of the first frame and the queue, concatenated; affinity chunks; the soft
    labels upsampled to the input size.
    """
    width, heads = encoder_width(encoder)
    p = getattr(encoder, "encoder", encoder).patch_size
    h, w = grid_size(input_hw, p)
    cells, tokens = h * w, h * w + 1
    encoder_bytes = 4 * batch_size * (max(heads, 1) * tokens * tokens + 8 * tokens * max(width, 1))
    context = protocol.queue_length + 1
    context_bytes = 4 * 2 * context * cells * (width + num_classes)  # the stored frames and their concatenation
    affinity_bytes = 4 * 3 * min(max_affinity_elements, cells * context * cells)
    output_bytes = 4 * 3 * num_classes * input_hw[0] * input_hw[1]
    return encoder_bytes + context_bytes + affinity_bytes + output_bytes


def available_memory_bytes(device: torch.device) -> int | None:
    """Free memory of `device`: the GPU's, or the machine's available RAM (None when it cannot be told)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            fields = {line.split(":")[0]: line.split()[1] for line in f}
        return int(fields["MemAvailable"]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n < 100 * 2**30 else f"{n / 2**30:,.0f} GiB"


def check_memory(estimate: int, device: torch.device, what: str) -> str:
    """A line stating the estimate; ValueError naming --size when it exceeds the memory available."""
    available = available_memory_bytes(device)
    line = f"estimated peak memory {gib(estimate)} for {what}"
    if available is not None:
        line += f" ({gib(available)} available on {device})"
        if estimate > available:
            raise ValueError(f"--size: {line}: choose a smaller --size (or a device with more memory)")
    if not math.isfinite(estimate):
        raise ValueError(f"--size: {line}")
    return line
