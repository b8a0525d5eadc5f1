"""Scoring a folder of predicted label maps, whoever made them: DAVIS-2017 (official J&F) and VIP (mIoU).

    python -m ml.evaluate score davis --data /data/DAVIS --results outputs/eval/davis/masks
    python -m ml.evaluate score vip --data /data/VIP_Fine --results outputs/eval/vip/masks

The results folder has the official layout, `<results>/<sequence>/<frame>.png` (indexed or grayscale
PNGs of ids). The CSVs are written into it, as the official tool does. Every missing sequence or
frame is named before anything is scored.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ml.eval.benchmarks import vip_summary
from ml.eval.data import VIP_CLASSES, davis_videos, read_label_png, vip_videos
from ml.eval.metrics import confusion_matrix, davis_sequence_scores, davis_summary
from ml.eval.store import write_csv


def _check_results_folder(results: Path) -> None:
    if not results.is_dir():
        raise FileNotFoundError(f"--results {results} is not a folder of predicted masks (<sequence>/<frame>.png)")
    if not os.access(results, os.W_OK):
        raise ValueError(f"--results {results} is not writable: the CSVs are written into it")


def _missing_message(missing: dict[str, list[str]], results: Path) -> str:
    parts = []
    for name, frames in list(missing.items())[:5]:
        parts.append(f"{name} (all frames)" if frames == ["*"] else
                     f"{name}: {', '.join(frames[:5])}{' ...' if len(frames) > 5 else ''}")
    more = f"; and {len(missing) - 5} more sequences" if len(missing) > 5 else ""
    return f"missing predictions in {results}: " + "; ".join(parts) + more


def score_davis(data: str | os.PathLike, results: str | os.PathLike, split: str = "val",
                sequences: Sequence[str] | None = None, resolution: str = "480p",
                quiet: bool = False) -> dict[str, Any]:
    """J and F of the masks in `results` against the DAVIS annotations, as davis2017-evaluation's
    semi-supervised task computes them; writes global_results-<split>.csv and per-sequence_results-<split>.csv
    into `results` and returns the global numbers."""
    results = Path(results)
    _check_results_folder(results)
    videos = davis_videos(data, split, resolution, sequences=sequences)
    missing: dict[str, list[str]] = {}
    for video in videos:
        folder = results / video.name
        if not folder.is_dir():
            missing[video.name] = ["*"]
            continue
        absent = [a.stem for a in video.annotations[1:-1] if not (folder / f"{a.stem}.png").is_file()]
        if absent:
            missing[video.name] = absent
    if missing:
        raise FileNotFoundError(_missing_message(missing, results))
    per_sequence = {}
    for video in videos:
        gt = np.stack([read_label_png(a)[0] for a in video.annotations])
        pred = np.zeros_like(gt)
        for t, annotation in enumerate(video.annotations[1:-1], start=1):  # the official tool reads these only
            path = results / video.name / f"{annotation.stem}.png"
            ids, _ = read_label_png(path)
            if ids.shape != gt.shape[1:]:
                raise ValueError(f"{path}: a prediction of {ids.shape[1]}x{ids.shape[0]} for an annotation of "
                                 f"{gt.shape[2]}x{gt.shape[1]}")
            pred[t] = ids
        try:
            per_sequence[video.name] = davis_sequence_scores(gt, pred)
        except ValueError as err:
            raise ValueError(f"{results / video.name}: {err}") from None
    summary, rows = davis_summary(per_sequence)
    write_csv(results / f"global_results-{split}.csv", [summary], digits=3)
    write_csv(results / f"per-sequence_results-{split}.csv", rows, digits=3)
    if not quiet:
        print(f"DAVIS {split} ({len(videos)} sequences, {len(rows)} objects): J&F-Mean {summary['J&F-Mean']:.3f}  "
              f"J-Mean {summary['J-Mean']:.3f}  F-Mean {summary['F-Mean']:.3f} -> {results}", flush=True)
    return {**summary, "sequences": len(videos), "objects": len(rows), "per_object": rows}


def score_vip(data: str | os.PathLike, results: str | os.PathLike, split: str = "val",
              list_file: str | os.PathLike | None = None, sequences: Sequence[str] | None = None,
              skip_first: bool = False, quiet: bool = False) -> dict[str, Any]:
    """mIoU of the part maps in `results` against the VIP annotations (every annotated frame; the first one too
    unless `skip_first`, as CRW's VIP scorer counts every frame written). Writes global_results.csv and
    per-video_results.csv into `results`."""
    results = Path(results)
    _check_results_folder(results)
    videos = vip_videos(data, split, list_file, sequences)
    missing: dict[str, list[str]] = {}
    scored: dict[str, list[tuple[Path, Path]]] = {}
    for video in videos:
        pairs = [(a, results / video.name / f"{f.stem}.png") for t, (f, a) in
                 enumerate(zip(video.frames, video.annotations)) if a is not None and not (skip_first and t == 0)]
        absent = [p.stem for _, p in pairs if not p.is_file()]
        if absent:
            missing[video.name] = ["*"] if not (results / video.name).is_dir() else absent
        scored[video.name] = pairs
    if missing:
        raise FileNotFoundError(_missing_message(missing, results))
    confusions = {}
    n = len(VIP_CLASSES)
    for name, pairs in scored.items():
        confusion = np.zeros((n, n), dtype=np.int64)
        for annotation, path in pairs:
            gt, _ = read_label_png(annotation)
            pred, _ = read_label_png(path)
            if pred.shape != gt.shape:
                raise ValueError(f"{path}: a prediction of {pred.shape[1]}x{pred.shape[0]} for an annotation of "
                                 f"{gt.shape[1]}x{gt.shape[0]}")
            if pred.max(initial=0) >= n:
                raise ValueError(f"{path}: predicted ids above {n - 1} (VIP has {n} classes)")
            confusion += confusion_matrix(gt, pred, n)
        confusions[name] = confusion
    summary = vip_summary(confusions, results)
    if not quiet:
        print(f"VIP ({len(videos)} videos): mIoU {summary['mIoU']:.3f} -> {results}", flush=True)
    return summary
