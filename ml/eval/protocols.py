"""Label-propagation protocols: every choice that changes a number, as one frozen, named set per benchmark.

    protocol = get_protocol("crw", "davis")                 # the default: the CRW test code's conventions
    protocol = get_protocol("crw", "davis", topk=10)         # one choice changed (recorded in run.json)

- `crw` (the default): the conventions of the CRW test code (ajabri/videowalk `code/test.py` and its
  utilities), which the SiamMAE paper's tables and the CropMAE reproduction use, with the paper's
  parameters (top-k 7/10/7 and radius 20/8/20 for DAVIS/VIP/JHMDB, queue 20, temperature 0.7).
  CropMAE's copy of that code runs VIP at radius 20 (`--radius 20` reproduces it). Comparable with
  published tables.
- `causal`: this project's first protocol (the queue starts empty, first-frame labels averaged over
  each feature cell, frames at their own size). Kept for comparison; not comparable with tables.
- `dino`: DINO's `eval_video_segmentation.py` (DAVIS only): temperature 0.1, top-5, the 7 previous
  frames, a square neighbourhood of 12 cells on every context frame, per-channel mask normalisation
  before the argmax, short side 480 rounded down to a multiple of 64.

dataset/EVALUATION.md has the table of every field for every protocol and where each comes from.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from dataset_loader.transforms import IMAGENET_STD

PROTOCOLS = ("crw", "causal", "dino")
DATASETS = ("davis", "jhmdb", "vip")
DINO_STD = (0.228, 0.224, 0.225)  # DINO's evaluation normalises red with 0.228


@dataclass(frozen=True)
class Protocol:
    """Every choice of one label-propagation protocol on one benchmark."""

    name: str
    dataset: str
    # -- frames -> encoder input
    size_rule: str  # "fixed": (H, W); "long_side_64"/"short_side_64": that side = size, the other scaled and
    #                 floored to a multiple of 64; "short_side": short side = size, sides rounded to the patch;
    #                 "native": the frame's size rounded to the patch
    size: Any  # (H, W) for "fixed", an int for the side rules, None for "native"
    resize: str  # "bilinear": OpenCV's INTER_LINEAR on the float pixels, no antialiasing (the CRW code's);
    #              "opencv_uint8": OpenCV's INTER_LINEAR on the 8-bit image, fixed-point, whole grey levels
    #              (DINO's eval_video_segmentation.py, read_frame); "bilinear_antialias": PIL's
    pixel_std: tuple[float, float, float]  # the normalisation's standard deviation (mean: ImageNet's)
    pos_interpolation: str  # position table to other grids: "dino" (scale (n + 0.1) / n) or "size"
    # -- the first frame's labels on the feature grid
    labels_to_grid: str  # "nearest_then_bilinear": label ids nearest-resized to the input size, one-hot, then
    #                      bilinear to the grid; "area": one-hot averaged over each cell; "nearest": ids
    #                      nearest-resized straight to the grid (PIL)
    void_as: str  # first-frame void pixels (255): "background" or "none" (no label at all)
    # -- context and affinity
    queue_length: int  # previous frames with their predicted soft labels
    queue_start: str  # "first_frame_copies": the queue starts full of copies of the first frame; "empty"
    neighbourhood: str  # which context frames the radius restricts: "queue" (not the first frame), "all", "none"
    neighbourhood_shape: str  # "disk": centre distance < radius; "square": |dy| <= radius and |dx| <= radius
    radius: float  # in feature cells
    temperature: float  # affinity = dot product of unit features / temperature
    topk: int  # the k highest affinities (over all context cells) are kept, softmax-normalised
    topk_ties: str  # "exact_k": exactly k kept (torch.topk; the CRW code); "kth_value": every affinity at least
    #                 the k-th largest, ties included (DINO's label_propagation: aff[aff < tk_val_min] = 0)
    # -- soft labels -> predicted label map
    output: str  # "input_then_nearest": bilinear to the encoder input, argmax, nearest-resized to the annotation;
    #              "annotation": bilinear straight to the annotation size, argmax
    nearest: str  # "floor" (OpenCV INTER_NEAREST) or "centre" (PIL NEAREST): how "nearest" picks its source
    norm_mask: bool  # each channel min-max normalised before the argmax (DINO)
    # -- JHMDB joints
    heatmap: str  # "crw_stamp": sigma-0.5 Gaussian stamped at the rounded cell (4x4 window) + a background
    #               channel; "gaussian": a Gaussian of `heatmap_sigma` cells around the exact position
    heatmap_sigma: float
    keypoint_topk: int  # joints decoded as the weighted mean of this many strongest cells
    keypoint_coords: str  # "cell_corner": cell i <-> pixel i * W / w (CRW); "cell_centre": (i + 0.5) * W / w - 0.5
    skip_empty_joints: bool  # a joint whose propagated heatmap is all zero is left out of PCK (CRW)
    # -- scoring
    score_first_frame: bool  # VIP: the first frame (given) counted in the mIoU, as CRW's VIP scorer does

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """ValueError naming the option for a value that cannot work."""
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature > 0):
            raise ValueError(f"--temperature must be a positive finite number, got {self.temperature}")
        if not (isinstance(self.radius, (int, float)) and math.isfinite(self.radius) and self.radius > 0):
            raise ValueError(f"--radius must be a positive finite number of feature cells, got {self.radius}")
        if not isinstance(self.topk, int) or self.topk < 1:
            raise ValueError(f"--topk must be an integer >= 1, got {self.topk}")
        if not isinstance(self.queue_length, int) or self.queue_length < 0:
            raise ValueError(f"--queue-length must be an integer >= 0, got {self.queue_length}")
        if self.keypoint_topk < 1:
            raise ValueError(f"keypoint_topk must be >= 1, got {self.keypoint_topk}")
        if not (math.isfinite(self.heatmap_sigma) and self.heatmap_sigma > 0):
            raise ValueError(f"--heatmap-sigma must be a positive finite number, got {self.heatmap_sigma}")
        check_size(self.size_rule, self.size)
        if self.topk_ties == "kth_value" and self.queue_start == "first_frame_copies":
            raise ValueError("topk_ties kth_value (DINO's rule) counts each context frame once: it takes "
                             "queue_start empty")
        for name, allowed in (("size_rule", ("fixed", "long_side_64", "short_side_64", "short_side", "native")),
                              ("resize", ("bilinear", "opencv_uint8", "bilinear_antialias")),
                              ("topk_ties", ("exact_k", "kth_value")),
                              ("pos_interpolation", ("dino", "size")),
                              ("labels_to_grid", ("nearest_then_bilinear", "area", "nearest")),
                              ("void_as", ("background", "none")),
                              ("queue_start", ("first_frame_copies", "empty")),
                              ("neighbourhood", ("queue", "all", "none")),
                              ("neighbourhood_shape", ("disk", "square")),
                              ("output", ("input_then_nearest", "annotation")),
                              ("nearest", ("floor", "centre")),
                              ("heatmap", ("crw_stamp", "gaussian")),
                              ("keypoint_coords", ("cell_corner", "cell_centre"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"protocol field {name} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, name)!r}")

    def replace(self, **changes: Any) -> Protocol:
        """A copy with some choices changed; unknown names are a ValueError."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown protocol field(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_size(rule: str, size: Any) -> None:
    """ValueError naming --size when the input size cannot be an image (before any work)."""
    if rule == "native":
        if size is not None:
            raise ValueError("--size: the native rule takes no size")
        return
    if rule == "fixed":
        ok = (isinstance(size, (tuple, list)) and len(size) == 2
              and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size))
        if not ok:
            raise ValueError(f"--size: a fixed size is HxW with two positive integers, got {size!r}")
        return
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise ValueError(f"--size: the {rule} rule needs a positive integer side, got {size!r}")


_CRW = dict(
    resize="bilinear", pixel_std=IMAGENET_STD, pos_interpolation="dino", labels_to_grid="nearest_then_bilinear",
    void_as="background", queue_length=20, queue_start="first_frame_copies", neighbourhood="queue",
    neighbourhood_shape="disk", temperature=0.7, topk_ties="exact_k", output="input_then_nearest", norm_mask=False,
    heatmap="crw_stamp", heatmap_sigma=0.5, keypoint_topk=5, keypoint_coords="cell_corner", skip_empty_joints=True,
)
_CAUSAL = dict(
    resize="bilinear_antialias", pixel_std=IMAGENET_STD, pos_interpolation="size", labels_to_grid="area",
    void_as="none", queue_length=20, queue_start="empty", neighbourhood="queue", neighbourhood_shape="disk",
    temperature=0.7, topk_ties="exact_k", output="annotation", nearest="floor", norm_mask=False, heatmap="gaussian",
    heatmap_sigma=0.5,
    keypoint_topk=3, keypoint_coords="cell_centre", skip_empty_joints=False,
)

_PROTOCOLS: dict[tuple[str, str], dict[str, Any]] = {
    # DAVIS at 480x880 (CropMAE's input for DAVIS), labels back to 854x480 with OpenCV's nearest rule
    ("crw", "davis"): {**_CRW, "size_rule": "fixed", "size": (480, 880), "topk": 7, "radius": 20.0,
                       "nearest": "floor", "score_first_frame": False},
    # JHMDB frames to 320x320 (20x20 cells at patch 16)
    ("crw", "jhmdb"): {**_CRW, "size_rule": "fixed", "size": (320, 320), "topk": 7, "radius": 20.0,
                       "nearest": "floor", "score_first_frame": False},
    # VIP: long side 880, the other side floored to a multiple of 64; every written frame scored (PIL nearest)
    ("crw", "vip"): {**_CRW, "size_rule": "long_side_64", "size": 880, "topk": 10, "radius": 8.0,
                     "nearest": "centre", "score_first_frame": True},
    ("causal", "davis"): {**_CAUSAL, "size_rule": "native", "size": None, "topk": 7, "radius": 20.0,
                          "score_first_frame": False},
    ("causal", "jhmdb"): {**_CAUSAL, "size_rule": "fixed", "size": (320, 320), "topk": 7, "radius": 20.0,
                          "score_first_frame": False},
    ("causal", "vip"): {**_CAUSAL, "size_rule": "fixed", "size": (560, 560), "topk": 10, "radius": 8.0,
                        "score_first_frame": False},
    ("dino", "davis"): dict(
        size_rule="short_side_64", size=480, resize="opencv_uint8", pixel_std=DINO_STD, pos_interpolation="dino",
        labels_to_grid="nearest", void_as="background", queue_length=7, queue_start="empty", neighbourhood="all",
        neighbourhood_shape="square", radius=12.0, temperature=0.1, topk=5, topk_ties="kth_value",
        output="input_then_nearest", nearest="centre", norm_mask=True, heatmap="gaussian", heatmap_sigma=0.5,
        keypoint_topk=3,
        keypoint_coords="cell_centre", skip_empty_joints=False, score_first_frame=False,
    ),
}


def get_protocol(name: str, dataset: str, **overrides: Any) -> Protocol:
    """Protocol `name` for `dataset`, with `overrides` of its fields."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown benchmark {dataset!r}; choose from {', '.join(DATASETS)}")
    if name not in PROTOCOLS:
        raise ValueError(f"--protocol: unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
    if (name, dataset) not in _PROTOCOLS:
        defined = ", ".join(d for n, d in _PROTOCOLS if n == name)
        raise ValueError(f"--protocol: {name} is defined for {defined} only, not {dataset}")
    return Protocol(name=name, dataset=dataset, **_PROTOCOLS[(name, dataset)]).replace(**overrides)


# ---------------------------------------------------------------- the table in dataset/EVALUATION.md
TABLE_START, TABLE_END = "<!-- protocols:start -->", "<!-- protocols:end -->"


def protocol_table() -> str:
    """Every field of every protocol as a markdown table (generated into dataset/EVALUATION.md, checked by a test,
    so the document says what the code does)."""
    names = [f.name for f in dataclasses.fields(Protocol) if f.name not in ("name", "dataset")]
    columns = list(_PROTOCOLS)
    lines = ["| field | " + " | ".join(f"`{n}` {d}" for n, d in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for field_name in names:
        values = [get_protocol(n, d).to_dict()[field_name] for n, d in columns]
        lines.append(f"| `{field_name}` | " + " | ".join(_cell(v) for v in values) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "x".join(str(v) for v in value) if all(isinstance(v, int) for v in value) else str(tuple(value))
    return "-" if value is None else str(value)


def write_protocol_table(path: str) -> None:
    """Rewrite the table between the markers of `path` (`python -m ml.evaluate protocols --write FILE`)."""
    with open(path) as f:
        text = f.read()
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    with open(path, "w") as f:
        f.write(text[:start] + "\n" + protocol_table() + "\n" + text[end:])
