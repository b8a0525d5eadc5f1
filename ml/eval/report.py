"""One table of label-propagation results: training runs and evaluation folders beside the published numbers.

    rows = report(["runs/checkpoints/paper_vit_s16_400", "outputs/eval/davis"])   # one row per run / model
    write_report(rows, "outputs/report")                                        # report.md and report.csv
    python -m ml.report runs outputs/eval/davis outputs/eval/vip --output outputs/report

A path is a run (`<output>/checkpoints/<prefix>`, `<output>/evals/<prefix>`, or an output folder holding one run or
more) or an evaluation folder (what `python -m ml.evaluate --output` writes: run.json and global_results*.csv). A
run's numbers are the latest epoch's of each benchmark in evals/<prefix>/evals.csv (`--eval-every`), with the
full results of that epoch's folder when it is there, and its learning curve; evaluation folders of the same
weights (run.json's `weights_sha1`) make one row. Every number is a percentage and carries its protocol.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mae.pretrained import CheckpointError
from ml.eval.during_training import read_evals
from ml.eval.protocols import get_protocol
from ml.files import atomic_file, unwritable_reason
from ml.model import SIAMMAE_PRESETS
from ml.training.checkpoint import checkpoints_in, read_checkpoint_meta
from ml.training.run import Run

# each benchmark's numbers: (column of the report, key in the evaluation's global results)
SCORES = {"davis": (("davis_J&F", "J&F-Mean"), ("davis_J", "J-Mean"), ("davis_F", "F-Mean")),
          "vip": (("vip_mIoU", "mIoU"),),
          "jhmdb": (("jhmdb_PCK@0.1", "PCK@0.1"), ("jhmdb_PCK@0.2", "PCK@0.2"))}
COLUMNS = ("run", "kind", "arch", "epochs", "steps", "evaluated_epoch",
           "davis_protocol", "davis_J&F", "davis_J", "davis_F", "davis_sequences", "vip_protocol", "vip_mIoU",
           "jhmdb_protocol", "jhmdb_PCK@0.1", "jhmdb_PCK@0.2", "notes", "source")
NOT_RUN, UNKNOWN = "not run", "—"
# what the paper's numbers were measured with: the CRW family's label propagation (`crw` reproduces CropMAE's copy
# of that code; the paper's VIP radius is 8, CropMAE's 20)
PAPER_PROTOCOL, CROPMAE_PROTOCOL = "paper's (CRW family)", "CropMAE's CRW copy (crw, VIP radius 20)"
PUBLISHED: tuple[dict[str, Any], ...] = (
    {"run": "published: SiamMAE paper (Gupta et al. 2023, Table 1)", "kind": "published", "arch": "ViT-S/16",
     "davis_protocol": PAPER_PROTOCOL, "davis_J&F": 62.0, "vip_protocol": PAPER_PROTOCOL, "vip_mIoU": 37.3,
     "jhmdb_protocol": PAPER_PROTOCOL, "jhmdb_PCK@0.1": 47.0, "jhmdb_PCK@0.2": 76.1,
     "notes": "J and F: not transcribed here", "source": "arXiv:2305.14344"},
    {"run": "published: SiamMAE re-run by CropMAE (Eymaël et al. 2024)", "kind": "published", "arch": "ViT-S/16",
     "davis_protocol": CROPMAE_PROTOCOL, "davis_J&F": 57.9, "vip_protocol": CROPMAE_PROTOCOL, "vip_mIoU": 33.2,
     "jhmdb_protocol": CROPMAE_PROTOCOL, "jhmdb_PCK@0.1": 46.1,
     "notes": "PCK@0.2: not transcribed here", "source": "arXiv:2403.17823"},
)
EVAL_FOLDER = re.compile(r"^epoch-(\d+)$")


class ReportError(ValueError):
    """A path that is neither a run nor an evaluation folder, or one that holds nothing to report."""


# ---------------------------------------------------------------- what a path is
def classify(path: str | os.PathLike) -> list[Run | Path]:
    """The runs (Run) and evaluation folders (Path) a path names; ReportError (one line) when it names none."""
    p = Path(path)
    if not p.exists():
        raise ReportError(f"{p} does not exist")
    if not p.is_dir():
        raise ReportError(f"{p} is a file, not a run folder or an evaluation folder")
    if (p / "run.json").is_file():
        return [p]
    if p.parent.name in ("checkpoints", "evals"):
        run = Run(p.parent.parent, p.name)
        if not _has_results(run):
            raise ReportError(f"run {p.name} under {run.root} has no checkpoint and no evaluations (looked in "
                              f"{run.checkpoint_dir} and {run.evals_csv})")
        return [run]
    names = sorted({d.name for sub in ("checkpoints", "evals") if (p / sub).is_dir()
                    for d in (p / sub).iterdir() if d.is_dir()})
    runs = [run for run in (Run(p, name) for name in names) if _has_results(run)]
    if runs:
        return runs
    if any(p.glob("global_results*.csv")) or (p / "sequences").is_dir() or (p / "masks").is_dir():
        raise ReportError(f"{p} looks like an evaluation folder but holds no run.json (what was evaluated is "
                          f"unknown): evaluate again into an empty --output")
    raise ReportError(f"{p} is neither a run folder (checkpoints/<prefix>/, evals/<prefix>/ or a folder holding them) "
                      f"nor an evaluation folder (run.json)")


def _has_results(run: Run) -> bool:
    return bool(run.checkpoints()) or run.evals_csv.is_file()


# ---------------------------------------------------------------- reading
def read_evals_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a run's evals.csv (`ml.eval.during_training.read_evals`), a bad header as a ReportError."""
    try:
        return read_evals(path)
    except ValueError as err:
        raise ReportError(str(err)) from None


def read_record(folder: Path) -> dict[str, Any]:
    """run.json's record of an evaluation folder; ReportError when it is not one."""
    try:
        record = json.loads((folder / "run.json").read_text())["record"]
        complete = isinstance(record["dataset"], str) and isinstance(record["protocol"]["name"], str)
    except (ValueError, KeyError, TypeError) as err:
        complete, record = False, {"error": err}
    if not complete:
        raise ReportError(f"{folder / 'run.json'} is not an evaluation record of this project (it needs record."
                          f"dataset and record.protocol.name)")
    return record


def evaluation_results(folder: Path) -> dict[str, Any]:
    """The report columns of one evaluation folder: its benchmark's protocol and numbers (percent), and notes."""
    record = read_record(folder)
    dataset, protocol = record["dataset"], record["protocol"]
    if dataset not in SCORES:
        raise ReportError(f"{folder / 'run.json'}: unknown benchmark {dataset!r}")
    files = json.loads((folder / "run.json").read_text()).get("files") or {}
    changed = _protocol_changes(dataset, protocol)
    row: dict[str, Any] = {f"{dataset}_protocol": protocol["name"] + ("*" if changed else "")}
    notes = [f"{dataset} protocol {protocol['name']} with {changed}"] if changed else []
    summary = folder / (f"global_results-{record.get('split', 'val')}.csv" if dataset == "davis" else
                        "global_results.csv")
    if not summary.is_file():
        notes.append(f"{dataset} incomplete ({len(files)} video(s) finished in {folder})")
        return {**row, "notes": notes}
    with open(summary, newline="") as f:
        numbers = next(csv.DictReader(f))
    for column, key in SCORES[dataset]:
        row[column] = 100 * float(numbers[key])
    if dataset == "davis":
        row["davis_sequences"] = len(files)
    return {**row, "notes": notes}


def _protocol_changes(dataset: str, protocol: dict[str, Any]) -> str:
    """'field=value, ...' where a recorded protocol differs from the named one ('' when it is the named one)."""
    try:
        named = json.loads(json.dumps(get_protocol(protocol["name"], dataset).to_dict()))
    except ValueError:
        return "fields of its own"
    return ", ".join(f"{k}={protocol.get(k)}" for k in sorted(named) if protocol.get(k) != named[k])


def describe_model(record: dict[str, Any], folder: Path) -> dict[str, Any]:
    """arch, epochs and steps of the model an evaluation folder evaluated, as far as its record tells."""
    model = str(record.get("model", ""))
    if EVAL_FOLDER.match(folder.name) and folder.parent.parent.name == "evals":  # evals/<prefix>/epoch-<E>
        run = Run(folder.parent.parent.parent, folder.parent.name)
        meta = _latest_meta(run)
        return {"arch": (meta.get("config") or {}).get("arch", model), "epochs": int(folder.name[6:])}
    if model.startswith("random:"):  # random:<arch>:seed<N>
        return {"arch": model.split(":")[1], "epochs": 0}
    if model in SIAMMAE_PRESETS or model == "pixels":
        return {"arch": model}
    return _checkpoint_model(model.split(" (")[0]) or {"arch": model}


def _checkpoint_model(spec: str) -> dict[str, Any] | None:
    """arch, epochs and steps of the checkpoint (file or run folder) an evaluation names, if it is still there."""
    path = Path(spec)
    found = checkpoints_in(path) if path.is_dir() else []
    try:
        meta = read_checkpoint_meta(found[-1][1] if found else path)
    except CheckpointError:  # not there any more, or not one of this project's
        return None
    return {"arch": (meta.get("config") or {}).get("arch"), "epochs": meta.get("epoch"), "steps": meta.get("step")}


def _latest_meta(run: Run) -> dict[str, Any]:
    """The newest readable checkpoint's entries ({} when the run has none)."""
    latest = run.latest_checkpoint()
    return read_checkpoint_meta(latest) if latest is not None else {}


# ---------------------------------------------------------------- rows
def run_row(run: Run) -> dict[str, Any]:
    """A run's row: arch, epochs and steps of its newest checkpoint; each benchmark's numbers at the latest epoch
    evals.csv has for it (the epoch's evaluation folder when there, else the CSV's DAVIS columns); its curve."""
    meta = _latest_meta(run)
    row: dict[str, Any] = {"run": f"{run.prefix} ({run.root})", "kind": "run", "source": str(run.checkpoint_dir),
                           "arch": (meta.get("config") or {}).get("arch"), "epochs": meta.get("epoch"),
                           "steps": meta.get("step"), "notes": [], "curve": []}
    evals = read_evals_csv(run.evals_csv) if run.evals_csv.is_file() else []
    latest: dict[str, dict[str, Any]] = {}
    for e in evals:  # the last row of the highest epoch per benchmark (a redone evaluation replaces the earlier)
        if e["benchmark"] in SCORES and e["epoch"] >= latest.get(e["benchmark"], {"epoch": -1})["epoch"]:
            latest[e["benchmark"]] = e
    for benchmark, e in sorted(latest.items()):
        folder = run.eval_dir(e["epoch"])
        if (folder / "run.json").is_file() and read_record(folder)["dataset"] == benchmark:
            found = evaluation_results(folder)
            row["notes"] += found.pop("notes")
            row.update(found)
        else:
            row[f"{benchmark}_protocol"] = e["protocol"]
            for column, key in SCORES[benchmark]:
                row[column] = 100 * e[key] if e.get(key) is not None else None
        row["evaluated_epoch"] = max(row.get("evaluated_epoch") or 0, e["epoch"])
        if e["epoch"] != row["epochs"]:
            row["notes"].append(f"{benchmark} evaluated at epoch {e['epoch']}")
    by_epoch = {e["epoch"]: e for e in evals if e["benchmark"] == "davis"}
    row["curve"] = [by_epoch[k] for k in sorted(by_epoch)]
    return row


def evaluation_row(folder: Path) -> dict[str, Any]:
    """An evaluation folder's row (one benchmark's numbers; the model as far as run.json tells)."""
    record = read_record(folder)
    return {"run": str(folder), "kind": "evaluation", "source": str(folder), "weights_sha1": record.get("weights_sha1"),
            **describe_model(record, folder), **evaluation_results(folder)}


def report(paths: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """One row per run and per evaluated model of `paths` (the published rows are `PUBLISHED`).

    Every path is checked first: ReportError (one line) for one that is neither a run nor an evaluation folder, an
    evaluation folder without run.json, or a run with no checkpoint and no evaluations. Evaluation folders of the
    same weights make one row when their benchmarks differ.
    """
    sources = [source for path in paths for source in classify(path)]
    rows: list[dict[str, Any]] = []
    for source in sources:
        row = run_row(source) if isinstance(source, Run) else evaluation_row(source)
        same = [r for r in rows if _same_model(r, row)]
        if same:  # another benchmark of a model already in the table
            same[0].update({k: v for k, v in row.items() if k not in ("run", "source", "notes") and v is not None})
            same[0]["run"] += f", {row['run']}"
            same[0]["notes"] += row["notes"]
        else:
            rows.append(row)
    return rows


def _same_model(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether evaluation row `new` adds another benchmark to `old`: the same weights, none of the same benchmark."""
    benchmarks = [k for k in new if k.endswith("_protocol")]
    return (old["kind"] == new["kind"] == "evaluation" and bool(old["weights_sha1"])
            and old["weights_sha1"] == new["weights_sha1"] and not any(k in old for k in benchmarks))


# ---------------------------------------------------------------- writing
def _number(value: float | None) -> str:
    return UNKNOWN if value is None else f"{value:.1f}"


def _percent(fraction: float | None) -> str:
    return _number(None if fraction is None else 100 * fraction)


def _scores(row: dict[str, Any], benchmark: str) -> str:
    """A benchmark's cell: 'not run', 'incomplete', or its numbers ('J&F (J / F)', 'PCK@0.1 / PCK@0.2')."""
    if not row.get(f"{benchmark}_protocol"):
        return NOT_RUN
    values = [row.get(column) for column, _ in SCORES[benchmark]]
    if all(v is None for v in values):
        return "incomplete" if row["kind"] != "published" else UNKNOWN
    if benchmark == "davis":
        return _number(values[0]) + ("" if values[1] is None else f" ({_number(values[1])} / {_number(values[2])})")
    return " / ".join(_number(v) for v in values)


def _protocols(row: dict[str, Any]) -> str:
    """The row's protocol, or each benchmark's where they differ."""
    used = {b: row[f"{b}_protocol"] for b in SCORES if row.get(f"{b}_protocol")}
    if len(set(used.values())) == 1:
        return next(iter(used.values()))
    return ", ".join(f"{b}: {p}" for b, p in used.items()) or UNKNOWN


def format_report(rows: Sequence[dict[str, Any]], title: str = "# Label propagation: results") -> str:
    """The report as markdown: the table (our rows, then the published ones), its notes, each run's DAVIS curve
    (`title` '' leaves the heading out, as the model card of `python -m ml.export` does)."""
    lines = [title, ""] if title else []
    lines += ["| run | arch | epochs | protocol | DAVIS J&F (J / F) | VIP mIoU | JHMDB PCK@0.1 / @0.2 |",
             "|---|---|---|---|---|---|---|"]
    for row in [*rows, *PUBLISHED]:
        epochs = UNKNOWN if row.get("epochs") is None else str(row["epochs"])
        lines.append(f"| {row['run']} | {row.get('arch') or UNKNOWN} | {epochs} | {_protocols(row)} | "
                     f"{_scores(row, 'davis')} | {_scores(row, 'vip')} | {_scores(row, 'jhmdb')} |")
    lines += ["", "Numbers in %. A protocol with `*` had fields changed from the named one (see the notes); numbers "
              "compare across rows only under one protocol and on the same videos (DAVIS-2017 val: 30 sequences)."]
    notes = [(row["run"], [*row.get("notes", []), *([f"DAVIS on {row['davis_sequences']} sequence(s)"]
                                                     if row.get("davis_sequences") else [])]) for row in rows]
    notes += [(row["run"], [row["notes"]]) for row in PUBLISHED]
    lines += ["", *[f"- {run}: {'; '.join(n)}" for run, n in notes if n]]
    for row in rows:
        if row.get("curve"):
            lines += ["", f"{'##' if title else '###'} DAVIS J&F by epoch: {row['run']}", "",
                      "| epoch | protocol | J&F | J | F | seconds |", "|---|---|---|---|---|---|"]
            lines += [f"| {e['epoch']} | {e['protocol']} | {_percent(e['J&F-Mean'])} | {_percent(e['J-Mean'])} | "
                      f"{_percent(e['F-Mean'])} | {_number(e['seconds'])} |" for e in row["curve"]]
    return "\n".join(lines) + "\n"


def write_report(rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike = ".") -> tuple[Path, Path]:
    """report.md and report.csv (our rows, then the published ones) into `out_dir`, each written atomically."""
    out = Path(out_dir)
    reason = unwritable_reason(out)
    if reason:
        raise ReportError(f"--output {out} {reason}")
    with atomic_file(out / "report.md", "w") as f:
        f.write(format_report(rows))
    with atomic_file(out / "report.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in [*rows, *PUBLISHED]:
            notes = row.get("notes") or []
            writer.writerow({**{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()},
                             "notes": notes if isinstance(notes, str) else "; ".join(notes)})
    return out / "report.md", out / "report.csv"


# ---------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ml.report", description="A table of label-propagation results: runs "
                                "and evaluation folders beside the published SiamMAE numbers (report.md, report.csv).")
    p.add_argument("paths", nargs="+", metavar="PATH", help="a run (<output>/checkpoints/<prefix>, "
                   "<output>/evals/<prefix>, or an output folder holding runs) or an evaluation folder (run.json)")
    p.add_argument("--output", default=".", help="folder that receives report.md and report.csv (default: here)")
    return p


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Read every path (refusing bad ones before writing anything), print the report and write its two files."""
    a = build_parser().parse_args(argv)
    reason = unwritable_reason(Path(a.output))
    if reason:
        raise ReportError(f"--output {a.output} {reason}")
    rows = report(a.paths)
    print(format_report(rows), end="")
    md, table = write_report(rows, a.output)
    print(f"-> {md}, {table}")
    return rows


def cli(argv: Sequence[str] | None = None) -> None:
    """`python -m ml.report`: bad input is one line (exit 2, as argparse's own errors), not a traceback."""
    try:
        main(argv)
    except (ReportError, CheckpointError, OSError) as err:
        print(f"python -m ml.report: error: {str(err).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
