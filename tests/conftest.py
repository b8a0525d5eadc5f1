"""Shared test fixtures: paths to the shipped sample data and to ../shared when present, index-bar videos."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from dataset_loader.synthetic_videos import make_constant_video, make_indexed_video, read_barcode
from dataset_loader.transforms import denormalize
from ml.eval.protocols import get_protocol

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


def free_port() -> int:
    """A TCP port free on this machine now (for a rendezvous or a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], object], timeout: float = 60.0, what: str = "the condition",
             poll: float = 0.05) -> object:
    """Poll `condition` until it returns something true (returned); TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what}")


def log_rows(path: Path) -> list[tuple[float, ...]]:
    """Every data row of a loss log as numbers, duplicates included (the raw file, not a cleaned view)."""
    lines = Path(path).read_text().splitlines()
    return [tuple(float(v) for v in line.split()) for line in lines if line.strip() and not line.startswith("#")]


def native(name: str, dataset: str = "davis", **changes):
    """A protocol at the frames' own size (the generated frames are small)."""
    return get_protocol(name, dataset, size_rule="native", size=None, **changes)


@pytest.fixture(scope="session")
def davis_mini() -> Path:
    if not DAVIS_MINI.is_dir():
        pytest.skip(f"needs the DAVIS-layout sample at {DAVIS_MINI} (../shared/data is not beside this clone)")
    return DAVIS_MINI


# ---------------------------------------------------------------- index-bar videos (every frame shows its index)
FPS_2997 = Fraction(30000, 1001)


@pytest.fixture(scope="session")
def video_factory(tmp_path_factory):
    """make(num_frames, fps, keyframe_interval, start_frame, ext) -> path of a barcoded video, made once a session."""
    folder = tmp_path_factory.mktemp("indexed_videos")
    made: dict[tuple, Path] = {}

    def make(num_frames=90, fps=30, keyframe_interval=30, start_frame=0, ext="mp4") -> Path:
        key = (num_frames, Fraction(fps), keyframe_interval, start_frame, ext)
        if key not in made:
            name = f"v{num_frames}_{float(fps):.3f}_k{keyframe_interval}_s{start_frame}.{ext}"
            made[key] = make_indexed_video(folder / name, num_frames, fps, keyframe_interval, start_frame=start_frame)
        return made[key]

    return make


@pytest.fixture(scope="session")
def pattern_video(tmp_path_factory) -> Path:
    """A video whose frames are all the same left-right asymmetric picture."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:48, 0:64]
    image = np.stack([x * 4, y * 5, (x * y) % 256], -1).astype(np.uint8)
    image[:, :8] = rng.integers(0, 256, (48, 8, 3), dtype=np.uint8)
    return make_constant_video(tmp_path_factory.mktemp("pattern") / "pattern.mp4", 40, image)


def barcodes(frames: torch.Tensor) -> list[int]:
    """Indices shown by normalised (N, 3, H, W) frames."""
    return [read_barcode(f) for f in denormalize(frames)]
