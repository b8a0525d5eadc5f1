"""Prepare a video tree for training: each video as a `.frames` file of JPEG frames (short side 256).

    python -m dataset_loader.prepare /data/kinetics400 /data/kinetics400_prepared --workers 16
    python -m dataset_loader.prepare dataset/sample outputs/sample_prepared --short-side 256 --quality 90
    python -m dataset_loader.prepare SRC DST --shard 3/16            # machine 3 of 16; then --merge DST once
    python -m dataset_loader.prepare SRC --estimate-only --fps 15    # the storage it would take, nothing written

`KineticsFramePairs(DST)` then reads the copy with the same splits, classes and frame indexing as the
source: every video file under SRC becomes `DST/<same relative path>.frames` (frame i = frame i of the
source as `VideoReader` numbers it; with `--fps F`, every k-th frame is kept and frame i = source frame i*k,
the header holding the kept rate so that gaps in time stay right), and the annotation CSVs and list files
are copied, list entries pointing at the prepared files. Why this format: measured in BENCHMARKS.md section 1,
reading a pair from it takes a fraction of what decoding the source takes (no seek to a keyframe, no decode
forward), for some 3-25x the bytes (JPEG quality 90).

Before the bulk of the work it prints a storage estimate: a few videos are prepared first and their bytes per
video-second, times the duration of all the videos (read from their headers), gives the size of the copy.

Runs in parallel processes with a progress bar. An interrupted run continues without redoing finished
files (a finished file is a whole one whose every checksum holds: a rerun reads each once to check it, and
prepares a damaged one anew) and never keeps a half-written one (each is written to a temporary name and
renamed when complete; temporaries of a dead run are removed). `--verify DST` checks a prepared tree and
lists its damaged files. Sources that cannot be read are skipped and listed, with the reason, in
DST/prepare_report.json, which also holds the sizes before and after. With `--shard I/N`, N machines prepare
disjoint parts of one DST side by side (dataset_loader/shards.py: the split, the manifests, the merge).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ml.files import atomic_file, remove_temp_files

from .estimate import ESTIMATE_VIDEOS, durations, format_estimate, sample_of, storage_estimate
from .prepare_steps import (  # noqa: F401  (prepare_one, resized_frames, is_prepared, damage: used from here)
    MIN_KEPT_FPS,
    copy_lists,
    damage,
    ensure_prepared,
    is_prepared,
    prepare_one,
    prepared_path,
    resized_frames,
    source_videos,
    verify_tree,
)
from .shards import Manifest, ShardError, check_shard_count, lock_path, merge_shards, parse_shard, shard_of

REPORT_NAME = "prepare_report.json"
LOCK_NAME = ".prepare.lock"
SETTINGS_NAME = "prepare_settings.json"
MANIFEST_EVERY_S = 30.0  # a shard's manifest is rewritten at most this often while it works (and at the end)


class PrepareBusyError(RuntimeError):
    """Another `prepare` is writing into the same DST (or preparing the same shard of it)."""


def _lock(path: Path, what: str):
    """Hold the lock file `path` (released when the process ends, however it ends): one `prepare` of `what` at a
    time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise PrepareBusyError(f"another prepare (pid {holder}) is writing {what}; wait for it or choose another "
                               f"DST") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


@dataclass
class _Job:
    """One run of `prepare`: what it reads, where and how it writes, the part it owns and who hears the estimate."""

    src: Path
    dst: Path
    videos: list[Path]
    settings: dict
    workers: int | None
    progress: bool
    shard: tuple[int, int] | None
    on_estimate: Callable[[dict], None] | None


def _settings(short_side: int, quality: int, fps: float) -> dict:
    return {"short_side": short_side, "quality": quality, "fps": float(fps)}


def _flags(settings: dict) -> str:
    fps = f" --fps {settings['fps']:g}" if settings.get("fps") else ""
    return f"--short-side {settings['short_side']} --quality {settings['quality']}{fps}"


def _check_arguments(src: Path, dst: Path | None, settings: dict, shard: tuple[int, int] | None) -> list[Path]:
    """Every check that needs no work, one line each; -> the source videos."""
    if not src.is_dir():
        raise FileNotFoundError(f"SRC {src} is not a folder of videos")
    if dst is not None and (dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents):
        raise ValueError(f"DST {dst} must not be SRC or inside it")
    if settings["short_side"] < 0 or not 1 <= settings["quality"] <= 100:
        raise ValueError(f"--short-side must be >= 0 and --quality in 1..100, got {settings['short_side']}, "
                         f"{settings['quality']}")
    if settings["fps"] and not settings["fps"] >= MIN_KEPT_FPS:
        raise ValueError(f"--fps must be 0 (every frame) or at least {MIN_KEPT_FPS:g} (the smallest gap, 4 frames "
                         f"at 30 fps, is then one kept frame), got {settings['fps']:g}")
    if shard is not None:
        parse_shard(f"{shard[0]}/{shard[1]}")
    videos = source_videos(src)
    if not videos:
        raise ValueError(f"no video files under {src}")
    if shard is not None and dst is not None:
        check_shard_count(dst, shard[1])
    return videos


def owned_videos(src: Path, videos: list[Path], shard: tuple[int, int] | None) -> list[Path]:
    """The videos shard (I, N) prepares (all of them without a shard), in order."""
    if shard is None:
        return list(videos)
    return [v for v in videos if shard_of(v.relative_to(src).as_posix(), shard[1]) == shard[0]]


def prepare(src: str | os.PathLike, dst: str | os.PathLike, short_side: int = 256, quality: int = 90,
            workers: int | None = None, progress: bool = True, fps: float = 0.0, shard: tuple[int, int] | None = None,
            on_estimate: Callable[[dict], None] | None = None) -> dict:
    """Prepare every video under `src` into `dst` (see the module's description); returns the report.

    `fps`: keep frames at about this rate (0: every frame). `shard=(I, N)`: only the videos shard I of N owns,
    recorded in DST/.manifests (then `merge`). `on_estimate`: given the storage estimate before the bulk of the
    work (a few videos are prepared to measure it).
    """
    src, dst = Path(src), Path(dst)
    settings = _settings(short_side, quality, fps)
    videos = _check_arguments(src, dst, settings, shard)
    dst.mkdir(parents=True, exist_ok=True)
    if shard is None:
        lock = _lock(dst / LOCK_NAME, f"into {dst}")
    else:
        lock = _lock(lock_path(dst, *shard), f"shard {shard[0]}/{shard[1]} of {dst}")
    try:
        return _prepare_locked(_Job(src, dst, videos, settings, workers, progress, shard, on_estimate))
    finally:
        lock.close()


def _check_settings(dst: Path, settings: dict) -> None:
    """One setting per DST: a copy continued must not mix two (files of version 1 of this file lack fps: 0)."""
    path = dst / SETTINGS_NAME
    if path.exists():
        before = {"fps": 0, **json.loads(path.read_text())}
        if before != settings:
            raise ValueError(f"{dst} was prepared with {_flags(before)}; continue with those, or choose another DST")
    else:
        with atomic_file(path, "w") as f:
            f.write(json.dumps(settings))


def _remove_temporaries(job: _Job, targets: dict[Path, Path]) -> None:
    """Temporaries of an interrupted run (no live writer: we hold the lock); a shard only its own, since other
    shards may be writing beside it."""
    if job.shard is None:
        for folder, _, _ in os.walk(job.dst):
            remove_temp_files(Path(folder))
        return
    by_folder: dict[Path, set[str]] = {}
    for target in targets.values():
        by_folder.setdefault(target.parent, set()).add(target.name)
    for folder, names in by_folder.items():
        remove_temp_files(folder, names)


def _prepare_locked(job: _Job) -> dict:
    _check_settings(job.dst, job.settings)
    owned = owned_videos(job.src, job.videos, job.shard)
    targets = {v: prepared_path(v, job.src, job.dst) for v in owned}
    _remove_temporaries(job, targets)
    manifest = None
    if job.shard is not None:
        manifest = Manifest(job.dst, *job.shard, job.src, [v.relative_to(job.src).as_posix() for v in job.videos],
                            job.settings, {v.relative_to(job.src).as_posix(): v.stat().st_size for v in owned})
        manifest.write()
    started, results, estimate = time.perf_counter(), {}, None
    with ProcessPoolExecutor(max_workers=job.workers or min(len(owned), os.cpu_count() or 1) or 1) as pool:
        if job.on_estimate is not None:  # a few videos first, measured: the estimate comes before the bulk
            sample = sample_of(owned, ESTIMATE_VIDEOS)
            _run(pool, job, sample, targets, results, manifest, None)
            estimate = _estimate(pool, owned, {v: results[v] for v in sample}, job.settings)
            job.on_estimate(estimate)
        with tqdm(total=len(owned), initial=len(results), desc="preparing", unit="video",
                  disable=not job.progress) as bar:
            _run(pool, job, [v for v in owned if v not in results], targets, results, manifest, bar)
    lists = copy_lists(job.src, job.dst, job.videos) if job.shard is None or job.shard[0] == 1 else []
    report = _report(job, owned, results, time.perf_counter() - started, estimate)
    if manifest is None:
        with atomic_file(job.dst / REPORT_NAME, "w") as f:
            f.write(json.dumps(report, indent=1))
    else:
        manifest.data["lists"] = [p.relative_to(job.dst).as_posix() for p in lists]
        manifest.write()
    return report


def _run(pool: Executor, job: _Job, videos: list[Path], targets: dict[Path, Path], results: dict[Path, dict],
         manifest: Manifest | None, bar: tqdm | None) -> None:
    """Each of `videos` kept if intact, else prepared, in the pool; outcomes into `results` (and the manifest)."""
    s = job.settings
    futures = {pool.submit(ensure_prepared, v, targets[v], s["short_side"], s["quality"], s["fps"]): v for v in videos}
    for future in as_completed(futures):
        video = futures[future]
        results[video] = future.result()
        if manifest is not None:
            manifest.record(video.relative_to(job.src).as_posix(), results[video])
            manifest.write(every=MANIFEST_EVERY_S)
        if bar is not None:
            bar.update()


def _estimate(pool: Executor, owned: list[Path], sample: dict[Path, dict], settings: dict) -> dict:
    measured = {v: r["bytes"] for v, r in sample.items() if r["status"] != "unreadable"}
    return storage_estimate(durations(pool, owned), measured, settings)


def _report(job: _Job, owned: list[Path], results: dict[Path, dict], seconds: float, estimate: dict | None) -> dict:
    unreadable = [{"path": str(v), "reason": r["reason"]} for v, r in results.items() if r["status"] == "unreadable"]
    statuses = [r["status"] for r in results.values()]
    report = {"source": str(job.src), "prepared": str(job.dst), **job.settings, "videos": len(owned),
              "prepared_now": statuses.count("done"), "already_prepared": statuses.count("kept"),
              "unreadable": sorted(unreadable, key=lambda r: r["path"]),
              "frames": sum(r["frames"] for r in results.values()),
              "bytes_before": sum(v.stat().st_size for v in owned),
              "bytes_after": sum(r["bytes"] for r in results.values()), "seconds": seconds}
    if job.shard is not None:
        report["shard"] = f"{job.shard[0]}/{job.shard[1]}"
    if estimate is not None:
        report["estimate"] = estimate
    return report


def estimate_storage(src: str | os.PathLike, short_side: int = 256, quality: int = 90, fps: float = 0.0,
                     shard: tuple[int, int] | None = None, workers: int | None = None) -> dict:
    """The storage estimate alone (`--estimate-only`): the few videos are prepared into a temporary folder,
    nothing is written elsewhere."""
    src = Path(src)
    settings = _settings(short_side, quality, fps)
    owned = owned_videos(src, _check_arguments(src, None, settings, shard), shard)
    sample = sample_of(owned, ESTIMATE_VIDEOS)
    with tempfile.TemporaryDirectory(prefix="prepare-estimate-") as tmp, \
            ProcessPoolExecutor(max_workers=workers or min(len(owned), os.cpu_count() or 1) or 1) as pool:
        targets = [prepared_path(v, src, Path(tmp)) for v in sample]
        n = len(sample)
        outcomes = pool.map(ensure_prepared, sample, targets, [short_side] * n, [quality] * n, [fps] * n)
        return _estimate(pool, owned, dict(zip(sample, outcomes)), settings)


# ---------------------------------------------------------------- the command line


def _parser() -> argparse.ArgumentParser:
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
    p.add_argument("--fps", type=float, default=0.0, help="keep frames at about this rate, every k-th frame "
                   f"(0, the default: every frame; at least {MIN_KEPT_FPS:g}; 15 halves a 30 fps video)")
    p.add_argument("--shard", metavar="I/N", help="prepare only the part of shard I of N (1 <= I <= N), recorded in "
                                                  "DST/.manifests; run every I, then --merge DST")
    p.add_argument("--merge", metavar="DST", help="check that all N shards of DST are there and finished, and write "
                                                 "its report; nothing is prepared")
    p.add_argument("--estimate-only", action="store_true", help="print the storage estimate and stop (SRC only; "
                                                                "a few videos are prepared into a temporary folder)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: the cores)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    a = p.parse_args(argv)
    if a.verify is not None or a.merge is not None:
        if a.src or a.dst or a.shard or a.estimate_only or (a.verify is not None and a.merge is not None):
            p.error("--verify DST and --merge DST take nothing else (no SRC DST, --shard or --estimate-only)")
        if a.merge is not None:
            return _merge_command(p.prog, Path(a.merge))
        return _verify_command(p.prog, a.verify, a.workers, not a.no_progress)
    if a.src is None or (a.dst is None and not a.estimate_only):
        p.error("give SRC and DST (or SRC --estimate-only, --verify DST, --merge DST)")
    try:
        shard = None if a.shard is None else parse_shard(a.shard)
        if a.estimate_only:
            print(format_estimate(estimate_storage(a.src, a.short_side, a.quality, a.fps, shard, a.workers)))
            return 0
        report = prepare(a.src, a.dst, a.short_side, a.quality, a.workers, not a.no_progress, a.fps, shard,
                         on_estimate=lambda e: print(format_estimate(e), flush=True))
    except (FileNotFoundError, ValueError, PrepareBusyError) as err:
        print(f"{p.prog}: error: {err}", file=sys.stderr)
        return 1
    _print_report(report, Path(a.dst))
    return 0


def _print_report(report: dict, dst: Path) -> None:
    mb = 1e6
    shard = report.get("shard")
    where = (f"listed in {dst / '.manifests' / ('shard-' + shard.replace('/', '-of-') + '.json')}" if shard
             else f"listed in {dst / REPORT_NAME}")
    print(f"{'shard ' + shard + ': ' if shard else ''}{report['videos']} videos: {report['prepared_now']} prepared "
          f"now, {report['already_prepared']} already prepared, {len(report['unreadable'])} unreadable ({where}); "
          f"size {report['bytes_before'] / mb:,.1f} MB before, {report['bytes_after'] / mb:,.1f} MB after "
          f"({report['bytes_after'] / max(1, report['bytes_before']):.1f}x)")
    for item in report["unreadable"][:5]:
        print(f"  skipped {item['path']}: {item['reason']}")
    if shard:
        print(f"when all {shard.split('/')[1]} shards are done: python -m dataset_loader.prepare --merge {dst}")


def _merge_command(prog: str, dst: Path) -> int:
    try:
        settings, report = merge_shards(dst)
        _check_settings(dst, settings)  # an un-sharded run into the same DST with other settings
    except (ShardError, ValueError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
    with atomic_file(dst / REPORT_NAME, "w") as f:
        f.write(json.dumps(report, indent=1))
    print(f"{report['shards']} shards merged: {report['videos']} videos, {report['prepared_files']} prepared "
          f"({report['frames']:,} frames), {len(report['unreadable'])} unreadable (listed in {dst / REPORT_NAME}); "
          f"size {report['bytes_before'] / 1e6:,.1f} MB before, {report['bytes_after'] / 1e6:,.1f} MB after")
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
