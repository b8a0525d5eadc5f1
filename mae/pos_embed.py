"""Fixed 2-D sine-cosine position embeddings (as MAE) and their resizing to other grids."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed


def get_1d_sincos_pos_embed_from_grid(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    """(M,) positions -> (M, embed_dim): half sines, half cosines of geometric frequencies."""
    if embed_dim % 2:
        raise ValueError(f"embed_dim must be even, got {embed_dim}")
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega  # (D/2,)
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)  # (M, D/2)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (M, D)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int | tuple[int, int], cls_token: bool = False) -> np.ndarray:
    """(h*w [+1], embed_dim) table; the first half encodes the column, the second the row (MAE's order).

    With `cls_token` a zero row is put first for the cls slot.
    """
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be divisible by 4, got {embed_dim}")
    grid_w, grid_h = np.meshgrid(np.arange(gw, dtype=np.float32), np.arange(gh, dtype=np.float32))
    emb_w = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid_w)  # (h*w, D/2)
    emb_h = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid_h)  # (h*w, D/2)
    pos = np.concatenate([emb_w, emb_h], axis=1)  # (h*w, D)
    if cls_token:
        pos = np.concatenate([np.zeros([1, embed_dim]), pos], axis=0)
    return pos


POS_INTERPOLATIONS = ("size", "dino")


def resize_pos_embed(
    pos_embed: torch.Tensor,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    num_prefix_tokens: int = 1,
    mode: str = "size",
) -> torch.Tensor:
    """Bicubically resize the grid part of a (1, prefix + h*w, D) table to `new_grid`.

    mode "size": interpolate to exactly `new_grid` (timm's `resample_abs_pos_embed`, without
    antialiasing so that the bicubic kernel is the standard one at every size).
    mode "dino": DINO's `interpolate_pos_encoding`, which the CRW-family evaluation code of MAE
    encoders uses: the scale factor is (new + 0.1) / old, so the sampling positions are
    those of that slightly larger factor. Kept because published label-propagation numbers
    come from it; timm has no such variant.
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    if mode == "size":
        return resample_abs_pos_embed(pos_embed, list(new_grid), list(old_grid), num_prefix_tokens, antialias=False)
    if mode != "dino":
        raise ValueError(f"unknown position interpolation {mode!r}; valid: {', '.join(POS_INTERPOLATIONS)}")
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2).float()  # (1, D, h, w)
    scale = ((new_grid[0] + 0.1) / old_grid[0], (new_grid[1] + 0.1) / old_grid[1])
    grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", align_corners=False)
    if tuple(grid.shape[-2:]) != tuple(new_grid):
        raise ValueError(f"DINO interpolation gave a {tuple(grid.shape[-2:])} grid for {tuple(new_grid)}")
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)
