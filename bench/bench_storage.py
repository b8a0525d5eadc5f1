"""Storage settings of `python -m dataset_loader.prepare`: what each costs in bytes, in fidelity and in loading speed.

Each setting (short side, JPEG quality, frame rate kept) prepares the same videos the way `prepare` does
(`ensure_prepared`; cached under outputs/bench-data-clips/storage-<set>/), and is measured for:
  kB per video-second  bytes of the prepared files / the videos' duration from their headers (what the estimate
                       `prepare` prints multiplies by the duration of a tree)
  bytes vs original    against the source files
  PSNR                 first, middle and last kept frame of each video against the source's frame at the same time,
                       resized to the copy's size: the JPEG loss only (a smaller short side loses detail too)
  pairs/s              `KineticsFramePairs` on the copy (R = 2, 224 px crops, 8-bit), one core, the settings and
                       the original files taking turns item by item (as in bench_data)
  Kinetics-400         kB per video-second x ~240k training clips of ~10 s (667 hours): an extrapolation
on dataset/sample (real clips, 10-30 fps) and the generated 10 s, 30 fps, 340x256 clips (`key1s`, made from the
sample's footage; Kinetics is mostly 30 fps, so its row is the closer extrapolation).

    python -m bench.bench_storage                  # prints the table; --json FILE saves it
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench import save_json
from bench.bench_data import CLIP_DIR, make_ours, median_ratio, pin_to_one_core, psnr, summarise, time_loaders
from bench.clips import SAMPLE_DIR, make_bench_clips
from dataset_loader.dataset import KINETICS400_TRAIN_VIDEOS
from dataset_loader.estimate import video_seconds
from dataset_loader.frames_file import FramesReader
from dataset_loader.prepare import ensure_prepared

KINETICS400_CLIP_SECONDS = 10  # the clips are cut to 10 s (a few are shorter)
KINETICS400_TRAIN_SECONDS = KINETICS400_TRAIN_VIDEOS * KINETICS400_CLIP_SECONDS  # about 667 hours
DEFAULT_SETTING = "256 px, q90, every frame (default)"
SETTINGS = {  # name: (short side, JPEG quality, fps kept; 0 = every frame)
    DEFAULT_SETTING: (256, 90, 0),
    "256 px, q75, every frame": (256, 75, 0),
    "256 px, q90, 15 fps": (256, 90, 15),
    "256 px, q75, 15 fps": (256, 75, 15),
    "224 px, q90, every frame": (224, 90, 0),
}


def prepared_set(paths: list[Path], folder: Path, short_side: int, quality: int, fps: float) -> list[Path]:
    """`paths` prepared at one setting into `folder` (kept while whole and intact, as a rerun of `prepare` does)."""
    out = []
    for path in paths:
        target = folder / f"{path.stem}.frames"
        result = ensure_prepared(path, target, short_side, quality, fps)
        if result["status"] == "unreadable":
            raise RuntimeError(f"could not prepare {path}: {result['reason']}")
        out.append(target)
    return out


def _frame_count(path: Path) -> int:
    with FramesReader(path) as reader:
        return reader.num_frames


def measure_set(name: str, paths: list[Path], folder: Path, settings: dict[str, tuple[int, int, float]],
                img_size: int, items: int, runs: int, warmup: int) -> list[dict]:
    """One row per setting (and one for the original files) of one set of videos."""
    seconds = sum(video_seconds(p) for p in paths)
    before = sum(p.stat().st_size for p in paths)
    copies = {s: prepared_set(paths, folder / f"s{v[0]}-q{v[1]}-fps{v[2]:g}", *v) for s, v in settings.items()}
    loaders = {"original files": make_ours(paths, 2, img_size, "uint8")}
    loaders.update({s: make_ours(files, 2, img_size, "uint8") for s, files in copies.items()})
    rates = time_loaders(loaders, items, runs, warmup)
    rows = []
    for setting, rate in rates.items():
        files = copies.get(setting, paths)
        size = sum(p.stat().st_size for p in files)
        short_side, quality, fps = settings.get(setting, (0, 0, 0))
        frames = sum(_frame_count(p) for p in files) if setting in copies else None
        rows.append({"set": name, "setting": setting, "short_side": short_side, "quality": quality, "fps": fps,
                     "videos": len(paths), "video_seconds": seconds, "frames": frames, "bytes": size,
                     "kB_per_video_second": size / seconds / 1e3, "bytes vs original": size / before,
                     "psnr_db": psnr(paths, files, short_side) if setting in copies else float("inf"),
                     **summarise(rate), "vs original": median_ratio(rate, rates["original files"]),
                     "kinetics400_train_gb": size / seconds * KINETICS400_TRAIN_SECONDS / 1e9})
    return rows


def run_benchmark(items: int = 40, runs: int = 5, warmup: int = 1, clip_dir: Path = CLIP_DIR, img_size: int = 224,
                  sets: tuple[str, ...] = ("sample", "key1s"), clip_seconds: float = 10.0,
                  clip_size: tuple[int, int] = (340, 256), settings: dict | None = None) -> list[dict]:
    """Rows of every set x setting. A tiny run for a smoke test: run_benchmark(items=2, runs=1, warmup=0,
    sets=("key1s",), clip_seconds=1, clip_size=(64, 48), img_size=32)."""
    settings = settings or SETTINGS
    rows = []
    for name in sets:
        if name == "sample":
            paths = sorted(SAMPLE_DIR.glob("*/*/*.mp4"))
        else:
            paths = make_bench_clips(clip_dir, float(name[3:-1]), seconds=clip_seconds, width=clip_size[0],
                                     height=clip_size[1])
        folder = clip_dir / f"storage-{name}-{clip_seconds:g}s-{clip_size[0]}x{clip_size[1]}"
        rows += measure_set(name, paths, folder, settings, img_size, items, runs, warmup)
    return rows


def format_storage(rows: list[dict]) -> str:
    lines = ["| set | setting (`--short-side`, `--quality`, `--fps`) | kB per video-second | bytes vs original | "
             "PSNR vs the source (dB) | pairs/s (R=2, 8-bit), one core | speed vs original | Kinetics-400 train, "
             "extrapolated |", "|---|---|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        # the originals' bytes per second say nothing of Kinetics' own files (the generated clips are re-encoded)
        kinetics = "-" if r["setting"] == "original files" else f"{r['kinetics400_train_gb']:,.0f} GB"
        lines.append(f"| {r['set']} ({r['videos']} videos, {r['video_seconds']:.0f} s) | {r['setting']} | "
                     f"{r['kB_per_video_second']:.0f} | {r['bytes vs original']:.1f}x | {r['psnr_db']:.1f} | "
                     f"{r['pairs_per_s']:.1f} ({r['min']:.1f}-{r['max']:.1f}) | {r['vs original']:.2f}x | "
                     f"{kinetics} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=40, help="items (videos) loaded per timed run")
    parser.add_argument("--runs", type=int, default=5, help="timed runs; the median is reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    parser.add_argument("--clip-dir", type=Path, default=CLIP_DIR, help="where clips and prepared copies are cached")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the process to one core")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    core = None if args.no_pin else pin_to_one_core()
    print(f"storage settings: median of {args.runs} runs of {args.items} items after {args.warmup} warm-up; "
          f"{'core ' + str(core) if core is not None else 'unpinned'}")
    rows = run_benchmark(args.items, args.runs, args.warmup, args.clip_dir)
    print(format_storage(rows))
    save_json(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
