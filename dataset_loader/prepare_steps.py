"""The steps of `python -m dataset_loader.prepare`, one video or one file at a time: which videos, where each goes,
writing one (every frame or every k-th, resized, as JPEG), checking one, copying the lists.

Frame i of a prepared file is frame i * k of its source as `VideoReader` numbers it, k = 1 unless a lower
frame rate was asked for (`frame_step`); the file's header holds the kept rate, so the dataset's gaps in time
stay right.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ml.files import atomic_file

from .frames_file import FramesReader, write_frames
from .random_temporal_subsample import MIN_GAP, REFERENCE_FPS
from .video import FRAMES_SUFFIX, READ_ERRORS, VIDEO_EXTENSIONS, VideoError, VideoReader

LIST_SUFFIXES = (".csv", ".txt")
MIN_KEPT_FPS = REFERENCE_FPS / MIN_GAP  # 7.5: one kept frame apart is then the smallest gap, 4 frames at 30 fps


def source_videos(src: Path) -> list[Path]:
    """Every video file under `src` (prepared `.frames` files excluded), sorted."""
    found = []
    for folder, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(VIDEO_EXTENSIONS) and not name.endswith(FRAMES_SUFFIX):
                found.append(Path(folder) / name)
    return found


def prepared_path(video: Path, src: Path, dst: Path) -> Path:
    return (dst / video.relative_to(src)).with_suffix(FRAMES_SUFFIX)


def damage(path: Path) -> str | None:
    """Why the `.frames` file at `path` is not a whole, intact preparation (None when it is): every checksum of
    its header, index and frames is checked, so this reads the whole file."""
    try:
        with FramesReader(path) as reader:
            reader.verify()
    except VideoError as err:
        return str(err)
    return None


def intact_frames(path: Path) -> int | None:
    """The frame count of a whole `.frames` file whose every checksum holds, None for anything else."""
    if not path.is_file():
        return None
    try:
        with FramesReader(path) as reader:
            reader.verify()
            return reader.num_frames
    except VideoError:
        return None


def is_prepared(path: Path) -> bool:
    """A whole `.frames` file whose every checksum holds (what a finished preparation left)."""
    return intact_frames(path) is not None


def verify_tree(dst: str | os.PathLike, workers: int | None = None, progress: bool = True) -> dict:
    """Check every `.frames` file under `dst` (all their checksums); -> {"files": n, "damaged": [{path, reason}]}."""
    dst = Path(dst)
    if not dst.is_dir():
        raise FileNotFoundError(f"{dst} is not a folder of prepared videos")
    files = sorted(dst.rglob(f"*{FRAMES_SUFFIX}"))
    damaged = []
    with ProcessPoolExecutor(max_workers=workers or min(len(files), os.cpu_count() or 1) or 1) as pool:
        for path, reason in tqdm(zip(files, pool.map(damage, files, chunksize=8)), total=len(files),
                                 desc="verifying", unit="file", disable=not progress):
            if reason is not None:
                damaged.append({"path": str(path), "reason": reason})
    return {"files": len(files), "damaged": damaged}


def frame_step(source_fps: float, fps: float) -> int:
    """Keep every k-th frame: k the whole step nearest `source_fps / fps` (0: every frame), e.g. 2 for 30 or 29.97
    fps at 15, and 25 fps at 15 (12.5 fps); never a rate under MIN_KEPT_FPS, where one kept frame apart is the
    smallest gap (4 frames at 30 fps): every gap sampling draws stays representable."""
    if not fps or source_fps <= fps:
        return 1
    step = max(1, round(source_fps / fps))
    while step > 1 and source_fps / step < MIN_KEPT_FPS:
        step -= 1
    return step


def resized_frames(reader: VideoReader, short_side: int, step: int = 1) -> Iterator[np.ndarray]:
    """Every `step`-th frame in order (uint8 RGB), resized so that the short side is at most `short_side` (0: kept)."""
    for i, frame in reader.frames_in_order():
        if i % step:
            continue
        h, w = frame.shape[:2]
        if short_side and min(h, w) > short_side:
            scale = short_side / min(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            frame = np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR))
        yield frame


def ensure_prepared(video: Path, target: Path, short_side: int, quality: int, fps: float = 0.0,
                    check: bool = True) -> dict:
    """`target` prepared from `video`: kept when whole and intact (`check`), else written anew. -> {"status": kept,
    done or unreadable, "reason", "frames", "bytes"}; frame i of `target` is frame i * step of `video`."""
    if check and (frames := intact_frames(target)) is not None:
        return {"status": "kept", "reason": "", "frames": frames, "bytes": target.stat().st_size}
    try:
        with VideoReader(video) as reader, atomic_file(target) as out:
            step = frame_step(float(reader.fps), fps)
            count = write_frames(out, resized_frames(reader, short_side, step), Fraction(reader.fps) / step, quality)
        if count < 2:
            target.unlink(missing_ok=True)
            return {"status": "unreadable", "reason": f"{count} frame(s) kept, a pair needs 2", "frames": 0,
                    "bytes": 0}
        return {"status": "done", "reason": "", "frames": count, "bytes": target.stat().st_size}
    except READ_ERRORS as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        return {"status": "unreadable", "reason": reason, "frames": 0, "bytes": 0}


def prepare_one(video: Path, target: Path, short_side: int, quality: int, fps: float = 0.0) -> tuple[str, str]:
    """Write `target` from `video`; ("done", "") or ("unreadable", reason)."""
    result = ensure_prepared(video, target, short_side, quality, fps, check=False)
    return result["status"], result["reason"]


def copy_lists(src: Path, dst: Path, videos: list[Path]) -> list[Path]:
    """Copy the annotation CSVs and list files; entries naming a source video name its prepared file instead."""
    sources = {v.resolve() for v in videos}
    copied = []
    for folder, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if path.suffix.lower() not in LIST_SUFFIXES:
                continue
            lines = []
            for line in path.read_text(errors="replace").splitlines():
                entry, sep, rest = line.partition(" ")
                target = Path(entry) if Path(entry).is_absolute() else path.parent / entry
                if entry and target.resolve() in sources:
                    prepared = prepared_path(target.resolve(), src.resolve(), dst.resolve())
                    entry = str(prepared) if Path(entry).is_absolute() else str(Path(entry).with_suffix(FRAMES_SUFFIX))
                lines.append(entry + sep + rest)
            out = dst / path.relative_to(src)
            with atomic_file(out, "w") as f:
                f.write("\n".join(lines) + "\n")
            copied.append(out)
    return copied
