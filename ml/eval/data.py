"""Evaluation data: DAVIS-2017, JHMDB and VIP folder readers and label images (generated data: ml.eval.synthetic).

Every reader checks its folder before any model runs: a missing folder, a frame without its
annotation or an unknown label id is an error naming the file. Layouts: dataset/EVALUATION.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ml.files import atomic_file

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
VOID_LABEL = 255  # DAVIS annotations: pixels left out of the object masks
VIP_CLASSES = (
    "background", "hat", "hair", "sun-glasses", "upper-clothes", "dress", "coat", "socks", "pants", "gloves",
    "scarf", "skirt", "torso-skin", "face", "right-arm", "left-arm", "right-leg", "left-leg", "right-shoe",
    "left-shoe",
)
JHMDB_JOINTS = 15


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


@contextmanager
def open_image(path: str | os.PathLike) -> Iterator[Image.Image]:
    """`Image.open` (the header only until pixels are asked for); an image Pillow refuses as a decompression bomb
    (more than twice `Image.MAX_IMAGE_PIXELS`) or cannot identify is a ValueError naming the file."""
    try:
        img = Image.open(path)
    except Image.DecompressionBombError as err:
        raise ValueError(f"{path}: refused as a decompression bomb ({err}); replace the file") from None
    except UnidentifiedImageError:
        raise ValueError(f"{path} is not an image Pillow can read") from None
    with img:
        yield img


def check_images(paths: Iterable[str | os.PathLike]) -> None:
    """Open the header of every image (cheap): the ValueError of `open_image` before any work reads pixels."""
    for path in paths:
        with open_image(path):
            pass


def read_label_png(path: str | os.PathLike) -> tuple[np.ndarray, list[int] | None]:
    """A label image -> (ids (H, W) uint8, palette or None). Indexed (P) and grayscale (L) PNGs are accepted."""
    with open_image(path) as img:
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


def frame_size(path: Path) -> tuple[int, int]:
    with open_image(path) as img:
        return img.height, img.width
