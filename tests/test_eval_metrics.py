"""DAVIS J and F as the official semi-supervised scorer computes them, on cases worked out by hand; PCK; mIoU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from ml.eval.keypoints import heatmap_keypoints
from ml.eval.metrics import (
    boundary_f_measure,
    boundary_map,
    boundary_radius,
    confusion_matrix,
    davis_sequence_scores,
    davis_summary,
    disk,
    iou_per_class,
    pck,
    pck_distances,
    region_similarity,
    statistics,
    within_radius,
)


def square(top: int, left: int, side: int = 20, shape: tuple[int, int] = (100, 100)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[top: top + side, left: left + side] = True
    return m


def test_identical_masks_score_one() -> None:
    m = square(10, 10)
    assert region_similarity(m, m) == 1.0
    assert boundary_f_measure(m, m) == 1.0


def test_disjoint_masks_score_zero() -> None:
    a, b = square(5, 5), square(60, 60)
    assert region_similarity(a, b) == 0.0
    assert boundary_f_measure(a, b) == 0.0


def test_empty_masks() -> None:
    empty, m = np.zeros((50, 50), bool), square(5, 5, 10, (50, 50))
    assert region_similarity(empty, empty) == 1.0 and boundary_f_measure(empty, empty) == 1.0
    assert region_similarity(m, empty) == 0.0 and boundary_f_measure(m, empty) == 0.0
    assert boundary_f_measure(empty, m) == 0.0


def test_known_overlap_gives_its_iou() -> None:
    # two 20x20 squares offset by 5 columns: intersection 20*15 = 300, union 2*400 - 300 = 500
    assert region_similarity(square(10, 10), square(10, 15)) == pytest.approx(300 / 500)


def test_void_pixels_count_as_background_as_the_official_scorer_has_it() -> None:
    """davis2017-evaluation's semi-supervised task sets void (255) to background and passes no void mask to J
    and F: a prediction over a void area is a false positive there, and void inside an object is a hole."""
    gt = np.zeros((3, 100, 100), np.uint8)
    gt[:, 10:30, 10:30] = 1
    gt[1, 10:30, 30:40] = 255  # void beside the object, where the prediction spreads
    gt[1, 15:20, 15:20] = 255  # and a void hole inside it
    pred = np.zeros_like(gt)
    pred[:, 10:30, 10:40] = 1
    J, F = davis_sequence_scores(gt, pred)
    # object: 400 - 25 (the hole) = 375 pixels; prediction 600 pixels covering all of them
    assert J[0, 0] == pytest.approx(375 / 600)
    excluded = region_similarity(gt[1] == 1, pred[1] == 1, gt[1] == 255)  # what excluding void would give
    assert excluded == 1.0 and J[0, 0] < 0.7
    assert F[0, 0] < 1.0  # the hole and the void band are boundaries the prediction lacks / has too many of


def test_boundary_map_of_a_square_is_its_outline_shifted_towards_the_origin() -> None:
    b = boundary_map(square(10, 10))
    expected = np.zeros_like(b)
    expected[9:30, 9:30] = True
    expected[10:29, 10:29] = False  # the one-pixel ring around rows/cols 9..29
    assert (b == expected).all()
    assert b.sum() == 80


def test_boundary_tolerance_is_0008_of_the_diagonal() -> None:
    assert boundary_radius((100, 100)) == 2  # ceil(0.008 * 141.4)
    assert boundary_radius((480, 854)) == 8  # ceil(0.008 * 979.6): the DAVIS 480p radius
    assert boundary_radius((480, 854), tolerance=3) == 3  # >= 1: pixels


def test_one_pixel_shift_keeps_f_at_one() -> None:
    gt = square(10, 10)
    for dy, dx in ((0, 1), (1, 0), (1, 1), (-1, 0)):
        pred = np.roll(gt, (dy, dx), axis=(0, 1))
        assert boundary_f_measure(gt, pred) == 1.0
    assert region_similarity(gt, np.roll(gt, 1, axis=1)) == pytest.approx(380 / 420)


def test_large_shift_drops_f_to_the_hand_computed_value() -> None:
    # outlines of [9..29]^2 and of the same shifted 10 columns right; tolerance 2 px (100x100 image).
    # Matched predicted outline pixels: 13 on the top row, 13 on the bottom row, 4 on the left
    # column (rows 10, 11, 27, 28 lie within 2 px of the true top/bottom rows): 30 of 80.
    gt, pred = square(10, 10), square(10, 20)
    assert boundary_f_measure(gt, pred) == pytest.approx(30 / 80)
    assert boundary_f_measure(gt, square(10, 40)) == 0.0


def test_within_radius_equals_dilation_with_the_disk() -> None:
    rng = np.random.default_rng(0)
    for radius in (1, 3, 8):
        points = rng.random((60, 90)) > 0.995
        assert (within_radius(points, radius) == ndimage.binary_dilation(points, structure=disk(radius))).all()


def test_statistics_mean_recall_decay() -> None:
    mean, recall, decay = statistics(np.array([1.0, 1.0, 0.0, 0.0]))
    assert mean == 0.5 and recall == 0.5 and decay == 1.0
    mean, recall, decay = statistics(np.array([0.2, 0.6, 0.6, 0.6, 0.6, 0.9]))
    assert mean == pytest.approx(3.5 / 6) and recall == pytest.approx(5 / 6)


def test_sequence_scores_skip_first_and_last_frames_and_split_objects() -> None:
    gt = np.zeros((4, 30, 30), np.uint8)
    gt[:, 2:10, 2:10] = 1
    gt[:, 15:25, 15:25] = 2
    pred = gt.copy()
    pred[0] = 0  # first and last frames are not scored
    pred[3] = 0
    pred[2][pred[2] == 2] = 0  # object 2 lost in frame 2
    J, F = davis_sequence_scores(gt, pred)
    assert J.shape == (2, 2) and F.shape == (2, 2)
    assert J[0].tolist() == [1.0, 1.0] and J[1].tolist() == [1.0, 0.0]
    assert F[1].tolist() == [1.0, 0.0]


def test_sequence_scores_reject_unknown_predicted_ids_and_short_sequences() -> None:
    gt = np.zeros((4, 10, 10), np.uint8)
    gt[:, :3, :3] = 1
    bad = gt.copy()
    bad[1, 5, 5] = 3
    with pytest.raises(ValueError, match=r"predicted ids \[3\]"):
        davis_sequence_scores(gt, bad)
    with pytest.raises(ValueError, match="at least 3 frames"):
        davis_sequence_scores(gt[:2], gt[:2])
    # ids above the objects in the first or last frame are never read, as in the official tool
    ignored = gt.copy()
    ignored[0, 5, 5] = ignored[3, 5, 5] = 7
    J, _ = davis_sequence_scores(gt, ignored)
    assert J.tolist() == [[1.0, 1.0]]


def test_objects_come_from_the_first_annotation_and_unpredicted_ones_score_zero() -> None:
    gt = np.zeros((5, 40, 40), np.uint8)
    gt[:, :10, :10] = 1
    gt[:, 20:30, 20:30] = 2
    gt[0, 35:, 35:] = 255  # void in the first frame is not an object
    pred = np.where(gt == 2, 0, gt)  # object 2 never predicted: the tool pads it with empty masks
    J, F = davis_sequence_scores(gt, pred)
    assert J.shape == (2, 3) and J[0].tolist() == [1.0] * 3
    assert J[1].tolist() == [0.0] * 3 and F[1].tolist() == [0.0] * 3
    summary, rows = davis_summary({"seq": (J, F)})
    assert [r["Sequence"] for r in rows] == ["seq_1", "seq_2"]
    assert summary["J-Mean"] == 0.5 and summary["J&F-Mean"] == pytest.approx((0.5 + F.mean(1).mean()) / 2)
    assert summary["J-Recall"] == 0.5 and summary["J-Decay"] == 0.0


def test_decay_bins_use_eight_bit_indices_as_the_official_code() -> None:
    """Over 256 frames the official quarter indices (cast to uint8) wrap around; the numbers must follow."""
    v = np.linspace(1.0, 0.0, 300)
    mean, recall, decay = statistics(v)
    edges = (np.round(np.linspace(1, 300, 5) + 1e-10) - 1).astype(np.uint8)  # 299 wraps to 43
    assert edges.tolist() == [0, 75, 150, 224, 43]
    assert np.isnan(decay)  # the last bin v[224:44] is empty there too
    assert statistics(v[:200])[2] == pytest.approx(v[:51].mean() - v[149:200].mean())


def test_pck_with_and_without_the_joints_left_out() -> None:
    gt = np.array([[[0.0, 0.0], [30.0, 40.0], [100.0, 0.0]]])  # third joint far right
    pred = gt + np.array([[[3.0, 0.0], [0.0, 9.0], [0.0, 0.0]]])
    all_joints = pck_distances(pred, gt)  # box 100 x 40
    unit = 0.6 * np.hypot(100, 40)
    assert all_joints[0].tolist() == pytest.approx([3 / unit, 9 / unit, 0.0])
    visible = np.array([[True, True, False]])  # the third joint's heatmap was empty: box 30 x 40, unit 30
    d = pck_distances(pred, gt, visible)
    assert d[0, :2].tolist() == pytest.approx([0.1, 0.3]) and np.isnan(d[0, 2])
    assert pck(d, 0.1) == 0.5 and pck(d, 0.3) == 1.0  # the joint with no entry is not averaged in
    # eval_pck.py's box starts with max -1: joints all left of pixel -1 get a box from their min x to x = -1
    left = np.array([[[-50.0, 0.0], [-20.0, 40.0], [5.0, 5.0]]])
    d = pck_distances(left + [3.0, 0.0], left, visible)
    assert d[0, 0] == pytest.approx(3 / (0.6 * np.hypot(49, 40)))  # -1 - (-50), not -20 - (-50)
    assert pck_distances(left + [3.0, 0.0], left)[0, 0] == pytest.approx(3 / (0.6 * np.hypot(55, 40)))


def test_cell_corner_joints_are_scaled_as_eval_pck_scales_them() -> None:
    """eval_pck.py turns a joint at cell u into pixels as float32 u / cells * width (in that order); u * width /
    cells rounds differently in the last bit for some u."""
    g = torch.Generator().manual_seed(0)
    heat = torch.zeros(200, 20, 20)
    cells = torch.randint(0, 400, (200, 2), generator=g)
    heat.view(200, -1).scatter_(1, cells, torch.rand(200, 2, generator=g) + 0.1)  # two cells a joint
    keypoints, _ = heatmap_keypoints(heat, (240, 320), topk=2, coords="cell_corner")
    vals, idx = heat.view(200, -1).topk(2, dim=1)
    w = (vals / vals.sum(1, keepdim=True)).numpy()
    u = ((idx % 20).float().numpy() * w).sum(1, dtype=np.float32)
    v = ((idx // 20).float().numpy() * w).sum(1, dtype=np.float32)
    assert np.array_equal(keypoints[:, 0], u / np.float32(20.0) * np.float32(320))
    assert np.array_equal(keypoints[:, 1], v / np.float32(20.0) * np.float32(240))


def test_confusion_and_iou_by_hand() -> None:
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 0, 1]])
    c = confusion_matrix(gt, pred, 3)
    assert c.tolist() == [[1, 1, 0], [0, 3, 0], [1, 0, 1]]
    assert iou_per_class(c).tolist() == pytest.approx([1 / 3, 3 / 4, 1 / 2])
