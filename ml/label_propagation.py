"""Label propagation with frozen features: the protocol that measures correspondence.

Each frame is encoded once: the encoder's last-layer patch tokens after the final norm,
L2-normalised per token, on the whole frame resized so both sides are multiples of the patch
size (position embeddings are interpolated). The labels of a target frame are a weighted sum of
the labels of context tokens: the first frame (ground-truth labels) and a queue of the last
`queue_length` frames (their predicted soft labels). For each target token the affinity to every
context token is their dot product divided by `temperature`; queue tokens farther than `radius`
feature cells are left out; the `topk` largest affinities are kept and softmax-normalised; the
prediction is the weighted sum of their labels. The first frame is not restricted to the
neighbourhood by default (the long-term memory sees the whole frame), `restrict_first_frame=True`
restricts it too.

Affinities are computed for chunks of target tokens so memory stays bounded: a chunk holds at
most `max_affinity_elements` floats (128 MiB at the default), whatever the frame size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from dataset_loader.transforms import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class PropagationConfig:
    """Parameters of label propagation; the defaults are the DAVIS protocol."""

    temperature: float = 0.7
    topk: int = 7
    queue_length: int = 20  # previous frames kept as context besides the first frame
    radius: float | None = 20.0  # in feature cells; None: no neighbourhood restriction
    restrict_first_frame: bool = False  # apply the neighbourhood to the first frame as well
    max_affinity_elements: int = 1 << 25  # affinity floats held at once (chunking of target tokens)

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.topk < 1:
            raise ValueError(f"topk must be at least 1, got {self.topk}")
        if self.queue_length < 0:
            raise ValueError(f"queue_length must be >= 0, got {self.queue_length}")
        if self.radius is not None and self.radius <= 0:
            raise ValueError(f"radius must be positive (or None for no restriction), got {self.radius}")
        if self.max_affinity_elements < 1:
            raise ValueError("max_affinity_elements must be positive")

    def to_dict(self) -> dict:
        return asdict(self)


PROPAGATION_DEFAULTS: dict[str, PropagationConfig] = {
    "davis": PropagationConfig(topk=7, radius=20.0),
    "jhmdb": PropagationConfig(topk=7, radius=20.0),
    "vip": PropagationConfig(topk=10, radius=8.0),
}


def propagation_config(dataset: str, **overrides) -> PropagationConfig:
    """The protocol's parameters for `dataset` ('davis', 'jhmdb', 'vip') with `overrides`.

    An override of None keeps the default; radius=0 removes the neighbourhood restriction.
    """
    if dataset not in PROPAGATION_DEFAULTS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {sorted(PROPAGATION_DEFAULTS)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides.get("radius") == 0:
        overrides["radius"] = None
    return replace(PROPAGATION_DEFAULTS[dataset], **overrides)


# ----------------------------------------------------------------- sizes and frames
def evaluation_size(
    image_hw: tuple[int, int], patch_size: int, size: int | tuple[int, int] | None = None
) -> tuple[int, int]:
    """The (H, W) a frame is resized to before encoding: both multiples of the patch size.

    size None keeps the frame's own size, an int sets the short side (aspect kept), (h, w) sets
    both. Each side is then rounded to the nearest multiple of the patch (854x480 -> 848x480 at
    patch 16). Predictions are upsampled back to the annotation size afterwards.
    """
    H, W = image_hw
    if size is None:
        h, w = float(H), float(W)
    elif isinstance(size, int):
        scale = size / min(H, W)
        h, w = H * scale, W * scale
    else:
        h, w = float(size[0]), float(size[1])
    p = patch_size
    return max(p, int(round(h / p)) * p), max(p, int(round(w / p)) * p)


def load_frame(path, size_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """An RGB image file -> float (3, H, W) in [0, 1], resized (bilinear, antialiased) to size_hw if given."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        if size_hw is not None and (img.height, img.width) != tuple(size_hw):
            img = img.resize((size_hw[1], size_hw[0]), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0


# ----------------------------------------------------------------- features
class PixelEncoder(nn.Module):
    """A feature baseline without learning: each patch's pixels (normalised frame), flattened.

    Offers the encoder interface the feature extractor uses (`patch_size`, `forward_features`
    returning a leading placeholder token), so it runs through the same propagation code.
    `pool` > 1 averages pool x pool pixel blocks inside the patch first (pool = patch_size keeps
    only the mean colour).
    """

    def __init__(self, patch_size: int = 16, pool: int = 1) -> None:
        super().__init__()
        if patch_size % pool:
            raise ValueError(f"pool {pool} must divide the patch size {patch_size}")
        self.patch_size = patch_size
        self.pool = pool

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        n, c, H, W = imgs.shape
        p, q = self.patch_size, self.pool
        if H % p or W % p:
            raise ValueError(f"image size {H}x{W} is not divisible by the patch size {p}")
        x = F.avg_pool2d(imgs, q) if q > 1 else imgs  # (N, C, H/q, W/q)
        s = p // q
        h, w = H // p, W // p
        x = x.reshape(n, c, h, s, w, s).permute(0, 2, 4, 3, 5, 1).reshape(n, h * w, s * s * c)
        return torch.cat([x.new_zeros(n, 1, x.shape[-1]), x], dim=1)  # (N, 1 + h*w, s*s*C)


class FeatureExtractor:
    """Frames -> L2-normalised patch features with the encoder's last layer (after the final norm).

    `encoder`: any module with `patch_size` and `forward_features(imgs) -> (N, 1 + h*w, D)` (an
    `mae.MAEEncoder`, `PixelEncoder`), or a model holding one as `.encoder` (SiamMAE). `size`: the
    evaluation size rule of `evaluation_size`. Frames are ImageNet-normalised here.
    """

    def __init__(
        self,
        encoder: nn.Module,
        device: str | torch.device | None = None,
        size: int | tuple[int, int] | None = None,
        batch_size: int = 1,
    ) -> None:
        if not hasattr(encoder, "forward_features") and hasattr(encoder, "encoder"):
            encoder = encoder.encoder
        if not hasattr(encoder, "forward_features") or not hasattr(encoder, "patch_size"):
            raise TypeError(f"{type(encoder).__name__} has no forward_features/patch_size (expected an MAE encoder)")
        if device is None:  # where the encoder already is: a model in use elsewhere is not moved
            device = next((p.device for p in encoder.parameters()), torch.device("cpu"))
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device)
        self.patch_size = int(encoder.patch_size)
        self.size = size
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def input_size(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        return evaluation_size(image_hw, self.patch_size, self.size)

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (N, 3, H, W) in [0, 1], H and W multiples of the patch -> (N, h, w, D) unit vectors."""
        x = (frames.to(self.device, torch.float32) - self._mean) / self._std
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            tokens = self.encoder.forward_features(x)[:, 1:, :]  # (N, h*w, D), cls dropped
        finally:
            self.encoder.train(was_training)
        if tokens.shape[1] != h * w:
            raise ValueError(f"encoder returned {tokens.shape[1]} patch tokens for a {h}x{w} grid")
        return F.normalize(tokens.float(), dim=-1).reshape(x.shape[0], h, w, -1)

    def iter_frame_features(self, paths: Iterable, size_hw: tuple[int, int]) -> Iterator[torch.Tensor]:
        """Features (h, w, D) of each frame file in order, encoded `batch_size` frames at a time, each once."""
        batch: list = []
        for path in paths:
            batch.append(path)
            if len(batch) == self.batch_size:
                yield from self(torch.stack([load_frame(p, size_hw) for p in batch]))
                batch = []
        if batch:
            yield from self(torch.stack([load_frame(p, size_hw) for p in batch]))


# ----------------------------------------------------------------- labels on the feature grid
def labels_to_grid(labels: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Per-pixel labels (C, H, W) -> (C, h, w): the mean over the area of each feature cell.

    Small objects thus keep a fraction of a cell instead of vanishing under nearest sampling.
    """
    return F.adaptive_avg_pool2d(labels[None].float(), grid_hw)[0]


def upsample_labels(soft: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Soft labels (C, h, w) on the feature grid -> (C, H, W) at frame size (bilinear)."""
    return F.interpolate(soft[None], size=size_hw, mode="bilinear", align_corners=False)[0]


def one_hot(ids: np.ndarray | torch.Tensor, num_classes: int, ignore: int | None = 255) -> torch.Tensor:
    """Label ids (H, W) -> (num_classes, H, W) float; `ignore` pixels get no label (all zeros)."""
    ids = torch.as_tensor(np.asarray(ids)).long()
    valid = (ids >= 0) & (ids < num_classes)
    known = valid | (ids == ignore) if ignore is not None else valid
    unknown = torch.unique(ids[~known])
    if unknown.numel():
        raise ValueError(f"label ids {unknown.tolist()} are outside 0..{num_classes - 1}")
    out = torch.zeros(num_classes, *ids.shape)
    out.scatter_(0, ids.clamp(0, num_classes - 1)[None], valid[None].float())
    return out


def neighbourhood_mask(grid_hw: tuple[int, int], radius: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """(h*w, h*w) bool: key cell j is within `radius` cells (Euclidean, strictly closer) of query cell i."""
    h, w = grid_hw
    yy, xx = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], dim=1).float()  # (h*w, 2)
    return torch.cdist(pos, pos) < radius


# ----------------------------------------------------------------- propagation
def propagate_frame(
    query: torch.Tensor,
    keys: torch.Tensor,
    key_labels: torch.Tensor,
    config: PropagationConfig,
    allowed: torch.Tensor | None = None,
    unrestricted_keys: int = 0,
) -> torch.Tensor:
    """Labels of one target frame from its context.

    query (Q, D) and keys (K, D) unit feature vectors, key_labels (K, C). `allowed` (Q, L) bool:
    the spatial neighbourhood between the Q target cells and the L cells of one context frame;
    it is applied to every context frame after the first `unrestricted_keys` keys (K -
    unrestricted_keys must be a multiple of L). Returns (Q, C).
    """
    Q, K = query.shape[0], keys.shape[0]
    k = min(config.topk, K)
    chunk = max(1, config.max_affinity_elements // K)
    restricted = K - unrestricted_keys
    if allowed is not None and restricted % allowed.shape[1]:
        raise ValueError(f"{restricted} restricted keys are not whole frames of {allowed.shape[1]} cells")
    out = query.new_empty(Q, key_labels.shape[1])
    for start in range(0, Q, chunk):
        stop = min(Q, start + chunk)
        aff = query[start:stop] @ keys.T  # (q, K)
        aff /= config.temperature
        if allowed is not None and restricted:
            L = allowed.shape[1]
            masked = aff[:, unrestricted_keys:].view(stop - start, restricted // L, L)
            masked.masked_fill_(~allowed[start:stop, None, :], float("-inf"))
        weights, index = aff.topk(k, dim=1)  # (q, k)
        del aff
        weights = weights.softmax(dim=1)
        out[start:stop] = torch.einsum("qk,qkc->qc", weights, key_labels[index])
    return out


class LabelPropagator:
    """Propagates labels through a sequence, one frame at a time.

    Holds the first frame (features, ground-truth labels on the feature grid) and a queue of the
    last `queue_length` frames with their predicted soft labels. Memory is bounded by the queue,
    not by the length of the video.
    """

    def __init__(self, first_features: torch.Tensor, first_labels: torch.Tensor, config: PropagationConfig) -> None:
        """first_features (h, w, D) unit vectors; first_labels (C, h, w) on the same grid."""
        h, w, D = first_features.shape
        if first_labels.shape[1:] != (h, w):
            raise ValueError(f"labels on a {tuple(first_labels.shape[1:])} grid for features on a {(h, w)} grid")
        self.config = config
        self.grid = (h, w)
        self.device = first_features.device
        self.first_keys = first_features.reshape(h * w, D)
        self.first_labels = first_labels.to(self.device).flatten(1).T.contiguous()  # (h*w, C)
        self.queue: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=config.queue_length)
        self.allowed = None if config.radius is None else neighbourhood_mask(self.grid, config.radius, self.device)

    def step(self, features: torch.Tensor) -> torch.Tensor:
        """Features (h, w, D) of the next frame -> its soft labels (C, h, w); the frame joins the queue."""
        h, w, D = features.shape
        if (h, w) != self.grid:
            raise ValueError(f"frame features on a {(h, w)} grid, the sequence started on {self.grid}")
        query = features.reshape(h * w, D)
        keys = [self.first_keys] + [f for f, _ in self.queue]
        labels = [self.first_labels] + [lab for _, lab in self.queue]
        unrestricted = 0 if self.config.restrict_first_frame else h * w
        pred = propagate_frame(query, torch.cat(keys), torch.cat(labels), self.config, self.allowed, unrestricted)
        self.queue.append((query, pred))
        return pred.T.reshape(-1, h, w)


def propagate_sequence(
    features: Iterable[torch.Tensor], first_labels: torch.Tensor, config: PropagationConfig
) -> Iterator[torch.Tensor]:
    """Soft labels (C, h, w) of frames 1, 2, ... from per-frame features (frame 0 first) and frame 0's labels.

    first_labels: (C, h, w) on the feature grid, or (C, H, W) per pixel (pooled to the grid).
    """
    it = iter(features)
    first = next(it)
    if tuple(first_labels.shape[1:]) != tuple(first.shape[:2]):
        first_labels = labels_to_grid(first_labels, tuple(first.shape[:2]))
    propagator = LabelPropagator(first, first_labels.to(first.device), config)
    for feats in it:
        yield propagator.step(feats)
