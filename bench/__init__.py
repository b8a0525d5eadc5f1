"""Benchmarks (speed figures; never run by the test suite except as tiny smoke runs)."""

import json
from pathlib import Path

import torch


def save_json(path: Path | None, data: object) -> None:
    """Write a benchmark's raw results as JSON (the `--json` option of each benchmark); nothing when None."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2))


def sync_device(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer read next measures it (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
