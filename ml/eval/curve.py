"""Does training improve correspondence? J&F of a run's numbered checkpoints against training steps, at several
encoder input sizes, on DAVIS-layout folders, with random initialisation and raw pixels as flat lines.

    python -m ml.evaluate curve --run outputs/demo/run --data outputs/corr ../shared/data/davis_mini \\
        --sizes 112 224 480x880 --output outputs/curve

Each evaluation is an ordinary evaluation folder (<output>/<data>/<size>/<encoder>/, so an interrupted curve
continues); the rows go to <output>/curve.csv and the table is printed (`curve_table`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ml.eval.store import read_csv, write_csv
from ml.training.checkpoint import checkpoints_in, read_checkpoint_meta

CURVE_COLUMNS = ("data", "size", "encoder", "epoch", "step", "J&F-Mean", "J-Mean", "F-Mean", "seconds")
BASELINES = ("pixels", "random")  # the flat lines: no training at all


def size_name(size: int | tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}" if isinstance(size, (tuple, list)) else str(size)


def run_checkpoints(run: str | os.PathLike) -> list[tuple[int, int, Path]]:
    """(epoch, step, file) of each numbered checkpoint of a run, oldest first: `run` is a checkpoint folder or a
    run folder with checkpoints/<prefix>/. FileNotFoundError when there is none."""
    run = Path(run)
    folders = [run, *sorted(p for p in (run / "checkpoints").glob("*") if p.is_dir())]
    for folder in folders:
        found = [(e, p) for e, p in checkpoints_in(folder) if p.name != "checkpoint-last.pth"]
        if found:
            return [(e, int(read_checkpoint_meta(p)["step"]), p) for e, p in found]
    raise FileNotFoundError(f"--run {run}: no numbered checkpoint-<epoch>.pth there or in its checkpoints/<prefix>/")


def learning_curve(run: str | os.PathLike, data: Sequence[str | os.PathLike], sizes: Sequence[int | tuple[int, int]],
                   output: str | os.PathLike, evaluate: Callable[..., dict[str, Any]], *,
                   every: int = 1, progress: bool = False) -> list[dict[str, Any]]:
    """Evaluate every `every`-th numbered checkpoint of `run` and the two baselines (random initialisation of the
    run's architecture, raw pixels) on each DAVIS-layout folder of `data` at each size; `evaluate` is
    `ml.eval.run_evaluation`. Writes <output>/curve.csv and returns its rows. Bad input is refused first."""
    if every < 1:
        raise ValueError(f"--every must be >= 1, got {every}")
    if not sizes:
        raise ValueError("--sizes: give at least one input size")
    missing = [str(d) for d in data if not Path(d).is_dir()]
    if not data or missing:
        raise FileNotFoundError(f"--data: no DAVIS-layout folder at {', '.join(missing) or '(none given)'}")
    checkpoints = run_checkpoints(run)
    checkpoints = [c for i, c in enumerate(checkpoints) if i % every == 0 or i == len(checkpoints) - 1]
    arch = read_checkpoint_meta(checkpoints[0][2])["config"]["arch"]
    encoders = [(b, 0, 0, b) for b in BASELINES] + [(f"epoch-{e:04d}", e, s, str(p)) for e, s, p in checkpoints]
    rows = []
    for folder in data:
        for size in sizes:
            for name, epoch, step, checkpoint in encoders:
                out = Path(output) / Path(folder).name / size_name(size) / name
                start = time.perf_counter()
                result = evaluate("davis", folder, out, checkpoint, arch if checkpoint != "pixels" else None,
                                  size=size, progress=progress)
                rows.append({"data": Path(folder).name, "size": size_name(size), "encoder": name.split("-")[0],
                             "epoch": epoch, "step": step, **{k: float(result[k]) for k in CURVE_COLUMNS[5:8]},
                             "seconds": time.perf_counter() - start})
    write_curve(Path(output) / "curve.csv", rows)
    print(curve_table(rows), flush=True)
    return rows


def write_curve(path: Path, rows: list[dict[str, Any]]) -> None:
    write_csv(path, rows, digits=4, columns=CURVE_COLUMNS)


def read_curve(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a curve.csv (epoch and step ints, scores floats); ValueError for a file without the columns."""
    return [{**row, "epoch": int(row["epoch"]), "step": int(row["step"]),
             **{k: float(row[k]) for k in CURVE_COLUMNS[5:]}} for row in read_csv(path, CURVE_COLUMNS)]


def curve_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: a line per (data, size), J&F of pixels, random init and each checkpoint (by step)."""
    steps = sorted({(r["step"], r["epoch"]) for r in rows if r["encoder"] == "epoch"})
    head = "| data | size | pixels | random | " + " | ".join(f"step {s} (ep {e})" for s, e in steps) + " |"
    lines = [head, "|---|---|---|---|" + "---|" * len(steps)]
    for key in dict.fromkeys((r["data"], r["size"]) for r in rows):
        mine = [r for r in rows if (r["data"], r["size"]) == key]
        score = {("epoch", r["step"]) if r["encoder"] == "epoch" else (r["encoder"], 0): r["J&F-Mean"] for r in mine}
        cells = [score.get((b, 0)) for b in BASELINES] + [score.get(("epoch", s)) for s, _ in steps]
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in cells) + " |")
    return "\n".join(lines)
