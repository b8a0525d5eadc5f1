"""The benchmark's test clips: H.264 encodings of the shipped sample footage with a chosen keyframe interval."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image

from bench import REPO
from dataset_loader.synthetic_videos import encode_video

SAMPLE_DIR = REPO / "dataset" / "sample"
CLIP_SOURCES = ["train/street/bikes.mp4", "train/moving_object/box.mp4", "train/bird/cockatoo.mp4",
                "val/moving_object/coin_and_pen.mp4"]


def _source_frames(path: Path, num_frames: int, width: int, height: int) -> list[np.ndarray]:
    """`num_frames` real frames of `path`, centre-cropped to width x height (played back and forth if short)."""
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == num_frames:
                break
    h, w = frames[0].shape[:2]
    scale = max(width / w, height / h)
    if scale > 1:
        size = (int(np.ceil(w * scale)), int(np.ceil(h * scale)))
        frames = [np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BILINEAR)) for f in frames]
        h, w = frames[0].shape[:2]
    top, left = (h - height) // 2, (w - width) // 2
    frames = [f[top:top + height, left:left + width] for f in frames]
    loop = frames + frames[-2:0:-1]
    return [loop[i % len(loop)] for i in range(num_frames)]


def make_bench_clips(
    out_dir: Path, keyframe_seconds: float, seconds: float = 10.0, fps: int = 30, width: int = 340,
    height: int = 256, count: int = 4,
) -> list[Path]:
    """H.264 clips of real footage (x264 defaults: crf 23, preset medium, B-frames) with a fixed keyframe interval."""

    paths = []
    for source in CLIP_SOURCES[:count]:
        name = f"{Path(source).stem}_{seconds:g}s_{fps}fps_{width}x{height}_key{keyframe_seconds:g}s.mp4"
        path = out_dir / name
        if not path.is_file():
            frames = _source_frames(SAMPLE_DIR / source, int(round(seconds * fps)), width, height)
            encode_video(path, frames, fps=fps, keyframe_interval=int(round(keyframe_seconds * fps)), crf=23,
                         preset="medium")
        paths.append(path)
    return paths
