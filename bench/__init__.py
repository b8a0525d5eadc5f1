"""Benchmarks (speed figures; never run by the test suite except as tiny smoke runs)."""

import json
import re
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = REPO / "BENCHMARKS.md"


def relative(path: Path) -> str:
    """`path` relative to the repository when inside it (how commands and files are shown), else as given."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def save_json(path: Path | None, data: object) -> None:
    """Write a benchmark's raw results as JSON (the `--json` option of each benchmark); nothing when None."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2))


def sync_device(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer read next measures it (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def read_section_results(text: str, name: str):
    """The raw results embedded in section `name` of a BENCHMARKS.md text, None if it has none."""
    payload = read_section_payload(text, name)
    return None if payload is None else payload["results"]


def read_section_payload(text: str, name: str) -> dict | None:
    """{"meta": ..., "results": ...} embedded in section `name` of a BENCHMARKS.md text, None if absent."""
    match = re.search(rf"<!-- bench:{re.escape(name)}:results (.*?) -->", text)
    return None if match is None else json.loads(match.group(1))
