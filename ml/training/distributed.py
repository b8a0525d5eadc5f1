"""Multi-GPU and multi-node training through torchrun: process-group set-up, ranks, and collectives.

torchrun starts one process per GPU and passes `RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `MASTER_ADDR`
and `MASTER_PORT` in the environment. `init_distributed` reads them and joins the group (NCCL on
GPUs, gloo on CPU); a plain `python` process is a world of one and needs no group. Everything else
asks `get_rank()` / `get_world_size()`, which answer for a world of one when no group exists, so
the same code runs in a notebook, in one process and under torchrun.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

DIST_TIMEOUT_MINUTES = 5.0  # how long a process waits for the others before the run fails


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its rank among all processes, its GPU on this node, and its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True when the environment holds torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def resolve_device(device: str | torch.device | None = None, local_rank: int = 0) -> torch.device:
    """"auto"/None -> this process's GPU when CUDA is there, else the CPU; "cuda" -> `cuda:<local_rank>`."""
    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device} was asked for, but this PyTorch build sees no CUDA GPU")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"device {device} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def init_distributed(device: str | torch.device | None = None,
                     timeout_minutes: float = DIST_TIMEOUT_MINUTES) -> DistributedContext:
    """Join the process group when launched by torchrun (NCCL for GPUs, gloo for CPU); else a world of one.

    Safe to call when the group already exists (returns its context).
    """
    if not launched_by_torchrun():
        return DistributedContext(device=resolve_device(device))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    device = resolve_device(device, local_rank)
    if world_size > 1 and not is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {
            "backend": backend, "init_method": "env://", "timeout": timedelta(minutes=timeout_minutes)
        }
        if backend == "nccl":
            kwargs["device_id"] = device  # binds the communicator to this GPU, avoids a guess at the first barrier
        dist.init_process_group(**kwargs)
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def cleanup_distributed() -> None:
    """Leave the process group (at the end of a run, so that torchrun sees a clean exit)."""
    if is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    """Only rank 0 writes checkpoints, logs and progress bars."""
    return get_rank() == 0


def print_main(message: str) -> None:
    """Print on rank 0 only (every process runs the same code; one line per event is enough)."""
    if is_main_process():
        print(message, flush=True)


def barrier() -> None:
    if is_initialized() and get_world_size() > 1:
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum of `values` over all processes (the values themselves in a world of one)."""
    if not is_initialized() or get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_gather_objects(obj: Any) -> list[Any]:
    """One picklable object from every process, indexed by rank (a list of one in a world of one)."""
    if not is_initialized() or get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s object on every process."""
    if not is_initialized() or get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
