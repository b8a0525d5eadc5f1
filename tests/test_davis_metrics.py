"""J (region IoU) and F (boundary F-measure) on masks whose scores can be worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ml.davis_metrics import (
    boundary_f_measure,
    boundary_map,
    boundary_radius,
    disk,
    region_similarity,
    sequence_scores,
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


def test_void_pixels_are_left_out() -> None:
    gt, pred = square(10, 10), square(10, 15)
    void = np.zeros_like(gt)
    void[:, 10:15] = True  # exactly the columns where only gt is set
    assert region_similarity(gt, pred, void) == pytest.approx(300 / 400)


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
    J, F = sequence_scores(gt, pred)
    assert J.shape == (2, 2) and F.shape == (2, 2)
    assert J[0].tolist() == [1.0, 1.0] and J[1].tolist() == [1.0, 0.0]
    assert F[1].tolist() == [1.0, 0.0]


def test_sequence_scores_reject_unknown_predicted_ids_and_short_sequences() -> None:
    gt = np.zeros((4, 10, 10), np.uint8)
    gt[:, :3, :3] = 1
    bad = gt.copy()
    bad[1, 5, 5] = 3
    with pytest.raises(ValueError, match=r"predicted ids \[3\]"):
        sequence_scores(gt, bad)
    with pytest.raises(ValueError, match="at least 3 frames"):
        sequence_scores(gt[:2], gt[:2])
