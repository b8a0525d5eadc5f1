"""The three benchmarks (DAVIS-2017 J&F, JHMDB PCK, VIP mIoU) and the one driver loop they share.

    result = evaluate("davis", encoder, "/data/DAVIS", "outputs/eval/davis")          # the crw protocol
    result = evaluate("jhmdb", encoder, "/data/JHMDB", "outputs/eval/jhmdb", protocol=get_protocol("causal", "jhmdb"))

The driver (`run_benchmark`) checks the data and the memory the protocol's input size needs,
then, per video, encodes each frame once, propagates the first frame's labels and hands every
predicted frame to the benchmark, which turns soft labels into its predictions (label maps or
joints) and scores them; each finished video is saved at once (ml.eval.store), so an interrupted
run continues where it stopped. A benchmark only says what its labels are, how a frame's soft
labels become a prediction, and how results are summed up.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ml.eval.data import (
    JHMDB_JOINTS,
    VIP_CLASSES,
    VOID_LABEL,
    Video,
    check_davis_annotations,
    check_images,
    check_vip_annotations,
    davis_videos,
    frame_size,
    jhmdb_videos,
    read_joint_positions,
    read_label_png,
    vip_videos,
    write_label_png,
)
from ml.eval.encoders import weights_fingerprint
from ml.eval.features import (
    FeatureExtractor,
    check_memory,
    grid_size,
    labels_from_grid,
    labels_to_grid,
    peak_memory_bytes,
)
from ml.eval.keypoints import crw_joint_stamps, gaussian_heatmaps, heatmap_keypoints
from ml.eval.metrics import (
    PCK_THRESHOLDS,
    confusion_matrix,
    davis_sequence_scores,
    davis_summary,
    iou_per_class,
    pck,
    pck_distances,
)
from ml.eval.propagation import DEFAULT_MAX_AFFINITY_ELEMENTS, propagate_sequence
from ml.eval.protocols import Protocol
from ml.eval.store import ResultStore, write_csv
from ml.training.engine import progress_file

DEFAULT_PROTOCOL = "crw"


# ================================================================= the benchmarks
class Benchmark:
    """What differs between benchmarks: videos, first-frame labels, per-frame predictions, scores."""

    dataset = ""

    def __init__(self, data: str | os.PathLike, protocol: Protocol) -> None:
        if protocol.dataset != self.dataset:
            raise ValueError(f"a {protocol.dataset} protocol cannot run the {self.dataset} benchmark")
        self.data = Path(data)
        self.protocol = protocol
        self.videos: list[Video] = []

    def record(self) -> dict[str, Any]:
        """What besides the model and protocol makes a run (kept in run.json)."""
        return {}

    def check(self, progress: bool = False) -> None:
        """Read every annotation once and refuse what cannot be scored (naming the file), before any model work."""

    def num_classes(self, video: Video) -> int:
        raise NotImplementedError

    def frames(self, video: Video) -> list[Path]:
        return video.frames

    def first_labels(self, video: Video, input_hw: tuple[int, int], grid_hw: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError

    def start(self, video: Video, root: Path, first: torch.Tensor, input_hw: tuple[int, int]) -> dict:
        raise NotImplementedError

    def frame(self, state: dict, t: int, soft: torch.Tensor) -> None:
        raise NotImplementedError

    def finish(self, state: dict) -> tuple[dict, list[Path]]:
        raise NotImplementedError

    def summarize(self, results: dict[str, dict], root: Path) -> dict[str, Any]:
        raise NotImplementedError

    def summary_line(self, summary: dict[str, Any]) -> str:
        raise NotImplementedError


class DavisBenchmark(Benchmark):
    """DAVIS-2017 semi-supervised: object masks of the first frame; J&F as the official evaluation."""

    dataset = "davis"

    def __init__(self, data: str | os.PathLike, protocol: Protocol, split: str = "val", resolution: str = "480p",
                 sequences: Sequence[str] | None = None) -> None:
        super().__init__(data, protocol)
        self.split, self.resolution = split, resolution
        self.videos = davis_videos(data, split, resolution, sequences=sequences)
        self.checks: dict[str, tuple[int, list[int] | None]] = {}

    def record(self) -> dict[str, Any]:
        return {"split": self.split, "resolution": self.resolution}

    def check(self, progress: bool = False) -> None:
        self.checks = {v.name: check_davis_annotations(v) for v in
                       tqdm(self.videos, desc="checking annotations", disable=not progress, file=progress_file())}

    def num_classes(self, video: Video) -> int:
        if video.name in self.checks:
            return self.checks[video.name][0] + 1
        first, _ = read_label_png(video.annotations[0])  # before the check: the first annotation's objects
        return int(first[first != VOID_LABEL].max(initial=0)) + 1

    def first_labels(self, video, input_hw, grid_hw):
        ids, _ = read_label_png(video.annotations[0])
        return labels_to_grid(ids, self.num_classes(video), input_hw, grid_hw, self.protocol)

    def start(self, video, root, first, input_hw):
        gt = np.stack([read_label_png(p)[0] for p in video.annotations])  # (T, H, W)
        pred = np.empty_like(gt)
        pred[0] = np.where(gt[0] == VOID_LABEL, 0, gt[0])  # the given frame, as the results layout has it
        return {"video": video, "root": root, "gt": gt, "pred": pred, "input_hw": input_hw}

    def frame(self, state, t, soft):
        state["pred"][t] = labels_from_grid(soft, state["input_hw"], state["gt"].shape[1:], self.protocol).numpy()

    def finish(self, state):
        video, pred = state["video"], state["pred"]
        palette = self.checks[video.name][1]
        files = [state["root"] / "masks" / video.name / f"{f.stem}.png" for f in video.frames]
        for path, ids in zip(files, pred):
            write_label_png(path, ids, palette)
        J, F = davis_sequence_scores(state["gt"], pred)
        return {"sequence": video.name, "frames": len(video.frames), "objects": int(J.shape[0]),
                "J": J.tolist(), "F": F.tolist()}, files

    def summarize(self, results, root):
        summary, per_object = davis_summary({n: (np.array(r["J"]).reshape(r["objects"], -1),
                                                 np.array(r["F"]).reshape(r["objects"], -1))
                                             for n, r in results.items()})
        write_csv(root / f"global_results-{self.split}.csv", [summary], digits=3)
        write_csv(root / f"per-sequence_results-{self.split}.csv", per_object, digits=3)
        per_video = []
        for name, r in results.items():
            J, F = np.array(r["J"]).reshape(r["objects"], -1), np.array(r["F"]).reshape(r["objects"], -1)
            j, f = float(np.mean(J.mean(1))), float(np.mean(F.mean(1)))
            per_video.append({"Sequence": name, "Objects": r["objects"], "Frames": r["frames"], "J&F-Mean": (j + f) / 2,
                              "J-Mean": j, "F-Mean": f, "Seconds": r["seconds"]})
        write_csv(root / f"per-video_results-{self.split}.csv", per_video)
        return {**summary, "sequences": len(results), "objects": len(per_object)}

    def summary_line(self, s):
        return (f"DAVIS {self.split} ({s['sequences']} sequences, {s['objects']} objects, protocol "
                f"{self.protocol.name}): J&F-Mean {s['J&F-Mean']:.3f}  J-Mean {s['J-Mean']:.3f}  "
                f"F-Mean {s['F-Mean']:.3f}")


class JhmdbBenchmark(Benchmark):
    """JHMDB pose: the 15 joints of the first frame as heatmaps; PCK@0.1 and PCK@0.2."""

    dataset = "jhmdb"

    def __init__(self, data: str | os.PathLike, protocol: Protocol, split_file: str | os.PathLike | None = None,
                 sequences: Sequence[str] | None = None) -> None:
        super().__init__(data, protocol)
        videos = jhmdb_videos(data, split_file)
        if sequences is not None:
            wanted = set(sequences)
            videos = [v for v in videos if v.name in wanted]
            if not videos:
                raise ValueError(f"--sequences: none of {', '.join(sequences)} is a JHMDB video of {data}")
        self.videos = videos
        self.joints = {v.name: read_joint_positions(v.joints) for v in videos}  # (T, 15, 2) 0-based pixels

    def num_classes(self, video):
        return JHMDB_JOINTS + (1 if self.protocol.heatmap == "crw_stamp" else 0)

    def frames(self, video):
        return video.frames[: min(len(video.frames), self.joints[video.name].shape[0])]

    def first_labels(self, video, input_hw, grid_hw):
        image_hw = frame_size(video.frames[0])
        points = self.joints[video.name][0]
        if self.protocol.heatmap == "crw_stamp":
            return crw_joint_stamps(points, image_hw, grid_hw, self.protocol.heatmap_sigma)
        return gaussian_heatmaps(points, image_hw, grid_hw, self.protocol.heatmap_sigma)

    def start(self, video, root, first, input_hw):
        image_hw = frame_size(video.frames[0])
        keypoints, visible = self._decode(first, image_hw)
        return {"video": video, "image_hw": image_hw, "keypoints": [keypoints], "visible": [visible]}

    def frame(self, state, t, soft):
        keypoints, visible = self._decode(soft, state["image_hw"])
        state["keypoints"].append(keypoints)
        state["visible"].append(visible)

    def _decode(self, soft: torch.Tensor, image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Soft labels -> joints (15, 2) in pixels and whether each is visible."""
        heat = soft[1:] if self.protocol.heatmap == "crw_stamp" else soft  # the background channel dropped
        return heatmap_keypoints(heat, image_hw, self.protocol.keypoint_topk, self.protocol.keypoint_coords)

    def finish(self, state):
        video = state["video"]
        gt = self.joints[video.name]
        n = len(state["keypoints"])
        pred, visible = np.stack(state["keypoints"]), np.stack(state["visible"])
        mask = visible[1:] if self.protocol.skip_empty_joints else None
        dist = pck_distances(pred[1:], gt[1:n], mask)
        return {"video": video.name, "frames": n, "joints": int(gt.shape[1]), "keypoints": pred.tolist(),
                "visible": visible.tolist(), "distances": np.where(np.isfinite(dist), dist, None).tolist()}, []

    def summarize(self, results, root):
        def distances(r: dict) -> np.ndarray:
            return np.array(r["distances"], dtype=float).reshape(-1, r["joints"])

        all_dist = np.concatenate([distances(r) for r in results.values()])
        summary = {f"PCK@{a}": pck(all_dist, a) for a in PCK_THRESHOLDS}
        per_video = [{"Video": name, "Frames": r["frames"], **{f"PCK@{a}": pck(distances(r), a) for a in
                                                              PCK_THRESHOLDS}, "Seconds": r["seconds"]}
                     for name, r in results.items()]
        write_csv(root / "global_results.csv", [summary], digits=3)
        write_csv(root / "per-video_results.csv", per_video)
        return {**summary, "videos": len(results)}

    def summary_line(self, s):
        return (f"JHMDB ({s['videos']} videos, protocol {self.protocol.name}): "
                + "  ".join(f"PCK@{a} {s[f'PCK@{a}']:.3f}" for a in PCK_THRESHOLDS))


class VipBenchmark(Benchmark):
    """VIP human parts: the first frame's 20 part classes; mIoU from one confusion matrix over all scored frames."""

    dataset = "vip"

    def __init__(self, data: str | os.PathLike, protocol: Protocol, split: str = "val",
                 list_file: str | os.PathLike | None = None, sequences: Sequence[str] | None = None) -> None:
        super().__init__(data, protocol)
        self.split = split
        self.videos = vip_videos(data, split, list_file, sequences)

    def record(self):
        return {"split": self.split}

    def check(self, progress: bool = False) -> None:
        for v in tqdm(self.videos, desc="checking annotations", disable=not progress, file=progress_file()):
            check_vip_annotations(v, len(VIP_CLASSES))

    def num_classes(self, video):
        return len(VIP_CLASSES)

    def first_labels(self, video, input_hw, grid_hw):
        ids, _ = read_label_png(video.annotations[0])
        return labels_to_grid(ids, len(VIP_CLASSES), input_hw, grid_hw, self.protocol)

    def start(self, video, root, first, input_hw):
        gt0, _ = read_label_png(video.annotations[0])
        state = {"video": video, "root": root, "input_hw": input_hw, "hw": gt0.shape, "files": [],
                 "confusion": np.zeros((len(VIP_CLASSES), len(VIP_CLASSES)), dtype=np.int64)}
        if self.protocol.score_first_frame:  # CRW writes the first frame through the same path, and scores it
            self._write(state, 0, labels_from_grid(first, input_hw, gt0.shape, self.protocol).numpy())
        else:
            self._write(state, 0, np.where(gt0 == VOID_LABEL, 0, gt0), score=False)
        return state

    def frame(self, state, t, soft):
        self._write(state, t, labels_from_grid(soft, state["input_hw"], state["hw"], self.protocol).numpy())

    def _write(self, state: dict, t: int, pred: np.ndarray, score: bool = True) -> None:
        video = state["video"]
        path = state["root"] / "masks" / video.name / f"{video.frames[t].stem}.png"
        write_label_png(path, pred)
        state["files"].append(path)
        annotation = video.annotations[t]
        if score and annotation is not None:
            gt, _ = read_label_png(annotation)
            if gt.shape != pred.shape:
                raise ValueError(f"{annotation}: annotation of size {gt.shape}, the video's first is {state['hw']}")
            state["confusion"] += confusion_matrix(gt, pred, len(VIP_CLASSES))

    def finish(self, state):
        return {"video": state["video"].name, "frames": len(state["video"].frames),
                "confusion": state["confusion"].tolist()}, state["files"]

    def summarize(self, results, root):
        return vip_summary({n: np.array(r["confusion"]) for n, r in results.items()}, root,
                           {n: r for n, r in results.items()})

    def summary_line(self, s):
        return f"VIP ({s['videos']} videos, protocol {self.protocol.name}): mIoU {s['mIoU']:.3f}"


def vip_summary(confusions: dict[str, np.ndarray], root: Path, results: dict[str, dict] | None = None) -> dict:
    """mIoU over the classes from the summed confusion matrices; global_results.csv and per-video_results.csv."""
    total = sum(confusions.values())
    ious = iou_per_class(total)
    summary = {"mIoU": float(np.nanmean(ious)), **{f"IoU-{c}": float(i) for c, i in zip(VIP_CLASSES, ious)}}
    per_video = [{"Video": name, "mIoU": float(np.nanmean(iou_per_class(c))),
                  **({"Frames": results[name]["frames"], "Seconds": results[name]["seconds"]} if results else {})}
                 for name, c in confusions.items()]
    write_csv(root / "global_results.csv", [summary], digits=3)
    write_csv(root / "per-video_results.csv", per_video)
    return {**summary, "class_iou": dict(zip(VIP_CLASSES, ious.tolist())), "videos": len(confusions)}


# ================================================================= the driver
BENCHMARKS = {"davis": DavisBenchmark, "jhmdb": JhmdbBenchmark, "vip": VipBenchmark}


def run_benchmark(
    benchmark: Benchmark,
    extractor: FeatureExtractor,
    output: str | os.PathLike,
    model_name: str,
    progress: bool = True,
    max_affinity_elements: int = DEFAULT_MAX_AFFINITY_ELEMENTS,
) -> dict[str, Any]:
    """Evaluate every video of `benchmark` (reusing verified results in `output`), summarise and print the result."""
    protocol = benchmark.protocol
    videos = benchmark.videos
    check_images(f for v in videos for f in benchmark.frames(v))  # every frame's header, before any work
    # the input size and memory of the largest video, before any work
    sizes = {v.name: extractor.input_size(frame_size(v.frames[0])) for v in videos}
    largest = max(videos, key=lambda v: sizes[v.name][0] * sizes[v.name][1])
    estimate = peak_memory_bytes(extractor.encoder, sizes[largest.name], protocol,
                                 max(benchmark.num_classes(v) for v in videos), max_affinity_elements,
                                 extractor.batch_size)
    line = check_memory(estimate, extractor.device, f"input {sizes[largest.name][0]}x{sizes[largest.name][1]}")
    benchmark.check(progress)
    record = {"dataset": benchmark.dataset, "model": model_name, "weights_sha1": weights_fingerprint(extractor.encoder),
              "protocol": protocol.to_dict(), **benchmark.record()}
    store = ResultStore(output, record)
    print(line, flush=True)
    results: dict[str, dict] = {}
    computed = 0
    bar = tqdm(total=sum(len(benchmark.frames(v)) for v in videos), desc=benchmark.dataset.upper(), unit="frame",
               file=progress_file(),
               disable=not progress)
    for video in videos:
        done = store.load(video.name)
        if done is None:
            store.forget(video.name)
            bar.set_postfix_str(video.name)
            done, files = _run_video(benchmark, extractor, video, sizes[video.name], store.root,
                                     max_affinity_elements, lambda: bar.update(1))
            store.save(video.name, done, files)
            computed += 1
        else:
            bar.update(len(benchmark.frames(video)))
        results[video.name] = done
    bar.close()
    summary = benchmark.summarize(results, store.root)
    frames = sum(r["frames"] for r in results.values())
    seconds = sum(r["seconds"] for r in results.values())
    print(benchmark.summary_line(summary) + f" -> {store.root}", flush=True)
    return {**summary, "frames": frames, "seconds_per_frame": seconds / max(1, frames), "computed": computed,
            "output": str(store.root), "protocol": protocol.name}


def _run_video(benchmark: Benchmark, extractor: FeatureExtractor, video: Video, input_hw: tuple[int, int],
               root: Path, max_affinity_elements: int, tick) -> tuple[dict, list[Path]]:
    start = time.perf_counter()
    frames = benchmark.frames(video)
    grid = grid_size(input_hw, extractor.patch_size)
    first = benchmark.first_labels(video, input_hw, grid)
    state = benchmark.start(video, root, first, input_hw)
    tick()
    features = extractor.iter_frame_features(frames, input_hw)
    for t, soft in enumerate(propagate_sequence(features, first, benchmark.protocol, max_affinity_elements), 1):
        benchmark.frame(state, t, soft)
        tick()
    result, files = benchmark.finish(state)
    result["seconds"] = time.perf_counter() - start
    return result, files
