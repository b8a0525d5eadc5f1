"""The encoders an evaluation can run: this project's checkpoints, official MAE files, a seeded random
initialisation (the baseline every table needs) and raw pixels; and a fingerprint of their weights."""

from __future__ import annotations

import hashlib
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from ml.model import create_model
from ml.training.checkpoint import prepare_model
from ml.training.config import TrainConfig

DEFAULT_ARCH = TrainConfig.arch  # the paper's ViT-S/16


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

    def forward_features(self, imgs: torch.Tensor, pos_mode: str = "size") -> torch.Tensor:
        n, c, H, W = imgs.shape
        p, q = self.patch_size, self.pool
        if H % p or W % p:
            raise ValueError(f"image size {H}x{W} is not divisible by the patch size {p}")
        x = F.avg_pool2d(imgs, q) if q > 1 else imgs  # (N, C, H/q, W/q)
        s = p // q
        h, w = H // p, W // p
        x = x.reshape(n, c, h, s, w, s).permute(0, 2, 4, 3, 5, 1).reshape(n, h * w, s * s * c)
        return torch.cat([x.new_zeros(n, 1, x.shape[-1]), x], dim=1)  # (N, 1 + h*w, s*s*C)



def weights_fingerprint(module: nn.Module) -> str:
    """SHA-1 of the parameter and buffer names, shapes and values: tells whether two runs used the same weights."""
    digest = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_encoder(checkpoint: str | os.PathLike, arch: str | None = None, seed: int = 0) -> tuple[nn.Module, str]:
    """The encoder to evaluate and a name for it.

    `checkpoint`: 'random' (preset `arch` at a seeded random initialisation: the baseline),
    'pixels' (raw 16x16 pixel patches, no network), a checkpoint file or run folder of this
    project (its arch is used when `arch` is None), or an official MAE checkpoint (its encoder
    weights; `arch` must name a preset of the same size). A file that does not fit the
    architecture raises CheckpointError naming the keys, before any data is read.
    """
    if str(checkpoint) == "pixels":
        return PixelEncoder(patch_size=16), "pixels"

    if str(checkpoint) == "random":
        arch = arch or DEFAULT_ARCH
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = create_model(arch)
        return model.encoder, f"random:{arch}:seed{seed}"
    model = prepare_model(checkpoint, arch)
    return model.encoder, f"{checkpoint} ({arch or 'arch from the checkpoint'})"
