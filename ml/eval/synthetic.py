"""Generated evaluation data in the layouts of DAVIS-2017, JHMDB and VIP, for tests and demos without the datasets.

- `write_synthetic_davis`: coloured discs on a grey background (fast, any size);
- `write_textured_davis`, `write_textured_jhmdb`, `write_textured_vip`: real texture cut from the shipped
  sample clips (`dataset/sample`) as ellipses that move and grow over a panning scene, with exact labels
  (masks, joints, part classes), at each benchmark's real frame size. Deterministic: the same files on every
  machine with the same decoders (the fixtures in tests/fixtures are what these write).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat

from dataset_loader.video import VideoReader
from ml.eval.data import JHMDB_JOINTS, write_label_png


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


# JHMDB: a figure of two textured ellipses (torso over legs) walking over a scene, 320x240 PNG frames
JHMDB_ACTION = "walk"
JHMDB_TEXTURES = (("train/walking/square_0.mp4", 50), ("train/street/bikes.mp4", 120),
                  ("train/talking_on_phone/carphone.mp4", 10))  # the scene, the legs, the torso
# the 15 joints in JHMDB's order, on the torso ("u") or legs ("l") ellipse, at (x, y) in semi-axes from its
# centre; the wrists' x is multiplied by the video's reach (an arm held out)
JHMDB_FIGURE = (("u", 0.0, -0.55), ("l", 0.0, -0.75), ("u", 0.0, -0.85),    # neck, belly, face
                ("u", -0.55, -0.4), ("u", 0.55, -0.4), ("l", -0.4, -0.45),  # shoulders, right hip
                ("l", 0.4, -0.45), ("u", -0.8, 0.1), ("u", 0.8, 0.1),      # left hip, elbows
                ("l", -0.45, 0.15), ("l", 0.45, 0.15), ("u", -1.0, 0.45),   # knees, right wrist
                ("u", 1.0, 0.45), ("l", -0.5, 0.8), ("l", 0.5, 0.8))        # left wrist, ankles
# name, the figure's first centre x (fraction of the width), pixels per frame, frames, the wrists' reach: the second
# video starts at the left edge with its right wrist out of the frame (its propagated map is empty: not scored)
JHMDB_VIDEOS = (("textured_walk_0", 0.45, 8, 6, 1.3), ("textured_walk_1", 0.18, 10, 5, 1.6))
JHMDB_COLOUR_BITS = 5  # the frames keep 32 levels a channel: PNG is lossless, and the fixtures stay small


def write_textured_jhmdb(root: str | os.PathLike, size: tuple[int, int] = (240, 320), pan: int = 4) -> Path:
    """A JHMDB-layout folder (Rename_Images/<action>/<video>/00001.png..., joint_positions/.../joint_positions.mat
    with pos_img (2, 15, T) in 1-based pixels, splits/<action>_test_split1.txt marking the videos as test) of
    the videos of JHMDB_VIDEOS: real texture, joints that move with it (the wrists held out beyond the torso,
    the ankles near the bottom edge, where the CRW code's joint stamp is cut)."""
    root = Path(root)
    H, W = size
    parts = [_texture(*JHMDB_TEXTURES[k], (H // 2, H // 2)) for k in (1, 2)]
    for name, start, step, num_frames, reach in JHMDB_VIDEOS:
        background = _texture(*JHMDB_TEXTURES[0], (H, W + pan * num_frames))
        folder = root / "Rename_Images" / JHMDB_ACTION / name
        folder.mkdir(parents=True, exist_ok=True)
        joints = np.zeros((num_frames, JHMDB_JOINTS, 2))
        for t in range(num_frames):
            image = background[:, pan * t:pan * t + W].copy()
            grow, cx = 1.0 + 0.03 * t, start * W + step * t
            ellipses = {"l": (cx, 0.72 * H, 0.12 * W * grow, 0.26 * H * grow),
                        "u": (cx, 0.38 * H, 0.17 * W * grow, 0.22 * H * grow)}
            for k, part in enumerate("lu"):  # the torso over the legs
                _paste_ellipse(image, np.zeros((H, W), np.uint8), parts[k], ellipses[part], k + 1)
            for j, (part, x, y) in enumerate(JHMDB_FIGURE):
                ex, ey, a, b = ellipses[part]
                joints[t, j] = ex + x * a * (reach if j in (11, 12) else 1.0), ey + y * b
            image = image >> (8 - JHMDB_COLOUR_BITS) << (8 - JHMDB_COLOUR_BITS)
            Image.fromarray(image).save(folder / f"{t + 1:05d}.png")
        mat = root / "joint_positions" / JHMDB_ACTION / name / "joint_positions.mat"
        mat.parent.mkdir(parents=True, exist_ok=True)
        savemat(mat, {"pos_img": joints.transpose(2, 1, 0) + 1.0})  # JHMDB's pixels are 1-based
    (root / "splits").mkdir(parents=True, exist_ok=True)
    (root / "splits" / f"{JHMDB_ACTION}_test_split1.txt").write_text(
        "".join(f"{name}.avi 2\n" for name, *_ in JHMDB_VIDEOS))
    return root


# VIP: a figure of textured parts (VIP's class ids) over a panning street, 1280x720 JPEG frames
VIP_BACKGROUND = ("train/street/bikes.mp4", 40)
# class id, texture (clip, frame), centre and semi-axes (x, y) in figure heights from the figure's centre, and
# when the part shows ("all", "start": the first two frames, "later": from the third on); drawn in this order
VIP_PARTS = (
    (8, ("train/moving_object/box.mp4", 200), (0.0, 0.18), (0.09, 0.2), "all"),               # pants
    (18, ("train/street/bikes.mp4", 200), (-0.05, 0.39), (0.045, 0.025), "all"),              # right-shoe
    (19, ("train/street/bikes.mp4", 160), (0.05, 0.39), (0.045, 0.025), "all"),               # left-shoe
    (4, ("train/bird/cockatoo.mp4", 200), (0.0, -0.08), (0.12, 0.13), "all"),                 # upper-clothes
    (14, ("train/moving_object/cup.mp4", 120), (-0.15, -0.05), (0.035, 0.12), "all"),         # right-arm
    (15, ("train/moving_object/cup.mp4", 200), (0.15, -0.05), (0.035, 0.12), "all"),          # left-arm
    (2, ("val/office/office.mp4", 10), (0.0, -0.3), (0.07, 0.06), "all"),                     # hair
    (13, ("train/talking_on_phone/carphone.mp4", 10), (0.0, -0.265), (0.055, 0.065), "all"),  # face
    (3, ("train/walking/square_1.mp4", 10), (0.0, -0.28), (0.04, 0.012), "start"),            # sun-glasses
    (1, ("train/walking/square_2.mp4", 10), (0.0, -0.345), (0.07, 0.03), "later"),            # hat
)
# name, the figure's first centre x (fraction of the width), pixels per frame, height (fraction of the frame's),
# frames; frames are named as VIP's (12 digits, every 25th frame of the video)
VIP_VIDEOS = (("videos1", 0.4, 14, 0.9, 4), ("videos2", 0.7, -16, 0.7, 3))


def write_textured_vip(root: str | os.PathLike, size: tuple[int, int] = (720, 1280), pan: int = 10,
                       quality: int = 75) -> Path:
    """A VIP-layout folder (Images/<video>/<frame>.jpg, Annotations/Category_ids/<video>/<frame>.png as 8-bit
    grayscale class ids, lists/val_videos.txt) of the videos of VIP_VIDEOS: real texture, every frame annotated,
    the parts of VIP_PARTS (ids not consecutive; a hat absent from the first frame, sun-glasses taken off)."""
    root = Path(root)
    H, W = size
    textures = [_texture(*clip, (H // 2, H // 2)) for _, clip, *_ in VIP_PARTS]
    for name, start, step, height, num_frames in VIP_VIDEOS:
        background = _texture(*VIP_BACKGROUND, (H, W + pan * num_frames))
        folders = (root / "Images" / name, root / "Annotations" / "Category_ids" / name)
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
        for t in range(num_frames):
            image = background[:, pan * t:pan * t + W].copy()
            ids = np.zeros((H, W), np.uint8)
            unit, cx = height * H * (1.0 + 0.02 * t), start * W + step * t
            for (label, _, (x, y), (a, b), when), texture in zip(VIP_PARTS, textures):
                if when == "all" or (when == "start") == (t < 2):
                    _paste_ellipse(image, ids, texture, (cx + x * unit, 0.5 * H + y * unit, a * unit, b * unit),
                                   label)
            stem = f"{1 + 25 * t:012d}"
            Image.fromarray(image).save(folders[0] / f"{stem}.jpg", quality=quality)
            Image.fromarray(ids, mode="L").save(folders[1] / f"{stem}.png")
    (root / "lists").mkdir(parents=True, exist_ok=True)
    (root / "lists" / "val_videos.txt").write_text("".join(f"{name}\n" for name, *_ in VIP_VIDEOS))
    return root
