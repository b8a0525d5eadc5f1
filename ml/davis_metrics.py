"""DAVIS region similarity J and boundary accuracy F, written from their definitions.

J is the intersection over union of a predicted and a ground-truth object mask. F is the F-measure
of boundary precision and recall: the boundaries are one-pixel-wide maps (a pixel is a boundary
pixel when it differs from its right, lower or lower-right neighbour), and a boundary pixel counts
as matched when the other mask's boundary lies within a disk of radius ceil(0.008 * image
diagonal) around it (8 pixels at 854x480). Void pixels (label 255 in DAVIS annotations) are left
out of both. Per object, a sequence's score is the mean over its frames without the first
(given) and the last; the dataset score is the mean over all objects. These are the conventions
of the DAVIS-2017 semi-supervised benchmark, so numbers are comparable with published ones.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import ndimage

BOUNDARY_TOLERANCE = 0.008  # fraction of the image diagonal
VOID_LABEL = 255


def region_similarity(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> float:
    """J: |gt & pred| / |gt | pred| over non-void pixels; 1 when both masks are empty."""
    gt, pred = np.asarray(gt, dtype=bool), np.asarray(pred, dtype=bool)
    _check_same_shape(gt, pred, void)
    keep = np.ones_like(gt) if void is None else ~np.asarray(void, dtype=bool)
    union = np.count_nonzero((gt | pred) & keep)
    if union == 0:
        return 1.0
    return np.count_nonzero(gt & pred & keep) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary of a binary mask (H, W) -> bool (H, W).

    A pixel is on the boundary when it differs from its east, south or south-east neighbour; in
    the last row only the east neighbour is compared, in the last column only the south one, and
    the bottom-right pixel is never a boundary. This puts the boundary half a pixel towards the
    origin of the true object edge, as the benchmark's boundary maps do.
    """
    m = np.asarray(mask, dtype=bool)
    east = np.zeros_like(m)
    south = np.zeros_like(m)
    south_east = np.zeros_like(m)
    east[:, :-1] = m[:, 1:]
    south[:-1, :] = m[1:, :]
    south_east[:-1, :-1] = m[1:, 1:]
    b = (m ^ east) | (m ^ south) | (m ^ south_east)
    b[-1, :] = m[-1, :] ^ east[-1, :]
    b[:, -1] = m[:, -1] ^ south[:, -1]
    b[-1, -1] = False
    return b


def disk(radius: int) -> np.ndarray:
    """Binary disk of (2r+1)x(2r+1): offsets (dy, dx) with dy^2 + dx^2 <= r^2."""
    r = int(radius)
    offsets = np.arange(-r, r + 1)
    return offsets[None, :] ** 2 + offsets[:, None] ** 2 <= r * r


def boundary_radius(shape: tuple[int, int], tolerance: float = BOUNDARY_TOLERANCE) -> int:
    """Matching radius in pixels: `tolerance` as a fraction of the diagonal (rounded up), or pixels if >= 1."""
    if tolerance >= 1:
        return int(tolerance)
    return int(math.ceil(tolerance * math.hypot(shape[0], shape[1])))


def within_radius(points: np.ndarray, radius: int) -> np.ndarray:
    """bool (H, W): pixels within Euclidean distance `radius` of a True pixel of `points`.

    The same set as dilating `points` with `disk(radius)` (d <= r <=> dy^2 + dx^2 <= r^2), computed
    with a distance transform on the bounding box of `points` grown by the radius, which is much
    faster than a dilation with a large disk on a whole frame.
    """
    out = np.zeros(points.shape, dtype=bool)
    rows, cols = np.nonzero(points)
    if rows.size == 0:
        return out
    top, left = max(rows.min() - radius, 0), max(cols.min() - radius, 0)
    bottom, right = min(rows.max() + radius + 1, points.shape[0]), min(cols.max() + radius + 1, points.shape[1])
    crop = points[top:bottom, left:right]
    out[top:bottom, left:right] = ndimage.distance_transform_edt(~crop) <= radius
    return out


def boundary_f_measure(
    gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None, tolerance: float = BOUNDARY_TOLERANCE
) -> float:
    """F: harmonic mean of boundary precision and recall with a disk tolerance.

    Precision = fraction of predicted boundary pixels within the tolerance of the true boundary,
    recall = fraction of true boundary pixels within the tolerance of the predicted one. Both
    boundaries empty gives 1; exactly one empty gives 0.
    """
    gt, pred = np.asarray(gt, dtype=bool), np.asarray(pred, dtype=bool)
    _check_same_shape(gt, pred, void)
    if void is not None:
        keep = ~np.asarray(void, dtype=bool)
        gt, pred = gt & keep, pred & keep
    gt_b, pred_b = boundary_map(gt), boundary_map(pred)
    n_gt, n_pred = np.count_nonzero(gt_b), np.count_nonzero(pred_b)
    if n_gt == 0 and n_pred == 0:
        return 1.0
    if n_gt == 0 or n_pred == 0:
        return 0.0  # precision or recall is 0 (the other is 1)
    radius = boundary_radius(gt.shape, tolerance)
    precision = np.count_nonzero(pred_b & within_radius(gt_b, radius)) / n_pred
    recall = np.count_nonzero(gt_b & within_radius(pred_b, radius)) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def split_objects(ids: np.ndarray, num_objects: int) -> tuple[np.ndarray, np.ndarray]:
    """Label map(s) (..., H, W) -> per-object masks (num_objects, ..., H, W) for ids 1..K, and the void mask."""
    ids = np.asarray(ids)
    void = ids == VOID_LABEL
    objects = np.zeros((num_objects, *ids.shape), dtype=bool)
    for k in range(num_objects):
        objects[k] = ids == k + 1
    return objects, void


def sequence_scores(
    gt_ids: np.ndarray, pred_ids: np.ndarray, num_objects: int | None = None, tolerance: float = BOUNDARY_TOLERANCE
) -> tuple[np.ndarray, np.ndarray]:
    """J and F per object and scored frame of one sequence.

    gt_ids, pred_ids: (T, H, W) label maps of all frames (0 background, k object k, 255 void in
    the ground truth). The first and last frames are not scored. `num_objects` defaults to the
    largest id of the first ground-truth frame. A predicted id above `num_objects` is an error, as
    in the benchmark. Returns J, F of shape (num_objects, T - 2).
    """
    gt_ids, pred_ids = np.asarray(gt_ids), np.asarray(pred_ids)
    if gt_ids.shape != pred_ids.shape or gt_ids.ndim != 3:
        raise ValueError(f"expected two (T, H, W) label stacks of one shape, got {gt_ids.shape} and {pred_ids.shape}")
    if gt_ids.shape[0] < 3:
        raise ValueError(f"scoring needs at least 3 frames (first and last are left out), got {gt_ids.shape[0]}")
    first = gt_ids[0]
    if num_objects is None:
        num_objects = int(first[first != VOID_LABEL].max(initial=0))
    too_high = np.unique(pred_ids[pred_ids > num_objects])
    if too_high.size:
        raise ValueError(f"predicted ids {too_high.tolist()} exceed the {num_objects} objects of the sequence")
    gt_obj, void = split_objects(gt_ids[1:-1], num_objects)
    pred_obj, _ = split_objects(pred_ids[1:-1], num_objects)
    n_frames = gt_ids.shape[0] - 2
    J = np.zeros((num_objects, n_frames))
    F = np.zeros((num_objects, n_frames))
    for k in range(num_objects):
        for t in range(n_frames):
            J[k, t] = region_similarity(gt_obj[k, t], pred_obj[k, t], void[t])
            F[k, t] = boundary_f_measure(gt_obj[k, t], pred_obj[k, t], void[t], tolerance)
    return J, F


def statistics(per_frame: np.ndarray) -> tuple[float, float, float]:
    """(mean, recall, decay) of one object's per-frame scores.

    Recall is the fraction of frames scoring above 0.5. Decay is the mean of the first quarter of
    the frames minus the mean of the last quarter, with quarter boundaries at
    round(linspace(1, T, 5)) - 1 and each quarter including its end frame (the benchmark's binning).
    """
    v = np.asarray(per_frame, dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # nan for an empty object
        mean = float(np.nanmean(v))
        recall = float(np.nanmean(v > 0.5))
        edges = (np.round(np.linspace(1, len(v), 5) + 1e-10) - 1).astype(int)
        first_quarter = v[edges[0]: edges[1] + 1]
        last_quarter = v[edges[3]: edges[4] + 1]
        decay = float(np.nanmean(first_quarter) - np.nanmean(last_quarter))
    return mean, recall, decay


def _check_same_shape(a: np.ndarray, b: np.ndarray, void: np.ndarray | None) -> None:
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two (H, W) masks of one shape, got {a.shape} and {b.shape}")
    if void is not None and np.shape(void) != a.shape:
        raise ValueError(f"void mask {np.shape(void)} does not match the masks {a.shape}")
