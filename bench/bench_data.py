"""Frame-pair loading speed: pairs per second per worker, ours against pytorchvideo and the decode bound.

The loaders, each on one CPU core with one decoding thread (what one data-loader worker gets):
  ours         KineticsFramePairs: open, seek, decode forward, RGB + crop/flip/normalise of the wanted frames
  prepared     KineticsFramePairs on the same videos prepared by `python -m dataset_loader.prepare` (JPEG frames,
               short side 256): open, two seeks, two JPEG decodes per pair, the same crop/flip; 8-bit output for
               both, as training reads them
  pytorchvideo pytorchvideo 0.1.5's Kinetics + EncodedVideo (PyAV): a random clip spanning the gap, first and
               last frames, the same crop/flip/normalise
  decode bound PyAV alone: open, seek to the keyframe, decode up to the last wanted frame, nothing else
on three sets: dataset/sample (real clips, keyframe every second), and generated 10 s, 30 fps, 340x256
H.264 clips (made from the sample's real footage) with a keyframe every 1 s and every 8 s.
Each figure is the median of several timed runs after a warm-up run; the loaders take turns item by item
and ratios are medians of within-run ratios, so a shared machine's changing load largely cancels out.
Two more tables: where a pair's time goes (read, RGB conversion, crop + resize, normalisation), and
the candidate formats for prepared data (H.264 with a keyframe every 8 frames, H.264 intra-only,
JPEG frames at quality 90 and 75; speed, bytes and PSNR against the source), by which
`dataset_loader.prepare`'s format was chosen.

pytorchvideo is installed for the benchmark only, into its own folder (never the project's .venv):

    python -m bench.bench_data --install-pytorchvideo      # once: pip --no-deps into outputs/bench-pytorchvideo
    python -m bench.bench_data                             # prints the table; --json FILE saves it
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import zlib
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from bench import REPO, save_json
from bench.clips import SAMPLE_DIR, make_bench_clips
from bench.pytorchvideo_baseline import PYTORCHVIDEO_DIR, install_pytorchvideo, make_pytorchvideo
from dataset_loader.dataset import KineticsFramePairs
from dataset_loader.frames_file import FramesReader, open_video
from dataset_loader.loader import make_pair_loader, set_loader_epoch
from dataset_loader.prepare import prepare, prepare_one, prepared_path, resized_frames
from dataset_loader.random_temporal_subsample import RandomTemporalSubsample
from dataset_loader.synthetic_videos import encode_video
from dataset_loader.transforms import PairedTransform, normalize
from dataset_loader.video import VideoReader

CLIP_DIR = REPO / "outputs" / "bench-data-clips"
TARGET_VS_PYTORCHVIDEO = 2.0  # ours at least this many times pytorchvideo's pairs/s
TARGET_VS_BOUND = 1.5  # ours at most this many times slower than the bare decode
TARGET_PREPARED = 4.0  # prepared videos at least this many times the original files' pairs/s (R = 2)


# ---------------------------------------------------------------- the three loaders


def make_ours(paths: list[Path], repeated_sampling: int, img_size: int, output: str = "float"
              ) -> Callable[[int, int], int]:
    data = KineticsFramePairs(paths, img_size=img_size, repeated_sampling=repeated_sampling, output=output)

    def load(item: int, epoch: int) -> int:
        f1, f2 = data[(item % len(data), epoch)]
        return repeated_sampling

    return load


def prepared_copy(paths: list[Path], folder: Path) -> tuple[list[Path], int, int]:
    """The videos prepared into `folder` (once; reused while their sources are unchanged): (paths, bytes before,
    bytes after)."""
    import shutil


    source = folder / "source"
    for path in paths:  # the set as a folder (links), so prepare mirrors it
        link = source / path.name
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, link)
            except OSError:
                shutil.copyfile(path, link)
    report = prepare(source, folder / "prepared", workers=1, progress=False)
    if report["unreadable"]:
        raise RuntimeError(f"could not prepare {report['unreadable']}")
    prepared = [prepared_path(source / p.name, source, folder / "prepared") for p in paths]
    return prepared, report["bytes_before"], report["bytes_after"]


def format_candidates(paths: list[Path], folder: Path, short_side: int = 256) -> dict[str, list[Path]]:
    """The videos re-encoded at a short side of `short_side` in each candidate format for prepared data (cached):
    H.264 with a keyframe every 8 frames, H.264 intra-only, and `.frames` JPEG at quality 90 (the chosen one)
    and 75."""

    candidates: dict[str, list[Path]] = {}
    specs = {"H.264, keyframe every 8 frames": ("h264-k8.mp4", dict(keyframe_interval=8)),
             "H.264, intra-only": ("h264-k1.mp4", dict(keyframe_interval=1, bframes=0)),
             "JPEG frames, quality 90 (chosen)": ("q90.frames", dict(quality=90)),
             "JPEG frames, quality 75": ("q75.frames", dict(quality=75))}
    for name, (suffix, options) in specs.items():
        candidates[name] = []
        for path in paths:
            out = folder / f"{path.stem}-{short_side}-{suffix}"
            if not out.exists() and suffix.endswith(".frames"):  # what `prepare` writes, at this quality
                status, reason = prepare_one(path, out, short_side, options["quality"])
                if status != "done":
                    raise RuntimeError(f"could not prepare {path}: {reason}")
            elif not out.exists():
                with VideoReader(path) as reader:
                    encode_video(out.with_suffix(".tmp.mp4"), resized_frames(reader, short_side),
                                 fps=Fraction(reader.fps), **options)
                out.with_suffix(".tmp.mp4").rename(out)
            candidates[name].append(out)
    return candidates


def compare_formats(paths: list[Path], folder: Path, img_size: int, items: int, runs: int, warmup: int) -> dict:
    """Pairs/s (R = 2, 8-bit, one core) and bytes of each candidate format against the original files."""
    candidates = format_candidates(paths, folder)
    loaders = {"original files": make_ours(paths, 2, img_size, "uint8")}
    loaders.update({name: make_ours(files, 2, img_size, "uint8") for name, files in candidates.items()})
    rates = time_loaders(loaders, items, runs, warmup)
    before = sum(p.stat().st_size for p in paths)
    sizes = {"original files": before, **{n: sum(p.stat().st_size for p in f) for n, f in candidates.items()}}
    fidelity = {"original files": float("inf"), **{n: psnr(paths, f) for n, f in candidates.items()}}
    return {name: {**summarise(rates[name]), "vs original": median_ratio(rates[name], rates["original files"]),
                   "bytes vs original": sizes[name] / before, "psnr_db": fidelity[name]} for name in loaders}


def psnr(originals: list[Path], copies: list[Path], short_side: int = 256) -> float:
    """PSNR (dB) of the copies' first, middle and last frames against the source's frames at the same times, at the
    copies' size. A copy kept at a lower rate (`prepare --fps`) holds every step-th source frame."""

    errors = []
    for original, copy in zip(originals, copies):
        with open_video(copy) as reader:
            kept = sorted({0, reader.num_frames // 2, reader.num_frames - 1})
            copied = dict(zip(kept, reader.read(kept)))
            kept_fps = float(reader.fps)
        with VideoReader(original) as source:
            step = max(1, round(float(source.fps) / kept_fps))
            wanted = {k * step: k for k in kept}
            for i, frame in enumerate(resized_frames(source, short_side)):
                if i in wanted:
                    errors.append(np.mean((copied[wanted[i]].astype(np.float64) - frame) ** 2))
                if i >= max(wanted):
                    break
    return float(10 * np.log10(255.0 ** 2 / np.mean(errors)))


def format_formats(results: list[dict]) -> str:
    """The format comparison of every set that has one, as one table."""
    lines = ["| set | format (short side 256) | pairs/s (R=2, 8-bit) | speed vs original | bytes vs original | "
             "PSNR vs the source (dB) |", "|---|---|---|---|---|---|"]
    for row in results:
        for name, r in row.get("formats", {}).items():
            lines.append(f"| {row['set']} | {name} | {r['pairs_per_s']:.1f} ({r['min']:.1f}-{r['max']:.1f}) | "
                         f"{r['vs original']:.2f}x | {r['bytes vs original']:.1f}x | {r['psnr_db']:.1f} |")
    return "\n".join(lines)


def make_decode_bound(paths: list[Path], repeated_sampling: int) -> Callable[[int, int], int]:
    """The same pairs as ours, but only: open, seek to the keyframe before the first frame, decode to the last."""
    sampler = RandomTemporalSubsample(repeated_sampling=repeated_sampling)

    def load(item: int, epoch: int) -> int:
        index = item % len(paths)
        with VideoReader(paths[index]) as video:
            pairs = sampler(video.num_frames, float(video.fps), np.random.default_rng([0, epoch, index, 0]))
            indices = [i for pair in pairs for i in pair]
            first, last = min(indices), max(indices)
            if first > 0:
                video.container.seek(video.pts_of(first), stream=video.stream, backward=True, any_frame=False)
            for frame in video.container.decode(video.stream):
                if video.index_of(frame.pts) >= last:
                    break
        return repeated_sampling

    return load


# ---------------------------------------------------------------- timing


def time_loaders(loaders: dict[str, Callable[[int, int], int]], items: int, runs: int, warmup: int) -> dict:
    """Pairs/s of each loader: `warmup` untimed then `runs` timed runs of `items` items.

    The loaders take turns item by item, so a change in the machine's load touches all of them alike
    (ratios are then taken within each run, and medians reported).
    """
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for run in range(warmup + runs):
        seconds = dict.fromkeys(loaders, 0.0)
        pairs = dict.fromkeys(loaders, 0)
        for item in range(items):
            for name, load in loaders.items():
                start = time.perf_counter()
                pairs[name] += load(item, run)
                seconds[name] += time.perf_counter() - start
        if run >= warmup:
            for name in loaders:
                rates[name].append(pairs[name] / seconds[name])
    return rates


def stage_profile(originals: list[Path], prepared: list[Path], img_size: int, items: int,
                  repeated_sampling: int = 2) -> dict[str, dict[str, float]]:
    """Milliseconds per pair of each stage of loading, for the original videos and their prepared copies.

    read: open, seek and decode the pair's frames to RGB (VideoReader.read / FramesReader.read);
    of which RGB conversion (original only): libswscale's YUV -> RGB (`to_ndarray`), timed on decoded
    frames of the same videos; of which checksum (prepared only): the CRC-32 of the frames' JPEG data that
    every read verifies; crop + resize + flip: `PairedTransform.apply` on the pair; normalise:
    8-bit -> float on the CPU, the step that 8-bit batches (`uint8_batches`) move to the GPU.
    """
    sampler = RandomTemporalSubsample(repeated_sampling=repeated_sampling)
    transform = PairedTransform(img_size)
    profile: dict[str, dict[str, float]] = {}
    for kind, files in (("original", originals), ("prepared", prepared)):
        totals = dict.fromkeys(("read", "rgb conversion", "checksum", "crop + resize + flip", "normalise"), 0.0)
        for item in range(items):
            rng = np.random.default_rng([1, item])
            path = files[item % len(files)]
            start = time.perf_counter()
            with open_video(path) as reader:
                pairs = sampler(reader.num_frames, float(reader.fps), rng)
                frames = reader.read([i for pair in pairs for i in pair])
            totals["read"] += time.perf_counter() - start
            if kind == "prepared":
                with FramesReader(path) as reader:
                    blobs = [reader.frame_bytes(i) for pair in pairs for i in pair]
                start = time.perf_counter()
                for blob in blobs:
                    zlib.crc32(blob)
                totals["checksum"] += time.perf_counter() - start
            if kind == "original":
                with av.open(str(path)) as container:
                    decoded = [next(container.decode(video=0))] * len(frames)  # one frame, converted as often
                start = time.perf_counter()
                for frame in decoded:
                    frame.to_ndarray(format="rgb24")
                totals["rgb conversion"] += time.perf_counter() - start
            for r in range(len(pairs)):
                params = transform.sample_params(*frames[0].shape[:2], rng)
                start = time.perf_counter()
                pair = transform.apply(frames[2 * r:2 * r + 2], params)
                totals["crop + resize + flip"] += time.perf_counter() - start
                start = time.perf_counter()
                normalize(pair)
                totals["normalise"] += time.perf_counter() - start
        pairs_done = items * repeated_sampling
        profile[kind] = {stage: 1e3 * seconds / pairs_done for stage, seconds in totals.items()}
        if kind == "prepared":
            del profile[kind]["rgb conversion"]  # inside the JPEG decoder, part of read
        else:
            del profile[kind]["checksum"]
    return profile


def format_profile(results: list[dict]) -> str:
    lines = ["| set | files | read (ms/pair) | of which RGB conversion | of which checksum | crop + resize + flip "
             "| normalise (CPU) |", "|---|---|---|---|---|---|---|"]
    for row in results:
        for kind, stages in row.get("stages", {}).items():
            conversion = f"{stages['rgb conversion']:.2f}" if "rgb conversion" in stages else "in the JPEG decode"
            checksum = f"{stages['checksum']:.3f}" if "checksum" in stages else "-"
            lines.append(f"| {row['set']} | {kind} | {stages['read']:.2f} | {conversion} | {checksum} | "
                         f"{stages['crop + resize + flip']:.2f} | {stages['normalise']:.2f} |")
    return "\n".join(lines)


def summarise(rates: list[float]) -> dict:
    return {"pairs_per_s": statistics.median(rates), "min": min(rates), "max": max(rates), "runs": len(rates)}


def median_ratio(a: list[float], b: list[float]) -> float:
    """Median over runs of a[run] / b[run]."""
    return statistics.median(x / y for x, y in zip(a, b))


def loader_pairs_per_second(
    paths: list[Path], img_size: int, num_workers: int, items: int, runs: int, warmup: int
) -> list[float]:
    """Pairs/s of the whole DataLoader (our dataset, `num_workers` worker processes), one epoch per run.

    Unpinned for its duration (the workers inherit the process's CPU affinity), restored after.
    """
    pinned = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if pinned is not None:
        os.sched_setaffinity(0, ALL_CORES)
    try:
        data = KineticsFramePairs(paths * -(-items // len(paths)), img_size=img_size)  # about `items` videos
        loader = make_pair_loader(data, batch_size=4, num_workers=num_workers, seed=0, drop_last=False,
                                  persistent_workers=num_workers > 0)
        rates = []
        for epoch in range(warmup + runs):
            set_loader_epoch(loader, epoch)
            start = time.perf_counter()
            pairs = sum(f1.shape[0] for f1, _ in loader)
            if epoch >= warmup:
                rates.append(pairs / (time.perf_counter() - start))
        del loader
        return rates
    finally:
        if pinned is not None:
            os.sched_setaffinity(0, pinned)


ALL_CORES = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None  # before any pinning


def pin_to_one_core() -> int | None:
    """Run on one CPU core (one worker's share); returns the core, None where affinity is unsupported."""
    torch.set_num_threads(1)
    if not hasattr(os, "sched_setaffinity"):
        return None
    core = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return core


def run_benchmark(
    items: int = 40,
    runs: int = 5,
    warmup: int = 1,
    clip_seconds: float = 10.0,
    clip_dir: Path = CLIP_DIR,
    img_size: int = 224,
    pytorchvideo_dir: Path | None = PYTORCHVIDEO_DIR,
    sets: tuple[str, ...] = ("sample", "key1s", "key8s"),
    clip_size: tuple[int, int] = (340, 256),
    loader_workers: int = 2,
    formats: bool = True,
) -> list[dict]:
    """Pairs/s per worker of each loader on each set; `pytorchvideo_dir=None` leaves pytorchvideo out.

    A tiny run for a smoke test: run_benchmark(items=2, runs=1, warmup=0, clip_seconds=1, clip_size=(64, 48)).
    """
    video_sets = {}
    for name in sets:
        if name == "sample":
            video_sets[name] = sorted(SAMPLE_DIR.glob("*/*/*.mp4"))
        elif name.startswith("key") and name.endswith("s"):
            video_sets[name] = make_bench_clips(clip_dir, float(name[3:-1]), seconds=clip_seconds,
                                                width=clip_size[0], height=clip_size[1])
        else:
            raise ValueError(f"unknown set {name!r}: use 'sample' or 'key<seconds>s'")
    results = []
    for name, paths in video_sets.items():
        prepared, bytes_before, bytes_after = prepared_copy(paths, clip_dir / f"prepared-{name}-{clip_seconds:g}s")
        loaders = {
            "ours (R=1)": make_ours(paths, 1, img_size),
            "ours (R=2)": make_ours(paths, 2, img_size),
            "ours (R=2, 8-bit)": make_ours(paths, 2, img_size, "uint8"),
            "prepared (R=2, 8-bit)": make_ours(prepared, 2, img_size, "uint8"),
            "decode bound (R=1)": make_decode_bound(paths, 1),
            "decode bound (R=2)": make_decode_bound(paths, 2),
        }
        if pytorchvideo_dir is not None:
            loaders["pytorchvideo 0.1.5"] = make_pytorchvideo(paths, img_size, pytorchvideo_dir, clip_dir)
        rates = time_loaders(loaders, items, runs, warmup)
        row: dict = {"set": name, "videos": len(paths)}
        row.update({loader_name: summarise(r) for loader_name, r in rates.items()})
        if loader_workers:  # the whole loader, not per worker: what a training process gets from it
            row[f"ours, DataLoader with {loader_workers} workers (R=1)"] = summarise(
                loader_pairs_per_second(paths, img_size, loader_workers, items, runs, warmup))
        row["prepared / ours (R=2, 8-bit)"] = median_ratio(rates["prepared (R=2, 8-bit)"], rates["ours (R=2, 8-bit)"])
        row["storage prepared / original"] = bytes_after / bytes_before
        row["stages"] = stage_profile(paths, prepared, img_size, items)
        if formats:  # the candidate formats for prepared data, against the same files
            row["formats"] = compare_formats(paths, clip_dir / f"formats-{name}-{clip_seconds:g}s", img_size, items,
                                             runs, warmup)
        row["bound / ours (R=1)"] = median_ratio(rates["decode bound (R=1)"], rates["ours (R=1)"])
        row["bound / ours (R=2)"] = median_ratio(rates["decode bound (R=2)"], rates["ours (R=2)"])
        if "pytorchvideo 0.1.5" in rates:
            row["ours / pytorchvideo"] = median_ratio(rates["ours (R=1)"], rates["pytorchvideo 0.1.5"])
            row["ours R=2 / pytorchvideo"] = median_ratio(rates["ours (R=2)"], rates["pytorchvideo 0.1.5"])
        results.append(row)
    return results


def format_table(results: list[dict]) -> str:
    names = [k for k in results[0] if isinstance(results[0][k], dict) and k not in ("stages", "formats")]
    lines = ["| set | " + " | ".join(names) + f" | prepared / original, R=2 (target >= {TARGET_PREPARED:g}); storage "
             f"| ours / pytorchvideo (target >= {TARGET_VS_PYTORCHVIDEO:g}) "
             f"| time ours / bound R=1 (target <= {TARGET_VS_BOUND:g}) | time ours / bound R=2 |",
             "|---" * (len(names) + 5) + "|"]
    for row in results:
        cells = [f"{row[n]['pairs_per_s']:.1f} ({row[n]['min']:.1f}-{row[n]['max']:.1f})" for n in names]
        ratio = "n/a"
        if "ours / pytorchvideo" in row:
            ratio = f"{row['ours / pytorchvideo']:.2f}x (R=2: {row['ours R=2 / pytorchvideo']:.2f}x)"
        prepared = (f"{row['prepared / ours (R=2, 8-bit)']:.2f}x; {row['storage prepared / original']:.1f}x the bytes"
                    if "prepared / ours (R=2, 8-bit)" in row else "n/a")
        lines.append(f"| {row['set']} ({row['videos']} videos) | " + " | ".join(cells) +
                     f" | {prepared} | {ratio} | {row['bound / ours (R=1)']:.2f}x | {row['bound / ours (R=2)']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=40, help="items (videos) loaded per timed run")
    parser.add_argument("--runs", type=int, default=5, help="timed runs; the median is reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--clip-dir", type=Path, default=CLIP_DIR,
                        help="where the generated clips are cached")
    parser.add_argument("--pytorchvideo-dir", type=Path, default=PYTORCHVIDEO_DIR,
                        help="folder holding pytorchvideo 0.1.5 (pip --target)")
    parser.add_argument("--install-pytorchvideo", action="store_true", help="install it there first")
    parser.add_argument("--no-pytorchvideo", action="store_true", help="leave pytorchvideo out")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the process to one core")
    parser.add_argument("--no-formats", action="store_true", help="leave out the comparison of prepared formats")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    if args.install_pytorchvideo:
        install_pytorchvideo(args.pytorchvideo_dir)
    ptv_dir = None if args.no_pytorchvideo else args.pytorchvideo_dir
    if ptv_dir is not None and not (ptv_dir / "pytorchvideo").is_dir():
        print(f"pytorchvideo not found in {ptv_dir}: left out (install with --install-pytorchvideo)")
        ptv_dir = None
    core = None if args.no_pin else pin_to_one_core()
    print(f"pairs/s per worker: median of {args.runs} runs of {args.items} items after {args.warmup} warm-up; "
          f"{'core ' + str(core) if core is not None else 'unpinned'}, 1 decoding thread, PyAV {av.__version__}")
    results = run_benchmark(args.items, args.runs, args.warmup, clip_dir=args.clip_dir, img_size=args.img_size,
                            pytorchvideo_dir=ptv_dir, formats=not args.no_formats)
    print(format_table(results))
    print()
    print(format_profile(results))
    if not args.no_formats:
        print()
        print(format_formats(results))
    save_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
