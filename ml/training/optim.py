"""AdamW with MAE's parameter groups, and the per-step warm-up + half-cosine learning-rate schedule.

Weight decay applies to the weight matrices only: biases and norms (every parameter of one
dimension, timm's `param_groups_weight_decay`) and the names a model lists in `no_weight_decay()`
(timm's convention; SiamMAE lists its position embeddings and cls / mask tokens) are left undecayed,
as in MAE. The schedule is a `torch.optim.lr_scheduler.LambdaLR` stepped after every optimiser
step: a linear warm-up from `peak_lr / warmup_steps` to `peak_lr`, then half a cosine down to
`min_lr` at the last step. Its position is the optimiser step count alone, so a resume rebuilds it
from the config and the step (exactly; the shape follows the config, e.g. more epochs).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from timm.optim import param_groups_weight_decay  # ml/__init__ loaded mae's torchvision shim first

ADAMW_BETAS = (0.9, 0.95)  # the paper's (MAE's) AdamW betas
WEIGHT_DECAY = 0.05


def make_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = WEIGHT_DECAY,
    betas: tuple[float, float] = ADAMW_BETAS,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over timm's weight-decay groups (defaults: the paper's betas and weight decay).

    `fused`: the fused CUDA kernel (None: when every parameter is on a CUDA device); otherwise
    torch's default multi-tensor (foreach) implementation.
    """
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"learning rate must be a positive finite number, got {lr}")
    if not (weight_decay >= 0 and math.isfinite(weight_decay)):
        raise ValueError(f"weight decay must be a finite number >= 0, got {weight_decay}")
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=tuple(skip))
    if fused is None:
        fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused or None)


def warmup_cosine_lr(step: int, peak_lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0) -> float:
    """The learning rate of optimiser step `step` (0-based); steps past the end stay at `min_lr`.

    With W = `warmup_steps`:
        step < W:  peak_lr * (step + 1) / W                       (the first step runs at peak_lr / W)
        step >= W: min_lr + (peak_lr - min_lr) * (1 + cos(pi * (step - W + 1) / (total_steps - W))) / 2
    so the warm-up ends at peak_lr on step W - 1 and the last step runs at exactly min_lr.
    """
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps
    progress = min(1.0, (step - warmup_steps + 1) / decay_steps) if decay_steps > 0 else 1.0
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    peak_lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    min_lr: float = 0.0,
    start_step: int = 0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR following `warmup_cosine_lr`, positioned so that the optimiser's rate is that of `start_step`.

    Step it after every optimiser step (`scheduler.last_epoch` is then the number of steps done).
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    if not 0 <= min_lr <= peak_lr:
        raise ValueError(f"need 0 <= min_lr <= peak_lr, got min_lr={min_lr}, peak_lr={peak_lr}")
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = peak_lr  # LambdaLR multiplies its factor by this base rate

    def factor(step: int) -> float:
        return warmup_cosine_lr(step, peak_lr, total_steps, warmup_steps, min_lr) / peak_lr

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor, last_epoch=start_step - 1)
