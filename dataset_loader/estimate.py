"""How much a prepared copy will take, said before the work starts (`prepare` prints it; `--estimate-only` stops there).

A few videos spread over the list are prepared first and their output measured in bytes per second of video;
the durations of all the videos come from their containers' headers (PyAV opens each, decodes nothing). The
estimate is the product: it follows the settings (short side, JPEG quality, frame rate kept) because the few
videos were prepared with them, and the content, as far as a few videos show it.
"""

from __future__ import annotations

from concurrent.futures import Executor
from pathlib import Path

from .video import READ_ERRORS, VideoReader

ESTIMATE_VIDEOS = 4  # prepared to measure bytes per video-second; part of the work in a real run
GB = 1e9


def video_seconds(path: Path) -> float:
    """The duration of a video from its header (frames / rate), 0.0 when it cannot be opened."""
    try:
        with VideoReader(path) as reader:
            return reader.duration
    except READ_ERRORS:
        return 0.0


def sample_of(videos: list[Path], count: int = ESTIMATE_VIDEOS) -> list[Path]:
    """`count` videos spread evenly over the list: the first few of a sorted Kinetics tree are all one class."""
    if len(videos) <= count:
        return list(videos)
    return [videos[round(i * (len(videos) - 1) / (count - 1))] for i in range(count)] if count > 1 else videos[:1]


def durations(pool: Executor, videos: list[Path]) -> dict[Path, float]:
    """Every video's duration in seconds, read in the pool's processes (an open each; thousands a minute per core)."""
    return dict(zip(videos, pool.map(video_seconds, videos, chunksize=32)))


def settings_text(settings: dict) -> str:
    """The settings as the command line gives them, in words."""
    side = f"short side {settings['short_side']}" if settings["short_side"] else "full size"
    rate = f"about {settings['fps']:g} fps" if settings.get("fps") else "every frame"
    return f"{side}, JPEG quality {settings['quality']}, {rate}"


def storage_estimate(seconds: dict[Path, float], measured: dict[Path, int], settings: dict) -> dict:
    """The estimate for all of `seconds`' videos from the bytes `measured` on some of them (unreadable ones left
    out): bytes per video-second of those x the total duration."""
    sample_seconds = sum(seconds[v] for v in measured if seconds[v] > 0)
    sample_bytes = sum(b for v, b in measured.items() if seconds[v] > 0)
    rate = sample_bytes / sample_seconds if sample_seconds else None
    total = sum(seconds.values())
    return {"videos": len(seconds), "seconds": total, "unreadable_headers": sum(1 for s in seconds.values() if not s),
            "sample_videos": sum(1 for v in measured if seconds[v] > 0), "sample_seconds": sample_seconds,
            "sample_bytes": sample_bytes, "bytes_per_second": rate, "bytes": None if rate is None else rate * total,
            "settings": settings_text(settings)}


def format_estimate(estimate: dict) -> str:
    """One line: estimated N GB for M videos (X hours of video) at <settings>, and what it rests on."""
    if not estimate["videos"]:
        return "no videos to prepare here: nothing to estimate"
    if estimate["bytes"] is None:
        return (f"no estimate: none of the sampled videos could be prepared and timed; "
                f"{estimate['videos']:,} videos ({estimate['seconds'] / 3600:,.2f} hours of video)")
    unread = f"; {estimate['unreadable_headers']} without a readable header" if estimate["unreadable_headers"] else ""
    size = f"{estimate['bytes'] / GB:,.2f} GB" if estimate["bytes"] >= GB else f"{estimate['bytes'] / 1e6:,.1f} MB"
    return (f"estimated {size} for {estimate['videos']:,} videos "
            f"({estimate['seconds'] / 3600:,.2f} hours of video) at {estimate['settings']}: "
            f"{estimate['bytes_per_second'] / 1e3:,.1f} kB per video-second measured on {estimate['sample_videos']} of "
            f"them{unread}")
