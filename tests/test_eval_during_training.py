"""Label propagation during training (--eval-every): the rows of evals.csv, their values, resume and rewind, the
TensorBoard scalar, the notebook's panel, and bad input refused before any epoch runs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from ml.eval import evaluation_hook, load_encoder, read_evals, run_evaluation, write_synthetic_davis  # noqa: E402
from ml.notebook.curves import plot_losses  # noqa: E402
from ml.train import main as train_cli  # noqa: E402
from ml.training import get_preset, train  # noqa: E402
from ml.training.run import Run  # noqa: E402
from tests.conftest import SAMPLE_DIR  # noqa: E402


@pytest.fixture(scope="module")
def davis(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two generated sequences of 6 frames in DAVIS's layout."""
    return write_synthetic_davis(tmp_path_factory.mktemp("davis"), num_sequences=2, num_frames=6)


def quick(out: Path, davis: Path, **changes) -> object:
    return get_preset("quick", data=str(SAMPLE_DIR), output_dir=str(out), device="cpu", eval_davis=str(davis),
                      **{"eval_every": 1, "eval_max_sequences": 1, **changes})


def train_with_evals(config, **kwargs):
    return train(config, after_epoch=evaluation_hook(config), progress=False, **kwargs)


def test_each_due_epoch_gets_one_row_equal_to_an_evaluation_of_its_checkpoint(tmp_path: Path, davis: Path) -> None:
    config = quick(tmp_path / "run", davis, tensorboard=True)
    train_with_evals(config, stop_after_epoch=1)
    train_with_evals(config, resume="auto")  # resumed: the start hook must not evaluate epoch 1 again
    run = Run.of(config)
    rows = read_evals(run.evals_csv)
    assert [(r["epoch"], r["benchmark"], r["protocol"]) for r in rows] == [(1, "davis", "crw"), (2, "davis", "crw")]
    assert sorted(p.name for p in run.evals_dir.glob("epoch-*")) == ["epoch-0001", "epoch-0002"]
    # the row is the evaluation of the encoder saved at that epoch, on the first sequence only
    encoder, _ = load_encoder(str(run.checkpoint(1)))
    again = run_evaluation("davis", davis, tmp_path / "again", encoder=encoder, sequences=["synthetic00"],
                           progress=False)
    assert rows[0]["J&F-Mean"] == pytest.approx(again["J&F-Mean"], abs=1e-6)
    assert rows[0]["J&F-Mean"] != rows[1]["J&F-Mean"] and rows[0]["seconds"] > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # only this test reads it

    events = EventAccumulator(str(run.tensorboard_dir))
    events.Reload()
    assert [(e.step, round(e.value, 5)) for e in events.Scalars("eval/davis_J&F")] == [
        (r["epoch"], round(r["J&F-Mean"], 5)) for r in rows]


def test_a_resumed_run_catches_up_on_a_missing_evaluation(tmp_path: Path, davis: Path) -> None:
    """Killed after saving epoch 1 but before its evaluation: the evaluation is done when the run starts again."""
    train(quick(tmp_path, davis, eval_every=0), stop_after_epoch=1, progress=False)
    config = quick(tmp_path, davis, eval_every=1)
    assert not Run.of(config).evals_csv.exists()
    train_with_evals(config, resume="auto")
    assert [r["epoch"] for r in read_evals(Run.of(config).evals_csv)] == [1, 2]


def test_rewinding_the_run_drops_the_later_rows_and_keeps_their_folders(tmp_path: Path, davis: Path) -> None:
    config = quick(tmp_path, davis)
    train_with_evals(config)
    run = Run.of(config)
    first = read_evals(run.evals_csv)
    train_with_evals(config, resume=str(run.checkpoint(1)))  # back to epoch 1, epoch 2 trained and evaluated again
    rows = read_evals(run.evals_csv)
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0] == first[0]
    assert len(list((run.evals_dir / "superseded").glob("epoch-0002-*"))) == 1


def test_the_notebook_loss_figure_gains_a_j_and_f_panel(tmp_path: Path, davis: Path) -> None:
    config = quick(tmp_path, davis, epochs=2)
    train_with_evals(config)
    fig = plot_losses(Run.of(config))
    panel = next(ax for ax in fig.axes if "J&F" in ax.get_ylabel())
    line = panel.get_lines()[0]
    assert list(line.get_xdata()) == [1, 2]
    assert list(line.get_ydata()) == [r["J&F-Mean"] for r in read_evals(Run.of(config).evals_csv)]
    plt.close(fig)


@pytest.mark.parametrize("davis_arg, message", [("missing", "no such folder"), ("empty", "not found")])
def test_a_bad_evaluation_folder_is_refused_before_any_epoch(tmp_path: Path, capsys, davis_arg: str,
                                                             message: str) -> None:
    folder = tmp_path / davis_arg
    if davis_arg == "empty":
        folder.mkdir()
    out = tmp_path / "out"
    code = train_cli(["--preset", "quick", "--data", str(SAMPLE_DIR), "--output", str(out), "--device", "cpu",
                      "--eval-every", "1", "--eval-davis", str(folder)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and message in err and len(err.splitlines()) == 1
    assert not out.exists()
    with pytest.raises(ValueError, match="eval_every needs the evaluation hook"):
        train(quick(out, folder))  # from Python, a run with eval_every needs the hook
