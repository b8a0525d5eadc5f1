"""A correspondence benchmark with a known answer: generated DAVIS-layout videos of real texture, exact masks.

    write_correspondence_benchmark("outputs/corr", sequences=4, frames=10)      # held-out textures (default)
    python -m ml.evaluate make-benchmark outputs/corr --textures heldout
    python -m ml.evaluate davis --checkpoint random --arch siammae_tiny --data outputs/corr --output ...

Each sequence is cut from one clip: the background is a frame of it under a panning camera, the objects are
ellipses of texture from other frames of the same clip (similar colours to the background, so colour alone does
not separate them); they cross the frame, change scale and occlude each other, and every frame has its own
brightness and tint. `textures`: "heldout" (the clips of dataset/sample/val, which the demo never trains on),
"train" (dataset/sample/train) or a folder of videos (e.g. ../shared/data/videos).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from dataset_loader.video import VideoReader
from ml.eval.data import write_label_png
from ml.eval.synthetic import SAMPLE_DIR, _paste_ellipse, _texture

TEXTURE_SETS = {"train": SAMPLE_DIR / "train", "heldout": SAMPLE_DIR / "val"}
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")
# difficulty -> (pan pixels/frame at 854 wide, object speed in widths/frame, scale change over the video,
# brightness jitter, tint jitter): "hard" is where raw pixels and random features fall well short (EVALUATION.md)
DIFFICULTIES = {"easy": (3, 0.02, 0.15, 0.0, 0.0), "medium": (5, 0.03, 0.3, 0.08, 0.03),
                "hard": (8, 0.05, 0.5, 0.15, 0.06)}


def texture_clips(textures: str | os.PathLike) -> list[Path]:
    """The video files a benchmark's texture comes from: a named set of the sample clips or a folder of videos."""
    folder = TEXTURE_SETS.get(str(textures), Path(textures))
    if not folder.is_dir():
        raise FileNotFoundError(f"--textures {textures}: not 'train', 'heldout' or a folder of videos")
    clips = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
    if not clips:
        raise FileNotFoundError(f"--textures {textures}: no videos ({', '.join(VIDEO_SUFFIXES)}) under {folder}")
    return clips


def _cut(clip: Path, frame: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """A square of texture `side` px from frame `frame` of `clip` (scaled to twice the side): of four random
    windows, the most varied one (a window of bare wall or table would be a flat colour, not texture)."""
    big = _texture(clip, frame, (2 * side, 3 * side))
    corners = zip(rng.integers(0, side + 1, 4), rng.integers(0, 2 * side + 1, 4))
    windows = [big[top:top + side, left:left + side] for top, left in corners]
    return max(windows, key=lambda w: float(w.astype(np.float32).std()))


def _tracks(rng: np.random.Generator, num_objects: int, frames: int, size: tuple[int, int],
            speed: float, scale: float) -> np.ndarray:
    """(frames, objects, 4) ellipses (cx, cy, a, b): objects start apart and cross paths (so they occlude),
    each growing or shrinking by up to `scale` over the video."""
    H, W = size
    out = np.zeros((frames, num_objects, 4))
    for k in range(num_objects):
        side = k % 2  # alternate objects start on the left and on the right and move towards the other side
        x0 = (0.22 + 0.56 * side + rng.uniform(-0.04, 0.04)) * W
        y0 = rng.uniform(0.3, 0.7) * H
        vx = (1 - 2 * side) * speed * W * rng.uniform(0.7, 1.3)
        vy = rng.uniform(-0.5, 0.5) * speed * H
        a0, b0 = rng.uniform(0.09, 0.14) * W, rng.uniform(0.15, 0.24) * H
        grow = rng.uniform(-scale, scale) / max(1, frames - 1)
        for t in range(frames):
            g = 1.0 + grow * t
            out[t, k] = (np.clip(x0 + vx * t, 0.05 * W, 0.95 * W), np.clip(y0 + vy * t, 0.1 * H, 0.9 * H),
                         a0 * g, b0 * g)
    return out


def write_correspondence_sequence(root: Path, name: str, clip: Path, frames: int, size: tuple[int, int],
                                  difficulty: str, rng: np.random.Generator, num_objects: int = 2) -> None:
    """One sequence of the benchmark (see the module's docstring) into JPEGImages/480p and Annotations/480p."""
    H, W = size
    pan, speed, scale, brightness, tint = DIFFICULTIES[difficulty]
    pan = max(1, round(pan * W / 854))
    with VideoReader(clip) as reader:
        length = reader.num_frames
    picks = rng.choice(length, size=1 + num_objects, replace=length < 1 + num_objects)
    background = _texture(clip, int(picks[0]), (H, W + pan * frames))
    direction = rng.choice([-1, 1])
    objects = [_cut(clip, int(f), H // 2, rng) for f in picks[1:]]
    tracks = _tracks(rng, num_objects, frames, size, speed, scale)
    paths = (root / "JPEGImages" / "480p" / name, root / "Annotations" / "480p" / name)
    for folder in paths:
        folder.mkdir(parents=True, exist_ok=True)
    for t in range(frames):
        x = pan * t if direction > 0 else pan * (frames - t)
        image = background[:, x:x + W].copy()
        ids = np.zeros((H, W), np.uint8)
        for k in range(num_objects):  # later objects are drawn over earlier ones: the occluders
            _paste_ellipse(image, ids, objects[k], tuple(tracks[t, k]), k + 1)
        light = (1 + rng.uniform(-brightness, brightness)) * (1 + rng.uniform(-tint, tint, 3))
        image = (image.astype(np.float32) * light).clip(0, 255).astype(np.uint8)
        Image.fromarray(image).save(paths[0] / f"{t:05d}.jpg", quality=95)
        write_label_png(paths[1] / f"{t:05d}.png", ids)


def write_correspondence_benchmark(root: str | os.PathLike, sequences: int = 4, frames: int = 10,
                                   size: tuple[int, int] = (480, 854), textures: str | os.PathLike = "heldout",
                                   difficulty: str = "hard", seed: int = 0) -> Path:
    """A DAVIS-2017-layout folder (480p, ImageSets/2017/val.txt) of `sequences` generated videos; the sequences
    go round the clips of `textures`. Deterministic for a seed. Bad arguments are refused before any file."""
    if sequences < 1 or frames < 2:
        raise ValueError(f"a benchmark needs >= 1 sequence of >= 2 frames, got {sequences} of {frames}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"--difficulty {difficulty!r}: choose from {', '.join(DIFFICULTIES)}")
    if min(size) < 32:
        raise ValueError(f"--size {size[0]}x{size[1]}: frames need at least 32 pixels a side")
    clips = texture_clips(textures)
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty: choose a new folder for the benchmark")
    names = []
    for s in range(sequences):
        clip = clips[s % len(clips)]
        names.append(f"{clip.stem}_{s:02d}")
        rng = np.random.default_rng([seed, s])
        write_correspondence_sequence(root, names[-1], clip, frames, size, difficulty, rng)
    (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(names) + "\n")
    return root
