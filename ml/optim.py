"""AdamW with MAE's parameter groups, and the per-step warm-up + half-cosine learning-rate schedule.

Weight decay applies to the weight matrices only: biases, norm parameters (every parameter of one
dimension), position embeddings and the cls / mask tokens are left undecayed, as in MAE.
The schedule is set before every optimiser step (not once per epoch): a linear warm-up from
`peak_lr / warmup_steps` to `peak_lr`, then half a cosine down to `min_lr` at the last step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn

NO_DECAY_NAME_PARTS = ("pos_embed", "cls_token", "mask_token")


def excluded_from_weight_decay(name: str, param: torch.Tensor, extra_names: Iterable[str] = ()) -> bool:
    """True for biases, norms (any 1-D parameter), position embeddings, cls and mask tokens, and `extra_names`."""
    leaf = name.rsplit(".", 1)[-1]
    return (
        param.ndim <= 1
        or leaf == "bias"
        or any(part in leaf for part in NO_DECAY_NAME_PARTS)
        or name in set(extra_names)
    )


def param_groups_weight_decay(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: `decay` (weight matrices) and `no_decay` (weight_decay 0); frozen parameters left out.

    A model may name more parameters to exclude with a `no_weight_decay()` method (timm's convention).
    """
    extra = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if excluded_from_weight_decay(name, param, extra) else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def make_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.05,
    betas: tuple[float, float] = (0.9, 0.95),
) -> torch.optim.AdamW:
    """AdamW over `param_groups_weight_decay(model, weight_decay)` (the paper: betas 0.9/0.95, wd 0.05)."""
    if lr <= 0:
        raise ValueError(f"learning rate must be positive, got {lr}")
    if weight_decay < 0:
        raise ValueError(f"weight decay must be >= 0, got {weight_decay}")
    return torch.optim.AdamW(param_groups_weight_decay(model, weight_decay), lr=lr, betas=tuple(betas))


class WarmupCosineSchedule:
    """Learning rate per optimiser step: linear warm-up, then half a cosine to `min_lr`.

    For step s (0-based) of `total_steps`, with W = `warmup_steps`:
        s < W:  lr = peak_lr * (s + 1) / W                 (the first step runs at peak_lr / W)
        s >= W: lr = min_lr + (peak_lr - min_lr) * (1 + cos(pi * (s - W + 1) / (total_steps - W))) / 2
    so the warm-up ends at peak_lr on step W - 1 and the last step runs at exactly min_lr.

    Usage: `set_lr()` before each optimiser step (it writes the rate into the optimiser's groups,
    scaled by a group's `lr_scale` when it has one), `step()` after it.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        peak_lr: float,
        total_steps: int,
        warmup_steps: int = 0,
        min_lr: float = 0.0,
    ) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
        if not 0 <= min_lr <= peak_lr:
            raise ValueError(f"need 0 <= min_lr <= peak_lr, got min_lr={min_lr}, peak_lr={peak_lr}")
        self.optimizer = optimizer
        self.peak_lr = float(peak_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.min_lr = float(min_lr)
        self.step_count = 0  # optimiser steps taken so far = index of the next step

    def lr_at(self, step: int) -> float:
        """The learning rate of optimiser step `step` (0-based); steps past the end stay at min_lr."""
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        decay_steps = self.total_steps - self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps + 1) / decay_steps)
        return self.min_lr + (self.peak_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def set_lr(self) -> float:
        """Write the next step's rate into the optimiser and return it."""
        lr = self.lr_at(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def step(self) -> None:
        """Count one optimiser step."""
        self.step_count += 1

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"peak_lr": self.peak_lr, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "min_lr": self.min_lr, "step_count": self.step_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the position (and the shape of the schedule) saved by `state_dict`."""
        self.peak_lr = float(state["peak_lr"])
        self.total_steps = int(state["total_steps"])
        self.warmup_steps = int(state["warmup_steps"])
        self.min_lr = float(state["min_lr"])
        self.step_count = int(state["step_count"])
