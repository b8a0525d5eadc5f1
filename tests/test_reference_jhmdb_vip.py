"""The `crw` protocol's JHMDB joints and PCK, and its VIP part masks and mIoU, equal those of CropMAE's copy of the
CRW propagation code and its scorers (eval_pck.py, eval_vip.py; commit 5d0dab2) on the shipped textured JHMDB and
VIP folders (ml.eval.synthetic) with the seeded ViT-S/16 in the official MAE key layout. The fixtures were written
by tests/reference/run_cropmae_jhmdb.py and run_cropmae_vip.py (tests/fixtures/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch.nn as nn
from PIL import Image

from ml.eval import get_protocol, load_encoder, run_evaluation
from tests.conftest import REPO

FIXTURES = REPO / "tests" / "fixtures"
ARCH = "siammae_vit_small_patch16"


@pytest.fixture(scope="module")
def encoder() -> nn.Module:
    return load_encoder("random", ARCH, seed=0)[0]


def test_crw_jhmdb_joints_and_pck_equal_the_reference(encoder: nn.Module, tmp_path: Path) -> None:
    """Every joint of every frame (the first, the given one, too), which joints are left out (an empty propagated
    map), every normalised distance eval_pck.py measures, and PCK@0.1/0.2 (its per cent, ours fractions)."""
    reference = json.loads((FIXTURES / "crw" / "jhmdb" / "jhmdb.json").read_text())
    result = run_evaluation("jhmdb", FIXTURES / "textured_jhmdb", tmp_path, encoder=encoder, arch=ARCH,
                            protocol="crw", progress=False)
    distances, left_out = [], 0
    for i, name in enumerate(reference["videos"]):
        ours = json.loads((tmp_path / "sequences" / f"{name}.json").read_text())
        cells = np.array(reference["keypoints_grid"][i]).transpose(2, 1, 0)  # (T, J, 2), -1: an empty map
        visible = cells[..., 0] >= 0
        assert np.array_equal(np.array(ours["visible"]), visible), name
        expected = np.array(reference["keypoints"][i]).transpose(2, 1, 0)  # eval_pck.py's pixels
        assert np.abs(np.array(ours["keypoints"]) - expected)[visible].max() <= 1e-4, name
        d = np.array(ours["distances"], dtype=float)  # (T - 1, J): frames 1.. (None -> nan)
        # eval_pck.py's order: joint by joint, frame by frame, the visible ones of frames 1..
        distances += [d[k - 1, j] for j in range(d.shape[1]) for k in range(1, d.shape[0] + 1) if visible[k, j]]
        left_out += int((~visible).sum())
    assert left_out > 0  # the data exercises the left-out joints (an arm out of the frame)
    np.testing.assert_allclose(distances, reference["distances"], rtol=0, atol=1e-6)
    for alpha in ("0.1", "0.2"):
        assert 0 < reference["pck"][alpha] < 100
        assert abs(100 * result[f"PCK@{alpha}"] - reference["pck"][alpha]) <= 1e-6


@pytest.mark.parametrize("radius", [8, 20])
def test_crw_vip_part_masks_and_miou_equal_the_reference(encoder: nn.Module, tmp_path: Path, radius: int) -> None:
    """Every frame's part map as eval_vip.py scores it (the first frame's too), the summed confusion matrix and
    the mIoU; at the paper's radius 8 (our default) and at the radius 20 of CropMAE's util.py (--radius 20)."""
    assert get_protocol("crw", "vip").radius == 8
    reference = FIXTURES / "crw" / "vip" / f"radius{radius}"
    expected = json.loads((reference / "vip.json").read_text())
    result = run_evaluation("vip", FIXTURES / "textured_vip", tmp_path, encoder=encoder, arch=ARCH, protocol="crw",
                            progress=False, **({} if radius == 8 else {"radius": float(radius)}))
    masks = sorted(reference.glob("*/*.png"))
    assert len(masks) == 7
    for path in masks:
        ours = np.array(Image.open(tmp_path / "masks" / path.parent.name / path.name))
        assert np.array_equal(ours, np.array(Image.open(path))), path
    confusion = sum(np.array(json.loads(p.read_text())["confusion"]) for p in (tmp_path / "sequences").glob("*.json"))
    assert np.array_equal(confusion, np.array(expected["confusion"]))
    assert abs(result["mIoU"] - expected["mIoU"]) <= 1e-6 and 0 < expected["mIoU"] < 1

