"""Each protocol writes exactly the masks of its reference code: `dino` those of DINO's eval_video_segmentation.py,
`crw` those of CropMAE's copy of the CRW propagation code. The fixtures were written by tests/reference/run_dino.py
and run_cropmae.py: the reference at a pinned commit, in a venv of its own, on the CPU, with the same seeded
ViT-S/16 in the official MAE key layout (JHMDB and VIP: tests/test_reference_jhmdb_vip.py). The shipped textured
folders are checked against their generators here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import loadmat

from ml.eval import load_encoder, run_evaluation
from ml.eval.synthetic import JHMDB_COLOUR_BITS, write_textured_davis, write_textured_jhmdb, write_textured_vip
from tests.conftest import REPO

FIXTURES = REPO / "tests" / "fixtures"


def agreement(protocol: str, data: Path, sequence: str, reference: Path, out: Path) -> list[float]:
    """Our masks of `sequence` under `protocol` against the reference's: the share of equal pixels per predicted
    frame."""
    encoder, _ = load_encoder("random", "siammae_vit_small_patch16", seed=0)
    run_evaluation("davis", data, out, encoder=encoder, arch="siammae_vit_small_patch16", protocol=protocol,
                   sequences=[sequence], progress=False)
    shares = []
    for expected in sorted((reference / sequence).glob("*.png"))[1:]:  # frame 0 is the given annotation
        ours = np.array(Image.open(out / "masks" / sequence / expected.name))
        shares.append(float((ours == np.array(Image.open(expected))).mean()))
    assert len(shares) >= 4
    return shares


@pytest.mark.parametrize("protocol", ["dino", "crw"])
def test_each_protocol_equals_its_reference_on_the_shipped_textured_sequence(tmp_path: Path, protocol: str) -> None:
    """Real texture from the shipped sample clips, two objects that move, grow and occlude, 8 frames at 854x480
    (ml.eval.synthetic.write_textured_davis)."""
    shares = agreement(protocol, FIXTURES / "textured_davis", "textured", FIXTURES / protocol / "textured", tmp_path)
    assert shares == [1.0] * len(shares)


@pytest.mark.parametrize("protocol", ["dino", "crw"])
def test_each_protocol_equals_its_reference_on_davis_mini(davis_mini: Path, tmp_path: Path, protocol: str) -> None:
    shares = agreement(protocol, davis_mini, "street", FIXTURES / protocol / "davis_mini", tmp_path)
    assert shares == [1.0] * len(shares)


def assert_same_files(shipped: Path, made: Path) -> None:
    """The files under `made` are those under `shipped`: text alike to the byte, label images to the pixel, frames
    within the grey levels that decoders and encoders of other builds may move, .mat files by their pos_img."""
    names = sorted(p.relative_to(shipped) for p in shipped.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(made) for p in made.rglob("*") if p.is_file())
    for name in names:
        a, b = shipped / name, made / name
        if name.suffix == ".mat":  # savemat's header holds the time of writing
            assert np.array_equal(loadmat(a)["pos_img"], loadmat(b)["pos_img"]), name
        elif name.suffix in (".jpg", ".png") and Image.open(a).mode == "RGB":
            # a JPEG encoder may differ by a grey level; the JHMDB frames keep 32 levels, so one level of those
            tolerance = 2 if name.suffix == ".jpg" else 256 // 2 ** JHMDB_COLOUR_BITS
            x, y = (np.asarray(Image.open(p), dtype=np.int16) for p in (a, b))
            assert np.abs(x - y).max() <= tolerance, name
        elif name.suffix == ".png":
            assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))), name
        else:
            assert a.read_bytes() == b.read_bytes(), name


@pytest.mark.parametrize("folder, write", [("textured_davis", write_textured_davis),
                                           ("textured_jhmdb", write_textured_jhmdb),
                                           ("textured_vip", write_textured_vip)])
def test_the_shipped_textured_folders_are_what_the_generators_write(tmp_path: Path, folder: str,
                                                                   write: Callable[[Path], Path]) -> None:
    write(tmp_path)
    assert_same_files(FIXTURES / folder, tmp_path)


@pytest.mark.parametrize("sequence", ["textured"])
def test_the_textured_masks_are_exact_and_the_objects_overlap(sequence: str) -> None:
    masks = [np.array(Image.open(p)) for p in sorted((FIXTURES / "textured_davis" / "Annotations" / "480p" /
                                                      sequence).glob("*.png"))]
    assert len(masks) >= 8 and masks[0].shape == (480, 854)
    assert all(set(np.unique(m)) == {0, 1, 2} for m in masks)
    assert (masks[-1] == 1).sum() < 0.8 * (masks[0] == 1).sum() * (1.05 ** 7) ** 2  # the first object is occluded
