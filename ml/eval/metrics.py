"""Scores: DAVIS J and F as the official davis2017-evaluation computes them, JHMDB PCK, VIP mIoU.

DAVIS (semi-supervised task), as `davis2017/evaluation.py` and `davis2017/davis.py` do it: void
pixels (255) of an annotation become background and no void mask is passed to J and F; the
objects are ids 1..K with K the largest id of the first annotation; the first and last frames are
not scored; a predicted id above K is an error; an object never predicted counts as empty. J is
the IoU of an object's predicted and true masks (1 when both are empty); F the F-measure of
boundary precision and recall, boundaries one pixel wide and matched within a disk of radius
ceil(0.008 x image diagonal). Per object: mean, recall (fraction of frames above 0.5) and decay
(first quarter minus last quarter, the official binning, indices as 8-bit integers as there).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import ndimage

from ml.eval.data import VOID_LABEL

BOUNDARY_TOLERANCE = 0.008  # fraction of the image diagonal
PCK_THRESHOLDS = (0.1, 0.2)
PCK_BOX_SCALE = 0.6  # PCK distance unit: 0.6 x the diagonal of the tight box around the frame's true joints
CRW_BOX_START = (1e6, -1.0)  # eval_pck.py's first min and max of the box's corners (minx = 1e6, maxx = -1)


# ================================================================= DAVIS: J and F
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


def davis_sequence_scores(
    gt_ids: np.ndarray, pred_ids: np.ndarray, tolerance: float = BOUNDARY_TOLERANCE
) -> tuple[np.ndarray, np.ndarray]:
    """J and F (objects, T - 2) of one sequence, as the official semi-supervised evaluation computes them.

    gt_ids, pred_ids: (T, H, W) label maps of every frame (the ground truth may hold void, 255). Only
    frames 1..T-2 are read from either.
    """
    gt_ids, pred_ids = np.asarray(gt_ids), np.asarray(pred_ids)
    if gt_ids.shape != pred_ids.shape or gt_ids.ndim != 3:
        raise ValueError(f"expected two (T, H, W) label stacks of one shape, got {gt_ids.shape} and {pred_ids.shape}")
    if gt_ids.shape[0] < 3:
        raise ValueError(f"scoring needs at least 3 frames (first and last are left out), got {gt_ids.shape[0]}")
    gt = np.where(gt_ids == VOID_LABEL, 0, gt_ids)
    num_objects = int(gt[0].max())
    scored_gt, scored_pred = gt[1:-1], pred_ids[1:-1]
    num_predicted = int(scored_pred.max(initial=0))
    if num_predicted > num_objects:
        too_high = sorted(set(np.unique(scored_pred[scored_pred > num_objects]).tolist()))
        raise ValueError(f"predicted ids {too_high} exceed the {num_objects} objects of the sequence")
    n_frames = gt.shape[0] - 2
    J = np.zeros((num_objects, n_frames))
    F = np.zeros((num_objects, n_frames))
    for k in range(num_objects):
        for t in range(n_frames):
            g, p = scored_gt[t] == k + 1, scored_pred[t] == k + 1
            J[k, t] = region_similarity(g, p)
            F[k, t] = boundary_f_measure(g, p, tolerance=tolerance)
    return J, F


def statistics(per_frame: np.ndarray) -> tuple[float, float, float]:
    """(mean, recall, decay) of one object's per-frame scores, as the official `db_statistics`.

    Recall is the fraction of frames scoring above 0.5. Decay is the mean of the first quarter of
    the frames minus the mean of the last quarter, with quarter boundaries round(linspace(1, T, 5)) - 1
    cast to 8-bit integers (as the official code does) and each quarter including its end frame.
    """
    v = np.asarray(per_frame, dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # nan for an empty object
        mean = float(np.nanmean(v))
        recall = float(np.nanmean(v > 0.5))
        edges = (np.round(np.linspace(1, len(v), 5) + 1e-10) - 1).astype(np.uint8)
        first_quarter = v[edges[0]: edges[1] + 1]
        last_quarter = v[edges[3]: edges[4] + 1]
        decay = float(np.nanmean(first_quarter) - np.nanmean(last_quarter))
    return mean, recall, decay


def davis_summary(per_sequence: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[dict, list[dict]]:
    """The official global numbers and per-object rows from each sequence's (J, F).

    Global: J&F-Mean = (mean of objects' J-Mean + mean of objects' F-Mean) / 2, and the means of the
    objects' recall and decay. Rows: 'Sequence' = '<sequence>_<k>', J-Mean, F-Mean.
    """
    stats = {"J": [], "F": []}
    rows = []
    for name, (J, F) in per_sequence.items():
        for k in range(J.shape[0]):
            jm, jr, jd = statistics(J[k])
            fm, fr, fd = statistics(F[k])
            stats["J"].append((jm, jr, jd))
            stats["F"].append((fm, fr, fd))
            rows.append({"Sequence": f"{name}_{k + 1}", "J-Mean": jm, "F-Mean": fm})
    if not rows:
        raise ValueError("no object to score")
    J, F = np.array(stats["J"]), np.array(stats["F"])
    summary = {
        "J&F-Mean": float((J[:, 0].mean() + F[:, 0].mean()) / 2),
        "J-Mean": float(J[:, 0].mean()), "J-Recall": float(J[:, 1].mean()), "J-Decay": float(J[:, 2].mean()),
        "F-Mean": float(F[:, 0].mean()), "F-Recall": float(F[:, 1].mean()), "F-Decay": float(F[:, 2].mean()),
    }
    return summary, rows


# ================================================================= JHMDB: PCK
def pck_distances(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray | None = None) -> np.ndarray:
    """Normalised distances (T, J): |pred - gt| / (0.6 x diagonal of the tight box of the frame's true joints).

    With `visible` (T, J) bool, CRW's eval_pck.py: the box spans the visible joints only, the others get nan (a
    joint whose propagated heatmap is empty is left out), and the box's corners start where eval_pck.py starts
    them (min at 1e6, max at -1: a frame whose visible joints all lie left of or above pixel -1 gets a box
    reaching to -1; kept as the reference computes it, see dataset/EVALUATION.md).
    """
    pred, gt = np.asarray(pred, dtype=float), np.asarray(gt, dtype=float)
    crw = visible is not None
    if visible is None:
        visible = np.ones(gt.shape[:2], dtype=bool)
    lo = np.where(visible[..., None], gt, np.inf).min(axis=1)  # (T, 2)
    hi = np.where(visible[..., None], gt, -np.inf).max(axis=1)
    if crw:
        lo, hi = np.minimum(lo, CRW_BOX_START[0]), np.maximum(hi, CRW_BOX_START[1])
    with np.errstate(invalid="ignore"):
        scale = PCK_BOX_SCALE * np.hypot(*(hi - lo).T)  # (T,)
    with np.errstate(divide="ignore", invalid="ignore"):
        dist = np.linalg.norm(pred - gt, axis=-1) / scale[:, None]
    return np.where(visible, dist, np.nan)


def pck(distances: np.ndarray, alpha: float) -> float:
    """Mean over joints of the fraction of frames whose normalised distance is <= alpha (nan entries skipped)."""
    d = np.asarray(distances, dtype=float)
    valid = np.isfinite(d)
    per_joint = [(d[valid[:, j], j] <= alpha).mean() for j in range(d.shape[1]) if valid[:, j].any()]
    return float(np.mean(per_joint)) if per_joint else float("nan")


# ================================================================= VIP: mIoU
def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts, rows true class, columns predicted; true ids outside the classes
    (255) left out."""
    gt, pred = np.asarray(gt).astype(np.int64), np.asarray(pred).astype(np.int64)
    keep = (gt >= 0) & (gt < num_classes)
    index = gt[keep] * num_classes + pred[keep]
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """IoU of each class from a confusion matrix: TP / (TP + FP + FN); nan for a class absent in both."""
    tp = np.diag(confusion).astype(float)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def _check_same_shape(a: np.ndarray, b: np.ndarray, void: np.ndarray | None) -> None:
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two (H, W) masks of one shape, got {a.shape} and {b.shape}")
    if void is not None and np.shape(void) != a.shape:
        raise ValueError(f"void mask {np.shape(void)} does not match the masks {a.shape}")
