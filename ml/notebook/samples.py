"""`samples.pickle`: a fixed set of preprocessed frame pairs for reconstruction plots.

`build_samples` rebuilds the file from the shipped sample videos; `load_samples` reads it back.
Reading never runs code and never allocates more than the file holds: the unpickler accepts only
plain Python values (dict, list, tuple, str, bytes, int, float, bool, None), no class or function
at all, and refuses anything else with SamplesFileError; each frame is raw bytes whose length must
equal the product of its stated shape before an array is made of them.

File layout (a plain dict):
    {"format": "siammae-samples", "version": 2, "img_size": int, "source": str, "splits": [str], "seed": int,
     "pairs": [{"f1": FRAME, "f2": FRAME, "split": str, "video": str,
                "indices": [int, int], "gap_frames": int, "gap_seconds": float}, ...]}
    FRAME = {"shape": [H, W, 3], "rgb": bytes of H*W*3 uint8 values, row-major}
Frames are stored as 8-bit RGB (small, exact after `denormalize`); `load_samples` turns them back
into ImageNet-normalised float tensors (3, H, W), the model's input.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dataset_loader.dataset import IMAGENET_MEAN, IMAGENET_STD, KineticsFramePairs, denormalize
from ml.files import atomic_file
from ml.training.config import TrainConfig

SAMPLES_FORMAT = "siammae-samples"
SAMPLES_VERSION = 2
MAX_FILE_BYTES = 256 << 20  # a samples file is a few hundred kB; refuse to read anything near this
MAX_SIDE = 4096  # pixels: larger frames are refused before any array is made


class SamplesFileError(pickle.UnpicklingError):
    """A samples file that holds something other than plain values, or not the expected layout."""


class _PlainValuesUnpickler(pickle.Unpickler):
    """Unpickler of plain values only: any class or function reference is refused, so nothing can run."""

    def find_class(self, module: str, name: str) -> Any:
        raise SamplesFileError(
            f"refused to load {module}.{name}: a samples file may hold only plain values "
            "(dict, list, tuple, str, bytes, int, float, bool, None); loading other objects could run code"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise SamplesFileError("refused a persistent reference: a samples file holds only plain values")


def safe_load_pickle(data: bytes) -> Any:
    """Unpickle `data` allowing only plain Python values (no class, no function, no array)."""
    return _PlainValuesUnpickler(io.BytesIO(data)).load()


def frame_to_plain(image: np.ndarray) -> dict:
    """uint8 (H, W, 3) -> {"shape": [H, W, 3], "rgb": bytes}."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    return {"shape": [int(v) for v in image.shape], "rgb": image.tobytes()}


def frame_from_plain(frame: Any, where: str) -> np.ndarray:
    """The uint8 (H, W, 3) array of a stored frame, after checking that its bytes are exactly its stated shape."""
    if not isinstance(frame, dict) or set(frame) != {"shape", "rgb"}:
        raise SamplesFileError(f"{where} must be a dict with 'shape' and 'rgb'")
    shape, data = frame["shape"], frame["rgb"]
    if (not isinstance(shape, (list, tuple)) or len(shape) != 3 or shape[2] != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SIDE for v in shape[:2])):
        raise SamplesFileError(f"{where}: shape must be [H, W, 3] with 1 <= H, W <= {MAX_SIDE}, got {shape!r}")
    if not isinstance(data, bytes) or len(data) != shape[0] * shape[1] * 3:
        size = len(data) if isinstance(data, bytes) else type(data).__name__
        raise SamplesFileError(f"{where}: {size} bytes for a frame of shape {list(shape)}")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape).copy()


def read_samples_file(path: str | os.PathLike = "samples.pickle") -> dict:
    """The content of a samples file with its frames as uint8 (H, W, 3) arrays, checked for layout and sizes;
    SamplesFileError if unsafe or wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"samples file {path} does not exist; rebuild it with `python -m ml.notebook.samples --output {path}`"
        )
    if path.stat().st_size > MAX_FILE_BYTES:
        raise SamplesFileError(f"{path} is {path.stat().st_size} bytes, more than a samples file can be "
                               f"({MAX_FILE_BYTES}); refused")
    try:
        content = safe_load_pickle(path.read_bytes())
    except SamplesFileError as err:
        raise SamplesFileError(f"{path}: {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise SamplesFileError(f"{path} is not a readable samples file: {err}") from err
    _check_layout(content, path)
    return content


def _check_layout(content: Any, path: Path) -> None:
    if not isinstance(content, dict) or content.get("format") != SAMPLES_FORMAT:
        raise SamplesFileError(f"{path} is not a samples file (expected a dict with format={SAMPLES_FORMAT!r})")
    if content.get("version") != SAMPLES_VERSION:
        raise SamplesFileError(f"{path} has version {content.get('version')!r}; this code reads {SAMPLES_VERSION}")
    pairs = content.get("pairs")
    if not isinstance(pairs, list) or not pairs:
        raise SamplesFileError(f"{path} holds no frame pairs")
    for i, pair in enumerate(pairs):
        if not isinstance(pair, dict):
            raise SamplesFileError(f"{path}: pair {i} is not a dict")
        for key in ("f1", "f2"):
            pair[key] = frame_from_plain(pair.get(key), f"{path}: pair {i} {key}")
        if pair["f1"].shape != pair["f2"].shape:
            raise SamplesFileError(f"{path}: pair {i} frames differ in shape: {pair['f1'].shape} vs {pair['f2'].shape}")


def _to_uint8_image(frame: torch.Tensor) -> np.ndarray:
    """ImageNet-normalised (3, H, W) -> uint8 (H, W, 3)."""

    rgb = denormalize(frame.detach().cpu().float()).clamp(0, 1)  # (3, H, W) in [0, 1]
    return (rgb.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)


def _to_normalized_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> ImageNet-normalised float (3, H, W)."""

    x = torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)  # (3, H, W) in [0, 1]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


def build_samples(
    source: str | os.PathLike = "dataset/sample",
    output: str | os.PathLike | None = "samples.pickle",
    splits: Sequence[str] = ("train", "val"),
    pairs_per_split: int = 2,
    img_size: int = 112,
    seed: int = 0,
    min_gap: int = TrainConfig.min_gap,
    max_gap: int = TrainConfig.max_gap,
) -> dict:
    """Take `pairs_per_split` fixed, unaugmented frame pairs from each split of `source`; write them to `output`.

    Uses `KineticsFramePairs(..., fixed_pairs=True, augment=False)`, so the same arguments give the same
    pairs. The videos are evenly spaced over each split; more pairs than videos reuse videos with another
    seed (other frames). Returns the content written (also when `output` is None).
    """

    if pairs_per_split < 1:
        raise ValueError(f"pairs_per_split must be at least 1, got {pairs_per_split}")
    if isinstance(splits, str):
        splits = (splits,)
    root = Path(source)
    pairs = []
    for split in splits:
        base = _fixed_pairs(KineticsFramePairs, source, split, img_size, seed, min_gap, max_gap)
        n = len(base)
        for k in range(pairs_per_split):
            lap, index = divmod(k, n) if pairs_per_split > n else (0, k * n // pairs_per_split)
            dataset = base if lap == 0 else _fixed_pairs(KineticsFramePairs, source, split, img_size, seed + lap,
                                                         min_gap, max_gap)
            info = dataset.describe(index)
            video = Path(info["video"])
            pairs.append({
                "f1": frame_to_plain(_to_uint8_image(info["f1"])),
                "f2": frame_to_plain(_to_uint8_image(info["f2"])),
                "split": split,
                "video": video.relative_to(root).as_posix() if video.is_relative_to(root) else video.name,
                "indices": [int(i) for i in info["indices"]],
                "gap_frames": int(info["gap_frames"]),
                "gap_seconds": float(info["gap_seconds"]),
            })
    content = {
        "format": SAMPLES_FORMAT, "version": SAMPLES_VERSION, "img_size": int(img_size),
        "source": root.as_posix(), "splits": list(splits), "seed": int(seed), "pairs": pairs,
    }
    if output is not None:
        with atomic_file(output) as f:  # never leaves a half-written file in place of a good one
            f.write(pickle.dumps(content, protocol=4))
    return content


def _fixed_pairs(cls: type, source: Any, split: str, img_size: int, seed: int, min_gap: int, max_gap: int) -> Any:
    return cls(source, split=split, img_size=img_size, augment=False, fixed_pairs=True, seed=seed,
               min_gap=min_gap, max_gap=max_gap)


def load_samples(path: str | os.PathLike = "samples.pickle") -> list[dict]:
    """The pairs of a samples file, each a dict with `f1`, `f2` ImageNet-normalised float tensors (3, H, W)
    and the plain metadata (`split`, `video`, `indices`, `gap_frames`, `gap_seconds`)."""
    content = read_samples_file(path)
    return [
        {**pair, "f1": _to_normalized_tensor(pair["f1"]), "f2": _to_normalized_tensor(pair["f2"])}
        for pair in content["pairs"]
    ]


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Rebuild samples.pickle (fixed frame pairs for reconstruction plots).")
    parser.add_argument("--source", default="dataset/sample", help="video folder (Kinetics tree layout)")
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    parser.add_argument("--pairs-per-split", type=int, default=2)
    parser.add_argument("--output", default="samples.pickle")
    parser.add_argument("--img-size", type=int, default=112)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    content = build_samples(args.source, args.output, args.splits, args.pairs_per_split, args.img_size, args.seed)
    size = Path(args.output).stat().st_size
    n = len(content["pairs"])
    print(f"wrote {n} pairs at {args.img_size}x{args.img_size} to {args.output} ({size / 1e3:.0f} kB)")
    for pair in content["pairs"]:
        gap = f"gap {pair['gap_frames']} frames, {pair['gap_seconds']:.2f} s"
        print(f"  {pair['split']}: {pair['video']}, frames {pair['indices']} ({gap})")


if __name__ == "__main__":
    main()
