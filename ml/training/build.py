"""The data and the model of a run, built from its TrainConfig (configuration flows one way: config -> these).

    model = build_model(config)                  # preset `arch` with the config's size, decoder and masking
    loader = make_train_loader(config)           # batch_size / repeated_sampling videos per batch, full batches
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from dataset_loader.dataset import KineticsFramePairs, find_videos
from dataset_loader.loader import make_pair_loader
from mae.pretrained import resolve_pretrained
from ml.model import SiamMAE, create_model, model_args_for
from ml.training.config import TrainConfig
from ml.training.distributed import get_world_size
from ml.training.engine import unwrap_model


def build_model(config: TrainConfig) -> SiamMAE:
    """The config's model: preset `arch` with `config.model_kwargs_full()`, encoder from `pretrained` if set
    (a file, or the name of an official MAE checkpoint, downloaded once into checkpoints/mae)."""
    pretrained = resolve_pretrained(config.pretrained) if config.pretrained else None
    return create_model(config.arch, pretrained=pretrained, **config.model_kwargs_full())


SUBSET_SEED = 0  # `max_videos` draws its subset with this seed: the same videos whatever the run's seed


def training_videos(config: TrainConfig) -> list[Path] | str:
    """The training split's videos: all of `data`, or the `max_videos` of them drawn once with SUBSET_SEED."""
    if config.max_videos is None:
        return config.data
    videos = find_videos(config.data, config.train_split).paths
    if config.max_videos >= len(videos):
        return videos
    chosen = np.random.default_rng(SUBSET_SEED).choice(len(videos), config.max_videos, replace=False)
    return [videos[i] for i in sorted(chosen)]


def data_fingerprint(videos: list[Path]) -> str:
    """SHA-1 of a set of video files: their paths below the folder they share, and their sizes. The same files
    moved elsewhere keep it; another set of videos (added, removed, other files) changes it."""
    paths = sorted(Path(os.path.abspath(p)) for p in videos)
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    digest = hashlib.sha1()
    for path in paths:
        digest.update(f"{path.relative_to(root)}\0{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def make_train_dataset(config: TrainConfig) -> KineticsFramePairs:
    return KineticsFramePairs(
        training_videos(config), split=config.train_split, img_size=config.img_size, scale=config.crop_scale,
        augment=True, repeated_sampling=config.repeated_sampling, min_gap=config.min_gap, max_gap=config.max_gap,
        seed=config.seed, output="uint8" if config.uint8_batches else "float",
    )


def make_train_loader(config: TrainConfig, distributed: bool | None = None) -> torch.utils.data.DataLoader:
    """The training loader of a config: `batch_size / repeated_sampling` videos per batch, shuffled, full batches;
    an epoch reads 1 / repeated_sampling of the videos (as many pairs as there are videos)."""
    dataset = make_train_dataset(config)
    distributed = get_world_size() > 1 if distributed is None else distributed
    check_batch_fits(len(dataset), config, get_world_size() if distributed else 1)
    return make_pair_loader(dataset, batch_size=config.videos_per_batch, num_workers=config.num_workers,
                            seed=config.seed, shuffle=True, drop_last=True, distributed=distributed,
                            parts=config.repeated_sampling)


def make_test_loader(config: TrainConfig, distributed: bool | None = None) -> torch.utils.data.DataLoader | None:
    """Held-out pairs for the per-epoch test loss: fixed pairs, no augmentation (None without a test split)."""
    if config.test_split is None:
        return None
    videos = find_videos(config.data, config.test_split).paths
    if config.test_max_videos is not None and len(videos) > config.test_max_videos:
        stride = len(videos) / config.test_max_videos  # evenly spaced, the same videos in every run
        videos = [videos[int(i * stride)] for i in range(config.test_max_videos)]
    dataset = KineticsFramePairs(
        videos, split=config.test_split, img_size=config.img_size, augment=False, repeated_sampling=1,
        min_gap=config.min_gap, max_gap=config.max_gap, fixed_pairs=True, seed=config.seed,
        output="uint8" if config.uint8_batches else "float",
    )
    distributed = get_world_size() > 1 if distributed is None else distributed
    return make_pair_loader(dataset, batch_size=config.batch_size, num_workers=config.num_workers,
                            seed=config.seed, shuffle=False, drop_last=False, distributed=distributed)


def check_batch_fits(num_videos: int, config: TrainConfig, world_size: int = 1) -> None:
    """ValueError when one optimiser step needs more videos than an epoch reads (N / repeated_sampling)."""
    accum = config.accum_steps(world_size)
    needed = config.videos_per_batch * world_size * accum
    per_epoch = config.videos_per_epoch(num_videos)
    if needed > per_epoch:
        raise ValueError(
            f"batch_size: one optimiser step needs {needed} videos ({config.videos_per_batch} per batch = "
            f"{config.batch_size} pairs / repeated_sampling {config.repeated_sampling}, x {world_size} process(es) "
            f"x {accum} accumulation) but an epoch reads {per_epoch} (the {num_videos} videos of split "
            f"'{config.train_split}' / repeated_sampling): lower the batch size"
        )


def check_loader(config: TrainConfig, loader: Any) -> None:
    """A loader passed in must give the config's pairs per batch (the schedule and learning rate follow them)."""
    videos = getattr(loader, "batch_size", None)
    repeated = int(getattr(getattr(loader, "dataset", None), "repeated_sampling", 1))
    if videos is not None and videos * repeated != config.batch_size:
        raise ValueError(f"batch_size: the data loader gives {videos * repeated} pairs per batch ({videos} videos x "
                         f"{repeated}), the config says {config.batch_size}")


def check_model(config: TrainConfig, model: nn.Module) -> None:
    """A model passed in must be the config's (arch, sizes, decoder, masking), else training would not be the run."""
    wanted = model_args_for(config.arch, **config.model_kwargs_full())
    have = getattr(unwrap_model(model), "model_args", None)
    if have is None:
        raise ValueError(f"the model is a {type(model).__name__}, not a SiamMAE (it has no model_args)")
    differences = sorted(k for k in set(wanted) | set(have) if wanted.get(k) != have.get(k))
    if differences:
        raise ValueError("arch/model_kwargs: the model passed in differs from the config's in " + ", ".join(
            f"{k} ({have.get(k)!r} vs {wanted.get(k)!r})" for k in differences))


# ---------------------------------------------------------------- the whole run
