"""Prepare a video tree for training: each video as a `.frames` file of JPEG frames (short side 256).

    python -m dataset_loader.prepare /data/kinetics400 /data/kinetics400_prepared --workers 16
    python -m dataset_loader.prepare dataset/sample outputs/sample_prepared --short-side 256 --quality 90

`KineticsFramePairs(DST)` then reads the copy with the same splits, classes and frame indexing as the
source: every video file under SRC becomes `DST/<same relative path>.frames` (frame i = frame i of the
source as `VideoReader` numbers it), and the annotation CSVs and list files are copied, list entries
pointing at the prepared files. Why this format: measured in BENCHMARKS.md section 1, reading a pair
from it takes a fraction of what decoding the source takes (no seek to a keyframe, no decode forward),
for some 3-25x the bytes (JPEG quality 90).

Runs in parallel processes with a progress bar. An interrupted run continues without redoing finished
files (a finished file is a whole one whose every checksum holds: a rerun reads each once to check it, and
prepares a damaged one anew) and never keeps a half-written one (each is written to a temporary name and
renamed when complete; temporaries of a dead run are removed). `--verify DST` checks a prepared tree and
lists its damaged files. Sources that
cannot be read are skipped and listed, with the reason, in DST/prepare_report.json, which also holds
the sizes before and after.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ml.files import atomic_file, remove_temp_files

from .frames_file import FramesReader, write_frames
from .video import FRAMES_SUFFIX, READ_ERRORS, VIDEO_EXTENSIONS, VideoError, VideoReader

REPORT_NAME = "prepare_report.json"
LOCK_NAME = ".prepare.lock"
SETTINGS_NAME = "prepare_settings.json"
LIST_SUFFIXES = (".csv", ".txt")


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


def is_prepared(path: Path) -> bool:
    """A whole `.frames` file whose every checksum holds (what a finished preparation left)."""
    return path.is_file() and damage(path) is None


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


def resized_frames(reader: VideoReader, short_side: int) -> Iterator[np.ndarray]:
    """The video's frames in order (uint8 RGB), resized so that the short side is at most `short_side` (0: kept)."""
    for _, frame in reader.frames_in_order():
        h, w = frame.shape[:2]
        if short_side and min(h, w) > short_side:
            scale = short_side / min(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            frame = np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR))
        yield frame


def prepare_one(video: Path, target: Path, short_side: int, quality: int) -> tuple[str, str]:
    """Write `target` from `video`; ("done", "") or ("unreadable", reason)."""

    try:
        with VideoReader(video) as reader, atomic_file(target) as out:
            count = write_frames(out, resized_frames(reader, short_side), Fraction(reader.fps), quality)
        if count < 2:
            target.unlink(missing_ok=True)
            return "unreadable", f"{count} frame(s) decode, a pair needs 2"
        return "done", ""
    except READ_ERRORS as err:
        return "unreadable", str(err).splitlines()[0] if str(err) else type(err).__name__


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
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("\n".join(lines) + "\n")
            copied.append(out)
    return copied


class PrepareBusyError(RuntimeError):
    """Another `prepare` is writing into the same DST."""


def _lock(dst: Path):
    """Hold DST's lock (released when the process ends, however it ends): one `prepare` per DST at a time."""
    handle = open(dst / LOCK_NAME, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise PrepareBusyError(f"another prepare (pid {holder}) is writing into {dst}; wait for it or "
                               f"choose another DST") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def prepare(src: str | os.PathLike, dst: str | os.PathLike, short_side: int = 256, quality: int = 90,
            workers: int | None = None, progress: bool = True) -> dict:
    """Prepare every video under `src` into `dst` (see the module's description); returns the report."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"SRC {src} is not a folder of videos")
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise ValueError(f"DST {dst} must not be SRC or inside it")
    if short_side < 0 or not 1 <= quality <= 100:
        raise ValueError(f"--short-side must be >= 0 and --quality in 1..100, got {short_side}, {quality}")
    videos = source_videos(src)
    if not videos:
        raise ValueError(f"no video files under {src}")
    dst.mkdir(parents=True, exist_ok=True)
    lock = _lock(dst)
    try:
        return _prepare_locked(src, dst, videos, short_side, quality, workers, progress)
    finally:
        lock.close()


def _prepare_locked(src: Path, dst: Path, videos: list[Path], short_side: int, quality: int, workers: int | None,
                    progress: bool) -> dict:
    settings = {"short_side": short_side, "quality": quality}
    settings_file = dst / SETTINGS_NAME
    if settings_file.exists():  # a run continued must not mix two settings in one copy
        before = json.loads(settings_file.read_text())
        if before != settings:
            raise ValueError(f"{dst} was prepared with --short-side {before['short_side']} --quality "
                             f"{before['quality']}; continue with those, or choose another DST")
    else:
        settings_file.write_text(json.dumps(settings))
    for folder, _, _ in os.walk(dst):  # temporaries of an interrupted run (no live prepare: we hold the lock)
        remove_temp_files(Path(folder))
    targets = {v: prepared_path(v, src, dst) for v in videos}
    todo = [v for v in videos if not is_prepared(targets[v])]
    unreadable, started = [], time.perf_counter()
    workers = workers or min(len(todo), os.cpu_count() or 1) or 1
    bar = tqdm(total=len(videos), initial=len(videos) - len(todo), desc="preparing", unit="video",
               disable=not progress)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(prepare_one, v, targets[v], short_side, quality): v for v in todo}
        for future in as_completed(futures):
            status, reason = future.result()
            if status != "done":
                unreadable.append({"path": str(futures[future]), "reason": reason})
            bar.update()
    bar.close()
    copy_lists(src, dst, videos)
    before = sum(v.stat().st_size for v in videos)
    after = sum(t.stat().st_size for t in targets.values() if t.is_file())
    report = {"source": str(src), "prepared": str(dst), "short_side": short_side, "quality": quality,
              "videos": len(videos), "prepared_now": len(todo) - len(unreadable),
              "already_prepared": len(videos) - len(todo), "unreadable": sorted(unreadable, key=lambda r: r["path"]),
              "bytes_before": before, "bytes_after": after, "seconds": time.perf_counter() - started}
    (dst / REPORT_NAME).write_text(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dataset_loader.prepare", description=__doc__.splitlines()[0])
    p.add_argument("src", nargs="?", help="a video tree KineticsFramePairs reads (a Kinetics tree, a folder with CSVs "
                                         "or lists)")
    p.add_argument("dst", nargs="?", help="where the prepared copy goes (created; an interrupted run continues in "
                                         "it, redoing any file that fails its checksums)")
    p.add_argument("--verify", metavar="DST", help="check every .frames file under DST against its checksums and "
                                                  "list the damaged ones (exit 1 if any); nothing is written")
    p.add_argument("--short-side", type=int, default=256, help="resize frames so the short side is at most this "
                                                               "(0: keep the size)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality")
    p.add_argument("--workers", type=int, default=None, help="processes (default: the cores)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.verify is not None:
        if a.src or a.dst:
            p.error("--verify DST takes no SRC DST")
        return _verify_command(p.prog, a.verify, a.workers, not a.no_progress)
    if a.src is None or a.dst is None:
        p.error("give SRC and DST (or --verify DST)")
    try:
        report = prepare(a.src, a.dst, a.short_side, a.quality, a.workers, progress=not a.no_progress)
    except (FileNotFoundError, ValueError, PrepareBusyError) as err:
        print(f"{p.prog}: error: {err}", file=sys.stderr)
        return 1
    mb = 1e6
    print(f"{report['videos']} videos: {report['prepared_now']} prepared now, {report['already_prepared']} already "
          f"prepared, {len(report['unreadable'])} unreadable (listed in {Path(a.dst) / REPORT_NAME}); size "
          f"{report['bytes_before'] / mb:,.1f} MB before, {report['bytes_after'] / mb:,.1f} MB after "
          f"({report['bytes_after'] / max(1, report['bytes_before']):.1f}x)")
    for item in report["unreadable"][:5]:
        print(f"  skipped {item['path']}: {item['reason']}")
    return 0


def _verify_command(prog: str, dst: str, workers: int | None, progress: bool) -> int:
    try:
        result = verify_tree(dst, workers, progress)
    except FileNotFoundError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
    print(f"{result['files']} prepared files under {dst}: {len(result['damaged'])} damaged")
    for item in result["damaged"]:
        print(f"  {item['reason']}")
    if result["damaged"]:
        print("running `python -m dataset_loader.prepare SRC DST` again prepares them anew")
    return 1 if result["damaged"] else 0


if __name__ == "__main__":
    sys.exit(main())
