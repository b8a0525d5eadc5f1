"""pytorchvideo 0.1.5's Kinetics loader as the data benchmark's baseline, installed into its own folder (never the
project's .venv: it needs torchvision < 0.17).

    python -m bench.bench_data --install-pytorchvideo      # once: pip --no-deps into outputs/bench-pytorchvideo
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from bench import REPO
from dataset_loader.random_temporal_subsample import RandomTemporalSubsample
from dataset_loader.transforms import PairedTransform

PYTORCHVIDEO_DIR = REPO / "outputs" / "bench-pytorchvideo"
PYTORCHVIDEO_REQUIREMENTS = REPO / "bench" / "requirements-pytorchvideo.txt"


def import_pytorchvideo(folder: Path):
    """pytorchvideo from its own folder, with the torchvision alias it needs (functional_tensor)."""
    if not (folder / "pytorchvideo").is_dir():
        raise ModuleNotFoundError(f"pytorchvideo is not installed in {folder}; run: python -m bench.bench_data "
                                  f"--install-pytorchvideo (or pip install --no-deps --target {folder} "
                                  f"-r {PYTORCHVIDEO_REQUIREMENTS.relative_to(REPO)})")
    import torchvision.transforms._functional_tensor as functional_tensor

    sys.modules.setdefault("torchvision.transforms.functional_tensor", functional_tensor)
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    import pytorchvideo.data

    return pytorchvideo.data


def make_pytorchvideo(paths: list[Path], img_size: int, folder: Path, list_dir: Path) -> Callable[[int, int], int]:
    """pytorchvideo's Kinetics over a 'path label' list; a clip spanning a random gap gives the pair."""
    ptv = import_pytorchvideo(folder)
    gaps = RandomTemporalSubsample()

    class RandomGapClipSampler(ptv.clip_sampling.RandomClipSampler):
        """A random clip whose length is a random gap of our sampler's frames (one more frame, to include it)."""

        def __call__(self, last_clip_time, video_duration, annotation):
            frames = random.randint(gaps.min_gap, gaps.max_gap) + 1
            self._clip_duration = Fraction(frames) / Fraction(gaps.reference_fps).limit_denominator()
            return super().__call__(last_clip_time, video_duration, annotation)

    transform = PairedTransform(img_size)
    rng = np.random.default_rng(0)

    def to_pair(sample: dict) -> dict:
        video = sample["video"]  # (3, T, H, W) float in [0, 255]
        frames = [video[:, t].permute(1, 2, 0).to(torch.uint8).numpy() for t in (0, -1)]
        sample["pair"] = transform(frames, rng)
        return sample

    list_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1("\n".join(map(str, paths)).encode()).hexdigest()[:12]
    list_file = list_dir / f"pytorchvideo_list_{digest}.txt"
    list_file.write_text("".join(f"{p} 0\n" for p in paths))
    dataset = ptv.Kinetics(str(list_file), clip_sampler=RandomGapClipSampler(Fraction(1)),
                           video_sampler=torch.utils.data.RandomSampler, decode_audio=False, transform=to_pair)
    stream = iter(dataset)

    def load(item: int, epoch: int) -> int:
        nonlocal stream
        try:
            next(stream)
        except StopIteration:  # one pass over the videos ends the iterator: start another
            stream = iter(dataset)
            next(stream)
        return 1

    return load


def install_pytorchvideo(folder: Path) -> None:
    """pip install --no-deps --target folder: pytorchvideo and its few pure-Python needs, never torch."""
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(folder),
                    "-r", str(PYTORCHVIDEO_REQUIREMENTS)], check=True)
