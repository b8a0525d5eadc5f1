"""Evaluation by label propagation: DAVIS-2017 (J&F), JHMDB (PCK), VIP (mIoU).

    python -m ml.evaluate davis --checkpoint checkpoints/run/checkpoint-last.pth --data DAVIS --output out/davis
    python -m ml.evaluate jhmdb --checkpoint random --arch siammae_vit_small_patch16 --data JHMDB --output out/jhmdb
    python -m ml.evaluate vip --checkpoint mae_pretrain_vit_base.pth --arch siammae_vit_base_patch16 --data VIP ...

Every dataset is checked before the model runs (missing folders, frames without annotations,
unknown label ids). Results are written per sequence as each one finishes
(`<output>/sequences/<name>.json`), so an interrupted run continues where it stopped; `run.json`
records the model and parameters, and a run with other ones into the same folder is refused.
The expected folder layouts are in dataset/EVALUATION.md.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from tqdm.auto import tqdm

import mae  # noqa: F401  (first: makes torchvision importable for timm on a CPU-only torch)
from ml.checkpoint import atomic_file
from ml.config import TrainConfig
from ml.davis_metrics import VOID_LABEL, sequence_scores, statistics
from ml.label_propagation import (
    FeatureExtractor,
    PixelEncoder,
    PropagationConfig,
    one_hot,
    propagate_sequence,
    propagation_config,
    upsample_labels,
)

DATASETS = ("davis", "jhmdb", "vip")
DEFAULT_ARCH = TrainConfig.arch  # the paper's ViT-S/16
# evaluation sizes of the protocol: DAVIS at the frames' own size (480p), JHMDB 320x320, VIP 560x560
DEFAULT_SIZES: dict[str, int | tuple[int, int] | None] = {"davis": None, "jhmdb": (320, 320), "vip": (560, 560)}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
VIP_CLASSES = (
    "background", "hat", "hair", "sun-glasses", "upper-clothes", "dress", "coat", "socks", "pants", "gloves",
    "scarf", "skirt", "torso-skin", "face", "right-arm", "left-arm", "right-leg", "left-leg", "right-shoe",
    "left-shoe",
)
JHMDB_JOINTS = 15
PCK_THRESHOLDS = (0.1, 0.2)
PCK_BOX_SCALE = 0.6  # PCK distance unit: 0.6 x the diagonal of the tight box around the frame's true joints


# ================================================================= label images
def davis_palette() -> list[int]:
    """The 256-colour palette of DAVIS and PASCAL VOC label images (0 black, 1 (128, 0, 0), 2 (0, 128, 0), ...)."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for bit in range(7, -1, -1):  # the index's bits, three at a time, fill the colours from the top bit down
            r |= (c & 1) << bit
            g |= ((c >> 1) & 1) << bit
            b |= ((c >> 2) & 1) << bit
            c >>= 3
        palette += [r, g, b]
    return palette


def full_palette(palette: Sequence[int] | None) -> list[int]:
    """A palette of 256 colours: `palette`'s colours first, the DAVIS palette's for the rest."""
    full = davis_palette()
    if palette is not None:
        full[: min(len(palette), 768)] = list(palette)[:768]
    return full


def read_label_png(path: str | os.PathLike) -> tuple[np.ndarray, list[int] | None]:
    """A label image -> (ids (H, W) uint8, palette or None). Indexed (P) and grayscale (L) PNGs are accepted."""
    with Image.open(path) as img:
        if img.mode == "P":
            return np.array(img, dtype=np.uint8), img.getpalette()
        if img.mode in ("L", "I", "I;16"):
            ids = np.array(img)
            if ids.max(initial=0) > 255:
                raise ValueError(f"{path}: label ids up to {ids.max()} do not fit an 8-bit label image")
            return ids.astype(np.uint8), None
    raise ValueError(f"{path} is a {img.mode} image, not a label image of ids (indexed 'P' or grayscale 'L' PNG)")


def write_label_png(path: str | os.PathLike, ids: np.ndarray, palette: Sequence[int] | None = None) -> None:
    """Write ids (H, W) as an indexed PNG with `palette` (completed from the DAVIS palette up to 256 colours)."""
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.min(initial=0) < 0 or ids.max(initial=0) > 255:
        raise ValueError(f"expected (H, W) ids in 0..255, got shape {ids.shape}")
    img = Image.fromarray(ids.astype(np.uint8), mode="P")
    img.putpalette(full_palette(palette))
    with atomic_file(path) as f:
        img.save(f, format="PNG")


# ================================================================= datasets
@dataclass
class Video:
    """One evaluation sequence: frame files in order, with per-frame annotations (None where a frame has none)."""

    name: str
    frames: list[Path]
    annotations: list[Path | None]
    joints: Path | None = None  # JHMDB: joint_positions.mat


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path} (expected layouts: dataset/EVALUATION.md)")
    return path


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _read_list(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def davis_videos(
    root: str | os.PathLike,
    split: str = "val",
    resolution: str = "480p",
    year: str = "2017",
    sequences: Sequence[str] | None = None,
) -> list[Video]:
    """The sequences of a DAVIS folder: JPEGImages/<res>/<seq>/*.jpg with Annotations/<res>/<seq>/*.png.

    `resolution` names the sub-folder ('480p', 'Full-Resolution', or that of a pre-resized copy).
    The list comes from ImageSets/<year>/<split>.txt unless `sequences` is given. Every frame
    must have its annotation (the semi-supervised val set is fully annotated).
    """
    root = _require_dir(Path(root), "DAVIS folder")
    images = _require_dir(root / "JPEGImages" / resolution, "DAVIS frames folder")
    annotations = _require_dir(root / "Annotations" / resolution, "DAVIS annotations folder")
    if sequences is None:
        list_file = root / "ImageSets" / year / f"{split}.txt"
        if not list_file.is_file():
            raise FileNotFoundError(f"DAVIS sequence list not found: {list_file}")
        sequences = _read_list(list_file)
    if not sequences:
        raise ValueError("no DAVIS sequences to evaluate")
    videos = []
    for name in sequences:
        frames = _image_files(_require_dir(images / name, f"frames of sequence {name!r}"))
        ann_dir = _require_dir(annotations / name, f"annotations of sequence {name!r}")
        if not frames:
            raise ValueError(f"sequence {name!r} has no frames in {images / name}")
        anns = [ann_dir / f"{f.stem}.png" for f in frames]
        missing = [f.name for f, a in zip(frames, anns) if not a.is_file()]
        if missing:
            raise FileNotFoundError(
                f"sequence {name!r}: {len(missing)} frame(s) without an annotation in {ann_dir}: "
                + ", ".join(missing[:5])
            )
        videos.append(Video(name, frames, anns))
    return videos


def check_davis_annotations(video: Video) -> tuple[int, list[int] | None]:
    """(number of objects, palette) of a DAVIS sequence, after checking all its annotations.

    The objects are ids 1..K of the first frame (K its largest id); a later frame with another id
    (other than 255, void), or annotations of different sizes, is an error naming the file.
    """
    first, palette = read_label_png(video.annotations[0])
    num_objects = int(first[first != VOID_LABEL].max(initial=0))
    if num_objects == 0:
        raise ValueError(f"{video.annotations[0]}: the first frame of {video.name!r} has no object")
    allowed = set(range(num_objects + 1)) | {VOID_LABEL}
    for path in video.annotations:
        ids, _ = read_label_png(path)
        if ids.shape != first.shape:
            raise ValueError(f"{path}: annotation of size {ids.shape}, the sequence's first is {first.shape}")
        unknown = sorted(set(np.unique(ids).tolist()) - allowed)
        if unknown:
            raise ValueError(
                f"{path}: unknown label ids {unknown}; the first frame of {video.name!r} defines objects "
                f"1..{num_objects} (0 background, 255 void)"
            )
    if len(video.frames) < 3:
        raise ValueError(f"sequence {video.name!r} has {len(video.frames)} frames; scoring needs at least 3")
    return num_objects, palette


def jhmdb_videos(root: str | os.PathLike, split_file: str | os.PathLike | None = None, split: int = 1) -> list[Video]:
    """JHMDB videos: Rename_Images/<action>/<video>/*.png with joint_positions/<action>/<video>/joint_positions.mat.

    Videos come from `split_file` (lines '<action>/<video>'), else from the official splits
    (splits/<action>_test_split<split>.txt, videos marked 2 = test), else all videos.
    """
    root = _require_dir(Path(root), "JHMDB folder")
    images = _require_dir(root / "Rename_Images", "JHMDB frames folder")
    joints = _require_dir(root / "joint_positions", "JHMDB joint positions folder")
    if split_file is not None:
        names = _read_list(Path(split_file))
    elif (root / "splits").is_dir():
        names = []
        for f in sorted((root / "splits").glob(f"*_test_split{split}.txt")):
            action = f.name[: -len(f"_test_split{split}.txt")]
            for line in f.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] == "2":
                    names.append(f"{action}/{Path(parts[0]).stem}")
        if not names:
            raise ValueError(f"no test videos in {root / 'splits'} (*_test_split{split}.txt)")
    else:
        names = sorted(f"{a.name}/{v.name}" for a in images.iterdir() if a.is_dir() for v in a.iterdir() if v.is_dir())
    videos = []
    for name in names:
        frames = _image_files(_require_dir(images / name, f"frames of JHMDB video {name!r}"))
        mat = joints / name / "joint_positions.mat"
        if not mat.is_file():
            raise FileNotFoundError(f"JHMDB video {name!r} has no joint positions: {mat}")
        if len(frames) < 2:
            raise ValueError(f"JHMDB video {name!r} has {len(frames)} frame(s); propagation needs 2")
        videos.append(Video(name, frames, [None] * len(frames), joints=mat))
    if not videos:
        raise ValueError(f"no JHMDB videos found in {images}")
    return videos


def read_joint_positions(path: str | os.PathLike) -> np.ndarray:
    """joint_positions.mat -> (T, 15, 2) (x, y) in 0-based pixel coordinates (the file's are 1-based)."""
    from scipy.io import loadmat

    mat = loadmat(str(path))
    if "pos_img" not in mat:
        raise ValueError(f"{path} has no 'pos_img' (expected JHMDB joint_positions.mat)")
    pos = np.asarray(mat["pos_img"], dtype=np.float64)  # (2, 15, T)
    if pos.ndim != 3 or pos.shape[0] != 2:
        raise ValueError(f"{path}: pos_img of shape {pos.shape}, expected (2, joints, frames)")
    return pos.transpose(2, 1, 0) - 1.0


def vip_videos(
    root: str | os.PathLike, split: str = "val", list_file: str | os.PathLike | None = None,
    sequences: Sequence[str] | None = None,
) -> list[Video]:
    """VIP videos: Images/<video>/*.jpg with Annotations/Category_ids/<video>/*.png (or Annotations/<video>).

    The list comes from `sequences`, `list_file`, or lists/<split>_videos.txt. Frames without an
    annotation are propagated through but not scored; the first frame must be annotated.
    """
    root = _require_dir(Path(root), "VIP folder")
    images = _require_dir(root / "Images", "VIP frames folder")
    ann_root = root / "Annotations" / "Category_ids"
    if not ann_root.is_dir():
        ann_root = _require_dir(root / "Annotations", "VIP annotations folder")
    if sequences is None:
        lst = Path(list_file) if list_file is not None else root / "lists" / f"{split}_videos.txt"
        if not lst.is_file():
            raise FileNotFoundError(f"VIP video list not found: {lst}")
        sequences = _read_list(lst)
    videos = []
    for name in sequences:
        frames = _image_files(_require_dir(images / name, f"frames of VIP video {name!r}"))
        ann_dir = _require_dir(ann_root / name, f"annotations of VIP video {name!r}")
        anns = [(ann_dir / f"{f.stem}.png") for f in frames]
        anns = [a if a.is_file() else None for a in anns]
        if not frames or anns[0] is None:
            raise FileNotFoundError(f"VIP video {name!r}: the first frame needs an annotation in {ann_dir}")
        if sum(a is not None for a in anns) < 2:
            raise ValueError(f"VIP video {name!r} has no annotated frame after the first to score")
        videos.append(Video(name, frames, anns))
    return videos


def check_vip_annotations(video: Video, num_classes: int = len(VIP_CLASSES)) -> None:
    """Every annotation of the video holds only class ids 0..num_classes-1 (and 255, ignored)."""
    for path in video.annotations:
        if path is None:
            continue
        ids, _ = read_label_png(path)
        unknown = sorted(set(np.unique(ids).tolist()) - set(range(num_classes)) - {VOID_LABEL})
        if unknown:
            raise ValueError(f"{path}: unknown label ids {unknown}; VIP has classes 0..{num_classes - 1} (255 ignored)")


# ================================================================= models
def weights_fingerprint(module: nn.Module) -> str:
    """SHA-1 of the parameter and buffer names, shapes and values: tells whether two runs used the same weights."""
    digest = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_encoder(checkpoint: str | os.PathLike, arch: str | None = None, seed: int = 0) -> tuple[nn.Module, str]:
    """The encoder to evaluate and a name for it.

    `checkpoint`: 'random' (preset `arch` at a seeded random initialisation: the baseline),
    'pixels' (raw 16x16 pixel patches, no network), a checkpoint file or run folder of this
    project (its arch is used when `arch` is None), or an official MAE checkpoint (its encoder
    weights; `arch` must name a preset of the same size). A file that does not fit the
    architecture raises CheckpointError naming the keys, before any data is read.
    """
    if str(checkpoint) == "pixels":
        return PixelEncoder(patch_size=16), "pixels"
    from ml.SiamMAE import create_model, prepare_model

    if str(checkpoint) == "random":
        arch = arch or DEFAULT_ARCH
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = create_model(arch)
        return model.encoder, f"random:{arch}:seed{seed}"
    model = prepare_model(checkpoint, arch)
    return model.encoder, f"{checkpoint} ({arch or 'arch from the checkpoint'})"


# ================================================================= output folder and resuming
class ResultStore:
    """The output folder of one run: run.json (what was run), sequences/<name>.json (one per finished sequence)."""

    def __init__(self, output: str | os.PathLike, record: dict) -> None:
        self.root = Path(output)
        record = json.loads(json.dumps(record))  # as it reads back from disk
        run_file = self.root / "run.json"
        if run_file.is_file():
            old = json.loads(run_file.read_text())
            if old != record:
                changed = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
                raise ValueError(
                    f"{self.root} holds results of a different run (differs in: {', '.join(changed)}); "
                    "choose another --output, or remove that folder to start over"
                )
        else:
            if self.root.is_dir() and any(self.root.iterdir()):
                raise ValueError(f"{self.root} is not empty and holds no run.json; choose an empty or new --output")
            self.root.mkdir(parents=True, exist_ok=True)
            _write_json(run_file, record)
        self.record = record

    def path(self, name: str) -> Path:
        return self.root / "sequences" / f"{name}.json"

    def load(self, name: str) -> dict | None:
        p = self.path(name)
        return json.loads(p.read_text()) if p.is_file() else None

    def save(self, name: str, result: dict) -> None:
        _write_json(self.path(name), result)


def _write_json(path: Path, obj) -> None:
    with atomic_file(path, "w") as f:  # a result file is complete or absent
        f.write(json.dumps(obj, indent=1))


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _run_all(
    videos: list[Video],
    store: ResultStore,
    compute: Callable[[Video, Callable[[], None]], dict],
    progress: bool,
    desc: str,
) -> tuple[dict[str, dict], int]:
    """Results of every video, computing (and saving at once) only those not saved by an earlier run."""
    results, computed = {}, 0
    bar = tqdm(total=sum(len(v.frames) for v in videos), desc=desc, unit="frame", disable=not progress)
    for video in videos:
        done = store.load(video.name)
        if done is None:
            bar.set_postfix_str(video.name)
            done = compute(video, lambda: bar.update(1))
            store.save(video.name, done)
            computed += 1
        else:
            bar.update(len(video.frames))
        results[video.name] = done
    bar.close()
    return results, computed


def _extractor(encoder, device, size, batch_size) -> FeatureExtractor:
    if isinstance(encoder, FeatureExtractor):
        return encoder
    return FeatureExtractor(encoder, device=device, size=size, batch_size=batch_size)


def _record(dataset: str, extractor: FeatureExtractor, config: PropagationConfig, model_name: str | None, **extra):
    return {
        "dataset": dataset,
        "model": model_name or type(extractor.encoder).__name__,
        "weights_sha1": weights_fingerprint(extractor.encoder),
        "size": extractor.size,
        "propagation": config.to_dict(),
        **extra,
    }


def _frame_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.height, img.width


# ================================================================= DAVIS
def evaluate_davis(
    encoder: nn.Module | FeatureExtractor,
    data: str | os.PathLike,
    output: str | os.PathLike,
    *,
    split: str = "val",
    resolution: str = "480p",
    sequences: Sequence[str] | None = None,
    config: PropagationConfig | None = None,
    size: int | tuple[int, int] | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 1,
    model_name: str | None = None,
    progress: bool = True,
) -> dict:
    """DAVIS-2017 semi-supervised: propagate the first-frame masks, write indexed PNGs, score J and F.

    Writes <output>/masks/<seq>/<frame>.png (the DAVIS palette; a folder the official evaluation
    reads), global_results-<split>.csv (J&F-Mean, J-Mean, J-Recall, J-Decay, F-Mean, F-Recall,
    F-Decay), per-sequence_results-<split>.csv (one row per object '<seq>_<k>', as the official
    tool) and per-video_results-<split>.csv. Returns the global numbers.
    """
    config = config or propagation_config("davis")
    videos = davis_videos(data, split, resolution, sequences=sequences)
    checks = {v.name: check_davis_annotations(v)
              for v in tqdm(videos, desc="checking annotations", disable=not progress)}
    extractor = _extractor(encoder, device, size, batch_size)
    store = ResultStore(output, _record("davis", extractor, config, model_name, split=split, resolution=resolution))

    def compute(video: Video, tick: Callable[[], None]) -> dict:
        num_objects, palette = checks[video.name]
        start = time.perf_counter()
        pred, gt = propagate_davis_sequence(extractor, video, num_objects, config, store.root / "masks", palette, tick)
        J, F = sequence_scores(gt, pred, num_objects)
        return {"sequence": video.name, "frames": len(video.frames), "objects": num_objects,
                "seconds": time.perf_counter() - start, "J": J.tolist(), "F": F.tolist()}

    results, computed = _run_all(videos, store, compute, progress, "DAVIS")
    per_object, per_video = [], []
    stats = {"J": [], "F": []}
    for name, r in results.items():
        for k in range(r["objects"]):
            jm, jr, jd = statistics(np.array(r["J"][k]))
            fm, fr, fd = statistics(np.array(r["F"][k]))
            stats["J"].append((jm, jr, jd))
            stats["F"].append((fm, fr, fd))
            per_object.append({"Sequence": f"{name}_{k + 1}", "J-Mean": jm, "F-Mean": fm})
        j_seq = float(np.mean([row["J-Mean"] for row in per_object[-r["objects"]:]]))
        f_seq = float(np.mean([row["F-Mean"] for row in per_object[-r["objects"]:]]))
        per_video.append({"Sequence": name, "Objects": r["objects"], "Frames": r["frames"],
                          "J&F-Mean": (j_seq + f_seq) / 2, "J-Mean": j_seq, "F-Mean": f_seq,
                          "Seconds": r["seconds"]})
    J, F = np.array(stats["J"]), np.array(stats["F"])
    summary = {
        "J&F-Mean": float((J[:, 0].mean() + F[:, 0].mean()) / 2),
        "J-Mean": float(J[:, 0].mean()), "J-Recall": float(J[:, 1].mean()), "J-Decay": float(J[:, 2].mean()),
        "F-Mean": float(F[:, 0].mean()), "F-Recall": float(F[:, 1].mean()), "F-Decay": float(F[:, 2].mean()),
    }
    _write_csv(store.root / f"global_results-{split}.csv", [summary])
    _write_csv(store.root / f"per-sequence_results-{split}.csv", per_object)
    _write_csv(store.root / f"per-video_results-{split}.csv", per_video)
    frames = sum(r["frames"] for r in results.values())
    seconds = sum(r["seconds"] for r in results.values())
    out = {**summary, "sequences": len(results), "objects": len(per_object), "frames": frames,
           "seconds_per_frame": seconds / max(1, frames), "computed": computed, "output": str(store.root)}
    if progress:
        print(f"DAVIS {split} ({len(results)} sequences, {len(per_object)} objects): "
              f"J&F-Mean {summary['J&F-Mean']:.3f}  J-Mean {summary['J-Mean']:.3f}  F-Mean {summary['F-Mean']:.3f}  "
              f"-> {store.root}")
    return out


def propagate_davis_sequence(
    extractor: FeatureExtractor,
    video: Video,
    num_objects: int,
    config: PropagationConfig,
    masks_dir: Path | None = None,
    palette: list[int] | None = None,
    on_frame: Callable[[], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and true ids (T, H, W) of a DAVIS sequence; predictions also written as PNGs under masks_dir/<seq>."""
    gt = np.stack([read_label_png(p)[0] for p in video.annotations])  # (T, H, W)
    H, W = gt.shape[1:]
    size_hw = extractor.input_size(_frame_size(video.frames[0]))
    first = one_hot(gt[0], num_objects + 1)  # void pixels carry no label
    features = extractor.iter_frame_features(video.frames, size_hw)
    pred = np.empty_like(gt)
    pred[0] = np.where(gt[0] == VOID_LABEL, 0, gt[0])
    for t, soft in enumerate(propagate_sequence(features, first, config), start=1):
        pred[t] = upsample_labels(soft, (H, W)).argmax(0).to(torch.uint8).cpu().numpy()
        if on_frame is not None:
            on_frame()
    if masks_dir is not None:
        for t, frame in enumerate(video.frames):
            write_label_png(masks_dir / video.name / f"{frame.stem}.png", pred[t], palette)
    return pred, gt


# ================================================================= JHMDB
def keypoint_heatmaps(points: np.ndarray, image_hw: tuple[int, int], grid_hw: tuple[int, int], sigma: float = 0.5):
    """Joints (J, 2) in pixels -> (J, h, w) Gaussian heatmaps on the feature grid (sigma in cells, peak 1)."""
    (H, W), (h, w) = image_hw, grid_hw
    u = (points[:, 0] + 0.5) * w / W - 0.5  # grid coordinates: cell centres at integers
    v = (points[:, 1] + 0.5) * h / H - 0.5
    yy, xx = np.mgrid[0:h, 0:w]
    d2 = (xx[None] - u[:, None, None]) ** 2 + (yy[None] - v[:, None, None]) ** 2
    return torch.from_numpy(np.exp(-d2 / (2 * sigma**2))).float()


def heatmap_keypoints(heat: torch.Tensor, image_hw: tuple[int, int], topk: int = 3) -> np.ndarray:
    """(J, h, w) propagated heatmaps -> (J, 2) pixel positions: the weighted mean of each map's top-k cells."""
    J, h, w = heat.shape
    (H, W) = image_hw
    flat = heat.reshape(J, h * w).clamp_min(0)
    vals, idx = flat.topk(min(topk, h * w), dim=1)
    weights = vals / vals.sum(1, keepdim=True).clamp_min(1e-12)
    u = ((idx % w).float() * weights).sum(1)
    v = ((idx // w).float() * weights).sum(1)
    x = (u + 0.5) * W / w - 0.5
    y = (v + 0.5) * H / h - 0.5
    return torch.stack([x, y], 1).cpu().numpy()


def pck_distances(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Normalised distances (T, J): |pred - gt| / (0.6 x diagonal of the tight box of the frame's true joints)."""
    span = gt.max(axis=1) - gt.min(axis=1)  # (T, 2)
    scale = PCK_BOX_SCALE * np.hypot(span[:, 0], span[:, 1])  # (T,)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.linalg.norm(pred - gt, axis=-1) / scale[:, None]


def evaluate_jhmdb(
    encoder: nn.Module | FeatureExtractor,
    data: str | os.PathLike,
    output: str | os.PathLike,
    *,
    split_file: str | os.PathLike | None = None,
    sequences: Sequence[str] | None = None,
    config: PropagationConfig | None = None,
    size: int | tuple[int, int] | None = DEFAULT_SIZES["jhmdb"],
    heatmap_sigma: float = 0.5,
    device: str | torch.device | None = None,
    batch_size: int = 1,
    model_name: str | None = None,
    progress: bool = True,
) -> dict:
    """JHMDB pose propagation: the 15 joints of the first frame as heatmaps; PCK@0.1 and PCK@0.2.

    A joint counts as correct when its distance to the truth is at most alpha x 0.6 x the diagonal
    of the box around the frame's 15 true joints (the normalisation of the CRW/UVC evaluation).
    PCK is the mean over joints of each joint's fraction of correct frames; the first frame is
    not scored. Writes per-video_results.csv and global_results.csv.
    """
    config = config or propagation_config("jhmdb")
    videos = jhmdb_videos(data, split_file)
    if sequences is not None:
        wanted = set(sequences)
        videos = [v for v in videos if v.name in wanted]
    extractor = _extractor(encoder, device, size, batch_size)
    store = ResultStore(output, _record("jhmdb", extractor, config, model_name, heatmap_sigma=heatmap_sigma))

    def compute(video: Video, tick: Callable[[], None]) -> dict:
        start = time.perf_counter()
        gt = read_joint_positions(video.joints)  # (T, J, 2)
        n = min(len(video.frames), gt.shape[0])  # a few videos have one position set more or less than frames
        image_hw = _frame_size(video.frames[0])
        size_hw = extractor.input_size(image_hw)
        grid = (size_hw[0] // extractor.patch_size, size_hw[1] // extractor.patch_size)
        first = keypoint_heatmaps(gt[0], image_hw, grid, heatmap_sigma)
        features = extractor.iter_frame_features(video.frames[:n], size_hw)
        pred = [gt[0]]
        for soft in propagate_sequence(features, first, config):
            pred.append(heatmap_keypoints(soft, image_hw))
            tick()
        pred = np.stack(pred)
        dist = pck_distances(pred[1:], gt[1:n])
        return {"video": video.name, "frames": n, "joints": gt.shape[1], "seconds": time.perf_counter() - start,
                "keypoints": pred.tolist(), "distances": dist.tolist()}

    results, computed = _run_all(videos, store, compute, progress, "JHMDB")
    all_dist = np.concatenate(
        [np.array(r["distances"], dtype=float).reshape(-1, r["joints"]) for r in results.values()]
    )
    summary = {f"PCK@{a}": pck(all_dist, a) for a in PCK_THRESHOLDS}
    per_video = [{"Video": name, "Frames": r["frames"],
                  **{f"PCK@{a}": pck(np.array(r["distances"], dtype=float).reshape(-1, r["joints"]), a)
                     for a in PCK_THRESHOLDS},
                  "Seconds": r["seconds"]} for name, r in results.items()]
    _write_csv(store.root / "global_results.csv", [summary])
    _write_csv(store.root / "per-video_results.csv", per_video)
    frames = sum(r["frames"] for r in results.values())
    out = {**summary, "videos": len(results), "frames": frames, "computed": computed,
           "seconds_per_frame": sum(r["seconds"] for r in results.values()) / max(1, frames),
           "output": str(store.root)}
    if progress:
        print(f"JHMDB ({len(results)} videos): " + "  ".join(f"{k} {v:.3f}" for k, v in summary.items()))
    return out


def pck(distances: np.ndarray, alpha: float) -> float:
    """Mean over joints of the fraction of frames whose normalised distance is <= alpha (nan entries skipped)."""
    d = np.asarray(distances, dtype=float)
    valid = np.isfinite(d)
    per_joint = [(d[valid[:, j], j] <= alpha).mean() for j in range(d.shape[1]) if valid[:, j].any()]
    return float(np.mean(per_joint)) if per_joint else float("nan")


# ================================================================= VIP
def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore: int = VOID_LABEL) -> np.ndarray:
    """(num_classes, num_classes) counts, rows true class, columns predicted; `ignore` pixels left out."""
    keep = gt != ignore
    index = gt[keep].astype(np.int64) * num_classes + pred[keep].astype(np.int64)
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """IoU of each class from a confusion matrix: TP / (TP + FP + FN); nan for a class absent in both."""
    tp = np.diag(confusion).astype(float)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def evaluate_vip(
    encoder: nn.Module | FeatureExtractor,
    data: str | os.PathLike,
    output: str | os.PathLike,
    *,
    split: str = "val",
    list_file: str | os.PathLike | None = None,
    sequences: Sequence[str] | None = None,
    config: PropagationConfig | None = None,
    size: int | tuple[int, int] | None = DEFAULT_SIZES["vip"],
    device: str | torch.device | None = None,
    batch_size: int = 1,
    model_name: str | None = None,
    progress: bool = True,
) -> dict:
    """VIP part propagation: the first frame's 20 part classes; mIoU over the classes.

    IoU per class is computed from one confusion matrix summed over all scored frames (annotated
    frames after the first) of all videos; mIoU is their mean over classes that occur. Writes the
    predicted parts as indexed PNGs, global_results.csv (mIoU and each class's IoU) and
    per-video_results.csv.
    """
    config = config or propagation_config("vip")
    num_classes = len(VIP_CLASSES)
    videos = vip_videos(data, split, list_file, sequences)
    for v in tqdm(videos, desc="checking annotations", disable=not progress):
        check_vip_annotations(v, num_classes)
    extractor = _extractor(encoder, device, size, batch_size)
    store = ResultStore(output, _record("vip", extractor, config, model_name, split=split))

    def compute(video: Video, tick: Callable[[], None]) -> dict:
        start = time.perf_counter()
        first_ids, _ = read_label_png(video.annotations[0])
        H, W = first_ids.shape
        size_hw = extractor.input_size(_frame_size(video.frames[0]))
        features = extractor.iter_frame_features(video.frames, size_hw)
        confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        write_label_png(store.root / "masks" / video.name / f"{video.frames[0].stem}.png",
                        np.where(first_ids == VOID_LABEL, 0, first_ids))
        propagated = propagate_sequence(features, one_hot(first_ids, num_classes), config)
        for frame, ann, soft in zip(video.frames[1:], video.annotations[1:], propagated):
            pred = upsample_labels(soft, (H, W)).argmax(0).to(torch.uint8).cpu().numpy()
            write_label_png(store.root / "masks" / video.name / f"{frame.stem}.png", pred)
            if ann is not None:
                gt, _ = read_label_png(ann)
                if gt.shape != pred.shape:
                    raise ValueError(f"{ann}: annotation of size {gt.shape}, the first is {(H, W)}")
                confusion += confusion_matrix(gt, pred, num_classes)
            tick()
        return {"video": video.name, "frames": len(video.frames), "seconds": time.perf_counter() - start,
                "confusion": confusion.tolist()}

    results, computed = _run_all(videos, store, compute, progress, "VIP")
    total = sum(np.array(r["confusion"], dtype=np.int64) for r in results.values())
    ious = iou_per_class(total)
    summary = {"mIoU": float(np.nanmean(ious)), **{f"IoU-{c}": float(i) for c, i in zip(VIP_CLASSES, ious)}}
    per_video = [{"Video": name, "Frames": r["frames"],
                  "mIoU": float(np.nanmean(iou_per_class(np.array(r["confusion"])))), "Seconds": r["seconds"]}
                 for name, r in results.items()]
    _write_csv(store.root / "global_results.csv", [summary])
    _write_csv(store.root / "per-video_results.csv", per_video)
    frames = sum(r["frames"] for r in results.values())
    out = {"mIoU": summary["mIoU"], "class_iou": dict(zip(VIP_CLASSES, ious.tolist())), "videos": len(results),
           "frames": frames, "computed": computed, "output": str(store.root),
           "seconds_per_frame": sum(r["seconds"] for r in results.values()) / max(1, frames)}
    if progress:
        print(f"VIP ({len(results)} videos): mIoU {summary['mIoU']:.3f}")
    return out


# ================================================================= one entry point (CLI and notebook)
def run_evaluation(
    dataset: str,
    data: str | os.PathLike,
    output: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    arch: str | None = None,
    encoder: nn.Module | None = None,
    *,
    size: int | tuple[int, int] | None | str = "default",
    device: str | torch.device | None = None,
    batch_size: int = 1,
    seed: int = 0,
    progress: bool = True,
    **options,
) -> dict:
    """Evaluate one dataset ('davis', 'jhmdb', 'vip') with an encoder given directly or loaded from `checkpoint`.

    `options`: propagation parameters (temperature, topk, queue_length, radius,
    restrict_first_frame, max_affinity_elements) and the dataset function's own (split,
    resolution, sequences, list_file, split_file, heatmap_sigma). `size` 'default' is the
    protocol's size for the dataset.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    prop_keys = set(PropagationConfig.__dataclass_fields__)
    config = propagation_config(dataset, **{k: v for k, v in options.items() if k in prop_keys})
    rest = {k: v for k, v in options.items() if k not in prop_keys and v is not None}
    if not Path(data).is_dir():  # before loading a model
        raise FileNotFoundError(f"{dataset} folder not found: {data} (expected layouts: dataset/EVALUATION.md)")
    if encoder is None:
        if checkpoint is None:
            raise ValueError("pass a checkpoint (a file, 'random' or 'pixels') or an encoder")
        encoder, model_name = load_encoder(checkpoint, arch, seed)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    else:
        model_name = arch or type(encoder).__name__  # device None: the encoder stays where it is
    size = DEFAULT_SIZES[dataset] if size == "default" else size
    fn = {"davis": evaluate_davis, "jhmdb": evaluate_jhmdb, "vip": evaluate_vip}[dataset]
    return fn(encoder, data, output, config=config, size=size, device=device, batch_size=batch_size,
              model_name=model_name, progress=progress, **rest)


def _parse_size(text: str) -> int | tuple[int, int] | None | str:
    if text in ("default", "native", "none"):
        return None if text != "default" else "default"
    if "x" in text:
        h, w = text.lower().split("x")
        return int(h), int(w)
    return int(text)


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m ml.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint file or run folder, 'random' (seeded init) or 'pixels' (raw patches)")
    p.add_argument("--arch", default=None, help=f"model preset (default: the checkpoint's, else {DEFAULT_ARCH})")
    p.add_argument("--data", required=True, help="dataset root (layouts: dataset/EVALUATION.md)")
    p.add_argument("--output", required=True, help="results folder (an interrupted run continues in it)")
    p.add_argument("--size", type=_parse_size, default="default",
                   help="evaluation size: 'native' (frame size), N (short side) or HxW; default per dataset")
    p.add_argument("--split", default=None, help="DAVIS/VIP split (default val)")
    p.add_argument("--resolution", default=None, help="DAVIS resolution folder (default 480p)")
    p.add_argument("--sequences", nargs="+", default=None, help="only these sequences/videos")
    p.add_argument("--list-file", default=None, help="VIP: file listing the videos")
    p.add_argument("--split-file", default=None, help="JHMDB: file listing <action>/<video> lines")
    p.add_argument("--heatmap-sigma", type=float, default=None, help="JHMDB: joint heatmap sigma in feature cells")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--topk", type=int, default=None)
    p.add_argument("--queue-length", type=int, default=None)
    p.add_argument("--radius", type=float, default=None,
                   help="neighbourhood radius in feature cells (0: no restriction)")
    p.add_argument("--restrict-first-frame", action="store_true", default=None)
    p.add_argument("--max-affinity-elements", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=1, help="frames encoded at once")
    p.add_argument("--seed", type=int, default=0, help="seed of --checkpoint random")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    options = {"split": a.split, "resolution": a.resolution, "sequences": a.sequences, "list_file": a.list_file,
               "split_file": a.split_file, "heatmap_sigma": a.heatmap_sigma, "temperature": a.temperature,
               "topk": a.topk, "queue_length": a.queue_length, "restrict_first_frame": a.restrict_first_frame,
               "max_affinity_elements": a.max_affinity_elements}
    if a.radius is not None:
        options["radius"] = a.radius
    accepted = {"davis": {"split", "resolution", "sequences"}, "jhmdb": {"sequences", "split_file", "heatmap_sigma"},
                "vip": {"split", "sequences", "list_file"}}[a.dataset]
    for key in ("split", "resolution", "sequences", "list_file", "split_file", "heatmap_sigma"):
        if options[key] is not None and key not in accepted:
            p.error(f"--{key.replace('_', '-')} does not apply to {a.dataset}")
        if key not in accepted:
            options.pop(key)
    return run_evaluation(a.dataset, a.data, a.output, a.checkpoint, a.arch, size=a.size, device=a.device,
                          batch_size=a.batch_size, seed=a.seed, progress=not a.no_progress, **options)


# ================================================================= plots and synthetic data
def overlay_labels(frame: np.ndarray, ids: np.ndarray, palette: Sequence[int] | None = None, alpha: float = 0.5):
    """Colour the labelled pixels (id > 0) of an RGB frame (H, W, 3) uint8 with their palette colours."""
    pal = np.array(full_palette(palette), dtype=np.float32).reshape(256, 3)
    out = frame.astype(np.float32).copy()
    mask = (ids > 0) & (ids != VOID_LABEL)
    out[mask] = (1 - alpha) * out[mask] + alpha * pal[ids[mask]]
    return out.clip(0, 255).astype(np.uint8)


def plot_propagation(
    data: str | os.PathLike,
    output: str | os.PathLike,
    sequence: str,
    frames: Sequence[int] | None = None,
    resolution: str = "480p",
    alpha: float = 0.5,
    show_ground_truth: bool = True,
):
    """Propagated masks of a DAVIS-layout evaluation (`output` of evaluate_davis) over the frames.

    Top row: predictions; bottom row (show_ground_truth): annotations. `frames`: indices to show
    (default: first, two in between, last). Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    (video,) = davis_videos(data, resolution=resolution, sequences=[sequence])
    masks = Path(output) / "masks" / sequence
    n = len(video.frames)
    idx = list(frames) if frames is not None else sorted({0, n // 3, (2 * n) // 3, n - 1})
    rows = 2 if show_ground_truth else 1
    fig, axes = plt.subplots(rows, len(idx), figsize=(3.2 * len(idx), 2.0 * rows + 0.4), squeeze=False)
    for col, t in enumerate(idx):
        img = np.asarray(Image.open(video.frames[t]).convert("RGB"))
        pred_path = masks / f"{video.frames[t].stem}.png"
        if not pred_path.is_file():
            raise FileNotFoundError(f"no prediction {pred_path}; run evaluate_davis with output={output} first")
        pred, palette = read_label_png(pred_path)
        layers = [("propagated", pred)]
        if show_ground_truth:
            layers.append(("annotation", read_label_png(video.annotations[t])[0]))
        for row, (what, ids) in enumerate(layers):
            if ids.shape != img.shape[:2]:
                ids = np.array(Image.fromarray(ids).resize((img.shape[1], img.shape[0]), Image.NEAREST))
            ax = axes[row, col]
            ax.imshow(overlay_labels(img, ids, palette, alpha))
            ax.set_title(f"{what}, frame {t}" if t else f"{what}, frame 0 (given)", fontsize=9)
            ax.axis("off")
    fig.suptitle(f"label propagation: {sequence}")
    fig.tight_layout()
    return fig


def write_synthetic_davis(
    root: str | os.PathLike,
    num_sequences: int = 2,
    num_frames: int = 8,
    size: tuple[int, int] = (96, 160),
    num_objects: int = 2,
    seed: int = 0,
    resolution: str = "480p",
) -> Path:
    """A DAVIS-2017-layout folder of moving coloured discs on a grey textured background.

    Each object has its own saturated colour and moves in a straight line; annotations are
    indexed PNGs with the DAVIS palette. For tests and demos of the evaluation without DAVIS.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    H, W = size
    # object colours unlike the palette's first colours, so overlays of the labels stand out
    colours = np.array([[230, 200, 20], [40, 200, 220], [200, 40, 200], [240, 140, 30], [60, 60, 230]], np.float32)
    names = [f"synthetic{i:02d}" for i in range(num_sequences)]
    yy, xx = np.mgrid[0:H, 0:W]
    for name in names:
        background = 128 + rng.normal(0, 6, size=(H, W, 1)).astype(np.float32)
        radius = rng.uniform(0.12, 0.18, num_objects) * min(H, W)
        start = np.stack([rng.uniform(r, H - r) for r in radius]), np.stack([rng.uniform(r, W - r) for r in radius])
        start = np.stack(start, 1)
        velocity = rng.uniform(-1, 1, (num_objects, 2)) * min(H, W) * 0.02
        for t in range(num_frames):
            img = np.repeat(background, 3, axis=2).copy()
            ids = np.zeros((H, W), np.uint8)
            for k in range(num_objects):  # later objects are drawn over earlier ones
                cy, cx = start[k] + velocity[k] * t
                cy = float(np.clip(cy, radius[k], H - radius[k]))
                cx = float(np.clip(cx, radius[k], W - radius[k]))
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius[k] ** 2
                img[inside] = colours[k % len(colours)]
                ids[inside] = k + 1
            frame_dir = root / "JPEGImages" / resolution / name
            frame_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(frame_dir / f"{t:05d}.jpg", quality=95)
            write_label_png(root / "Annotations" / resolution / name / f"{t:05d}.png", ids)
    (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(names) + "\n")
    return root


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError, mae.CheckpointError) as err:
        sys.exit(f"error: {err}")
