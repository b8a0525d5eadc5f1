"""The generated correspondence benchmark (real texture, exact masks, a DAVIS layout the evaluation reads) and the
learning curve of a run's checkpoints beside random initialisation and raw pixels, its table and its figure."""

from __future__ import annotations

import hashlib
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

from ml.eval import run_evaluation, write_synthetic_davis
from ml.eval.benchmarks import DavisBenchmark
from ml.eval.cli import main
from ml.eval.correspondence import texture_clips, write_correspondence_benchmark
from ml.eval.curve import CURVE_COLUMNS, read_curve
from ml.eval.protocols import get_protocol
from ml.model import create_model
from ml.notebook.curves import plot_correspondence_curve
from ml.training.checkpoint import save_checkpoint
from ml.training.run import Run


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    return write_correspondence_benchmark(tmp_path_factory.mktemp("corr") / "b", sequences=2, frames=4,
                                          size=(96, 176))


def masks(root: Path, name: str) -> list[np.ndarray]:
    return [np.array(Image.open(p)) for p in sorted((root / "Annotations" / "480p" / name).glob("*.png"))]


def test_the_benchmark_is_a_davis_layout_of_moving_growing_ellipses(bench: Path, tmp_path: Path) -> None:
    names = (bench / "ImageSets" / "2017" / "val.txt").read_text().split()
    assert len(names) == 2
    DavisBenchmark(bench, get_protocol("crw", "davis")).check()  # the evaluation reads it as DAVIS
    for name in names:
        ids = masks(bench, name)
        assert len(ids) == 4 and len(list((bench / "JPEGImages" / "480p" / name).glob("*.jpg"))) == 4
        assert set(np.unique(ids[0])) == {0, 1, 2}
        top = [m == 2 for m in ids]  # drawn last: never occluded, so its mask is a whole ellipse
        for m in top:
            rows, cols = np.nonzero(m)
            box_ellipse = np.pi / 4 * (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
            assert m.sum() == pytest.approx(box_ellipse, rel=0.08)
        centres = [np.argwhere(m).mean(0) for m in top]
        assert np.abs(centres[-1] - centres[0]).max() > 3  # it moves
    again = write_correspondence_benchmark(tmp_path / "again", sequences=2, frames=4, size=(96, 176))
    for path in sorted(bench.rglob("*.*")):  # deterministic for a seed: the same bytes
        assert (again / path.relative_to(bench)).read_bytes() == path.read_bytes(), path


def test_held_out_textures_are_other_footage_and_bad_input_is_refused(tmp_path: Path, capsys) -> None:
    def digests(clips: list[Path]) -> set[str]:
        return {hashlib.sha1(p.read_bytes()).hexdigest() for p in clips}

    train, heldout = texture_clips("train"), texture_clips("heldout")
    assert train and heldout and not digests(train) & digests(heldout)
    assert not {p.stem for p in train} & {p.stem for p in heldout}
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    for args, message in ((["--textures", str(tmp_path / "none")], "not 'train', 'heldout'"),
                          (["--difficulty", "medium", "--frames", "1"], ">= 2 frames"),
                          (["--size", "16x16"], "at least 32 pixels")):
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            main(["make-benchmark", str(tmp_path / "new"), *args])
        assert not (tmp_path / "new").exists()
    with pytest.raises(FileExistsError, match="not empty"):
        main(["make-benchmark", str(tmp_path / "full")])


def test_raw_pixels_solve_coloured_discs_but_fall_short_on_the_benchmark(tmp_path: Path) -> None:
    scores = {}
    for name, write in (("discs", lambda root: write_synthetic_davis(root, 1, 5, (160, 288))),
                        ("benchmark", lambda root: write_correspondence_benchmark(root, 1, 5, (160, 288)))):
        scores[name] = run_evaluation("davis", write(tmp_path / name), tmp_path / f"out-{name}", "pixels",
                                      size="native", progress=False)["J&F-Mean"]
    assert scores["benchmark"] < 0.3 and scores["discs"] > scores["benchmark"] + 0.4, scores  # 0.10 vs 0.64


def two_checkpoint_run(root: Path) -> Run:
    """A run folder with checkpoints at epochs 1 and 2 (2 steps each) of two seeded tiny models."""
    run = Run(root, "tiny")
    for epoch in (1, 2):
        torch.manual_seed(epoch)
        model = create_model("siammae_tiny").eval()
        save_checkpoint({"model": model.state_dict(), "model_args": model.model_args,
                         "config": {"arch": "siammae_tiny"}, "epoch": epoch, "step": 2 * epoch}, run.checkpoint(epoch))
    return run


def test_the_curve_has_a_row_per_checkpoint_and_size_beside_the_flat_lines(bench: Path, tmp_path: Path,
                                                                           capsys) -> None:
    two_checkpoint_run(tmp_path / "run")
    out = tmp_path / "curve"
    rows = main(["curve", "--run", str(tmp_path / "run"), "--data", str(bench), "--sizes", "64", "96x176",
                 "--output", str(out)])["rows"]
    assert [(r["size"], r["encoder"], r["step"]) for r in rows] == [
        (size, encoder, step) for size in ("64", "96x176")
        for encoder, step in (("pixels", 0), ("random", 0), ("epoch", 2), ("epoch", 4))]
    assert all(0 <= r["J&F-Mean"] <= 1 for r in rows)
    assert rows[1]["J&F-Mean"] != rows[2]["J&F-Mean"]  # the checkpoint is evaluated, not the random init
    saved = read_curve(out / "curve.csv")
    assert [r["encoder"] for r in saved] == [r["encoder"] for r in rows] and list(saved[0]) == list(CURVE_COLUMNS)
    table = capsys.readouterr().out
    assert "| b | 96x176 |" in table and "step 4 (ep 2)" in table
    fig = plot_correspondence_curve(out / "curve.csv")
    (ax,) = fig.axes
    assert len(ax.lines) == 2 * 3  # per size: the trained curve, random, pixels
    assert list(ax.lines[0].get_xdata()) == [2, 4]
    plt.close(fig)
    with pytest.raises(FileNotFoundError, match="no numbered checkpoint"):
        main(["curve", "--run", str(tmp_path), "--data", str(bench), "--sizes", "64", "--output", str(out)])
