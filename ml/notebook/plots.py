"""Figures of the notebook: sampled pairs, reconstructions, loss curves, the f1 ablation, attention maps.

Every function returns a matplotlib Figure (nothing is shown or written implicitly); `save_figure`
writes one as a PNG. Frames come in as the model sees them (ImageNet-normalised (3, H, W) tensors)
and are un-normalised for display.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from dataset_loader.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize, normalize
from ml.model import reconstruct
from ml.notebook.curves import LR_COLOUR, PALETTE
from ml.notebook.samples import load_samples
from ml.training.checkpoint import find_checkpoint, prepare_model
from ml.training.engine import evaluate_loss

PANEL_INCHES = 2.4  # side of one image panel
DPI = 100


# ---------------------------------------------------------------- helpers
def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = DPI) -> Path:
    """Write `fig` as a PNG at `path` (folders created); its pixel size is the figure size times `dpi`."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"figures are saved as PNG: {path} should end in .png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png", facecolor="white")
    return path


def to_display_image(frame: torch.Tensor | np.ndarray) -> np.ndarray:
    """A frame as an (H, W, 3) float array in [0, 1] for imshow.

    Accepts an ImageNet-normalised float tensor (3, H, W) (or (1, 3, H, W)), an 8-bit tensor (3, H, W) as
    the loader hands over, or a uint8 array (H, W, 3).
    """
    if isinstance(frame, np.ndarray):
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
            raise ValueError(f"a numpy frame must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
        return frame.astype(np.float32) / 255.0
    x = frame.detach().cpu()
    x = normalize(x) if x.dtype == torch.uint8 else x.float()
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected a frame (3, H, W), got shape {tuple(frame.shape)}")
    return denormalize(x).permute(1, 2, 0).numpy()


def to_model_input(frame: torch.Tensor | np.ndarray) -> torch.Tensor:
    """An ImageNet-normalised float tensor (3, H, W) from a normalised or 8-bit tensor or a uint8 (H, W, 3) array."""
    if isinstance(frame, np.ndarray):
        rgb = torch.from_numpy(to_display_image(frame)).permute(2, 0, 1)  # (3, H, W) in [0, 1]
        return (rgb - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    x = frame.detach()
    x = normalize(x) if x.dtype == torch.uint8 else x.float()
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected a frame (3, H, W), got shape {tuple(frame.shape)}")
    return x


def _show(ax: Any, image: np.ndarray, title: str) -> None:
    ax.imshow(image, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


def _frames_of(sample: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(sample, dict):
        if "f1" not in sample or "f2" not in sample:
            raise ValueError("a sample dict needs the keys 'f1' and 'f2'")
        f1, f2 = sample["f1"], sample["f2"]
    elif isinstance(sample, (tuple, list)) and len(sample) == 2:
        f1, f2 = sample
    else:
        raise ValueError("a sample is a pair (f1, f2) or a dict with 'f1' and 'f2'")
    f1, f2 = to_model_input(f1), to_model_input(f2)
    if f1.shape != f2.shape:
        raise ValueError(f"the two frames differ in shape: {tuple(f1.shape)} vs {tuple(f2.shape)}")
    return f1, f2


def normalised_patches_image(x: torch.Tensor) -> np.ndarray:
    """Per-patch normalised pixels (3, H, W) (mean 0, std 1 within each patch) as an image: 0 is mid-grey and one
    standard deviation a quarter of the range, the same scale for target and prediction."""
    return (0.5 + 0.25 * x.detach().cpu().float()).clamp(0, 1).permute(1, 2, 0).numpy()


def row_columns(norm_pix_loss: bool) -> int:
    """Panels in one reconstruction row."""
    return 6 if norm_pix_loss else 5


def _patch_grid(ax: Any, size: int, patch: int) -> None:
    """Thin lines on the patch boundaries of a (size x size) image panel."""
    for edge in range(patch, size, patch):
        ax.axhline(edge - 0.5, color="white", linewidth=0.4, alpha=0.45)
        ax.axvline(edge - 0.5, color="white", linewidth=0.4, alpha=0.45)


def mask_image(mask: torch.Tensor, size: int) -> np.ndarray:
    """The (L,) mask (1 = masked) as a (size, size) array of its patches."""
    side = math.isqrt(mask.numel())
    patch = size // side
    return np.kron(mask.reshape(side, side).float().numpy(), np.ones((patch, patch)))


def error_map(result: dict[str, Any]) -> np.ndarray:
    """Squared error of the prediction per pixel (mean over colours) on masked patches, NaN on the visible ones; in
    the space the loss is taken in (per-patch normalised pixels for norm-pix models, normalised images otherwise)."""
    if result["norm_pix_loss"]:
        prediction, target = result["prediction"], result["target_normalised"]
    else:
        prediction, target = result["reconstruction"], result["f2"]
    error = ((prediction - target) ** 2).mean(0).numpy()  # (H, W)
    return np.where(mask_image(result["mask"], error.shape[0]) > 0, error, np.nan)


def _draw_mask_overlay(ax: Any, result: dict[str, Any]) -> None:
    """f2 with its masked patches shaded (the visible ones, given to the model, stay clear)."""
    image = to_display_image(result["f2"])
    shade = mask_image(result["mask"], image.shape[0])
    kept, total = int((result["mask"] == 0).sum()), result["mask"].numel()
    overlay = np.zeros((*shade.shape, 4))
    overlay[..., 3] = 0.62 * shade
    _show(ax, image, f"f2 and its mask: {total - kept} shaded\npatches hidden, {kept} of {total} given")
    ax.imshow(overlay, interpolation="nearest")


def _draw_error(ax: Any, result: dict[str, Any]) -> None:
    error = error_map(result)
    cmap = plt.get_cmap("magma").with_extremes(bad="#d9d9d9")  # grey: visible patches, no prediction to score
    shown = ax.imshow(error, cmap=cmap, vmin=0, vmax=max(float(np.nanpercentile(error, 99)), 1e-6),
                      interpolation="nearest")
    ax.set_title(f"squared error on masked patches\n(mean {float(np.nanmean(error)):.3f}; grey: given)", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    bar = ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    bar.ax.tick_params(labelsize=8)
    bar.set_label("normalised pixels²" if result["norm_pix_loss"] else "(normalised image)²", fontsize=8)


def _draw_row(axes: Sequence[Any], result: dict[str, Any], label: str | None = None) -> None:
    """f1, f2 with its mask, the prediction panels, the error map; a patch grid on every image."""
    panels = [(to_display_image(result["f1"]), "f1 (past frame, whole)")]
    if result["norm_pix_loss"]:
        panels += [(normalised_patches_image(result["target_normalised"]), "target: f2 per-patch\nnormalised"),
                   (normalised_patches_image(result["prediction"]),
                    f"prediction, loss {result['loss']:.3f}\n(model output only)"),
                   (to_display_image(result["pasted"]), "prediction with f2's TRUE\npatch mean & std + visible")]
    else:
        panels += [(to_display_image(result["reconstruction"]), f"prediction, loss {result['loss']:.3f}"),
                   (to_display_image(result["pasted"]), "prediction\n+ visible patches")]
    _show(axes[0], *panels[0])
    _draw_mask_overlay(axes[1], result)
    for ax, (image, title) in zip(axes[2:], panels[1:]):
        _show(ax, image, title)
    _draw_error(axes[len(panels) + 1], result)
    size = panels[0][0].shape[0]
    patch = size // math.isqrt(result["mask"].numel())
    for ax in axes[:len(panels) + 2]:
        _patch_grid(ax, size, patch)
    if label:
        axes[0].set_ylabel(label, fontsize=9)


def plot_sample(sample: Any, model: torch.nn.Module, device: torch.device | str | None = None, seed: int = 0) -> Figure:
    """One labelled row for a frame pair: f1, f2, the visible patches of f2 the model was given, then (norm-pix
    models) the target as the model sees it (f2 per-patch normalised), the prediction itself on the same scale
    (masked patches only: nothing of f2 in it), and, labelled as such, the prediction mapped back with f2's true
    patch means and deviations; (other models) the prediction and the prediction pasted into the visible patches.

    `sample` is (f1, f2) or a dict with `f1`, `f2` (normalised tensors (3, H, W) or uint8 (H, W, 3)).
    The mask is drawn from `seed`, so the figure is the same every time.
    """
    if device is not None:
        model = model.to(device)
    f1, f2 = _frames_of(sample)
    result = reconstruct(model, f1, f2, seed=seed)
    cols = row_columns(result["norm_pix_loss"])
    fig, axes = plt.subplots(1, cols, figsize=(cols * PANEL_INCHES, PANEL_INCHES + 0.8), layout="constrained")
    _draw_row(axes, result, _sample_label(sample))
    fig.suptitle(f"SiamMAE reconstruction of f2 from f1 at mask ratio {_mask_ratio(model):.0%}", fontsize=12)
    return fig


def _sample_label(sample: Any) -> str | None:
    if not isinstance(sample, dict) or "video" not in sample:
        return None
    name = Path(str(sample["video"])).stem
    if "split" in sample:
        name = f"{sample['split']}: {name}"
    if "gap_frames" in sample:
        return f"{name}\ngap {sample['gap_frames']} frames"
    return name


def _mask_ratio(model: torch.nn.Module) -> float:
    return float(model.mask_ratio)


def plot_results_from_checkpoint(
    checkpoint_name: str | os.PathLike,
    data_loader: Iterable | None,
    device: torch.device | str = "cpu",
    samples_path: str | os.PathLike = "samples.pickle",
) -> Figure:
    """Load a checkpoint (a file, a run folder or a run name under checkpoints/) and plot one reconstruction
    row per pair of `samples_path`, with the loss of the model on `data_loader` (e.g. the held-out loader;
    None to skip) in the title.

    The loss is computed as training computes its held-out loss (`ml.training.engine.evaluate_loss`, the same
    fixed masks), so for the last checkpoint it is the last value of the run's test-loss log.
    """
    path = find_checkpoint(checkpoint_name)
    model = prepare_model(path).to(device)
    samples = load_samples(samples_path)
    rows, cols = len(samples), row_columns(bool(getattr(model, "norm_pix_loss", False)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * PANEL_INCHES, rows * (PANEL_INCHES + 0.5) + 0.4),
                             layout="constrained", squeeze=False)
    for row, sample in enumerate(samples):
        result = reconstruct(model, sample["f1"], sample["f2"], seed=row)
        _draw_row(axes[row], result, _sample_label(sample))
    title = f"{path.parent.name}/{path.name}: reconstructions at mask ratio {_mask_ratio(model):.0%}"
    if data_loader is not None:
        title += f"; loss on the data loader {evaluate_loss(model, data_loader, device):.4f}"
    fig.suptitle(title, fontsize=12)
    return fig


# ---------------------------------------------------------------- does the decoder use f1?
def plot_f1_ablation(table: dict[str, dict[str, float]], title: str | None = None) -> Figure:
    """Bars of `ml.notebook.analysis.f1_ablation`'s losses: one group per split, one bar per f1 given to the decoder."""
    conditions = list(table)
    splits = list(next(iter(table.values())))
    fig, ax = plt.subplots(figsize=(1.6 + 2.2 * len(splits), 3.6), layout="constrained")
    width = 0.8 / len(conditions)
    colours = [PALETTE[2], PALETTE[3], LR_COLOUR, PALETTE[0]]  # colour-blind-safe, grey for the grey frame
    for k, condition in enumerate(conditions):
        x = np.arange(len(splits)) + (k - (len(conditions) - 1) / 2) * width
        values = [table[condition][s] for s in splits]
        bars = ax.bar(x, values, width, label=condition, color=colours[k % len(colours)])
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=1)
    ax.set_xticks(np.arange(len(splits)), [f"{s} pairs" for s in splits])
    ax.set_ylabel("loss: MSE on f2's masked patches\n(per-patch normalised pixels)")
    ax.set_xlabel("fixed frame pairs of each split")
    low = min(min(r.values()) for r in table.values())
    high = max(max(r.values()) for r in table.values())
    ax.set_ylim(max(0.0, low - 0.25 * (high - low) - 0.02), high + 0.15 * (high - low) + 0.02)
    ax.legend(title="f1 given to the decoder", fontsize=8, title_fontsize=8, loc="upper left",
              bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title or "does the decoder use the past frame?\n(the same pairs and masks in every bar)", fontsize=11)
    return fig


def plot_cross_attention(
    f1: torch.Tensor,
    f2: torch.Tensor,
    maps: dict[str, dict],
    queries: Sequence[int],
    patch_size: int,
    heads_of: str | None = None,
    alpha: float = 0.65,
) -> Figure:
    """Where the decoder looks: for each query patch of f2 (a row), its cross-attention over f1 drawn on f1.

    `maps` = {model name: `ml.notebook.analysis.cross_attention` result} for one pair (f1, f2); columns: f2 with the
    query patch boxed, then per model the mean over heads, and for the model `heads_of` (default: the first)
    each head. On every map the box marks the query's own position and a cross the attention's peak.
    """
    first = next(iter(maps))
    heads_of = heads_of or first
    heads = maps[heads_of]["attention"].shape[0]
    h, w = maps[first]["grid"]
    columns = 1 + len(maps) + heads
    aspect = h / w
    side = PANEL_INCHES * 0.9
    fig, axes = plt.subplots(len(queries), columns, squeeze=False, layout="constrained",
                             figsize=(columns * side, len(queries) * (side * aspect + 0.45)))
    image1, image2 = to_display_image(f1), to_display_image(f2)
    grey1 = image1.mean(axis=-1)

    def box(ax: Any, q: int, colour: str) -> None:
        r, c = divmod(q, w)
        ax.add_patch(plt.Rectangle((c * patch_size - 0.5, r * patch_size - 0.5), patch_size, patch_size,
                                   fill=False, edgecolor=colour, linewidth=2))

    def heat(ax: Any, weights: torch.Tensor, q: int, title: str) -> None:
        m = weights.reshape(h, w)
        up = m.repeat_interleave(patch_size, 0).repeat_interleave(patch_size, 1).numpy()
        ax.imshow(grey1, cmap="gray", vmin=0, vmax=1)
        ax.imshow(up, cmap="inferno", alpha=alpha, vmin=0, vmax=float(m.max()))
        peak = int(weights.argmax())
        ax.plot((peak % w + 0.5) * patch_size - 0.5, (peak // w + 0.5) * patch_size - 0.5, "x", color="cyan",
                markersize=9, markeredgewidth=2)
        box(ax, q, "lime")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])

    for row, q in enumerate(queries):
        axes[row, 0].imshow(image2)
        box(axes[row, 0], q, "lime")
        _show(axes[row, 0], image2, f"f2, masked patch {q}" if row == 0 else f"patch {q}")
        box(axes[row, 0], q, "lime")
        for k, (name, result) in enumerate(maps.items()):
            weights = result["attention"][:, q]  # (heads, L)
            heat(axes[row, 1 + k], weights.mean(0), q, f"{name}: mean of heads" if row == 0 else name)
        for k in range(heads):
            heat(axes[row, 1 + len(maps) + k], maps[heads_of]["attention"][k, q], q,
                 f"{heads_of}: head {k + 1}" if row == 0 else f"head {k + 1}")
    fig.suptitle("decoder cross-attention of masked patches of f2 over f1; green box: the patch's own position, "
                 "cyan x: the peak", fontsize=11)
    return fig


# ---------------------------------------------------------------- attention maps
def last_layer_cls_attention(model_or_encoder: torch.nn.Module, frame: torch.Tensor) -> torch.Tensor:
    """The last encoder block's attention from the cls token to every patch: (heads, h, w), each map sums to <= 1."""
    encoder = getattr(model_or_encoder, "encoder", model_or_encoder)
    p = encoder.patch_size
    x = to_model_input(frame)
    H, W = (x.shape[-2] // p) * p, (x.shape[-1] // p) * p
    if (H, W) != tuple(x.shape[-2:]):  # crop to whole patches
        top, left = (x.shape[-2] - H) // 2, (x.shape[-1] - W) // 2
        x = x[:, top:top + H, left:left + W]
    device = next(encoder.parameters()).device
    attn = encoder.get_last_selfattention(x[None].to(device))  # (1, heads, 1 + h*w, 1 + h*w)
    return attn[0, :, 0, 1:].reshape(-1, H // p, W // p).float().cpu()  # (heads, h, w)


def plot_attention_maps(
    model_or_encoder: torch.nn.Module,
    frame: torch.Tensor | np.ndarray,
    ncols: int = 4,
    title: str | None = None,
    alpha: float = 0.6,
) -> Figure:
    """The last layer's cls-token attention of every head over `frame` (any size; cropped to whole patches).

    First panel: the frame; then one panel per head, the attention map (normalised per head) upsampled
    to the frame and drawn over it.
    """
    maps = last_layer_cls_attention(model_or_encoder, frame)  # (heads, h, w)
    heads, h, w = maps.shape
    encoder = getattr(model_or_encoder, "encoder", model_or_encoder)
    p = encoder.patch_size
    image = to_display_image(to_model_input(frame))
    top, left = (image.shape[0] - h * p) // 2, (image.shape[1] - w * p) // 2
    image = image[top:top + h * p, left:left + w * p]
    up = F.interpolate(maps[:, None], size=(h * p, w * p), mode="nearest")[:, 0].numpy()  # (heads, H, W)
    panels = heads + 1
    ncols = max(1, min(ncols, panels))
    nrows = math.ceil(panels / ncols)
    aspect = (h * p) / (w * p)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * PANEL_INCHES, nrows * (PANEL_INCHES * aspect + 0.3) + 0.35),
                             layout="constrained", squeeze=False)
    axes = axes.ravel()
    _show(axes[0], image, f"frame ({h * p}x{w * p})")
    grey = image.mean(axis=-1)
    for k in range(heads):
        m = up[k]
        m = (m - m.min()) / (m.max() - m.min() + 1e-12)
        ax = axes[k + 1]
        ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
        ax.imshow(m, cmap="inferno", alpha=alpha, vmin=0, vmax=1)
        ax.set_title(f"head {k + 1}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[panels:]:
        ax.axis("off")
    fig.suptitle(title or f"last-layer [CLS] attention per head ({h}x{w} patches of {p}x{p})", fontsize=12)
    return fig


# ---------------------------------------------------------------- sampled pairs
def plot_pairs(dataset: Any, n: int = 4, pairs_per_row: int = 2, start: int = 0) -> Figure:
    """A grid of `n` sampled pairs (f1 next to f2), titled with the video and the gap between the frames.

    Uses `dataset.describe(i)` for i in start .. start + n - 1 (wrapping around the dataset).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    pairs_per_row = max(1, min(pairs_per_row, n))
    nrows = math.ceil(n / pairs_per_row)
    fig, axes = plt.subplots(nrows, 2 * pairs_per_row, figsize=(2 * pairs_per_row * PANEL_INCHES,
                             nrows * (PANEL_INCHES + 0.5) + 0.35), layout="constrained", squeeze=False)
    for k in range(nrows * pairs_per_row):
        row, col = divmod(k, pairs_per_row)
        ax1, ax2 = axes[row, 2 * col], axes[row, 2 * col + 1]
        if k >= n:
            ax1.axis("off")
            ax2.axis("off")
            continue
        info = _first_pair(dataset.describe((start + k) % len(dataset)))
        i, j = info["indices"]
        name = Path(str(info["video"])).stem
        _show(ax1, to_display_image(info["f1"]), f"{name}\nf1: frame {int(i)}")
        _show(ax2, to_display_image(info["f2"]),
              f"gap {int(info['gap_frames'])} frames ({float(info['gap_seconds']):.2f} s)\nf2: frame {int(j)}")
    fig.suptitle("sampled frame pairs (f1, f2) and the gap between them", fontsize=12)
    return fig


def _first_pair(info: dict) -> dict:
    """`describe` of a dataset with repeated sampling lists R pairs: keep the first one."""
    if isinstance(info["f1"], torch.Tensor) and info["f1"].ndim == 4:  # (R, 3, H, W)
        return {**info, "f1": info["f1"][0], "f2": info["f2"][0], "indices": info["indices"][0],
                "gap_frames": info["gap_frames"][0], "gap_seconds": info["gap_seconds"][0]}
    return info
