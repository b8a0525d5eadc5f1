"""Videos made for tests and benchmarks with PyAV: frames that carry their own index as a barcode, and any frames.

Frame `i` shows `i` in binary as horizontal bands, most significant bit on top: a white band is a 1,
a black band a 0. The bands span the full width, so the code survives any horizontal crop, a
horizontal flip and resizing; `read_barcode` gets the index back from an RGB frame or a tensor.

    make_indexed_video(path, num_frames=90, fps=25, keyframe_interval=10)
    encode_video(path, frames, fps=30, keyframe_interval=30)   # any uint8 (H, W, 3) frames
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch


def barcode_frame(index: int, width: int = 64, height: int = 48, bits: int = 8) -> np.ndarray:
    """A (height, width, 3) uint8 frame showing `index` as `bits` horizontal bands."""
    if not 0 <= index < 2**bits:
        raise ValueError(f"index {index} does not fit in {bits} bits")
    band = height // bits
    if band < 2:
        raise ValueError(f"height {height} is too small for {bits} bands")
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    for k in range(bits):
        if (index >> (bits - 1 - k)) & 1:
            frame[k * band:(k + 1) * band] = 255
    return frame


def read_barcode(frame: np.ndarray | torch.Tensor, bits: int = 8) -> int:
    """The index shown by a barcode frame: (H, W, 3) uint8 array or (3, H, W) tensor in [0, 1]."""
    if isinstance(frame, torch.Tensor):
        gray = frame.float().mean(0).numpy() * 255.0  # (H, W)
    else:
        gray = np.asarray(frame, dtype=np.float32).mean(-1)
    band = gray.shape[0] / bits
    index = 0
    for k in range(bits):
        rows = gray[int(round(k * band + band / 4)):int(round((k + 1) * band - band / 4))]
        index = (index << 1) | int(rows.mean() > 127.5)
    return index


def encode_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float | Fraction = 30,
    keyframe_interval: int = 30,
    start_frame: int = 0,
    crf: int = 18,
    preset: str = "veryfast",
    bframes: int = 3,
    timestamps: list[int] | None = None,
    codec: str = "libx264",
    container_format: str | None = None,
) -> Path:
    """Encode uint8 (H, W, 3) RGB frames with a keyframe exactly every `keyframe_interval` frames.

    H.264 by default; `codec` (e.g. mpeg4, mpeg2video, libvpx-vp9, flv) and `container_format` (e.g. avi,
    mpegts, mpeg, flv; default: from the file's suffix) give other kinds of files. `start_frame` shifts every
    timestamp by that many frames (a stream that does not start at 0); `timestamps` gives each frame's own
    time in frames instead of 0, 1, 2... (gaps make a variable rate).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w", format=container_format) as container:
        stream = None
        for i, rgb in enumerate(frames):
            if stream is None:
                height, width = rgb.shape[:2]
                stream = container.add_stream(codec, rate=rate)
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                stream.codec_context.time_base = 1 / rate
                if codec == "libx264":
                    stream.options = {
                        "crf": str(crf), "preset": preset, "g": str(keyframe_interval),
                        "keyint_min": str(keyframe_interval), "sc_threshold": "0", "bf": str(bframes),
                    }
                else:  # the other encoders: a fixed keyframe interval and bit rate, B-frames where they have them
                    stream.options = {"g": str(keyframe_interval)}
                    stream.codec_context.bit_rate = 2_000_000
                    if codec in ("mpeg4", "mpeg2video"):
                        stream.codec_context.max_b_frames = bframes
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = start_frame + (i if timestamps is None else timestamps[i])
            frame.time_base = 1 / rate
            for packet in stream.encode(frame):
                container.mux(packet)
        if stream is None:
            raise ValueError("no frames to encode")
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_indexed_video(
    path: str | Path,
    num_frames: int,
    fps: float | Fraction = 30,
    keyframe_interval: int = 30,
    width: int = 64,
    height: int = 48,
    bits: int = 8,
    start_frame: int = 0,
    timestamps: list[int] | None = None,
    codec: str = "libx264",
    container_format: str | None = None,
) -> Path:
    """A video (H.264 unless `codec` says otherwise) whose frame `i` shows the barcode of `i` (see `barcode_frame`).

    With `timestamps`, the frames are shown at those times (in frames) and each shows its own time.
    """
    shown = list(range(num_frames)) if timestamps is None else timestamps
    frames = (barcode_frame(t, width, height, bits) for t in shown)
    return encode_video(path, frames, fps, keyframe_interval, start_frame=start_frame, timestamps=timestamps,
                        codec=codec, container_format=container_format)


def make_constant_video(path: str | Path, num_frames: int, image: np.ndarray, fps: float = 30) -> Path:
    """A video whose frames all show `image` (uint8 (H, W, 3)), with a keyframe only at the start."""
    return encode_video(path, (image for _ in range(num_frames)), fps, keyframe_interval=num_frames + 1, crf=0)
