"""Generated evaluation data in the layout of DAVIS-2017, for tests and demos without the dataset.

- `write_synthetic_davis`: coloured discs on a grey background (fast, any size);
- `write_textured_davis`: real texture cut from the shipped sample clips (`dataset/sample`) as ellipses that
  move and grow over a panning scene, with exact masks. Deterministic: the same files on every machine with the
  same decoders (the fixture in tests/fixtures is what it writes).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from dataset_loader.video import VideoReader
from ml.eval.data import write_label_png


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


SAMPLE_DIR = Path(__file__).resolve().parents[2] / "dataset" / "sample"
# the real footage the textured sequence is cut from: (clip, frame) for the background and each object
TEXTURES = (("train/street/bikes.mp4", 40), ("train/bird/cockatoo.mp4", 100), ("train/moving_object/box.mp4", 200))


def _texture(clip: str, frame: int, size_hw: tuple[int, int]) -> np.ndarray:
    """Frame `frame` of a shipped sample clip, resized (bicubic) to cover `size_hw` and centre-cropped to it."""
    with VideoReader(SAMPLE_DIR / clip) as reader:
        (image,) = reader.read([frame])
    H, W = size_hw
    scale = max(H / image.shape[0], W / image.shape[1])
    resized = Image.fromarray(image).resize((round(image.shape[1] * scale) + 1, round(image.shape[0] * scale) + 1),
                                            Image.Resampling.BICUBIC)
    top, left = (resized.height - H) // 2, (resized.width - W) // 2
    return np.asarray(resized)[top:top + H, left:left + W]


def _paste_ellipse(image: np.ndarray, ids: np.ndarray, texture: np.ndarray,
                   ellipse: tuple[float, float, float, float], label: int) -> None:
    """Draw `texture` (bicubic-scaled to the ellipse's box, so that it moves and grows with it) inside the ellipse
    (cx, cy, a, b) of `image`, and `label` there in `ids`."""
    cx, cy, a, b = ellipse
    yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    inside = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1.0
    scaled = np.asarray(Image.fromarray(texture).resize((int(2 * a) + 2, int(2 * b) + 2), Image.Resampling.BICUBIC))
    ty = (yy[inside] - int(cy - b)).clip(0, scaled.shape[0] - 1)
    tx = (xx[inside] - int(cx - a)).clip(0, scaled.shape[1] - 1)
    image[inside] = scaled[ty, tx]
    ids[inside] = label


def write_textured_davis(root: str | os.PathLike, num_frames: int = 8, size: tuple[int, int] = (480, 854),
                         name: str = "textured") -> Path:
    """One DAVIS-layout sequence of real texture with exact masks: a street scene panning behind two objects cut
    from other footage (a bird, a box) as ellipses that move towards each other, grow, and overlap (the second
    occludes the first). Deterministic: the same frames and masks on every machine with the same decoders."""
    root = Path(root)
    H, W = size
    pan = 6  # pixels per frame: the background moves as under a panning camera
    background = _texture(*TEXTURES[0], (H, W + pan * num_frames))
    objects = [_texture(*TEXTURES[k], (H // 2, H // 2)) for k in (1, 2)]  # square textures, cut as ellipses
    paths = {"frames": root / "JPEGImages" / "480p" / name, "masks": root / "Annotations" / "480p" / name}
    for folder in paths.values():
        folder.mkdir(parents=True, exist_ok=True)
    for t in range(num_frames):
        image = background[:, pan * t:pan * t + W].copy()
        ids = np.zeros((H, W), np.uint8)
        for k, texture in enumerate(objects):
            grow = 1.0 + 0.05 * t
            a, b = 0.16 * W * grow, 0.22 * H * grow  # semi-axes (x, y)
            cx = (0.3 + 0.05 * t) * W if k == 0 else (0.72 - 0.045 * t) * W
            cy = (0.45 + 0.01 * t) * H if k == 0 else (0.55 - 0.012 * t) * H
            _paste_ellipse(image, ids, texture, (cx, cy, a, b), k + 1)
        Image.fromarray(image).save(paths["frames"] / f"{t:05d}.jpg", quality=95)
        write_label_png(paths["masks"] / f"{t:05d}.png", ids)
    (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text(name + "\n")
    return root

