"""SiamMAE pre-training: `train(config)`, the whole run (MAE's `main_pretrain.py`).

    cfg = get_preset("cpu_demo", output_dir="outputs/demo")
    model = train(cfg)                          # data, model, optimiser and schedule come from the config
    model = train(cfg, resume="auto")           # continue the run found in cfg.output_dir

Everything a run writes goes through its `ml.training.run.Run` (checkpoints, loss logs, the lock); the
epoch loop is `ml.training.engine`. Under torchrun (`torchrun --nproc_per_node=8 -m ml.train ...`) every
process runs the same code: DistributedDataParallel, the videos of each epoch sharded over the
processes, losses averaged over processes, and only rank 0 writes files.

Before any file is written, the config, the output folder, the device, the batch against the data
and the readability of the videos are checked; a bad one is a one-line error. A live run holds its
folder's lock; SIGINT and SIGTERM stop it at the next optimiser step with the last checkpoint valid;
no state with a non-finite weight or loss is ever saved.
"""

from __future__ import annotations

import os
import resource
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from dataset_loader.dataset import KineticsFramePairs
from dataset_loader.loader import set_loader_epoch
from mae.pretrained import CheckpointError
from ml.training.build import (
    build_model,
    check_loader,
    check_model,
    data_fingerprint,
    make_test_loader,
    make_train_loader,
)
from ml.training.checkpoint import load_checkpoint, non_finite_tensors, read_checkpoint_meta
from ml.training.config import TrainConfig
from ml.training.distributed import (
    all_gather_objects,
    all_reduce_sum,
    barrier,
    broadcast_object,
    get_rank,
    get_world_size,
    is_main_process,
    print_main,
    resolve_device,
)
from ml.training.engine import (
    EpochEnd,
    TrainingStopped,
    evaluate_loss,
    iterations_per_epoch,
    make_grad_scaler,
    resolve_precision,
    train_one_epoch,
    unwrap_model,
)
from ml.training.optim import make_optimizer, make_scheduler
from ml.training.rng import capture_rng_state, restore_rng_state, seed_everything
from ml.training.run import Run, RunError
from ml.training.signals import StopRequest, stop_on_signals
from ml.training.tensorboard import TensorBoard


class DivergedError(FloatingPointError):
    """Training produced a non-finite loss or weight; nothing of that state was saved."""



def train(
    config: TrainConfig,
    *,
    model: nn.Module | None = None,
    train_loader: torch.utils.data.DataLoader | None = None,
    test_loader: torch.utils.data.DataLoader | None | str = "auto",
    resume: str | os.PathLike | None = None,
    stop_after_epoch: int | None = None,
    progress: bool | None = None,
    allow_new_data: bool = False,
    after_epoch: Callable[[EpochEnd], None] | None = None,
) -> nn.Module:
    """Train the run `config` describes; returns the trained model (checkpoints and logs in its `Run`).

    Data, model, optimiser and schedule are built from `config`. `model` and `train_loader` may be
    passed in instead (they must match the config). `test_loader`: "auto" builds the held-out
    loader from `config.test_split` when the data has that split, None skips the held-out loss.
    `resume`: None (fresh run; refused when the run folder holds checkpoints), "auto" (continue from
    the folder's latest checkpoint if any) or a checkpoint path (an earlier one rewinds the run; the
    later history is moved aside at the first new save). A resumed run gives the same per-iteration
    losses as one that never stopped (bit-identical on the CPU). `stop_after_epoch`: return after
    this epoch (1-based) as if stopped. `allow_new_data`: resume on other training videos than the checkpoint's
    (refused otherwise, unless they are the same files moved elsewhere). `after_epoch`: a hook run on the main
    process after each saved epoch and once at the start (`ml.training.engine.EpochEnd`; the other processes wait);
    `config.eval_every` needs one: `ml.eval.evaluation_hook(config)`. Under torchrun, call it in every process.
    """
    # -- every check before any file is written
    if stop_after_epoch is not None and stop_after_epoch < 1:
        raise ValueError(f"stop_after_epoch must be >= 1, got {stop_after_epoch}")
    if config.eval_every and after_epoch is None:
        raise ValueError("eval_every needs the evaluation hook: train(config, after_epoch=ml.eval.evaluation_hook("
                         "config)), as python -m ml.train does")
    run_config = config.resolved(get_world_size())
    device, precision = _device_and_precision(run_config)
    run = Run.of(config)
    run.check_writable()
    train_loader, test_loader, model = _data_and_model(config, model, train_loader, test_loader)
    steps_per_epoch = iterations_per_epoch(len(train_loader), run_config.accum_iter) // run_config.accum_iter
    videos = getattr(getattr(train_loader, "dataset", None), "videos", None)
    fingerprint = data_fingerprint(videos) if videos else None

    # -- the run folder: lock, leftovers of dead processes, where to start (rank 0 decides for all)
    start_from = _open_run(run, run_config, resume, device, fingerprint, allow_new_data)
    try:
        with stop_on_signals() as stop:
            state = _restore(run, run_config, model, train_loader, test_loader, start_from, device, precision,
                             steps_per_epoch)
            state.data_fingerprint, state.after_epoch = fingerprint, after_epoch
            if state.start_epoch >= run_config.epochs:
                print_main(f"{run_config.prefix}: all {run_config.epochs} epochs are done already")
                return state.module
            _begin(state, start_from)
            _after_epoch(state, state.start_epoch, resumed=True)  # a hook catches up on what a killed run missed
            try:
                for epoch in range(state.start_epoch, run_config.epochs):
                    if _run_epoch(state, epoch, stop, stop_after_epoch, progress):
                        break
            finally:
                if state.board is not None:
                    state.board.close()
            return state.module
    finally:
        if is_main_process():
            run.close_logs()
            run.release_lock()


def _device_and_precision(config: TrainConfig) -> tuple[torch.device, str]:
    """This process's device (its GPU under torchrun) and the resolved precision; TF32 on for CUDA."""
    try:
        device = resolve_device(config.device, int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as err:
        raise ValueError(f"device: {err}") from None
    precision = resolve_precision(config.precision, device)
    if device.type == "cuda":  # TF32 tensor cores for fp32 matmuls (bf16 autocast covers most of the step)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device, precision


def _data_and_model(config: TrainConfig, model: nn.Module | None, train_loader: Any, test_loader: Any,
                    ) -> tuple[Any, Any, nn.Module]:
    """The loaders and the model of the run: built from the config, or checked against it when passed in."""
    world = get_world_size()
    if train_loader is None:
        if not Path(config.data).exists():
            raise FileNotFoundError(f"data: {config.data} does not exist (see dataset/README.md)")
        train_loader = make_train_loader(config, distributed=world > 1)
    else:
        check_loader(config, train_loader)
    if isinstance(getattr(train_loader, "dataset", None), KineticsFramePairs):
        train_loader.dataset.check_readable()
    if isinstance(test_loader, str) and test_loader == "auto":
        test_loader = _auto_test_loader(config, world)
    if model is None:
        seed_everything(config.seed)  # the same initial weights in every process
        model = build_model(config)
    else:
        check_model(config, model)
    _check_file_size_limit(model)
    return train_loader, test_loader, model


def _check_file_size_limit(model: nn.Module) -> None:
    """ValueError before any work when the process's file-size limit (ulimit -f) is below what a checkpoint
    takes: the weights and AdamW's two moments."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    need = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    if limit != resource.RLIM_INFINITY and limit < need:
        raise ValueError(f"the file-size limit (ulimit -f) is {limit:,} bytes, below the {need:,} bytes of a "
                         f"checkpoint of this model: raise it (ulimit -f unlimited) before training")


def _open_run(run: Run, config: TrainConfig, resume: str | os.PathLike | None, device: torch.device,
              fingerprint: str | None, allow_new_data: bool) -> Path | None:
    """On rank 0: take the lock, remove temporaries of dead processes, choose the checkpoint to start from;
    the decision (or the error) reaches every process, and every process must see the chosen file."""
    decision: tuple[str, str] = ("ok", "")
    if is_main_process():
        try:
            run.acquire_lock()
            run.remove_temp_files()
            chosen = run.resolve_resume(resume, config, fingerprint, allow_new_data)
            decision = ("ok", "" if chosen is None else str(chosen))
        except (ValueError, FileNotFoundError, CheckpointError, RunError) as err:
            run.release_lock()
            decision = (type(err).__name__, str(err))
    kind, text = broadcast_object(decision)
    if kind != "ok":
        raise {"ValueError": ValueError, "FileNotFoundError": FileNotFoundError,
               "CheckpointError": CheckpointError}.get(kind, RunError)(text)
    chosen = Path(text) if text else None
    if chosen is not None and get_world_size() > 1:
        seen = all_reduce_sum([float(chosen.is_file())], device)[0]
        if seen < get_world_size():
            raise CheckpointError(f"{chosen} is visible to {int(seen)} of {get_world_size()} processes: put the output "
                                  f"folder on a filesystem that every node shares")
    return chosen


@dataclass
class _State:
    """What the epoch loop works with: the run, the model in its wrappers, optimiser, schedule, data, logging."""

    run: Run
    config: TrainConfig
    model: nn.Module  # as passed in or built (possibly DDP-wrapped already)
    module: nn.Module  # the SiamMAE itself
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    device: torch.device
    precision: str
    steps_per_epoch: int
    train_loader: Any
    test_loader: Any
    start_epoch: int
    start_step: int
    rng_state: dict | None
    ddp_model: nn.Module | None = None  # the held-out loss runs through it; the steps through `step_model`
    step_model: nn.Module | None = None
    board: TensorBoard | None = None
    log: Any = None
    data_fingerprint: str | None = None  # of the training videos, stored with each checkpoint
    after_epoch: Callable[[EpochEnd], None] | None = None


def _restore(run: Run, config: TrainConfig, model: nn.Module, train_loader: Any, test_loader: Any,
             start_from: Path | None, device: torch.device, precision: str, steps_per_epoch: int) -> _State:
    """Optimiser, scaler and schedule of the run, with weights, moments and position from `start_from` if any."""
    module = unwrap_model(model).to(device)
    optimizer = make_optimizer(module, config.lr, config.weight_decay, config.betas)
    scaler = make_grad_scaler(precision, device)
    start_epoch, start_step, rng_state = 0, 0, None
    if start_from is not None:
        start_epoch, start_step, rng_state = _load_state(start_from, module, optimizer, scaler, get_world_size(),
                                                         get_rank())
        print_main(f"resuming {config.prefix} from {start_from}: epoch {start_epoch} done, step {start_step}")
    scheduler = make_scheduler(optimizer, config.lr, total_steps=config.epochs * steps_per_epoch,
                               warmup_steps=round(config.warmup_epochs * steps_per_epoch), min_lr=config.min_lr,
                               start_step=start_step)
    return _State(run, config, model, module, optimizer, scheduler, scaler, device, precision, steps_per_epoch,
                  train_loader, test_loader, start_epoch, start_step, rng_state)


def _begin(state: _State, start_from: Path | None) -> None:
    """Open the logs, wrap the model for the processes (DDP) and the compiler, seed or restore the random
    streams, and say what the run is about to do."""
    config, rank, world = state.config, get_rank(), get_world_size()
    if is_main_process():
        state.run.open_logs(start_from)
    sampler = getattr(state.train_loader, "sampler", None)
    if world > 1 and getattr(sampler, "world", 1) != world and rank == 0:
        warnings.warn("the data loader does not shard the videos over the processes: every process trains on the "
                      "same batches (build it with make_train_loader or make_pair_loader(..., distributed=True))",
                      stacklevel=4)
    state.ddp_model = state.model
    if world > 1 and not isinstance(state.model, DistributedDataParallel):
        device_ids = [state.device.index] if state.device.type == "cuda" else None
        state.ddp_model = DistributedDataParallel(state.module, device_ids=device_ids)
    state.step_model = compiled(state.ddp_model) if config.compile else state.ddp_model
    if config.tensorboard and is_main_process():
        state.board = TensorBoard(state.run, config, state.start_step)
    state.log = state.run.log_train if is_main_process() else None
    if state.board is not None:
        state.log = state.board.wrap(state.run.log_train)
    if state.rng_state is not None:
        restore_rng_state(state.rng_state, state.train_loader)
    else:
        seed_everything(config.seed + rank + state.start_epoch * world)  # a different mask stream per process
    compiled_text = ", compiled" if config.compile else ""
    print_main(f"{config.prefix}: {config.arch}, epochs {state.start_epoch + 1}-{config.epochs}, "
               f"{state.steps_per_epoch * config.accum_iter} iterations of {config.batch_size} pairs x {world} "
               f"process(es) per epoch, accumulation {config.accum_iter} -> effective batch "
               f"{config.effective_batch_size(world)}, peak lr {config.lr:.3g}, {state.precision} on {state.device}"
               f"{compiled_text}; checkpoints in {state.run.checkpoint_dir}")


def _run_epoch(state: _State, epoch: int, stop: StopRequest, stop_after_epoch: int | None,
               progress: bool | None) -> bool:
    """Train epoch `epoch` (0-based), check, log and save it; True when the run should return now."""
    config, run = state.config, state.run
    start = time.perf_counter()
    set_loader_epoch(state.train_loader, epoch)
    try:
        losses = train_one_epoch(
            state.train_loader, state.optimizer, state.scheduler, state.device, state.step_model, epoch=epoch,
            scaler=state.scaler, precision=state.precision, accum_iter=config.accum_iter, clip_grad=config.clip_grad,
            log=state.log, should_stop=stop, progress=progress,
            first_iteration=state.scheduler.last_epoch * config.accum_iter,
        )
    except FloatingPointError as err:
        raise DivergedError(f"{err}; {_where_to_resume(run)}") from None
    except TrainingStopped as err:
        raise TrainingStopped(f"{config.prefix}: {err} ({stop.signal_name or 'interrupted'}); nothing of this "
                              f"epoch was saved. {_where_to_resume(run, diverged=False)}") from None
    test_loss = None
    if state.test_loader is not None:
        test_loss = evaluate_loss(state.ddp_model, state.test_loader, state.device, precision=state.precision)
    _check_finite(run, state.module, test_loss, epoch)
    if is_main_process() and test_loss is not None:
        run.log_test(epoch + 1, test_loss)
    if state.board is not None:
        state.board.epoch(epoch + 1, test_loss, state.module,
                          state.test_loader if state.test_loader is not None else state.train_loader)
    _save_epoch(state, epoch + 1)
    _after_epoch(state, epoch + 1)
    test_text = f", test loss {test_loss:.4f}" if test_loss is not None else ""
    last_of_call = epoch + 1 == config.epochs or epoch + 1 == stop_after_epoch or stop()
    if (epoch + 1) % config.print_every == 0 or epoch == state.start_epoch or last_of_call:
        print_main(f"epoch {epoch + 1}/{config.epochs}: train loss {sum(losses) / len(losses):.4f}{test_text}, "
                   f"lr {state.optimizer.param_groups[0]['lr']:.3g}, {time.perf_counter() - start:.1f} s")
    if stop():
        raise TrainingStopped(f"{config.prefix}: stopped after epoch {epoch + 1} ({stop.signal_name}); "
                              f"{_where_to_resume(run, diverged=False)}")
    if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < config.epochs:
        print_main(f"stopping after epoch {epoch + 1} as asked; resume='auto' continues the run")
        return True
    return False


def _after_epoch(state: _State, epochs_done: int, resumed: bool = False) -> None:
    """The hook on the main process, the others waiting for it (it may evaluate for minutes: see dist_timeout)."""
    if state.after_epoch is None:
        return
    if is_main_process():
        board = state.board.writer if state.board is not None else None
        state.after_epoch(EpochEnd(state.module, epochs_done, state.run, state.config, state.device, resumed,
                                   board.add_scalar if board is not None else lambda *_: None))
    barrier()


def _load_state(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                world: int, rank: int) -> tuple[int, int, dict | None]:
    """Weights, optimiser moments and scaler from a verified checkpoint; (epochs done, steps done, this rank's RNG)."""
    ckpt = load_checkpoint(path)
    if ckpt["model_args"] != module.model_args:
        differences = sorted(k for k in set(ckpt["model_args"]) | set(module.model_args)
                             if ckpt["model_args"].get(k) != module.model_args.get(k))
        raise CheckpointError(f"{path} holds a model that differs from this run's in {', '.join(differences)}")
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    try:
        module.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{path} does not fit this model and optimiser: {err}") from err
    for group, settings in zip(optimizer.param_groups, hyper):
        group.update(settings)  # this run's betas and weight decay, not the stored ones
    if ckpt.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(ckpt["scaler"])
    states = ckpt.get("rng") or []
    rng_state = states[rank] if len(states) == world else None
    if rng_state is None and is_main_process():
        warnings.warn(f"{path} was written by {len(states)} process(es), this run has {world}: random states are "
                      f"re-seeded, so masks differ from an uninterrupted run", stacklevel=3)
    return int(ckpt["epoch"]), int(ckpt["step"]), rng_state


def compiled(model: nn.Module) -> nn.Module:
    """`torch.compile` of the training step's model, drawing its random masks as eager mode does (inductor's
    fallback_random), so a compiled run trains on the same masks as an eager one."""
    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True
    return torch.compile(model)


def _check_finite(run: Run, module: nn.Module, test_loss: float | None, epoch: int) -> None:
    """DivergedError before a non-finite held-out loss or weight could be saved."""
    problems = []
    if test_loss is not None and not torch.isfinite(torch.tensor(test_loss)):
        problems.append(f"the held-out loss is {test_loss}")
    bad = non_finite_tensors(module.state_dict())
    if bad:
        problems.append(f"weights are non-finite ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''})")
    if problems:
        raise DivergedError(f"training diverged in epoch {epoch + 1}: {' and '.join(problems)}; nothing of this "
                            f"epoch was saved. {_where_to_resume(run)}")


def _where_to_resume(run: Run, diverged: bool = True) -> str:
    """The newest checkpoint that passes verification, for the message of a stopped or diverged run."""
    newest = run.newest_valid_checkpoint() if is_main_process() else None
    newest = broadcast_object(None if newest is None else str(newest))
    if newest is None:
        return "There is no checkpoint of this run with a finite state yet."
    epoch = read_checkpoint_meta(newest)["epoch"]
    advice = " with a lower learning rate or with clip_grad set" if diverged else " (resume='auto')"
    return f"The newest checkpoint with a finite state is {newest} (epoch {epoch}): resume from it{advice}."


def _save_epoch(state: _State, epochs_done: int) -> None:
    """checkpoint-<epoch>.pth when due and checkpoint-last.pth, written by rank 0 with every rank's RNG state."""
    rng_states = all_gather_objects(capture_rng_state(state.train_loader))  # collective: every rank takes part
    if is_main_process():
        config, module = state.config, state.module
        checkpoint = {
            "model": module.state_dict(),
            "model_args": dict(module.model_args),
            "config": config.to_dict(),
            "optimizer": state.optimizer.state_dict(),
            "scaler": state.scaler.state_dict(),
            "epoch": epochs_done,
            "step": state.scheduler.last_epoch,
            "world_size": get_world_size(),
            "rng": rng_states,
            "data_fingerprint": state.data_fingerprint,
        }
        due = epochs_done % config.num_epochs_per_save == 0 or epochs_done == config.epochs
        state.run.save(checkpoint, epochs_done, numbered=due)
    barrier()


def _auto_test_loader(config: TrainConfig, world: int) -> torch.utils.data.DataLoader | None:
    if config.test_split is None:
        return None
    try:
        return make_test_loader(config, distributed=world > 1)
    except (FileNotFoundError, ValueError) as err:
        if is_main_process():
            warnings.warn(f"no held-out loss: {err}".splitlines()[0], stacklevel=3)
        return None
