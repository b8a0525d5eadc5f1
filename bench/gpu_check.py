"""The training step on a CUDA GPU: ViT-S/16 in bf16, eager and compiled; step time, pairs/s, peak memory, MFU.

    python -m bench.gpu_check                  # on a CUDA machine: under 5 minutes
    python -m bench.gpu_check --steps 50 --json bench/results/gpu_check.json

Each variant runs the real training step of `ml.training.engine.train_one_epoch` (bf16 autocast, fused AdamW,
TF32 allowed, the preset's mask ratio) on random frame pairs already on the GPU, so the data
loader is not measured: `warmup` steps (the compile happens there), then `steps` timed ones. MFU is
the model's counted FLOPs per step (forward + backward, as `bench.bench_train` counts them) over the
step time and the GPU's dense bf16 peak (a table of known GPUs; otherwise a measured bf16 matmul
peak). With two or more GPUs a 2-process NCCL DistributedDataParallel step is timed too. On a
machine without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch

import mae  # noqa: F401  (first: makes torchvision importable for timm on a CPU-only torch)
from bench import save_json
from bench.bench_train import step_flops
from ml.training.build import build_model
from ml.training.distributed import cleanup_distributed, init_distributed
from ml.training.engine import train_one_epoch
from ml.training.optim import make_optimizer
from ml.training.presets import get_preset
from ml.training.pretrain import compiled as compile_step

PRESET = "paper_vit_s16_400"
# dense bf16 tensor-core peaks from the vendors' data sheets (FLOP/s)
KNOWN_PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12,
               "RTX 4090": 165e12, "RTX 3090": 71e12}


def gpu_peak(device: torch.device) -> tuple[float, str]:
    """(bf16 dense peak in FLOP/s, where the figure comes from)."""
    name = torch.cuda.get_device_name(device)
    for key, peak in KNOWN_PEAKS.items():
        if key in name:
            return peak, f"{name}: data sheet"
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * 10 / (time.perf_counter() - t0), f"{name}: measured bf16 {n}x{n} matmul"


def step_flops_per_pair(config) -> float:
    """Forward + backward FLOPs of one pair, counted on the meta device as bench_train counts them."""

    with torch.device("meta"):
        model = build_model(config.replace(pretrained=None))
        f1 = torch.empty(1, 3, config.img_size, config.img_size)
    return float(step_flops(model, f1, f1.clone()))


def time_steps(config, batch: int, device: torch.device, compiled: bool, warmup: int, steps: int) -> dict:
    """Median seconds per training step of the preset at `batch` pairs, bf16, eager or compiled."""

    torch.manual_seed(0)
    model = build_model(config.replace(pretrained=None)).to(device)
    optimizer = make_optimizer(model, config.peak_lr(1), config.weight_decay, config.betas)
    stepped = compile_step(model) if compiled else model
    f1 = torch.randn(batch, 3, config.img_size, config.img_size, device=device)
    f2 = torch.randn_like(f1)
    torch.cuda.reset_peak_memory_stats(device)

    def run(n: int) -> None:
        train_one_epoch([(f1, f2)] * n, optimizer, None, device, stepped, precision="bf16", progress=False)

    start = time.perf_counter()
    run(warmup)
    torch.cuda.synchronize(device)
    warmup_s = time.perf_counter() - start
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        run(1)
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return {"variant": "compiled" if compiled else "eager", "batch": batch, "warmup_s": warmup_s,
            "step_s_median": statistics.median(times), "step_s_min": min(times), "step_s_max": max(times),
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30}


def _ddp_worker(rank: int, port: int, batch: int, steps: int, queue) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from torch.nn.parallel import DistributedDataParallel


    ctx = init_distributed("cuda")
    config = get_preset(PRESET)
    model = build_model(config.replace(pretrained=None)).to(ctx.device)
    ddp = DistributedDataParallel(model, device_ids=[ctx.device.index])
    optimizer = make_optimizer(model, config.peak_lr(2), config.weight_decay, config.betas)
    f1 = torch.randn(batch, 3, config.img_size, config.img_size, device=ctx.device)
    batches = [(f1, torch.randn_like(f1))]
    train_one_epoch(batches * 5, optimizer, None, ctx.device, ddp, precision="bf16", progress=False)
    torch.cuda.synchronize(ctx.device)
    t0 = time.perf_counter()
    train_one_epoch(batches * steps, optimizer, None, ctx.device, ddp, precision="bf16", progress=False)
    torch.cuda.synchronize(ctx.device)
    if rank == 0:
        queue.put((time.perf_counter() - t0) / steps)
    cleanup_distributed()


def ddp_step(batch: int, steps: int) -> float:
    """Seconds per step of a 2-process NCCL DistributedDataParallel run (`batch` pairs per process)."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(_ddp_worker, args=(port, batch, steps, queue), nprocs=2, start_method="spawn")
    return queue.get(timeout=60)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256, help="pairs per step (halved until it fits)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU here: nothing to measure (python -m bench.gpu_check runs on a CUDA machine)")
        return 0
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    config = get_preset(PRESET)
    peak, peak_source = gpu_peak(device)
    flops_per_pair = step_flops_per_pair(config)
    results, batch = [], a.batch
    for compiled in (False, True):
        while True:
            try:
                row = time_steps(config, batch, device, compiled, a.warmup, a.steps)
                break
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                if batch == 1:
                    raise
                batch //= 2
        row["pairs_per_s"] = row["batch"] / row["step_s_median"]
        row["mfu"] = flops_per_pair * row["batch"] / row["step_s_median"] / peak
        results.append(row)
        print(f"{config.arch} bf16 {row['variant']}: batch {row['batch']}, {row['step_s_median'] * 1e3:.1f} ms/step "
              f"({row['step_s_min'] * 1e3:.1f}-{row['step_s_max'] * 1e3:.1f}), {row['pairs_per_s']:,.0f} pairs/s, "
              f"peak memory {row['peak_memory_gib']:.1f} GiB, MFU {100 * row['mfu']:.1f}% of {peak / 1e12:.0f} "
              f"TFLOP/s ({peak_source}); warm-up {row['warmup_s']:.0f} s", flush=True)
    summary = {"gpu": torch.cuda.get_device_name(device), "peak_flops": peak, "peak_source": peak_source,
               "gflop_per_pair_step": flops_per_pair / 1e9, "rows": results, "torch": torch.__version__}
    if torch.cuda.device_count() >= 2:
        step = ddp_step(min(batch, 128), 20)
        summary["ddp_2gpu_step_s"] = step
        print(f"2-process NCCL DDP: {step * 1e3:.1f} ms/step at {min(batch, 128)} pairs per GPU", flush=True)
    else:
        print("one GPU: no DDP step", flush=True)
    save_json(a.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
