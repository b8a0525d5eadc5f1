"""Figures of an evaluation: propagated masks drawn over the frames, next to the annotations."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ml.eval.data import VOID_LABEL, davis_videos, full_palette, open_image, read_label_png


def overlay_labels(frame: np.ndarray, ids: np.ndarray, palette: Sequence[int] | None = None, alpha: float = 0.5):
    """Colour the labelled pixels (id > 0) of an RGB frame (H, W, 3) uint8 with their palette colours."""
    pal = np.array(full_palette(palette), dtype=np.float32).reshape(256, 3)
    out = frame.astype(np.float32).copy()
    mask = (ids > 0) & (ids != VOID_LABEL)
    out[mask] = (1 - alpha) * out[mask] + alpha * pal[ids[mask]]
    return out.clip(0, 255).astype(np.uint8)


def plot_propagation(
    data: str | os.PathLike,
    output: str | os.PathLike,
    sequence: str,
    frames: Sequence[int] | None = None,
    resolution: str = "480p",
    alpha: float = 0.5,
    show_ground_truth: bool = True,
):
    """Propagated masks of a DAVIS-layout evaluation (the `output` of a DAVIS evaluation) over the frames.

    Top row: predictions; bottom row (show_ground_truth): annotations. `frames`: indices to show
    (default: first, two in between, last). Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    (video,) = davis_videos(data, resolution=resolution, sequences=[sequence])
    masks = Path(output) / "masks" / sequence
    n = len(video.frames)
    idx = list(frames) if frames is not None else sorted({0, n // 3, (2 * n) // 3, n - 1})
    rows = 2 if show_ground_truth else 1
    fig, axes = plt.subplots(rows, len(idx), figsize=(3.2 * len(idx), 2.0 * rows + 0.4), squeeze=False)
    for col, t in enumerate(idx):
        with open_image(video.frames[t]) as image:
            img = np.asarray(image.convert("RGB"))
        pred_path = masks / f"{video.frames[t].stem}.png"
        if not pred_path.is_file():
            raise FileNotFoundError(f"no prediction {pred_path}; evaluate DAVIS into {output} first")
        pred, palette = read_label_png(pred_path)
        layers = [("propagated", pred)]
        if show_ground_truth:
            layers.append(("annotation", read_label_png(video.annotations[t])[0]))
        for row, (what, ids) in enumerate(layers):
            if ids.shape != img.shape[:2]:
                ids = np.array(Image.fromarray(ids).resize((img.shape[1], img.shape[0]), Image.NEAREST))
            ax = axes[row, col]
            ax.imshow(overlay_labels(img, ids, palette, alpha))
            ax.set_title(f"{what}, frame {t}" if t else f"{what}, frame 0 (given)", fontsize=9)
            ax.axis("off")
    fig.suptitle(f"label propagation: {sequence}")
    fig.tight_layout()
    return fig
