"""Shared test fixtures: paths to the shipped sample data and to ../shared when present."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "dataset" / "sample"
SHARED_DATA = Path(os.environ.get("SIAMMAE_SHARED_DATA", REPO.parent / "shared" / "data"))
DAVIS_MINI = SHARED_DATA / "davis_mini"

# One thread: tests use tiny models, and on 2 shared cores more threads only oversubscribe
# (data-loader workers and the notebook kernel run beside the test process).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_thread():
    """Every test starts on one thread, whatever an earlier test (or a benchmark it ran) set."""
    torch.set_num_threads(1)
    yield


def sample_videos() -> list[Path]:
    """The real clips shipped in dataset/sample (Kinetics tree layout)."""
    return sorted(SAMPLE_DIR.glob("*/*/*.mp4"))


def read_frames(path: Path, indices: list[int], size: int = 224) -> torch.Tensor:
    """Frames `indices` of a video, centre-cropped square and resized: (len(indices), 3, size, size) in [0, 1].

    A plain sequential decode, independent of dataset_loader, so tests of the model do not depend on it.
    """
    wanted, out = set(indices), {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                img = frame.to_image()
                s = min(img.size)
                left, top = (img.width - s) // 2, (img.height - s) // 2
                img = img.crop((left, top, left + s, top + s)).resize((size, size))
                out[i] = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255.0
            if len(out) == len(wanted):
                break
    return torch.stack([out[i] for i in indices])


def log_rows(path: Path) -> list[tuple[float, ...]]:
    """Every data row of a loss log as numbers, duplicates included (the raw file, not a cleaned view)."""
    lines = Path(path).read_text().splitlines()
    return [tuple(float(v) for v in line.split()) for line in lines if line.strip() and not line.startswith("#")]


@pytest.fixture(scope="session")
def davis_mini() -> Path:
    if not DAVIS_MINI.is_dir():
        pytest.skip(f"needs the DAVIS-layout sample at {DAVIS_MINI} (../shared/data is not beside this clone)")
    return DAVIS_MINI
