"""A model's reconstruction of one frame pair under a fixed mask, as images (what figures and TensorBoard show).

    with fixed_masks(model, seed=0):       # eval mode, the masks of seed 0, the global RNG left as it was
        loss, pred, mask = model(f1, f2)
    images = reconstruct(model, f1, f2)    # f2's visible patches, the prediction, both pasted together
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from dataset_loader.transforms import IMAGENET_MEAN, IMAGENET_STD
from mae.models_mae import normalize_patches, patch_statistics


@contextmanager
def fixed_masks(module: nn.Module, seed: int) -> Iterator[None]:
    """Within the block `module` is in eval mode and draws the masks of `seed`, in a fork of the random state:
    afterwards the global RNG (CPU and the module's GPU) and the module's mode are as before."""
    device = next(module.parameters()).device
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    was_training = module.training
    module.eval()
    try:
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            yield
    finally:
        module.train(was_training)



def _resize_to(frame: torch.Tensor, size: int) -> torch.Tensor:
    if frame.shape[-2:] == (size, size):
        return frame
    return F.interpolate(frame[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


@torch.no_grad()
def reconstruct(model: torch.nn.Module, f1: torch.Tensor, f2: torch.Tensor, seed: int = 0) -> dict[str, Any]:
    """Run SiamMAE on one pair with a fixed mask and return the images to show, all (3, H, W) normalised.

    Keys: `loss` (float), `norm_pix_loss` (bool), `mask` (h*w,) 1 = masked, `visible` (f2 with masked patches blanked),
    `reconstruction` (the prediction for every patch, back in image space), `pasted` (visible patches of
    f2 with the prediction in the masked ones). Frames are resized to the model's `img_size` if needed.
    """
    device = next(model.parameters()).device
    size = int(getattr(model, "img_size", f2.shape[-1]))
    f1 = _resize_to(f1, size)[None].to(device)  # (1, 3, H, W)
    f2 = _resize_to(f2, size)[None].to(device)
    with fixed_masks(model, seed):  # the same mask every time this pair is plotted
        loss, pred, mask = model(f1, f2)  # pred (1, L, p*p*3), mask (1, L)
    encoder = model.encoder
    p = encoder.patch_size
    grid = (f2.shape[-2] // p, f2.shape[-1] // p)
    target = encoder.patchify(f2)  # (1, L, p*p*3)
    norm_pix_loss = bool(getattr(model, "norm_pix_loss", False))
    mask_image = encoder.unpatchify(mask.float().unsqueeze(-1).expand(-1, -1, p * p * 3), grid)  # 1 = masked
    visible = f2 * (1 - mask_image) + _blank_like(f2) * mask_image
    out = {"loss": float(loss), "norm_pix_loss": norm_pix_loss, "mask": mask[0].cpu(), "f1": f1[0].cpu(),
           "f2": f2[0].cpu(), "visible": visible[0].cpu()}
    if norm_pix_loss:
        # what the model predicts: per-patch normalised pixels (each patch's mean and variance taken out)
        shown = _black_like(f2) * (1 - mask_image)  # visible patches black: they were given, not predicted
        out["target_normalised"] = encoder.unpatchify(normalize_patches(target).float(), grid)[0].cpu()
        out["prediction"] = (encoder.unpatchify(pred.float(), grid) * mask_image + shown)[0].cpu()
        mean, std = patch_statistics(target)  # f2's true patch statistics, for the labelled extra column
        pred = pred * std + mean
    reconstruction = encoder.unpatchify(pred.float(), grid)  # (1, 3, H, W)
    out["reconstruction"] = reconstruction[0].cpu()
    out["pasted"] = (f2 * (1 - mask_image) + reconstruction * mask_image)[0].cpu()
    return out


def _blank_like(frame: torch.Tensor) -> torch.Tensor:
    """A mid-grey image in normalised space (how masked patches are drawn)."""
    grey = (0.5 - torch.tensor(IMAGENET_MEAN, device=frame.device)) / torch.tensor(IMAGENET_STD, device=frame.device)
    return grey.view(1, 3, 1, 1).expand_as(frame)


def _black_like(frame: torch.Tensor) -> torch.Tensor:
    """Black in the display of per-patch normalised pixels (`normalised_patches_image` maps -2 to 0)."""
    return torch.full_like(frame, -2.0)
