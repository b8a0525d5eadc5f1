"""The seed's interface, kept working as thin calls into the package.

    train(model, data_loader, epochs=60, prefix="run", num_epochs_per_save=10, device=device)
    train_one_epoch(data_loader, optimizer, scheduler, device, model)
    fig = plot_sample(sample, model, device)
    fig = plot_results_from_checkpoint("checkpoints/run/checkpoint-last.pth", data_loader, device)
    model = prepare_model("checkpoints/run", arch=None)
    path = download_pretrained_model("mae_pretrain_vit_base", "checkpoints/mae")

New code calls `ml.training.train(config)` directly; the notebook calls `ml.notebook.cells`.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
import torch.nn as nn

from mae.pretrained import download_pretrained_model  # noqa: F401
from ml.model import CrossDecoder, SiamMAE, preset_of  # noqa: F401
from ml.notebook.plots import plot_results_from_checkpoint, plot_sample  # noqa: F401
from ml.training.checkpoint import prepare_model  # noqa: F401
from ml.training.config import TrainConfig
from ml.training.engine import train_one_epoch  # noqa: F401
from ml.training.pretrain import train as train_run


def train(
    model: nn.Module,
    data_loader: torch.utils.data.DataLoader,
    epochs: int = 60,
    prefix: str = "",
    num_epochs_per_save: int = 10,
    device: torch.device | str = "cuda",
    *,
    config: TrainConfig | None = None,
    output_dir: str | os.PathLike | None = None,
    **kwargs: Any,
) -> nn.Module:
    """The seed's `train`: `model` on `data_loader` for `epochs` epochs, checkpoints and logs under `prefix`.

    With `config`, its recipe with these arguments replacing its fields (and the held-out loss of
    its test split); without one, the paper's optimiser recipe with a warm-up over the first 10% of
    epochs, the model's preset and the loader's batch, and no held-out loss. A CUDA `device` falls
    back to the CPU, with a warning, when there is none. `kwargs` go to `ml.training.train` (resume,
    stop_after_epoch, progress, test_loader).
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        warnings.warn("no CUDA GPU here: training on the CPU", stacklevel=2)
        device = torch.device("cpu")
    changes: dict[str, Any] = {"epochs": epochs, "num_epochs_per_save": num_epochs_per_save, "device": str(device)}
    if prefix:
        changes["prefix"] = prefix
    if output_dir is not None:
        changes["output_dir"] = str(output_dir)
    if config is None:
        config = seed_recipe(model, data_loader, epochs)
        kwargs.setdefault("test_loader", None)
    return train_run(config.replace(**changes), model=model, train_loader=data_loader, **kwargs)


def seed_recipe(model: nn.Module, data_loader: Any, epochs: int) -> TrainConfig:
    """The seed's `train` gets a model and a loader made by hand and no recipe: this describes them as one (the
    paper's optimiser, their preset, size, mask ratio and batch), so that the run folder records what ran."""
    arch, overrides = preset_of(model.model_args)
    dataset = data_loader.dataset
    repeated = int(getattr(dataset, "repeated_sampling", 1))
    return TrainConfig(
        arch=arch, model_kwargs=overrides, img_size=model.model_args["img_size"],
        mask_ratio=model.model_args["mask_ratio"], data=str(getattr(dataset, "source", "")), test_split=None,
        repeated_sampling=repeated, batch_size=data_loader.batch_size * repeated, epochs=epochs,
        warmup_epochs=epochs / 10, num_workers=int(data_loader.num_workers),
    )
