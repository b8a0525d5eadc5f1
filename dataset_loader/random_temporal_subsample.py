"""Which two frames of a video make a training pair.

The gap is drawn uniformly in [min_gap, max_gap] frames at `reference_fps` (defaults: the paper's,
MIN_GAP to MAX_GAP at REFERENCE_FPS), i.e. by time: a video at 5/6 of the reference rate gets gaps
5/6 as long in frames (the same 0.13-1.6 s). Then the first frame
is drawn uniformly among those that leave room for the gap. A video too short for the smallest gap
gets the largest gap it holds; one with fewer than two frames cannot give a pair.
"""

from __future__ import annotations

import math

import numpy as np

# the paper's frame gap between f1 and f2, in frames at a reference rate (every other default reads these)
MIN_GAP, MAX_GAP, REFERENCE_FPS = 4, 48, 30.0

class RandomTemporalSubsample:
    """Draws `repeated_sampling` independent (first, second) frame-index pairs from one video."""

    def __init__(
        self, min_gap: int = MIN_GAP, max_gap: int = MAX_GAP, reference_fps: float = REFERENCE_FPS,
        repeated_sampling: int = 1
    ) -> None:
        if not 1 <= min_gap <= max_gap:
            raise ValueError(f"need 1 <= min_gap <= max_gap, got min_gap={min_gap}, max_gap={max_gap}")
        if reference_fps <= 0:
            raise ValueError(f"reference_fps must be positive, got {reference_fps}")
        if repeated_sampling < 1:
            raise ValueError(f"repeated_sampling must be >= 1, got {repeated_sampling}")
        self.min_gap, self.max_gap = min_gap, max_gap
        self.reference_fps = reference_fps
        self.repeated_sampling = repeated_sampling

    @property
    def min_seconds(self) -> float:
        return self.min_gap / self.reference_fps

    @property
    def max_seconds(self) -> float:
        return self.max_gap / self.reference_fps

    def gap_range(self, fps: float) -> tuple[int, int]:
        """Smallest and largest gap in frames at `fps` whose duration lies in [min_seconds, max_seconds]."""
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        lo = max(1, math.ceil(self.min_seconds * fps - 1e-6))
        hi = math.floor(self.max_seconds * fps + 1e-6)
        return lo, max(lo, hi)  # a very low frame rate keeps the one-frame gap

    def __call__(self, num_frames: int, fps: float, rng: np.random.Generator) -> list[tuple[int, int]]:
        if num_frames < 2:
            raise ValueError(f"a pair needs at least 2 frames, the video has {num_frames}")
        lo, hi = self.gap_range(fps)
        hi = min(hi, num_frames - 1)
        pairs = []
        for _ in range(self.repeated_sampling):
            gap = int(rng.integers(lo, hi + 1)) if hi >= lo else num_frames - 1
            first = int(rng.integers(0, num_frames - gap))
            pairs.append((first, first + gap))
        return pairs

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(min_gap={self.min_gap}, max_gap={self.max_gap}, "
                f"reference_fps={self.reference_fps}, repeated_sampling={self.repeated_sampling})")
