"""JHMDB joints on the feature grid: the CRW code's joint stamps, Gaussian heatmaps, and joints read back from
propagated heatmaps (what the JHMDB benchmark propagates instead of masks)."""

from __future__ import annotations

import numpy as np
import torch


def crw_joint_stamps(points: np.ndarray, image_hw: tuple[int, int], grid_hw: tuple[int, int],
                     sigma: float = 0.5) -> torch.Tensor:
    """(1 + J, h, w): the CRW encoding of joints (J, 2) given in pixels of an `image_hw` frame.

    Each joint, at grid position p = pixel x (grid / image size), gets the stamp of the pose-hourglass
    code: a (6 sigma + 1)-wide window starting at int(p - 3 sigma), holding exp(-d^2 / (2 sigma^2))
    around the window's centre (for sigma 0.5: a 4x4 window peaking at the rounded cell). A joint whose
    window misses the grid gets an empty map. Channel 0 is the background: 1 where no joint's map
    has any value.
    """
    (H, W), (h, w) = image_hw, grid_hw
    maps = np.zeros((len(points), h, w))
    size = 6 * sigma + 1
    offsets = np.arange(0, size, 1, float)
    centre = size // 2
    stamp = np.exp(-((offsets[None, :] - centre) ** 2 + (offsets[:, None] - centre) ** 2) / (2 * sigma**2))
    for j, (x, y) in enumerate(points):
        u, v = x * w / W, y * h / H
        left, top = int(u - 3 * sigma), int(v - 3 * sigma)  # int(): towards zero, as the original
        right, bottom = int(u + 3 * sigma + 1), int(v + 3 * sigma + 1)
        if left >= w or top >= h or right < 0 or bottom < 0:
            continue
        sx = slice(max(0, -left), min(right, w) - left)
        sy = slice(max(0, -top), min(bottom, h) - top)
        maps[j, max(0, top):min(bottom, h), max(0, left):min(right, w)] = stamp[sy, sx]
    background = (maps.sum(0) == 0).astype(float)[None]
    return torch.from_numpy(np.concatenate([background, maps])).float()


def gaussian_heatmaps(points: np.ndarray, image_hw: tuple[int, int], grid_hw: tuple[int, int],
                      sigma: float = 0.5) -> torch.Tensor:
    """(J, h, w) Gaussian heatmaps (peak 1, sigma in cells) around the exact joint positions, cell centres at
    integers (the causal protocol)."""
    (H, W), (h, w) = image_hw, grid_hw
    u = (points[:, 0] + 0.5) * w / W - 0.5
    v = (points[:, 1] + 0.5) * h / H - 0.5
    yy, xx = np.mgrid[0:h, 0:w]
    d2 = (xx[None] - u[:, None, None]) ** 2 + (yy[None] - v[:, None, None]) ** 2
    return torch.from_numpy(np.exp(-d2 / (2 * sigma**2))).float()


def heatmap_keypoints(heat: torch.Tensor, image_hw: tuple[int, int], topk: int = 5,
                      coords: str = "cell_corner") -> tuple[np.ndarray, np.ndarray]:
    """(J, h, w) propagated heatmaps -> joints (J, 2) in pixels (the weighted mean of each map's top-k cells)
    and visibility (J,): False for an all-zero map. "cell_corner": cell i maps to pixel i x W / w (CRW);
    "cell_centre": to (i + 0.5) x W / w - 0.5."""
    J, h, w = heat.shape
    H, W = image_hw
    flat = heat.reshape(J, h * w).clamp_min(0)
    vals, idx = flat.topk(min(topk, h * w), dim=1)
    weights = vals / vals.sum(1, keepdim=True).clamp_min(1e-12)
    u = ((idx % w).float() * weights).sum(1)
    v = ((idx // w).float() * weights).sum(1)
    if coords == "cell_corner":  # cell / cells x pixels, in float32 and in that order, as CRW's eval_pck.py
        x, y = u / w * W, v / h * H
    else:
        x, y = (u + 0.5) * W / w - 0.5, (v + 0.5) * H / h - 0.5
    visible = (flat.sum(1) > 0).cpu().numpy()
    return torch.stack([x, y], 1).cpu().numpy(), visible
