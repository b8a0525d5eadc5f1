"""Official MAE checkpoints: the URL table, a safe download, and key-checked loading.

Every checkpoint is read with `torch.load(..., weights_only=True)`: a file that would run code
when unpickled is refused, never executed.
"""

from __future__ import annotations

import os
import pickle
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

_MAE_URL = "https://dl.fbaipublicfiles.com/mae"
MAE_PRETRAINED_URLS: dict[str, str] = {
    # encoder only (what fine-tuning and SiamMAE start from)
    "mae_pretrain_vit_base": f"{_MAE_URL}/pretrain/mae_pretrain_vit_base.pth",
    "mae_pretrain_vit_large": f"{_MAE_URL}/pretrain/mae_pretrain_vit_large.pth",
    "mae_pretrain_vit_huge": f"{_MAE_URL}/pretrain/mae_pretrain_vit_huge.pth",
    # encoder + decoder (for reconstruction plots)
    "mae_visualize_vit_base": f"{_MAE_URL}/visualize/mae_visualize_vit_base.pth",
    "mae_visualize_vit_large": f"{_MAE_URL}/visualize/mae_visualize_vit_large.pth",
}

DECODER_PREFIXES = ("decoder_", "mask_token")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read safely or does not fit the model."""


@dataclass
class LoadReport:
    """What `load_mae_weights` did: keys loaded, and keys of the model the file did not have."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def missing_decoder(self) -> bool:
        return bool(self.missing)

    def __str__(self) -> str:
        if not self.missing:
            return f"loaded all {len(self.loaded)} tensors"
        return f"loaded {len(self.loaded)} tensors; not in the file (left as initialised): {', '.join(self.missing)}"


def load_checkpoint_file(path: str | os.PathLike) -> dict:
    """Read a checkpoint with `weights_only=True`; refuse (CheckpointError) anything that would run code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refused to load {path}: it holds objects other than tensors and plain data, and loading them "
            f"could run code ({str(err).splitlines()[0]})"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"could not read checkpoint {path}: {err}") from err


def extract_state_dict(checkpoint: Mapping) -> dict[str, torch.Tensor]:
    """Unwrap `{'model': ...}` (and `'state_dict'`) and strip DistributedDataParallel's `module.` prefix."""
    sd = checkpoint
    for key in ("model", "state_dict"):
        if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError("checkpoint holds no state dict of tensors (expected a dict or {'model': dict})")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def encoder_state_dict(checkpoint: Mapping) -> tuple[str, dict[str, torch.Tensor], list[str]]:
    """The ViT encoder weights of a checkpoint in one of the layouts users bring, named by its keys:
    (layout, state dict with MAE's encoder key names, keys left out).

    DINO's full checkpoint (`teacher`: `backbone.` encoder, `head.` projection head, left out), DINO's released
    backbones and timm ViT state dicts (plain keys; a classifier `head.`, left out), MAE's and CropMAE's
    checkpoints (`{'model': ...}`; the decoder and mask token left out, anything else must be the encoder's);
    DistributedDataParallel's `module.` is stripped everywhere.
    """
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("teacher"), Mapping):
        layout, raw, foreign = "DINO full checkpoint (teacher)", checkpoint["teacher"], ("head.",)
    elif isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("model"), Mapping):
        layout, raw, foreign = "MAE/CropMAE checkpoint ({'model': ...})", checkpoint["model"], DECODER_PREFIXES
    else:
        layout, raw, foreign = "plain ViT state dict (DINO backbone, timm)", checkpoint, ("head.",)
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in extract_state_dict(raw).items()}
    ignored = sorted(k for k in state if k.startswith(foreign))
    return layout, {k: v for k, v in state.items() if k not in ignored}, ignored


def load_mae_weights(
    model: nn.Module,
    checkpoint: str | os.PathLike | Mapping,
    allowed_missing_prefixes: tuple[str, ...] = DECODER_PREFIXES,
    ignore_prefixes: tuple[str, ...] = (),
) -> LoadReport:
    """Load a state dict (or a checkpoint file) into `model`, checking every key.

    An unexpected key or a shape mismatch raises CheckpointError naming them. Keys of the model
    that the file lacks are allowed only under `allowed_missing_prefixes` (the decoder, which the
    official encoder-only `mae_pretrain_vit_*.pth` files do not hold) and are reported. Keys of the
    file under `ignore_prefixes` are dropped first (e.g. the MAE decoder, when loading an
    encoder+decoder file into an encoder alone).
    """
    raw = load_checkpoint_file(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    sd = extract_state_dict(raw)
    if ignore_prefixes:
        sd = {k: v for k, v in sd.items() if not k.startswith(ignore_prefixes)}
    own = model.state_dict()
    unexpected = sorted(k for k in sd if k not in own)
    mismatched = sorted(
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sd
        if k in own and sd[k].shape != own[k].shape
    )
    missing = sorted(k for k in own if k not in sd)
    bad_missing = [k for k in missing if not k.startswith(allowed_missing_prefixes)]
    problems = []
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {'; '.join(mismatched)}")
    if bad_missing:
        problems.append(f"missing keys: {', '.join(bad_missing)}")
    if problems:
        raise CheckpointError("checkpoint does not fit the model: " + " | ".join(problems))
    model.load_state_dict(sd, strict=False)
    return LoadReport(loaded=sorted(sd), missing=missing)


def download_pretrained_model(url: str, dir: str | os.PathLike = "checkpoints/mae") -> Path:
    """Download an official MAE checkpoint (a URL, or a name of MAE_PRETRAINED_URLS) into `dir`, with a progress bar.

    Skips the download when the file is already there. `torch.hub.download_url_to_file` writes to a
    temporary file and renames it when complete, so an interrupted download never leaves a truncated
    checkpoint behind. Offline, the error says where to put a copy of the file.
    """
    url = MAE_PRETRAINED_URLS.get(url, url)
    dest = Path(dir) / Path(urllib.request.urlparse(url).path).name
    if dest.is_file():
        return dest
    if not urllib.request.urlparse(url).scheme:
        raise CheckpointError(f"{url!r} is neither a file, a URL nor a name of {', '.join(MAE_PRETRAINED_URLS)}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(dest), progress=True)
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        raise CheckpointError(
            f"could not download {url}: {getattr(err, 'reason', err)}. Are you offline? Download it elsewhere and "
            f"place it at {dest}."
        ) from err
    return dest


def resolve_pretrained(pretrained: str | os.PathLike, dir: str | os.PathLike = "checkpoints/mae") -> Path:
    """A pretrained checkpoint as a file: the path itself, or a name of MAE_PRETRAINED_URLS downloaded once into
    `dir`. CheckpointError naming both possibilities when it is neither."""
    path = Path(pretrained)
    if path.is_file():
        return path
    if str(pretrained) in MAE_PRETRAINED_URLS:
        return download_pretrained_model(str(pretrained), dir)
    raise CheckpointError(f"pretrained: {pretrained} is neither a file nor one of {', '.join(MAE_PRETRAINED_URLS)}")
