"""Kinetics frame pairs: each item is one video, decoded once, giving R pairs (f1, f2) of augmented frames.

    data = KineticsFramePairs("dataset/sample", split="train", repeated_sampling=2)
    f1, f2 = data[0]                  # (2, 3, 224, 224) each, ImageNet-normalised
    data.describe(0)                  # the video, frame indices, gaps, and the frames themselves

The randomness of an item (its pairs, crops and flips, and the replacement of a bad video) is a
pure function of (seed, epoch, index), so a seed gives the same pairs whatever the worker count,
and a run resumed at an epoch boundary sees the same data.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .frames_file import open_video
from .random_temporal_subsample import MAX_GAP, MIN_GAP, REFERENCE_FPS, RandomTemporalSubsample
from .transforms import CROP_SCALE, IMAGENET_MEAN, IMAGENET_STD, PairedTransform, denormalize, normalize
from .video import READ_ERRORS, VIDEO_EXTENSIONS, VideoError, VideoReader, VideoTooShortError

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "LAYOUTS_HELP", "BadVideoWarning", "KineticsFramePairs", "NoReadableVideoError",
    "VideoList",
    "denormalize", "find_videos",
]

LAYOUTS_HELP = """Layouts understood (ROOT is the folder passed as the data source, SPLIT e.g. train or val):
  1. Kinetics tree: ROOT/SPLIT/<class>/<video>.mp4, or ROOT/SPLIT/<video>.mp4
  2. official annotation CSV (columns label,youtube_id,time_start,time_end,split): ROOT/SPLIT.csv,
     ROOT/annotations/SPLIT.csv or ROOT/kinetics_SPLIT.csv, or the CSV file itself; videos named
     <youtube_id>_<time_start:06d>_<time_end:06d>.mp4 anywhere under ROOT (or beside the CSV)
  3. list file with one 'path label' a line (pytorchvideo): ROOT/SPLIT.csv or ROOT/SPLIT.txt, or the file itself
  4. list of video paths: a text file with one path a line, or a Python list of paths
  5. one split's folder as ROOT: ROOT/<class>/<video>.mp4 or ROOT/<video>.mp4
Video files: """ + " ".join(VIDEO_EXTENSIONS)

KINETICS400_TRAIN_VIDEOS = 240_000  # about: the training split of a full download (it varies with what is online)

_SPLIT_ALIASES = {"val": ("val", "validate", "validation"), "validate": ("val", "validate", "validation"),
                  "validation": ("val", "validate", "validation")}
_ALL_SPLITS = {"train", "val", "validate", "validation", "test", "trainval"}


class BadVideoWarning(UserWarning):
    """A video was skipped because it cannot be read."""


class NoReadableVideoError(ValueError):
    """No video of a split can be read: training on it cannot start."""


@dataclass
class VideoList:
    """The videos of a split as found on disk."""

    paths: list[Path]
    labels: list[str | int | None]
    layout: str
    missing: list[str] = field(default_factory=list)  # listed in an annotation/list file but not on disk


def _is_video(name: str) -> bool:
    return name.lower().endswith(VIDEO_EXTENSIONS)


def _split_names(split: str) -> tuple[str, ...]:
    return _SPLIT_ALIASES.get(split, (split,))


def _videos_in(folder: Path) -> list[Path]:
    return sorted(folder / n for n in os.listdir(folder) if _is_video(n) and (folder / n).is_file())


def _read_tree(folder: Path, skip: set[str] = frozenset()) -> tuple[list[Path], list[str | None]]:
    """Videos in folder/<class>/ (label = class) and directly in folder (label None)."""
    paths: list[Path] = []
    labels: list[str | None] = []
    for path in _videos_in(folder):
        paths.append(path)
        labels.append(None)
    for name in sorted(os.listdir(folder)):
        sub = folder / name
        if name in skip or name.startswith(".") or not sub.is_dir():
            continue
        for path in _videos_in(sub):
            paths.append(path)
            labels.append(name)
    return paths, labels


def _resolve(entry: str, bases: list[Path]) -> Path:
    path = Path(entry).expanduser()
    if path.is_absolute():
        return path
    for base in bases:
        if (base / path).exists():
            return base / path
    return bases[0] / path


def _scan_videos(root: Path) -> dict[str, Path]:
    """file stem -> path of every video under root."""
    found: dict[str, Path] = {}
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if _is_video(name):
                found.setdefault(os.path.splitext(name)[0], Path(folder) / name)
    return found


def _read_annotation_csv(path: Path, split: str, video_root: Path) -> VideoList:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and "split" in rows[0]:
        splits = {r["split"] for r in rows}
        if len(splits) > 1:  # a file holding several splits: keep ours
            rows = [r for r in rows if r["split"] in _split_names(split)]
    on_disk = _scan_videos(video_root)
    paths, labels, missing = [], [], []
    for r in rows:
        stem = f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_{int(float(r['time_end'])):06d}"
        if stem in on_disk:
            paths.append(on_disk[stem])
            labels.append(r.get("label"))
        else:
            missing.append(stem)
    return VideoList(paths, labels, f"annotation CSV {path}", missing)


def _read_list_file(path: Path, extra_bases: list[Path]) -> VideoList:
    """'path label' lines (pytorchvideo) or one path a line; relative paths from the file's folder."""
    bases = [path.parent, *extra_bases, Path.cwd()]
    paths, labels, missing = [], [], []
    with_labels = 0
    with open(path) as f:
        lines = [ln.strip() for ln in f]
    for line in lines:
        if not line or line.startswith("#"):
            continue
        entry, label = line, None
        parts = line.rsplit(None, 1)
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            entry, label = parts[0], int(parts[1])
            with_labels += 1
        video = _resolve(entry, bases)
        if video.is_file():
            paths.append(video)
            labels.append(label)
        else:
            missing.append(entry)
    kind = "list file 'path label'" if with_labels else "list of video paths"
    return VideoList(paths, labels, f"{kind} {path}", missing)


def _read_text_source(path: Path, split: str, root: Path | None = None) -> VideoList:
    """An annotation CSV or a list file, told apart by their first line."""
    with open(path, errors="replace") as f:
        first = next((ln for ln in f if ln.strip()), "")
    header = [c.strip() for c in first.lower().split(",")]
    if "youtube_id" in header and "time_start" in header:
        if root is None:
            root = path.parent.parent if path.parent.name == "annotations" else path.parent
        return _read_annotation_csv(path, split, root)
    return _read_list_file(path, [root] if root is not None else [])


def _split_files(root: Path, split: str) -> list[Path]:
    names = []
    for s in _split_names(split):
        names += [f"{s}.csv", f"{s}.txt", f"kinetics_{s}.csv", f"kinetics400_{s}.csv", f"kinetics_400_{s}.csv"]
    return [folder / n for folder in (root, root / "annotations") for n in names if (folder / n).is_file()]


def find_videos(source: str | os.PathLike | Sequence[str | os.PathLike], split: str = "train") -> VideoList:
    """The videos of `split` in `source`: a folder in one of the layouts of `LAYOUTS_HELP`, a file, or a list."""
    if isinstance(source, (list, tuple)):
        paths = [Path(p) for p in source]
        present = [p for p in paths if p.is_file()]
        found = VideoList(present, [None] * len(present), "list of video paths",
                          [str(p) for p in paths if not p.is_file()])
    else:
        root = Path(source).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"data source {root} does not exist.\n{LAYOUTS_HELP}")
        found = _find_in(root, split)
    if not found.paths:
        detail = f" ({len(found.missing)} listed videos are missing, e.g. {found.missing[0]})" if found.missing else ""
        raise ValueError(f"no videos for split '{split}' in {source} (read as {found.layout}){detail}.\n"
                         f"{LAYOUTS_HELP}")
    return found


def _find_in(root: Path, split: str) -> VideoList:
    if root.is_file():
        if _is_video(root.name):
            return VideoList([root], [None], "list of video paths")
        return _read_text_source(root, split)
    split_dir = next((root / s for s in _split_names(split) if (root / s).is_dir()), None)
    annotation = _split_files(root, split)
    if annotation:  # selects the videos and gives their labels
        listed = _read_text_source(annotation[0], split, root)
        if listed.paths or split_dir is None:
            return listed
    if split_dir is not None:
        paths, labels = _read_tree(split_dir)
        return VideoList(paths, labels, f"Kinetics tree {split_dir}")
    # one split's folder given as the root (sub-folders named like splits are not classes)
    paths, labels = _read_tree(root, skip=_ALL_SPLITS)
    return VideoList(paths, labels, f"folder of one split {root}" if paths else "nothing recognised")


class KineticsFramePairs(Dataset):
    """Frame pairs from Kinetics-style videos: `(f1, f2)` each (3, S, S), or (R, 3, S, S) with repeated sampling R.

    Args:
        source: a folder (see `LAYOUTS_HELP`), an annotation CSV or list file, or a list of video paths.
        split: which split of a folder to read ("train", "val", ...).
        img_size: output side S.
        scale, ratio: area fraction and aspect range of the random resized crop.
        augment: random crop + flip (training) or resize short side + centre crop (evaluation, plots).
        repeated_sampling: pairs drawn from each decoded video (paper: 2).
        min_gap, max_gap, reference_fps: the gap range, in frames at reference_fps (i.e. in time).
        fixed_pairs: the same pairs for an index in every epoch (held-out loss, plots).
        seed: seed of all item randomness.
        decode_threads: FFmpeg threads per decode (1 suits data-loader workers; 0 = automatic).
        max_attempts: videos tried for one item before giving up (bad files are replaced).
        output: "float" (ImageNet-normalised frames) or "uint8" (8-bit RGB, normalised later on the training
            device with `dataset_loader.transforms.normalize`: a quarter of the bytes to move).
    """

    epoch_in_index = True  # indices may be (index, epoch): loaders pass the epoch to their workers this way

    def __init__(
        self,
        source: str | os.PathLike | Sequence[str | os.PathLike],
        split: str = "train",
        img_size: int = 224,
        scale: tuple[float, float] = CROP_SCALE,
        augment: bool = True,
        repeated_sampling: int = 1,
        min_gap: int = MIN_GAP,
        max_gap: int = MAX_GAP,
        reference_fps: float = REFERENCE_FPS,
        fixed_pairs: bool = False,
        seed: int = 0,
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_prob: float = 0.5,
        decode_threads: int = 1,
        max_attempts: int = 100,
        output: str = "float",
    ) -> None:
        if output not in ("float", "uint8"):
            raise ValueError(f"output must be 'float' or 'uint8', got {output!r}")
        found = find_videos(source, split)
        if found.missing:
            warnings.warn(f"{len(found.missing)} of {len(found.missing) + len(found.paths)} videos listed in "
                          f"{found.layout} are not on disk (e.g. {found.missing[0]}); using the others",
                          stacklevel=2)
        self.videos: list[Path] = found.paths
        self.labels = found.labels
        self.layout = found.layout
        self.num_missing = len(found.missing)
        self.split = split
        self.repeated_sampling = repeated_sampling
        self.sampler = RandomTemporalSubsample(min_gap, max_gap, reference_fps, repeated_sampling)
        self.transform = PairedTransform(img_size, scale, ratio, flip_prob, augment)
        self.fixed_pairs = fixed_pairs
        self.seed = seed
        self.epoch = 0
        self.decode_threads = decode_threads
        self.max_attempts = max_attempts
        self.output = output
        # one flag a video, in shared memory so that marks made in loader workers reach the main process
        self._bad = torch.zeros(len(self.videos), dtype=torch.uint8).share_memory_()
        self._frame_counts: dict[int, int] = {}  # videos that decode fewer frames than their header says

    def __len__(self) -> int:
        return len(self.videos)

    def set_epoch(self, epoch: int) -> None:
        """The epoch used by plain integer indexing (loaders pass the epoch with each index instead)."""
        self.epoch = int(epoch)

    @property
    def bad_files(self) -> list[str]:
        """Videos skipped as unreadable so far, in this process and its loader workers."""
        return [str(self.videos[i]) for i in torch.nonzero(self._bad).flatten().tolist()]

    @property
    def num_bad_files(self) -> int:
        return int(self._bad.sum())

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        frames, _ = self._load(*self._index_epoch(item))
        return self._split_pairs(frames)

    def describe(self, index: int, epoch: int | None = None) -> dict:
        """Item `index` with what it is made of: video, label, frame indices, gaps in frames and seconds, frames."""
        frames, info = self._load(*self._index_epoch((index, self.epoch if epoch is None else epoch)))
        f1, f2 = self._split_pairs(frames)
        if self.repeated_sampling == 1:
            info = {**info, "indices": info["indices"][0], "gap_frames": info["gap_frames"][0],
                    "gap_seconds": info["gap_seconds"][0]}
        return {**info, "f1": f1, "f2": f2}

    def _index_epoch(self, item: int | tuple[int, int]) -> tuple[int, int]:
        index, epoch = item if isinstance(item, tuple) else (item, self.epoch)
        return int(index), (0 if self.fixed_pairs else int(epoch))

    def _split_pairs(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f1, f2 = frames[0::2].contiguous(), frames[1::2].contiguous()  # (R, 3, S, S) each
        return (f1[0], f2[0]) if self.repeated_sampling == 1 else (f1, f2)

    def _load(self, index: int, epoch: int) -> tuple[torch.Tensor, dict]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} videos")
        video = index
        for attempt in range(self.max_attempts):
            if attempt > 0:  # a bad video is replaced by another, chosen by (seed, epoch, index, attempt)
                video = int(np.random.default_rng([self.seed, epoch, index, attempt, 1]).integers(len(self)))
            if self._bad[video]:
                continue
            try:
                return self._load_video(video, [self.seed, epoch, index, attempt])
            except READ_ERRORS as err:
                self._mark_bad(video, err)
        raise RuntimeError(f"no readable video found for item {index} after {self.max_attempts} tries "
                           f"({self.num_bad_files} of {len(self)} videos are unreadable)")

    def check_readable(self, shown: int = 3) -> int:
        """The index of the first video that opens and decodes a frame; NoReadableVideoError when none does.

        Videos are tried in order until one reads, so a good data set costs one open. The error says
        how many files were tried and why the first `shown` failed.
        """
        failures: list[str] = []
        for i, path in enumerate(self.videos):
            try:
                with open_video(path, self.decode_threads) as reader:
                    if reader.num_frames < 2:
                        raise VideoError(f"{reader.num_frames} frame(s), a pair needs 2")
                    reader.read([0])
                return i
            except READ_ERRORS as err:
                failures.append(f"{path.name}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
        reasons = "; ".join(failures[:shown]) + ("; ..." if len(failures) > shown else "")
        raise NoReadableVideoError(f"none of the {len(failures)} videos of split {self.split!r} ({self.layout}) can "
                                   f"be read: {reasons}")

    def _mark_bad(self, video: int, err: Exception) -> None:
        if not self._bad[video]:
            self._bad[video] = 1
            reason = str(err) if isinstance(err, VideoError) else f"{type(err).__name__}: {err}"
            warnings.warn(f"skipping unreadable video {self.videos[video]}: {reason}", BadVideoWarning, stacklevel=3)

    def _load_video(self, video: int, key: list[int]) -> tuple[torch.Tensor, dict]:
        path = self.videos[video]
        with open_video(path, self.decode_threads) as reader:
            fps = float(reader.fps)
            if reader.num_frames < 2:
                raise VideoError(f"{path} has {reader.num_frames} frames, a pair needs 2")
            rng = np.random.default_rng(key)
            pairs = self.sampler(reader.num_frames, fps, rng)
            known = self._frame_counts.get(video)
            try:
                if known is not None and max(max(p) for p in pairs) >= known:
                    raise VideoTooShortError("known to be short", known)
                frames = self._read_pairs(reader, pairs)
            except VideoTooShortError as err:
                # the header over-counts: draw again among the frames that decode (the same draw every time)
                if err.num_frames < 2:
                    raise
                self._frame_counts[video] = err.num_frames
                rng = np.random.default_rng([*key, 2])
                pairs = self.sampler(err.num_frames, fps, rng)
                frames = self._read_pairs(reader, pairs)
            num_frames = self._frame_counts.get(video, reader.num_frames)
        out = self._augment(frames, rng)
        info = {
            "video": str(path), "label": self.labels[video], "index": video, "fps": fps, "num_frames": num_frames,
            "indices": pairs, "gap_frames": [b - a for a, b in pairs], "gap_seconds": [(b - a) / fps for a, b in pairs],
        }
        return out, info

    def _read_pairs(self, reader: VideoReader, pairs: list[tuple[int, int]]) -> list[list[np.ndarray]]:
        frames = reader.read([i for pair in pairs for i in pair])
        return [frames[2 * r:2 * r + 2] for r in range(len(pairs))]

    def _augment(self, pairs: list[list[np.ndarray]], rng: np.random.Generator) -> torch.Tensor:
        """(2R, 3, S, S): each pair's two frames share one crop and flip."""
        out = []
        for f1, f2 in pairs:
            params = self.transform.sample_params(*f1.shape[:2], rng)
            out.append(self.transform.apply([f1, f2], params))
        frames = torch.cat(out)
        return frames if self.output == "uint8" else normalize(frames)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self)} videos, {self.layout}, split={self.split!r}, {self.sampler}, "
                f"{self.transform}, fixed_pairs={self.fixed_pairs}, seed={self.seed})")
