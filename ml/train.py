"""SiamMAE pre-training: `train_one_epoch`, `train`, and the command line `python -m ml.train`.

    cfg = get_preset("cpu_demo")
    model = build_model(cfg)
    train(model, make_train_loader(cfg), cfg.epochs, cfg.prefix, cfg.num_epochs_per_save, device, config=cfg)

One run writes, under `config.output_dir`:
    checkpoints/<prefix>/checkpoint-last.pth     every epoch (what `resume="auto"` continues from)
    checkpoints/<prefix>/checkpoint-<epoch>.pth  every `num_epochs_per_save` epochs and at the end
    losses/<prefix>.txt                          '# epoch step lr loss', one line per iteration
    test_losses/<prefix>.txt                     '# epoch loss', one line per epoch (held-out pairs, fixed masks)
Epochs are counted from 1 in file names and logs (checkpoint-3.pth holds the model after 3 epochs);
`step` is the 0-based index of the iteration over the whole run.

Under torchrun (`torchrun --nproc_per_node=8 -m ml.train ...`) every process runs the same code:
DistributedDataParallel, a DistributedSampler whose epoch is set every epoch, losses averaged over
processes, and only rank 0 writes files.
"""

from __future__ import annotations

import argparse
import ast
import math
import os
import sys
import time
import warnings
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from dataset_loader.dataset import KineticsFramePairs, find_videos
from dataset_loader.loader import make_pair_loader, set_loader_epoch
from mae.pretrained import CheckpointError
from ml.checkpoint import (
    LAST_NAME,
    atomic_file,
    capture_rng_state,
    find_latest_checkpoint,
    load_checkpoint,
    read_checkpoint_config,
    read_checkpoint_meta,
    restore_rng_state,
    save_checkpoint,
    seed_everything,
)
from ml.config import PRESETS, TrainConfig, get_preset, recipe_differences
from ml.distributed import (
    DistributedContext,
    all_gather_objects,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    broadcast_object,
    cleanup_distributed,
    get_rank,
    get_world_size,
    init_distributed,
    is_main_process,
)
from ml.optim import WarmupCosineSchedule, make_optimizer
from ml.SiamMAE import SiamMAE, create_model

TRAIN_LOG_HEADER = "# epoch step lr loss"
TEST_LOG_HEADER = "# epoch loss"
DEFAULT_DEVICE = torch.device("cuda")  # train()'s default; falls back to the CPU when there is no GPU
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


# ---------------------------------------------------------------- one epoch
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
    mask_ratio: float | None = None,
    loss_log: RunLogs | None = None,
    progress: bool | None = None,
) -> list[float]:
    """One pass over `data_loader` (batches `(f1, f2)`); returns the loss of every iteration.

    `scheduler` sets the learning rate before every optimiser step: a `WarmupCosineSchedule`
    (`set_lr()` / `step()`), any torch LR scheduler (stepped after each optimiser step), or None.
    `epoch` is the 0-based epoch index, used for the log and the error messages. With
    `accum_iter` > 1 gradients of that many iterations make one step (a trailing remainder of the
    loader that cannot fill a step is skipped). Under DistributedDataParallel the returned losses
    are averaged over processes. A NaN or infinite loss raises FloatingPointError naming the
    epoch and iteration, before any update with it.
    """
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    if scaler is None:
        scaler = make_grad_scaler(precision, device)
    num_iters = len(data_loader) // accum_iter * accum_iter
    if num_iters == 0:
        raise ValueError(f"the data loader yields {len(data_loader)} batch(es) per epoch, fewer than the "
                         f"{accum_iter} iterations of one optimiser step: lower the batch size or accum_iter")
    world = get_world_size()
    model.train()
    optimizer.zero_grad(set_to_none=True)
    losses: list[float] = []
    pairs_seen, start = 0, time.perf_counter()
    bar = tqdm(total=num_iters, desc=f"epoch {epoch + 1}", disable=not _show_progress(progress),
               leave=False, dynamic_ncols=True)
    lr = _current_lr(optimizer)
    try:
        for it, (f1, f2) in enumerate(data_loader):
            if it >= num_iters:
                break
            if it % accum_iter == 0:
                lr = _set_lr(scheduler, optimizer)
            step_now = (it + 1) % accum_iter == 0
            f1 = f1.to(device, non_blocking=True)
            f2 = f2.to(device, non_blocking=True)
            no_sync = model.no_sync() if isinstance(model, DistributedDataParallel) and not step_now else nullcontext()
            with no_sync:
                with autocast(precision, device):
                    loss, _, _ = model(f1, f2, mask_ratio=mask_ratio)
                # every process checks the same (averaged) value, so all of them stop together
                loss_value = all_reduce_mean(loss.item(), device)
                if not math.isfinite(loss_value):
                    raise FloatingPointError(
                        f"loss is {loss_value} at epoch {epoch + 1}, iteration {it} of {num_iters} "
                        f"(step {epoch * num_iters + it} of the run); training stopped before updating with it"
                    )
                scaler.scale(loss / accum_iter).backward()
            if step_now:
                if clip_grad is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                if scheduler is not None:
                    scheduler.step()
            losses.append(loss_value)
            if loss_log is not None:
                loss_log.train_line(epoch + 1, epoch * num_iters + it, lr, loss_value)
            pairs_seen += f1.shape[0] * world
            rate = pairs_seen / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", pairs_s=f"{rate:.1f}", refresh=False)
            bar.update()
    finally:
        bar.close()
    return losses


def _set_lr(scheduler: Any, optimizer: torch.optim.Optimizer) -> float:
    if hasattr(scheduler, "set_lr"):
        return scheduler.set_lr()
    return _current_lr(optimizer)  # a torch scheduler has set it already


def _current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def _show_progress(progress: bool | None) -> bool:
    """Progress bars on rank 0, in a terminal or a notebook, unless told otherwise."""
    if progress is not None:
        return progress and is_main_process()
    interactive = sys.stderr.isatty() or "ipykernel" in sys.modules
    return interactive and is_main_process()


# ---------------------------------------------------------------- held-out loss
@torch.no_grad()
def evaluate_loss(
    model: nn.Module,
    data_loader: Iterable,
    device: torch.device | str,
    *,
    precision: str = "auto",
    mask_ratio: float | None = None,
    mask_seed: int = TEST_MASK_SEED,
) -> float:
    """Mean loss over `data_loader` with fixed masks (seeded per batch), leaving the global RNG untouched.

    With a loader of fixed pairs (`KineticsFramePairs(..., fixed_pairs=True, augment=False)`, as
    `make_test_loader` builds), the value is comparable across epochs and runs. Averaged over
    processes when distributed (each process evaluates its share of the loader).
    """
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    module = unwrap_model(model)
    was_training = module.training
    module.eval()
    rank, world = get_rank(), get_world_size()
    cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    total, count = 0.0, 0.0
    # the whole pass in a fork of the RNG: training draws the same numbers with or without a test loss
    with torch.random.fork_rng(devices=cuda_devices):
        try:
            for b, (f1, f2) in enumerate(data_loader):
                torch.manual_seed(mask_seed + b * world + rank)
                with autocast(precision, device):
                    loss, _, _ = module(f1.to(device), f2.to(device), mask_ratio=mask_ratio)
                total += loss.item() * f1.shape[0]
                count += f1.shape[0]
        finally:
            module.train(was_training)
    total, count = all_reduce_sum([total, count], device)
    if count == 0:
        raise ValueError("the held-out loader yielded no batch")
    return total / count


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel (the model itself otherwise)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


# ---------------------------------------------------------------- files of a run
@dataclass(frozen=True)
class RunPaths:
    """Where a run's files go: checkpoints/<prefix>/, losses/<prefix>.txt, test_losses/<prefix>.txt."""

    checkpoint_dir: Path
    losses: Path
    test_losses: Path

    @classmethod
    def of(cls, output_dir: str | os.PathLike, prefix: str) -> RunPaths:
        out = Path(output_dir)
        return cls(out / "checkpoints" / prefix, out / "losses" / f"{prefix}.txt",
                   out / "test_losses" / f"{prefix}.txt")

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint_dir / LAST_NAME

    def checkpoint(self, epoch: int) -> Path:
        return self.checkpoint_dir / f"checkpoint-{epoch}.pth"


class RunLogs:
    """The two loss logs of a run, opened for appending after dropping lines of epochs past `keep_epochs`.

    On a resume from a checkpoint after epoch k, lines of epochs > k (written after that checkpoint,
    before the run stopped) are removed, so the resumed run continues the files without duplicates.
    """

    def __init__(self, paths: RunPaths, keep_epochs: int) -> None:
        self.train = _open_log(paths.losses, TRAIN_LOG_HEADER, keep_epochs)
        self.test = _open_log(paths.test_losses, TEST_LOG_HEADER, keep_epochs)

    def train_line(self, epoch: int, step: int, lr: float, loss: float) -> None:
        self.train.write(f"{epoch} {step} {lr:.9g} {loss:.9g}\n")

    def test_line(self, epoch: int, loss: float) -> None:
        self.test.write(f"{epoch} {loss:.9g}\n")

    def close(self) -> None:
        self.train.close()
        self.test.close()


def _open_log(path: Path, header: str, keep_epochs: int) -> TextIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = [header]
    if path.is_file():
        for line in path.read_text().splitlines(keepends=True):
            fields = line.split()
            if not line.endswith("\n") or not fields or line.startswith("#"):
                continue  # the header (rewritten), or a line cut short by a crash
            try:
                epoch = int(fields[0])
            except ValueError:
                continue
            if epoch <= keep_epochs:
                kept.append(line.rstrip("\n"))
    with atomic_file(path, "w") as f:
        f.write("\n".join(kept) + "\n")
    return open(path, "a", buffering=1)  # line-buffered: every line reaches the file as it is written


# ---------------------------------------------------------------- resuming
def resolve_resume(paths: RunPaths, run: TrainConfig, resume: str | os.PathLike | None) -> Path | None:
    """The checkpoint to start from, or None for a fresh run; a clear error when the folder holds another run.

    resume=None: the run folder must hold no checkpoint (a different run's, or this run's unless
    asked to continue). resume="auto": continue from the folder's latest checkpoint when there is
    one whose recipe matches `run`. resume=<path>: start from that checkpoint; recipe differences
    are reported as a warning (e.g. more epochs), but a folder holding a different run is refused.
    """
    folder = paths.checkpoint_dir
    present = sorted(folder.glob("checkpoint-*.pth")) if folder.is_dir() else []
    latest = find_latest_checkpoint(folder)
    if present and latest is None:
        raise CheckpointError(f"{folder} holds checkpoints ({', '.join(p.name for p in present)}) but none can be "
                              f"read: move them away or choose another prefix or output folder")
    folder_differences = recipe_differences(read_checkpoint_config(latest), run.to_dict()) if latest else []
    where = f"{folder} holds checkpoints of a different run ({'; '.join(folder_differences)})"
    if resume is None:
        if latest is None:
            return None
        if folder_differences:
            raise ValueError(f"{where}: choose another prefix or output folder, or move them away")
        epoch = int(read_checkpoint_meta(latest)["epoch"])
        raise ValueError(f"{folder} already holds this run's checkpoints (up to epoch {epoch}): pass resume='auto' "
                         f"(--resume auto) to continue it, or choose another prefix or output folder")
    if str(resume) == "auto":
        if latest is None:
            return None
        if folder_differences:
            raise ValueError(f"{where}: to continue from {latest} with the new settings anyway, pass its path as "
                             f"resume; else choose another prefix or output folder")
        return latest
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint to resume from, {path}, does not exist")
    inside = path.resolve().parent == folder.resolve()
    if folder_differences and not inside:
        raise ValueError(f"{where}: resuming from {path} would overwrite them; choose another prefix or output folder")
    differences = recipe_differences(read_checkpoint_config(path), run.to_dict())
    if differences and is_main_process():
        warnings.warn(f"resuming from {path}, written with other settings: {'; '.join(differences)}", stacklevel=2)
    return path


def _agreed_resume(paths: RunPaths, run: TrainConfig, resume: str | os.PathLike | None,
                   device: torch.device) -> Path | None:
    """`resolve_resume` decided on rank 0 for all processes; every process must see the chosen checkpoint.

    Without this, on several nodes without a shared output folder rank 0 would resume while the
    others started afresh.
    """
    decision: tuple[str, str] | None = None
    if is_main_process():
        try:
            chosen = resolve_resume(paths, run, resume)
            decision = ("ok", "" if chosen is None else str(chosen))
        except (ValueError, FileNotFoundError, CheckpointError) as err:
            decision = (type(err).__name__, str(err))
    kind, text = broadcast_object(decision)
    if kind != "ok":
        raise {"ValueError": ValueError, "FileNotFoundError": FileNotFoundError}.get(kind, CheckpointError)(text)
    chosen = Path(text) if text else None
    if chosen is not None and get_world_size() > 1:
        seen = all_reduce_sum([float(chosen.is_file())], device)[0]
        if seen < get_world_size():
            raise CheckpointError(f"{chosen} is visible to {int(seen)} of {get_world_size()} processes: put the output "
                                  f"folder on a filesystem that every node shares")
    return chosen


# ---------------------------------------------------------------- data and model from a config
def make_train_dataset(config: TrainConfig) -> KineticsFramePairs:
    return KineticsFramePairs(
        config.data, split=config.train_split, img_size=config.img_size, scale=config.crop_scale, augment=True,
        repeated_sampling=config.repeated_sampling, min_gap=config.min_gap, max_gap=config.max_gap, seed=config.seed,
    )


def make_train_loader(config: TrainConfig, distributed: bool | None = None) -> torch.utils.data.DataLoader:
    """The training loader of a config: `batch_size / repeated_sampling` videos per batch, shuffled, full batches."""
    dataset = make_train_dataset(config)
    distributed = get_world_size() > 1 if distributed is None else distributed
    check_batch_fits(len(dataset), config, get_world_size() if distributed else 1)
    return make_pair_loader(dataset, batch_size=config.videos_per_batch, num_workers=config.num_workers,
                            seed=config.seed, shuffle=True, drop_last=True, distributed=distributed)


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
    )
    distributed = get_world_size() > 1 if distributed is None else distributed
    return make_pair_loader(dataset, batch_size=config.batch_size, num_workers=config.num_workers,
                            seed=config.seed, shuffle=False, drop_last=False, distributed=distributed)


def check_batch_fits(num_videos: int, config: TrainConfig, world_size: int = 1) -> None:
    """ValueError when one optimiser step needs more videos than the training split holds."""
    accum = config.accum_steps(world_size)
    needed = config.videos_per_batch * world_size * accum
    if needed > num_videos:
        raise ValueError(
            f"one optimiser step needs {needed} videos ({config.videos_per_batch} per batch = {config.batch_size} "
            f"pairs / repeated_sampling {config.repeated_sampling}, x {world_size} process(es) x {accum} "
            f"accumulation) but split '{config.train_split}' of {config.data} holds {num_videos}: lower the batch size"
        )


def model_kwargs_of(config: TrainConfig) -> dict[str, Any]:
    """Constructor arguments replacing the preset's: the config's size and mask ratio, then `model_kwargs`."""
    return {"img_size": config.img_size, "mask_ratio": config.mask_ratio, **config.model_kwargs}


def build_model(config: TrainConfig) -> SiamMAE:
    """The config's model: preset `arch` with `model_kwargs_of(config)`, encoder from `pretrained` if set."""
    kwargs = model_kwargs_of(config)
    return create_model(config.arch, pretrained=config.pretrained, **kwargs)


# ---------------------------------------------------------------- the whole run
def train(
    model: nn.Module,
    data_loader: torch.utils.data.DataLoader,
    epochs: int = 60,
    prefix: str = "",
    num_epochs_per_save: int = 10,
    device: torch.device | str = DEFAULT_DEVICE,
    *,
    config: TrainConfig | None = None,
    resume: str | os.PathLike | None = None,
    test_loader: torch.utils.data.DataLoader | None | str = "auto",
    output_dir: str | os.PathLike | None = None,
    stop_after_epoch: int | None = None,
    progress: bool | None = None,
) -> None:
    """Train `model` on `data_loader` for `epochs` epochs, writing checkpoints and loss logs.

    `config` holds the rest of the recipe (optimiser, schedule, precision, ...); without one, the
    paper's recipe with a warm-up over the first 10% of epochs. The arguments `epochs`, `prefix`,
    `num_epochs_per_save` and `output_dir` replace the config's fields (an empty prefix keeps the
    config's). The batch size and repeated sampling are read from the loader.
    `resume`: None (fresh run; refused when the run folder holds checkpoints), "auto" (continue from
    the run folder's latest checkpoint if any) or a checkpoint path. A resumed run gives the same
    per-iteration losses as one that never stopped (bit-identical on CPU).
    `test_loader`: held-out pairs for the per-epoch test loss; "auto" builds it from the config's
    `test_split` when the data has one, None skips it.
    `stop_after_epoch`: return after this epoch (1-based) as if stopped; the schedule still spans `epochs`.
    `device`: a CUDA device falls back to the CPU, with a warning, when there is no GPU.
    Under torchrun, call it in every process; the model is wrapped in DistributedDataParallel here.
    """
    device = _training_device(device)
    rank, world = get_rank(), get_world_size()
    module = unwrap_model(model)
    run = _run_config(config, module, data_loader, epochs, prefix, num_epochs_per_save, output_dir).resolved(world)
    accum = run.accum_iter
    iters_per_epoch = len(data_loader) // accum * accum
    if iters_per_epoch == 0:
        raise ValueError(f"the data loader yields {len(data_loader)} batch(es) per epoch per process, fewer than one "
                         f"optimiser step ({accum} iterations): the batch is larger than the data, lower it")
    steps_per_epoch = iters_per_epoch // accum
    paths = RunPaths.of(run.output_dir, run.prefix)
    start_from = _agreed_resume(paths, run, resume, device)
    precision = resolve_precision(run.precision, device)
    if isinstance(test_loader, str) and test_loader == "auto":
        test_loader = _auto_test_loader(run, config is not None)

    module.to(device)
    optimizer = make_optimizer(module, run.lr, run.weight_decay, run.betas)
    scheduler = WarmupCosineSchedule(optimizer, run.lr, total_steps=run.epochs * steps_per_epoch,
                                     warmup_steps=round(run.warmup_epochs * steps_per_epoch), min_lr=run.min_lr)
    scaler = make_grad_scaler(precision, device)
    start_epoch, rng_state = 0, None
    if start_from is not None:
        ckpt = load_checkpoint(start_from)
        try:
            module.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(f"{start_from} does not fit this model and optimiser: {err}") from err
        scheduler.step_count = int(ckpt["scheduler"]["step_count"])  # the schedule's shape follows `run`
        if ckpt.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch = int(ckpt["epoch"])
        states = ckpt.get("rng") or []
        if len(states) == world:
            rng_state = states[rank]
        elif is_main_process():
            warnings.warn(f"{start_from} was written by {len(states)} process(es), this run has {world}: random "
                          f"states are re-seeded, so masks differ from an uninterrupted run", stacklevel=2)
        del ckpt
        _say(f"resuming {run.prefix} from {start_from}: epoch {start_epoch} done, step {scheduler.step_count}")
    if start_epoch >= run.epochs:
        _say(f"{run.prefix}: all {run.epochs} epochs are done already")
        return

    ddp_model = model
    sampler = getattr(data_loader, "sampler", None)
    if world > 1 and not isinstance(getattr(sampler, "sampler", sampler), DistributedSampler) and rank == 0:
        warnings.warn("the data loader has no DistributedSampler: every process trains on the same batches "
                      "(build it with make_train_loader or make_pair_loader(..., distributed=True))", stacklevel=2)
    if world > 1 and not isinstance(model, DistributedDataParallel):
        ddp_model = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    logs = RunLogs(paths, keep_epochs=start_epoch) if rank == 0 else None
    if rng_state is not None:
        restore_rng_state(rng_state, data_loader)
    else:
        seed_everything(run.seed + rank + start_epoch * world)  # a different mask stream per process
    _say(f"{run.prefix}: {run.arch}, epochs {start_epoch + 1}-{run.epochs}, {iters_per_epoch} iterations of "
         f"{run.batch_size} pairs x {world} process(es) per epoch, accumulation {accum} -> effective batch "
         f"{run.effective_batch_size(world)}, peak lr {run.lr:.3g}, {precision} on {device}; "
         f"checkpoints in {paths.checkpoint_dir}")
    try:
        for epoch in range(start_epoch, run.epochs):
            start = time.perf_counter()
            set_loader_epoch(data_loader, epoch)
            try:
                losses = train_one_epoch(
                    data_loader, optimizer, scheduler, device, ddp_model, epoch=epoch, scaler=scaler,
                    precision=precision, accum_iter=accum, clip_grad=run.clip_grad, mask_ratio=run.mask_ratio,
                    loss_log=logs, progress=progress,
                )
            except FloatingPointError as err:
                last = find_latest_checkpoint(paths.checkpoint_dir)
                kept = f"the last good checkpoint, {last}, is intact" if last else "no checkpoint was written yet"
                raise FloatingPointError(f"{err}; {kept}. Resume from it with a lower learning rate or with "
                                         f"clip_grad set.") from None
            test_loss = None
            if test_loader is not None:
                test_loss = evaluate_loss(ddp_model, test_loader, device, precision=precision,
                                          mask_ratio=run.mask_ratio)
                if logs is not None:
                    logs.test_line(epoch + 1, test_loss)
            _save_epoch(paths, run, module, optimizer, scheduler, scaler, epoch + 1, data_loader, world)
            train_loss = sum(losses) / len(losses)
            test_text = f", test loss {test_loss:.4f}" if test_loss is not None else ""
            _say(f"epoch {epoch + 1}/{run.epochs}: train loss {train_loss:.4f}{test_text}, lr "
                 f"{_current_lr(optimizer):.3g}, {time.perf_counter() - start:.1f} s")
            if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
                _say(f"stopping after epoch {epoch + 1} as asked; resume='auto' continues the run")
                break
    finally:
        if logs is not None:
            logs.close()


def _save_epoch(
    paths: RunPaths, run: TrainConfig, module: nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: WarmupCosineSchedule, scaler: torch.amp.GradScaler, epochs_done: int, data_loader: Any, world: int,
) -> None:
    """checkpoint-last.pth (and checkpoint-<epoch>.pth when due), written by rank 0 with every rank's RNG state."""
    rng_states = all_gather_objects(capture_rng_state(data_loader))  # collective: every rank takes part
    if is_main_process():
        state = {
            "model": module.state_dict(),
            "arch": getattr(module, "arch", None) or run.arch,
            "model_kwargs": dict(getattr(module, "model_kwargs", None) or model_kwargs_of(run)),
            "config": run.to_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epochs_done,
            "step": scheduler.step_count,
            "world_size": world,
            "rng": rng_states,
        }
        save_checkpoint(state, paths.last_checkpoint)  # first: `last` is never older than a numbered one
        if epochs_done % run.num_epochs_per_save == 0 or epochs_done == run.epochs:
            save_checkpoint(state, paths.checkpoint(epochs_done))
    barrier()


def _run_config(
    config: TrainConfig | None, module: nn.Module, data_loader: Any, epochs: int, prefix: str,
    num_epochs_per_save: int, output_dir: str | os.PathLike | None,
) -> TrainConfig:
    """The config of this run: `config` (or the paper's recipe) with the call's arguments and the loader's batch."""
    dataset = getattr(data_loader, "dataset", None)
    repeated = int(getattr(dataset, "repeated_sampling", 1))
    pairs = _videos_per_batch(data_loader) * repeated
    model_arch = getattr(module, "arch", None)
    if config is None:
        config = TrainConfig(
            arch=model_arch or TrainConfig.arch, img_size=getattr(module, "img_size", TrainConfig.img_size),
            mask_ratio=getattr(module, "mask_ratio", TrainConfig.mask_ratio), warmup_epochs=epochs / 10,
            data=str(getattr(dataset, "root", "")), repeated_sampling=repeated, batch_size=pairs,
            num_workers=int(getattr(data_loader, "num_workers", 0)), epochs=epochs,
        )
    elif model_arch is not None and model_arch != config.arch:
        raise ValueError(f"the model is a {model_arch!r} but the config's arch is {config.arch!r}")
    changes: dict[str, Any] = {"epochs": epochs, "num_epochs_per_save": num_epochs_per_save}
    if prefix:
        changes["prefix"] = prefix
    if output_dir is not None:
        changes["output_dir"] = str(output_dir)
    if (config.batch_size, config.repeated_sampling) != (pairs, repeated):
        if is_main_process():
            warnings.warn(f"the data loader gives {pairs} pairs per batch (repeated sampling {repeated}), the config "
                          f"says {config.batch_size} ({config.repeated_sampling}): using the loader's", stacklevel=3)
        changes.update(batch_size=pairs, repeated_sampling=repeated)
    if config.warmup_epochs > epochs:
        if is_main_process():
            warnings.warn(f"warm-up of {config.warmup_epochs} epochs is longer than the {epochs} epochs: using "
                          f"{epochs / 10:g} (10%)", stacklevel=3)
        changes["warmup_epochs"] = epochs / 10
    return config.replace(**changes)


def _videos_per_batch(data_loader: Any) -> int:
    size = getattr(data_loader, "batch_size", None) or getattr(getattr(data_loader, "batch_sampler", None),
                                                                 "batch_size", None)
    if not size:
        raise ValueError("cannot tell the data loader's batch size: build it with batch_size set")
    return int(size)


def _auto_test_loader(run: TrainConfig, from_config: bool) -> torch.utils.data.DataLoader | None:
    if not from_config or run.test_split is None:
        return None
    try:
        return make_test_loader(run)
    except (FileNotFoundError, ValueError) as err:
        if is_main_process():
            warnings.warn(f"no held-out loss: {err}".splitlines()[0], stacklevel=3)
        return None


def _training_device(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            warnings.warn("no CUDA GPU here: training on the CPU", stacklevel=3)
            return torch.device("cpu")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)  # the current device is the one whose random state is saved
    return device


def _say(message: str) -> None:
    if is_main_process():
        print(message, flush=True)


# ---------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ml.train",
        description="SiamMAE pre-training. Starts from a preset; the options below replace its fields. "
                    "Multi-GPU: torchrun --nproc_per_node=8 -m ml.train ... (only rank 0 writes).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--preset", default="cpu_demo", choices=sorted(PRESETS),
                   help="training recipe to start from (paper_vit_s16_*: the paper's ViT-S/16)")
    p.add_argument("--data", help="dataset root (Kinetics tree, annotation CSV or list file); default: the preset's")
    p.add_argument("--epochs", type=int, help="total epochs of the schedule")
    p.add_argument("--output", help="folder that receives checkpoints/, losses/ and test_losses/ (default: .)")
    p.add_argument("--prefix", help="run name: checkpoints/<prefix>/, losses/<prefix>.txt (default: the preset's)")
    p.add_argument("--resume", metavar="auto|PATH",
                   help="'auto': continue from checkpoints/<prefix>/ when it holds a checkpoint; or a checkpoint file")
    p.add_argument("--arch", help="model preset of ml.SiamMAE (e.g. siammae_vit_base_patch16)")
    p.add_argument("--pretrained", help="official MAE checkpoint (file) to start the encoder from")
    p.add_argument("--batch-size", type=int, help="frame pairs per process per iteration")
    p.add_argument("--accum-iter", type=int, help="iterations per optimiser step (gradient accumulation)")
    p.add_argument("--total-batch-size", type=int,
                   help="pairs per optimiser step over all processes; sets the accumulation from the process count")
    p.add_argument("--blr", type=float, help="base learning rate: lr = blr * effective batch / 256")
    p.add_argument("--lr", type=float, help="peak learning rate (overrides --blr)")
    p.add_argument("--min-lr", type=float, help="learning rate at the end of the cosine")
    p.add_argument("--warmup-epochs", type=float, help="epochs of linear warm-up")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (not on biases, norms, embeddings, tokens)")
    p.add_argument("--clip-grad", type=float, help="clip the gradient norm to this value")
    p.add_argument("--img-size", type=int, help="side of the square training crops")
    p.add_argument("--mask-ratio", type=float, help="fraction of f2's patches removed")
    p.add_argument("--repeated-sampling", type=int, help="pairs drawn from each decoded video")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 on GPUs with it, else fp16 + gradient scaler; fp32 on CPU")
    p.add_argument("--num-workers", type=int, help="data-loader processes per training process")
    p.add_argument("--seed", type=int, help="seed of pairs, augmentations, masks and initialisation")
    p.add_argument("--save-every", type=int, dest="num_epochs_per_save",
                   help="write checkpoint-<epoch>.pth every this many epochs (checkpoint-last.pth: every epoch)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="any other TrainConfig field, as a Python literal (e.g. test_split=None, min_gap=2)")
    p.add_argument("--device", default="auto", help="auto (this process's GPU, else CPU), cpu, cuda, cuda:1")
    p.add_argument("--stop-after-epoch", type=int, help="return after this epoch, as if stopped (for a later --resume)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


_OPTION_FIELDS = ("data", "epochs", "prefix", "arch", "pretrained", "batch_size", "accum_iter", "total_batch_size",
                  "blr", "lr", "min_lr", "warmup_epochs", "weight_decay", "clip_grad", "img_size", "mask_ratio",
                  "repeated_sampling", "precision", "num_workers", "seed", "num_epochs_per_save")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The preset with the options and `--set` fields applied (ValueError for bad values)."""
    changes = {name: getattr(args, name) for name in _OPTION_FIELDS if getattr(args, name) is not None}
    if args.output is not None:
        changes["output_dir"] = args.output
    for item in args.set:
        name, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects FIELD=VALUE, got {item!r}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text  # a bare string
        changes[name.strip()] = value
    return get_preset(args.preset, **changes)


def run_from_config(config: TrainConfig, ctx: DistributedContext, resume: str | None = None,
                    stop_after_epoch: int | None = None, progress: bool | None = None) -> None:
    """What the command line runs: checks, loaders, model, then `train` (the notebook's code path)."""
    if not Path(config.data).exists():
        raise FileNotFoundError(f"data folder {config.data} does not exist (see dataset/README.md)")
    dataset_size = len(find_videos(config.data, config.train_split).paths)
    check_batch_fits(dataset_size, config, ctx.world_size)
    paths = RunPaths.of(config.output_dir, config.prefix)
    resolve_resume(paths, config.resolved(ctx.world_size), resume)  # refuse a foreign output folder before work
    train_loader = make_train_loader(config, distributed=ctx.distributed)
    test_loader = _auto_test_loader(config, True)
    seed_everything(config.seed)  # the same initial weights in every process
    model = build_model(config)
    train(model, train_loader, config.epochs, config.prefix, config.num_epochs_per_save, ctx.device,
          config=config, resume=resume, test_loader=test_loader, stop_after_epoch=stop_after_epoch,
          progress=progress)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        if not Path(config.data).exists():
            raise FileNotFoundError(f"data folder {config.data} does not exist (see dataset/README.md)")
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    ctx = init_distributed(args.device)
    try:
        run_from_config(config, ctx, resume=args.resume, stop_after_epoch=args.stop_after_epoch,
                        progress=False if args.no_progress else None)
    except (ValueError, FileNotFoundError, CheckpointError, FloatingPointError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1
    finally:
        cleanup_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
