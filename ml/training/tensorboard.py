"""TensorBoard logging of a run (`--tensorboard`): per iteration the loss and learning rate, per epoch the held-out
loss, and every `tensorboard_figure_every` epochs a reconstruction of a fixed pair (f1 | f2's visible patches |
the prediction pasted into them | f2), under fixed masks so that epochs compare."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from dataset_loader.transforms import denormalize
from ml.model import reconstruct
from ml.training.config import TrainConfig
from ml.training.engine import to_model_input
from ml.training.run import Run


class TensorBoard:
    """The run's TensorBoard writer (`<output>/tensorboard/<prefix>`), and what it logs."""

    def __init__(self, run: Run, config: TrainConfig, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter  # tensorboard is imported only by runs that log to it

        # purge_step: a resumed run replaces what a run killed after its last checkpoint had logged
        self.writer = SummaryWriter(str(run.tensorboard_dir), purge_step=start_step or None)
        self.every = config.tensorboard_figure_every

    def wrap(self, log: Callable[[int, int, float, float], None]) -> Callable[[int, int, float, float], None]:
        """`log` that also writes each iteration's loss and learning rate."""
        def both(epoch: int, step: int, lr: float, loss: float) -> None:
            log(epoch, step, lr, loss)
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)
        return both

    def epoch(self, epoch: int, test_loss: float | None, model: nn.Module, loader: Any) -> None:
        if test_loss is not None:
            self.writer.add_scalar("test/loss", test_loss, epoch)
        if epoch % self.every == 0:
            f1, f2 = next(iter(loader))
            self.writer.add_image("reconstruction", reconstruction_strip(model, f1[0], f2[0]), epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def reconstruction_strip(model: nn.Module, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """(3, H, 4W) in [0, 1]: f1, f2's visible patches, the prediction pasted into them, f2 (masks of seed 0)."""
    f1, f2 = (to_model_input(f, torch.device("cpu")) for f in (f1, f2))
    images = reconstruct(model, f1, f2)
    return torch.cat([denormalize(images[k]) for k in ("f1", "visible", "pasted", "f2")], dim=-1).clamp(0, 1)
