"""Benchmarks (speed figures; never run by the test suite except as tiny smoke runs)."""

import json
from pathlib import Path


def save_json(path: Path | None, data: object) -> None:
    """Write a benchmark's raw results as JSON (the `--json` option of each benchmark); nothing when None."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2))
