"""Speed and memory of label propagation at DAVIS resolution.

    python -m bench.bench_propagation                      # ViT-S/16 on CPU, every protocol: davis_mini + 480p
    python -m bench.bench_propagation --protocols crw --device cuda --runs 5
    python -m bench.bench_propagation --arch siammae_tiny --size 64x112 --frames 4 --runs 1   # seconds-long check

Per frame it times (wall clock) the two stages separately: encoding (the ViT on the whole frame at
the protocol's input size) and propagation (affinities to the first frame and the queue, top-k,
softmax, weighted labels, the protocol's upsampling to the annotation and argmax). Frames are
decoded before timing, so disk and JPEG decoding are not included. The process CPU time per frame
and the load average are reported too: on a shared machine the wall clock also measures the other
processes. Each figure is the median over every timed frame of every run, after a warm-up run; the
first frame (encoded only) is left out. Memory: on CPU the peak resident set size of a fresh process
(`VmHWM` of /proc/self/status) running only this benchmark, next to its size before the first frame
(model and frames loaded); on CUDA `torch.cuda.max_memory_allocated`.
The weights are a random initialisation: speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import mae  # noqa: F401  (first: makes torchvision importable for timm on a CPU-only torch)
from bench import REPO, sync_device
from ml.eval.data import read_label_png
from ml.eval.features import FeatureExtractor, labels_from_grid, labels_to_grid, load_frame
from ml.eval.propagation import DEFAULT_MAX_AFFINITY_ELEMENTS, LabelPropagator
from ml.eval.protocols import PROTOCOLS, Protocol, get_protocol
from ml.eval.synthetic import write_synthetic_davis
from ml.model import create_model
from ml.training.config import TrainConfig

DAVIS_MINI = Path(os.environ.get("SIAMMAE_SHARED_DATA", REPO.parent / "shared" / "data")) / "davis_mini"
DAVIS_2017_VAL_FRAMES = 1999  # 30 sequences


def _rss_mib(field: str = "VmRSS") -> float:
    """This process's resident memory (`VmRSS`) or its high-water mark (`VmHWM`), in MiB.

    `VmHWM` belongs to this process's own address space, unlike `ru_maxrss`, which a spawned child
    inherits from its parent across exec.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _first_labels(annotation: Path | None, image_hw: tuple[int, int]) -> np.ndarray:
    """The first frame's label ids: the annotation's, or two made-up objects (speed does not depend on them)."""
    if annotation is not None:
        return read_label_png(annotation)[0]
    ids = np.zeros(image_hw, np.uint8)
    ids[: image_hw[0] // 2, : image_hw[1] // 3] = 1
    ids[image_hw[0] // 2:, image_hw[1] // 2:] = 2
    return ids


def _time_propagation(extractor: FeatureExtractor, frames: list[torch.Tensor], ids: np.ndarray,
                      size_hw: tuple[int, int], config: Protocol, dev: torch.device,
                      ) -> tuple[list[float], list[float], list[float]]:
    """One pass over the sequence: per frame after the first, seconds to encode, to propagate, and CPU seconds."""
    encode_s, propagate_s, cpu_s = [], [], []
    num_labels = int(ids[ids != 255].max()) + 1
    sync_device(dev)
    feats = extractor(frames[0][None])[0]
    first = labels_to_grid(ids, num_labels, size_hw, tuple(feats.shape[:2]), config).to(dev)
    propagator = LabelPropagator(feats, first, config)
    for frame in frames[1:]:
        c0 = time.process_time()
        t0 = time.perf_counter()
        feats = extractor(frame[None])[0]
        sync_device(dev)
        t1 = time.perf_counter()
        soft = propagator.step(feats)
        labels_from_grid(soft, size_hw, ids.shape, config).cpu()
        sync_device(dev)
        t2 = time.perf_counter()
        encode_s.append(t1 - t0)
        propagate_s.append(t2 - t1)
        cpu_s.append(time.process_time() - c0)
    return encode_s, propagate_s, cpu_s


def benchmark_sequence(
    frame_paths: list[Path],
    first_annotation: Path | None,
    arch: str = TrainConfig.arch,
    size: tuple[int, int] | None = None,
    runs: int = 1,
    warmup: bool = True,
    device: str = "cpu",
    threads: int | None = None,
    protocol: str = "crw",
) -> dict:
    """Time encoding and propagation per frame on one sequence; returns medians (s/frame) and memory (MiB).

    size None: the protocol's input size; (H, W) replaces it. Without an annotation, the first frame
    gets two made-up objects (speed does not depend on the labels).
    """
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    torch.manual_seed(0)
    encoder = create_model(arch).encoder
    config = get_protocol(protocol, "davis", **({} if size is None else {"size_rule": "fixed", "size": tuple(size)}))
    extractor = FeatureExtractor(encoder, config, device=dev)
    with Image.open(frame_paths[0]) as img:
        image_hw = (img.height, img.width)
    size_hw = extractor.input_size(image_hw)
    frames = [load_frame(p, size_hw, config.resize) for p in frame_paths]
    ids = _first_labels(first_annotation, image_hw)
    rss_before = _rss_mib()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    if warmup:
        _time_propagation(extractor, frames, ids, size_hw, config, dev)
    encode_all, propagate_all, cpu_all = [], [], []
    for _ in range(runs):
        e, p, c = _time_propagation(extractor, frames, ids, size_hw, config, dev)
        encode_all += e
        propagate_all += p
        cpu_all += c
    total = [e + p for e, p in zip(encode_all, propagate_all)]
    grid = (size_hw[0] // extractor.patch_size, size_hw[1] // extractor.patch_size)
    keys = grid[0] * grid[1] * (1 + min(config.queue_length, len(frames) - 1))
    result = {
        "protocol": protocol, "arch": arch, "device": str(dev), "torch_threads": torch.get_num_threads(),
        "frames": len(frames), "frame_size": list(image_hw), "encoder_input": list(size_hw), "grid": list(grid),
        "runs": runs, "timed_frames": len(total),
        "encode_s_per_frame": statistics.median(encode_all),
        "propagate_s_per_frame": statistics.median(propagate_all),
        "total_s_per_frame": statistics.median(total),
        "total_s_per_frame_min": min(total),
        "total_s_per_frame_max": max(total),
        "cpu_s_per_frame": statistics.median(cpu_all),  # CPU time of all threads: less sensitive to other load
        "load_average_1min": os.getloadavg()[0],
        "affinity_chunk_mib": min(DEFAULT_MAX_AFFINITY_ELEMENTS, keys * grid[0] * grid[1]) * 4 / 2**20,
        "rss_before_mib": rss_before,
    }
    if dev.type == "cuda":
        result["peak_cuda_allocated_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    result["peak_rss_mib"] = _rss_mib("VmHWM")
    result["projected_davis2017_val_hours"] = result["total_s_per_frame"] * DAVIS_2017_VAL_FRAMES / 3600
    return result


def _in_fresh_process(kwargs: dict) -> dict:
    """Run benchmark_sequence in a new process so its peak memory is its own."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(benchmark_sequence, kwds=kwargs)


def run_benchmark(
    arch: str = TrainConfig.arch,
    size: tuple[int, int] | None = None,
    frames: int = 30,
    frame_hw: tuple[int, int] = (480, 854),
    runs: int = 1,
    davis_mini_runs: int = 5,
    device: str = "cpu",
    threads: int | None = None,
    use_davis_mini: bool = True,
    isolate: bool = True,
    protocols: tuple[str, ...] = PROTOCOLS,
) -> list[dict]:
    """Benchmarks, per protocol, on davis_mini (when present) and on a generated sequence of `frames` frames
    of `frame_hw`. Small arguments give a seconds-long check (`isolate=False` runs in this process)."""
    call = _in_fresh_process if isolate else (lambda kw: benchmark_sequence(**kw))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = write_synthetic_davis(tmp, num_sequences=1, num_frames=frames, size=frame_hw)
        generated = sorted((root / "JPEGImages" / "480p" / "synthetic00").glob("*.jpg"))
        generated_ann = root / "Annotations" / "480p" / "synthetic00" / f"{generated[0].stem}.png"
        for protocol in protocols:
            common = {"arch": arch, "size": size, "device": device, "threads": threads, "protocol": protocol}
            if use_davis_mini and DAVIS_MINI.is_dir():
                paths = sorted((DAVIS_MINI / "JPEGImages" / "480p" / "street").glob("*.jpg"))
                ann = DAVIS_MINI / "Annotations" / "480p" / "street" / f"{paths[0].stem}.png"
                results.append({"data": "davis_mini/street", **call(
                    {**common, "frame_paths": paths, "first_annotation": ann, "runs": davis_mini_runs})})
            results.append({"data": f"generated {frame_hw[0]}x{frame_hw[1]}, {frames} frames", **call(
                {**common, "frame_paths": generated, "first_annotation": generated_ann, "runs": runs})})
    return results


def _parse_hw(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description="label propagation speed and memory")
    p.add_argument("--arch", default=TrainConfig.arch)
    p.add_argument("--size", type=_parse_hw, default=None, help="encoder input HxW (default: the protocol's)")
    p.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    p.add_argument("--frames", type=int, default=30, help="frames of the generated sequence")
    p.add_argument("--frame-size", type=_parse_hw, default=(480, 854), help="HxW of the generated frames")
    p.add_argument("--runs", type=int, default=1, help="timed runs over the generated sequence (after a warm-up)")
    p.add_argument("--davis-mini-runs", type=int, default=5, help="timed runs over davis_mini (5 frames)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-davis-mini", action="store_true")
    p.add_argument("--output", default=str(REPO / "bench" / "results" / "propagation.json"))
    a = p.parse_args(argv)
    results = run_benchmark(a.arch, a.size, a.frames, a.frame_size, a.runs, a.davis_mini_runs, a.device, a.threads,
                            use_davis_mini=not a.no_davis_mini, protocols=tuple(a.protocols))
    for r in results:
        print(f"{r['protocol']}, {r['data']}: {r['arch']} on {r['device']} ({r['torch_threads']} threads), input "
              f"{r['encoder_input'][0]}x{r['encoder_input'][1]} -> grid {r['grid'][0]}x{r['grid'][1]}: "
              f"{r['total_s_per_frame']:.3f} s/frame (encode {r['encode_s_per_frame']:.3f}, propagate "
              f"{r['propagate_s_per_frame']:.3f}; median of {r['timed_frames']} frames; CPU "
              f"{r['cpu_s_per_frame']:.2f} s/frame, load {r['load_average_1min']:.1f}), peak RSS "
              f"{r['peak_rss_mib']:.0f} MiB (before the first frame {r['rss_before_mib']:.0f} MiB)"
              + (f", peak CUDA {r['peak_cuda_allocated_mib']:.0f} MiB" if "peak_cuda_allocated_mib" in r else "")
              + f"; DAVIS-2017 val ({DAVIS_2017_VAL_FRAMES} frames) ~ {r['projected_davis2017_val_hours']:.2f} h")
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"-> {out}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
