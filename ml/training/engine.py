"""The epoch engine: one pass of training (forward, backward, optimiser step) and the held-out loss.

The analogue of MAE's `engine_pretrain.py`: it knows batches, precision, accumulation and
processes, nothing about files. `ml.train` calls it once per epoch.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from dataset_loader.transforms import normalize
from ml.model.reconstruct import fixed_masks
from ml.training.distributed import all_reduce_sum, get_rank, get_world_size, is_main_process
from ml.training.signals import TrainingStopped

TEST_MASK_SEED = 1234  # masks of the held-out loss: batch b of rank r uses seed TEST_MASK_SEED + b * world + r


# ---------------------------------------------------------------- precision
def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> bf16 on CUDA GPUs that support it, fp16 on older ones, fp32 elsewhere; checks explicit choices."""
    if device.type == "cuda":
        if precision == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"precision bf16 was asked for, but {torch.cuda.get_device_name(device)} lacks it: "
                             f"use fp16")
        return precision
    if precision == "auto":
        return "fp32"
    if precision == "fp16":
        raise ValueError(f"precision fp16 needs a CUDA GPU; on {device.type} use fp32 (or bf16)")
    return precision


def autocast(precision: str, device: torch.device):
    """The autocast context of a resolved precision (none for fp32)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def make_grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A gradient scaler, enabled for fp16 only (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel or torch.compile (the model itself otherwise)."""
    model = model.module if isinstance(model, DistributedDataParallel) else model
    return getattr(model, "_orig_mod", model)


def to_model_input(frames: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on `device` as the model takes it: 8-bit batches (the loader's `uint8` output) are normalised there."""
    frames = frames.to(device, non_blocking=True)
    return normalize(frames) if frames.dtype == torch.uint8 else frames


def show_progress(progress: bool | None) -> bool:
    """Progress bars on rank 0, in a terminal or a notebook, unless told otherwise."""
    if progress is not None:
        return progress and is_main_process()
    interactive = sys.stderr.isatty() or "ipykernel" in sys.modules
    return interactive and is_main_process()


def progress_file() -> Any:
    """Where progress bars draw: stdout in a notebook (a bar that clears itself leaves no empty red stderr box in
    JupyterLab, which the browser test showed), stderr in a terminal (logs of stdout stay bar-free)."""
    return sys.stdout if "ipykernel" in sys.modules else sys.stderr


# ---------------------------------------------------------------- after an epoch
@dataclass
class EpochEnd:
    """What `train(..., after_epoch=hook)` hands its hook on the main process: after each saved epoch, and once when
    a run starts or resumes (`resumed`, the checkpoint's epoch), so that a hook can catch up on what a killed run
    missed. `log_scalar(name, value, epoch)` writes to the run's TensorBoard when it has one."""

    module: nn.Module  # the SiamMAE being trained (not a copy: a hook must not change it)
    epoch: int  # epochs done
    run: Any  # its ml.training.run.Run
    config: Any  # its resolved TrainConfig
    device: torch.device
    resumed: bool
    log_scalar: Callable[[str, float, int], None]


# ---------------------------------------------------------------- one epoch
def iterations_per_epoch(num_batches: int, accum_iter: int) -> int:
    """Iterations one epoch runs: the loader's batches down to whole optimiser steps (ValueError when none fits)."""
    iterations = num_batches // accum_iter * accum_iter
    if iterations == 0:
        raise ValueError(f"batch_size: the data loader yields {num_batches} batch(es) per epoch per process, fewer "
                         f"than the {accum_iter} iteration(s) of one optimiser step: lower the batch size or "
                         f"accum_iter")
    return iterations


def train_one_epoch(
    data_loader: Iterable,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    device: torch.device | str,
    model: nn.Module,
    *,
    epoch: int = 0,
    scaler: torch.amp.GradScaler | None = None,
    precision: str = "auto",
    accum_iter: int = 1,
    clip_grad: float | None = None,
    log: Callable[[int, int, float, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: bool | None = None,
    first_iteration: int | None = None,
) -> list[float]:
    """One pass over `data_loader` (batches `(f1, f2)`); returns the loss of every iteration.

    `scheduler`: any torch LR scheduler (stepped after each optimiser step) or None. `epoch`: the
    0-based epoch index, for the log and the messages. With `accum_iter` > 1 gradients of that many
    iterations make one step (a trailing remainder of the loader that cannot fill a step is
    skipped). `log(epoch, step, lr, loss)` receives every iteration (epoch counted from 1, step the
    iteration's index over the run: `first_iteration` + the index in this epoch; by default `epoch` x the
    epoch's iterations; a run whose epochs changed length passes it, so steps never repeat). Under
    DistributedDataParallel the losses are averaged over processes. A NaN or infinite loss raises
    FloatingPointError naming the epoch and iteration, before any update with it. When `should_stop()` turns
    true in any process, every process stops together after the current optimiser step with TrainingStopped.
    """
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    scaler = scaler if scaler is not None else make_grad_scaler(precision, device)
    num_iters = iterations_per_epoch(len(data_loader), accum_iter)
    first = epoch * num_iters if first_iteration is None else first_iteration
    model.train()
    optimizer.zero_grad(set_to_none=True)
    losses: list[float] = []
    bar = _EpochProgress(num_iters, epoch, progress)
    try:
        for it, (f1, f2) in enumerate(data_loader):
            if it >= num_iters:
                break
            lr = float(optimizer.param_groups[0]["lr"])
            step_now = (it + 1) % accum_iter == 0
            f1, f2 = to_model_input(f1, device), to_model_input(f2, device)
            loss_value, stops = forward_backward(model, f1, f2, scaler, precision, device, accum_iter, step_now,
                                                 stop_asked=bool(should_stop and should_stop()),
                                                 where=f"epoch {epoch + 1}, iteration {it} of {num_iters} (step "
                                                       f"{first + it} of the run)")
            if step_now:
                optimizer_step(model, optimizer, scheduler, scaler, clip_grad)
            losses.append(loss_value)
            if log is not None:
                log(epoch + 1, first + it, lr, loss_value)
            bar.update(loss_value, lr, pairs=f1.shape[0] * get_world_size())
            if step_now and stops > 0:
                raise TrainingStopped(f"stopped at epoch {epoch + 1}, iteration {it + 1} of {num_iters}")
    finally:
        bar.close()
    return losses


def forward_backward(
    model: nn.Module, f1: torch.Tensor, f2: torch.Tensor, scaler: torch.amp.GradScaler, precision: str,
    device: torch.device, accum_iter: int, step_now: bool, stop_asked: bool, where: str,
) -> tuple[float, float]:
    """The loss of one batch and its gradients; -> (loss averaged over processes, processes asking to stop).

    Gradients are synchronised between processes only on the iteration that steps. A non-finite loss
    raises FloatingPointError naming `where`, before its gradients exist.
    """
    sync = step_now or not isinstance(model, DistributedDataParallel)
    with nullcontext() if sync else model.no_sync():
        with autocast(precision, device):
            loss, _, _ = model(f1, f2)
        # every process sees the same (summed) values, so all of them stop together
        total, stops = all_reduce_sum([loss.item(), float(stop_asked)], device)
        loss_value = total / get_world_size()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss is {loss_value} at {where}; training stopped before updating with it")
        scaler.scale(loss / accum_iter).backward()
    return loss_value, stops


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                   scaler: torch.amp.GradScaler, clip_grad: float | None) -> None:
    """Clip (optionally), step the optimiser through the gradient scaler, clear the gradients, step the schedule."""
    if clip_grad is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()


class _EpochProgress:
    """The epoch's progress bar (rank 0, interactive sessions): loss, learning rate and pairs per second."""

    def __init__(self, total: int, epoch: int, progress: bool | None) -> None:
        self.bar = tqdm(total=total, desc=f"epoch {epoch + 1}", disable=not show_progress(progress), leave=False,
                        file=progress_file(),
                        dynamic_ncols=True)
        self.pairs, self.start = 0, time.perf_counter()

    def update(self, loss: float, lr: float, pairs: int) -> None:
        self.pairs += pairs
        rate = self.pairs / max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", pairs_s=f"{rate:.1f}", refresh=False)
        self.bar.update()

    def close(self) -> None:
        self.bar.close()


# ---------------------------------------------------------------- held-out loss
@torch.no_grad()
def evaluate_loss(
    model: nn.Module,
    data_loader: Iterable,
    device: torch.device | str,
    *,
    precision: str = "auto",
    mask_seed: int = TEST_MASK_SEED,
) -> float:
    """Mean loss over `data_loader` with fixed masks (seeded per batch), leaving the global RNG untouched.

    With a loader of fixed pairs (`KineticsFramePairs(..., fixed_pairs=True, augment=False)`, as
    `ml.training.build.make_test_loader` builds), the value is comparable across epochs and runs. Averaged
    over processes when distributed (each process evaluates its share of the loader).
    """
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    module = unwrap_model(model)
    rank, world = get_rank(), get_world_size()
    total, count = 0.0, 0.0
    # the whole pass in a fork of the RNG: training draws the same numbers with or without a test loss
    with fixed_masks(module, mask_seed):
        for b, (f1, f2) in enumerate(data_loader):
            torch.manual_seed(mask_seed + b * world + rank)
            with autocast(precision, device):
                loss, _, _ = module(to_model_input(f1, device), to_model_input(f2, device))
            total += loss.item() * f1.shape[0]
            count += f1.shape[0]
    total, count = all_reduce_sum([total, count], device)
    if count == 0:
        raise ValueError("the held-out loader yielded no batch")
    return total / count
