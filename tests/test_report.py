"""`python -m ml.report`: runs and evaluation folders, evaluated for real on generated DAVIS and VIP data, in one
table beside the published numbers; bad paths refused in one line before anything is written."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch

from ml.eval import run_evaluation, write_synthetic_davis
from ml.eval.report import COLUMNS, PUBLISHED, ReportError, cli, format_report, report, write_report
from ml.model import create_model
from ml.training.checkpoint import save_checkpoint
from ml.training.run import EVALS_COLUMNS, Run
from tests.conftest import native
from tests.test_evaluation import davis_to_vip


@pytest.fixture(scope="module")
def davis(tmp_path_factory) -> Path:
    return write_synthetic_davis(tmp_path_factory.mktemp("davis"), num_sequences=2, num_frames=6)


def tiny_run(root: Path, prefix: str = "tiny", epoch: int = 4) -> tuple[Run, torch.nn.Module]:
    """A run folder with one checkpoint of a freshly initialised tiny model, `epoch` epochs and 2 steps each."""
    torch.manual_seed(0)
    model = create_model("siammae_tiny").eval()
    run = Run(root, prefix)
    save_checkpoint({"model": model.state_dict(), "model_args": model.model_args, "config": {"arch": "siammae_tiny"},
                     "epoch": epoch, "step": 2 * epoch}, run.checkpoint(epoch))
    return run, model


def write_evals(run: Run, rows: list[tuple]) -> None:
    """evals.csv in its documented columns, by hand (what `--eval-every` appends during training)."""
    run.evals_dir.mkdir(parents=True, exist_ok=True)
    lines = [",".join(EVALS_COLUMNS)] + [",".join(str(v) for v in row) for row in rows]
    run.evals_csv.write_text("\n".join(lines) + "\n")


def test_a_run_reports_its_latest_evaluation_and_its_curve(davis: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run, model = tiny_run(out)
    result = run_evaluation("davis", davis, run.eval_dir(4), encoder=model.encoder, arch="siammae_tiny",
                            protocol=native("crw"), progress=False)
    write_evals(run, [(2, "davis", "crw", 0.25, 0.2, 0.3, 1.5),
                      (4, "davis", "crw", result["J&F-Mean"], result["J-Mean"], result["F-Mean"], 2.5)])
    csv_only = Run(out, "csv_only")  # evaluations without a checkpoint or a folder: the CSV's numbers
    write_evals(csv_only, [(1, "davis", "crw", 0.5, 0.4, 0.6, 1.0)])
    (out / "checkpoints" / "mae").mkdir()  # official MAE files live beside the runs: no run

    rows = report([out])
    assert [r["run"] for r in rows] == [f"csv_only ({out})", f"tiny ({out})"]
    assert report([run.checkpoint_dir]) == report([run.evals_dir]) == [rows[1]]
    only, tiny = rows
    assert (only["arch"], only["epochs"], only["davis_J&F"], only["davis_protocol"]) == (None, None, 50.0, "crw")
    assert (tiny["arch"], tiny["epochs"], tiny["steps"], tiny["davis_sequences"]) == ("siammae_tiny", 4, 8, 2)
    assert tiny["davis_protocol"] == "crw*" and "size=None, size_rule=native" in tiny["notes"][0]  # changed, said
    for key, name in (("davis_J&F", "J&F-Mean"), ("davis_J", "J-Mean"), ("davis_F", "F-Mean")):
        assert tiny[key] == pytest.approx(100 * result[name], abs=0.05)  # global_results: 3 decimals
    assert [e["epoch"] for e in tiny["curve"]] == [2, 4]

    text = format_report(rows)
    line = next(row for row in text.splitlines() if row.startswith(f"| tiny ({out})"))
    assert line.endswith(f"| {100 * result['J&F-Mean']:.1f} ({100 * result['J-Mean']:.1f} / "
                         f"{100 * result['F-Mean']:.1f}) | not run | not run |")
    assert "| published: SiamMAE paper (Gupta et al. 2023, Table 1) | ViT-S/16 | — | paper's (CRW family) | 62.0 | " \
           "37.3 | 47.0 / 76.1 |" in text
    assert "| 57.9 | 33.2 | 46.1 / — |" in text
    assert f"## DAVIS J&F by epoch: tiny ({out})" in text and "| 2 | crw | 25.0 | 20.0 | 30.0 | 1.5 |" in text


def test_evaluation_folders_of_one_model_make_one_row(davis: Path, tmp_path: Path) -> None:
    vip = davis_to_vip(davis, tmp_path / "VIP")
    folders = {name: tmp_path / name for name in ("davis_crw", "vip_crw", "davis_dino")}
    davis_crw = run_evaluation("davis", davis, folders["davis_crw"], "pixels", protocol=native("crw"), progress=False)
    vip_crw = run_evaluation("vip", vip, folders["vip_crw"], "pixels", protocol=native("crw", "vip"), progress=False)
    run_evaluation("davis", davis, folders["davis_dino"], "pixels", protocol=native("dino"), progress=False)
    rows = report(list(folders.values()))
    assert len(rows) == 2  # DAVIS and VIP of the same weights together; DAVIS under another protocol on its own
    both, dino = rows
    assert both["run"] == f"{folders['davis_crw']}, {folders['vip_crw']}" and both["arch"] == "pixels"
    assert both["vip_mIoU"] == pytest.approx(100 * vip_crw["mIoU"], abs=0.05)
    assert both["davis_J&F"] == pytest.approx(100 * davis_crw["J&F-Mean"], abs=0.05)
    assert (dino["davis_protocol"], dino.get("vip_protocol")) == ("dino*", None)
    shutil.rmtree(folders["davis_crw"] / "sequences")  # an interrupted evaluation: no global results yet
    (folders["davis_crw"] / "global_results-val.csv").unlink()
    incomplete = report([folders["davis_crw"]])[0]
    assert "| incomplete |" in format_report([incomplete]) and "davis incomplete" in incomplete["notes"][-1]


def test_the_command_line_prints_and_writes_both_files(davis: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "eval"
    run_evaluation("davis", davis, folder, "random", "siammae_tiny", protocol=native("crw"), progress=False)
    capsys.readouterr()
    cli([str(folder), "--output", str(tmp_path / "report")])
    printed = capsys.readouterr().out
    md = (tmp_path / "report" / "report.md").read_text()
    assert printed.startswith(md) and "| siammae_tiny | 0 | crw* |" in md  # the random init: 0 epochs
    with open(tmp_path / "report" / "report.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == COLUMNS and len(table) == 1 + len(PUBLISHED)
    assert [r["kind"] for r in table] == ["evaluation", "published", "published"]
    assert float(table[0]["davis_J&F"]) == pytest.approx(report([folder])[0]["davis_J&F"], abs=1e-4)
    assert (table[1]["davis_J&F"], table[1]["jhmdb_PCK@0.2"], table[2]["jhmdb_PCK@0.2"]) == ("62.0", "76.1", "")


def bad_inputs(davis: Path, tmp_path: Path, out: Path) -> dict[str, tuple[list[str], str]]:
    """Each bad command line: (its arguments, what its one-line error says)."""
    no_record = tmp_path / "no_record"
    run_evaluation("davis", davis, no_record, "pixels", protocol=native("crw"), progress=False)
    (no_record / "run.json").unlink()
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "not_a_record").mkdir()
    (tmp_path / "not_a_record" / "run.json").write_text('{"files": {}}')
    (tmp_path / "out" / "checkpoints" / "nothing").mkdir(parents=True)
    good = str(tiny_run(tmp_path / "good")[0].checkpoint_dir)
    return {
        "missing": ([str(tmp_path / "nowhere")], "does not exist"),
        "a file": ([str(tmp_path / "a_file")], "is a file, not a run folder"),
        "neither": ([str(tmp_path / "empty")], "is neither a run folder"),
        "no run.json": ([str(no_record)], "holds no run.json"),
        "another run.json": ([str(tmp_path / "not_a_record")], "is not an evaluation record"),
        "empty run": ([str(tmp_path / "out" / "checkpoints" / "nothing")], "has no checkpoint and no evaluations"),
        "good, then bad": ([good, str(tmp_path / "empty")], "is neither a run folder"),
        "output is a file": ([good, "--output", str(tmp_path / "a_file")], "is a file"),
    }


def test_bad_input_is_one_line_and_nothing_is_written(davis: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    for name, (args, says) in bad_inputs(davis, tmp_path, out).items():
        with pytest.raises(SystemExit) as exit_:
            cli(args if "--output" in args else [*args, "--output", str(out)])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("\n") == 1 and err.startswith("python -m ml.report: error: "), name
        assert says in err, (name, err)
        assert not out.exists(), name
    assert (tmp_path / "a_file").read_text() == "x"
    with pytest.raises(ReportError, match="is a file"):
        write_report([], tmp_path / "a_file")
