"""The notebook end to end (quick setting, headless, as `make demo` runs it) and the samples file."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from PIL import Image

from ml.notebook.demo import run_notebook
from ml.notebook.plots import DPI, PANEL_INCHES
from ml.notebook.samples import SamplesFileError, build_samples, frame_to_plain, load_samples, read_samples_file
from tests.conftest import REPO, SAMPLE_DIR

NOTEBOOK = REPO / "SiamMAE.ipynb"
FIGURES = ("pairs", "losses", "reconstructions", "reconstruction_untrained", "f1_ablation", "cross_attention",
           "attention", "label_propagation", "correspondence_curve")


# ---------------------------------------------------------------- the notebook
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    """The notebook executed in the quick setting into a temporary folder."""
    out = tmp_path_factory.mktemp("notebook")
    run_notebook(out, setting="quick", verbose=False)
    return out


def test_notebook_runs_end_to_end_in_the_quick_setting(quick_run: Path) -> None:
    nb = nbformat.read(quick_run / "SiamMAE.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    text = "\n".join(o.get("text", "") for c in code for o in c.outputs if o.output_type == "stream")
    assert "setting 'quick' -> preset 'quick'" in text
    assert "stopping after epoch 1" in text and "resumed run now at epoch 2 of 2" in text
    # the analyses ran on the trained model: the ablation table, the attention measure, three encoders propagated
    for condition in ("the true past frame", "a frame of another video", "a grey frame", "f2 itself"):
        assert f"| {condition} |" in text
    assert "trained   block 1 of" in text and "untrained block" in text
    assert all(f"{name} J&F" in text for name in ("trained     ", "random init ", "raw pixels  "))
    assert "protocol crw" in text
    # the training run's files are in the output folder, the logs continued without duplicates on resume
    run = quick_run / "run"
    assert (run / "checkpoints" / "quick" / "checkpoint-last.pth").is_file()
    train_lines = (run / "losses" / "quick.txt").read_text().splitlines()
    assert train_lines[0] == "# epoch step lr loss"
    assert [int(line.split()[1]) for line in train_lines[1:]] == list(range(len(train_lines) - 1))
    assert [line.split()[0] for line in (run / "test_losses" / "quick.txt").read_text().splitlines()[1:]] == ["1", "2"]


def test_notebook_writes_its_figures_as_real_pngs(quick_run: Path) -> None:
    for name in FIGURES:
        path = quick_run / f"{name}.png"
        assert path.is_file(), f"{name}.png was not written"
        with Image.open(path) as img:
            img.verify()  # a complete, uncorrupted PNG
        with Image.open(path) as img:
            assert img.format == "PNG"
            width, height = img.size
            assert width >= 2.5 * PANEL_INCHES * DPI and height >= PANEL_INCHES * DPI * 0.9, (name, img.size)
            colours = img.convert("RGB").getcolors(maxcolors=1 << 24)
            assert len(colours) > 50, f"{name}.png is nearly blank"
    with Image.open(quick_run / "reconstructions.png") as img:
        rows = len(load_samples(REPO / "samples.pickle"))
        assert img.size == (round(6 * PANEL_INCHES * DPI), img.size[1]) and img.size[1] >= rows * PANEL_INCHES * DPI


def test_committed_notebook_has_no_outputs_and_one_parameters_cell() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert "SIAMMAE_SETTING" in tagged[0].source
    assert NOTEBOOK.stat().st_size < 100_000


def test_a_failing_cell_is_named_and_what_ran_is_kept(tmp_path: Path) -> None:
    notebook = tmp_path / "failing.ipynb"
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import os, sys\nprint(os.environ['SIAMMAE_SETTING'], sys.executable)"),
        nbformat.v4.new_code_cell("raise ValueError('bad parameter')"),
        nbformat.v4.new_code_cell("print('never runs')"),
    ])
    nbformat.write(nb, notebook)
    with pytest.raises(RuntimeError, match="failed in code cell 2 of 3") as err:
        run_notebook(tmp_path / "out", setting="quick", notebook=notebook, verbose=False)
    assert "bad parameter" in str(err.value)
    executed = nbformat.read(tmp_path / "out" / "failing.ipynb", as_version=4)
    first = executed.cells[0].outputs[0]["text"].split()
    assert first == ["quick", sys.executable]  # the kernel runs on this interpreter, with the setting passed
    assert not executed.cells[2].outputs


def test_run_notebook_rejects_an_unknown_setting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown setting 'fast'"):
        run_notebook(tmp_path, setting="fast", verbose=False)
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- samples.pickle
class RunsCode:
    """Unpickling this object would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_samples_file_is_refused_without_running_code(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    content = {"format": "siammae-samples", "version": 2, "pairs": [RunsCode(marker)]}
    path = tmp_path / "samples.pickle"
    path.write_bytes(pickle.dumps(content))
    with pytest.raises(SamplesFileError, match="refused to load .*system"):
        load_samples(path)
    assert not marker.exists()
    # a torch tensor is not a plain value either
    path.write_bytes(pickle.dumps({"format": "siammae-samples", "version": 2, "pairs": [torch.zeros(2)]}))
    with pytest.raises(SamplesFileError, match="refused to load torch"):
        read_samples_file(path)


def test_samples_file_cannot_make_a_large_allocation(tmp_path: Path) -> None:
    """A few hundred bytes must not make the reader allocate gigabytes (an array's shape is checked against
    the bytes actually stored, and numpy's array rebuilding, which trusts the stated shape, is not allowed)."""
    path = tmp_path / "samples.pickle"
    # numpy's own pickle of an array: _reconstruct would allocate whatever shape the file states
    path.write_bytes(pickle.dumps({"format": "siammae-samples", "version": 2, "pairs": [np.zeros((2, 2))]}))
    with pytest.raises(SamplesFileError, match="refused to load numpy"):
        read_samples_file(path)
    huge = {"shape": [40000, 40000, 3], "rgb": b"\0" * 12}
    fake = {"shape": [2000, 2000, 3], "rgb": b"\0" * 12}  # 12 MB stated, 12 bytes stored
    for frame, message in ((huge, "shape must be"), (fake, "12 bytes for a frame of shape")):
        content = {"format": "siammae-samples", "version": 2, "pairs": [{"f1": frame, "f2": frame}]}
        path.write_bytes(pickle.dumps(content))
        assert path.stat().st_size < 400
        with pytest.raises(SamplesFileError, match=message):
            read_samples_file(path)


def test_samples_file_with_plain_values_but_wrong_layout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "samples.pickle"
    frame = frame_to_plain(np.zeros((8, 8, 3), np.uint8))
    cases = {
        "not a samples file": [1, 2, 3],
        "has version 1": {"format": "siammae-samples", "version": 1, "pairs": [{"f1": frame, "f2": frame}]},
        "holds no frame pairs": {"format": "siammae-samples", "version": 2, "pairs": []},
        "must be a dict with 'shape' and 'rgb'": {"format": "siammae-samples", "version": 2,
                                                  "pairs": [{"f1": [1, 2], "f2": frame}]},
        "differ in shape": {"format": "siammae-samples", "version": 2,
                            "pairs": [{"f1": frame, "f2": frame_to_plain(np.zeros((4, 8, 3), np.uint8))}]},
    }
    for message, content in cases.items():
        path.write_bytes(pickle.dumps(content, protocol=4))
        with pytest.raises(SamplesFileError, match=message):
            read_samples_file(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(SamplesFileError, match="not a readable samples file"):
        read_samples_file(path)
    with pytest.raises(FileNotFoundError, match="python -m ml.notebook.samples"):
        read_samples_file(tmp_path / "missing.pickle")


def test_samples_round_trip_and_the_committed_file_is_reproducible(tmp_path: Path) -> None:
    path = tmp_path / "samples.pickle"
    built = build_samples(SAMPLE_DIR, path)
    assert path.stat().st_size < 1_000_000
    read = read_samples_file(path)
    assert [p["split"] for p in read["pairs"]] == ["train", "train", "val", "val"]
    for a, b in zip(built["pairs"], read["pairs"]):
        assert a["f1"] == frame_to_plain(b["f1"]) and a["f2"] == frame_to_plain(b["f2"])
        assert b["f1"].shape == (112, 112, 3) and not np.array_equal(b["f1"], b["f2"])
        assert b["indices"][1] - b["indices"][0] == b["gap_frames"] > 0
    # load_samples gives the model's input: ImageNet-normalised tensors that map back to the stored pixels
    pair = load_samples(path)[0]
    mean, std = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1), torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)
    pixels = ((pair["f1"] * std + mean) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(pixels, read["pairs"][0]["f1"])
    # the shipped samples.pickle is exactly what the function builds
    shipped = read_samples_file(REPO / "samples.pickle")
    assert len(shipped["pairs"]) == len(read["pairs"])
    for a, b in zip(shipped["pairs"], read["pairs"]):
        assert a["video"] == b["video"] and a["indices"] == b["indices"]
        assert np.array_equal(a["f1"], b["f1"]) and np.array_equal(a["f2"], b["f2"]), \
            "samples.pickle is out of date: rebuild it with `python -m ml.notebook.samples`"
