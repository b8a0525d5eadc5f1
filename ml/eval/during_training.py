"""Label propagation during training (`--eval-every K --eval-davis DIR`): is correspondence improving, without
waiting for the last epoch?

    model = train(config, after_epoch=evaluation_hook(config))    # what `python -m ml.train` does

Every K epochs and after the last, on the main process, a frozen copy of the encoder propagates the masks of
`eval_davis` (first `eval_max_sequences` sequences) with the default protocol into evals/<prefix>/epoch-<E>/ (a
normal evaluation folder), appends a row to evals/<prefix>/evals.csv and logs `eval/davis_J&F` to TensorBoard.
Resume-safe: when a run starts again, an evaluation its checkpoint's epoch was due and lacks is done first, and
rows of epochs past that checkpoint (a rewound history) leave the CSV, their folders moved to superseded/.
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from ml.eval.benchmarks import DEFAULT_PROTOCOL, DavisBenchmark
from ml.eval.cli import run_evaluation
from ml.eval.protocols import get_protocol
from ml.eval.store import read_csv, write_csv
from ml.training.config import TrainConfig
from ml.training.distributed import print_main
from ml.training.engine import EpochEnd
from ml.training.run import EVALS_COLUMNS

BENCHMARK = "davis"


def read_evals(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of an evals.csv in file order (epoch an int, scores and seconds floats), [] when there is none;
    a line cut short by a crash is skipped (that evaluation is done again when due). ValueError for a file
    without the columns."""
    if not Path(path).is_file():
        return []
    rows = []
    for row in read_csv(path, EVALS_COLUMNS):
        try:
            rows.append({"epoch": int(row["epoch"]), "benchmark": row["benchmark"], "protocol": row["protocol"],
                         **{k: float(row[k]) for k in EVALS_COLUMNS[3:]}})
        except (TypeError, ValueError):
            continue
    return rows


def write_evals(path: Path, rows: list[dict[str, Any]]) -> None:
    """evals.csv rewritten whole and atomically (a crash leaves the old or the new file, never half of one)."""
    write_csv(path, sorted(rows, key=lambda r: (r["epoch"], r["benchmark"])), digits=6, columns=EVALS_COLUMNS)


class DavisDuringTraining:
    """The after-epoch hook of `eval_every`: checks the DAVIS folder when built, before any epoch runs."""

    def __init__(self, config: TrainConfig) -> None:
        self.every, self.root = config.eval_every, Path(config.eval_davis)
        if not self.root.is_dir():
            raise FileNotFoundError(f"eval_davis {self.root}: no such folder (a DAVIS-2017 layout: JPEGImages/480p, "
                                    "Annotations/480p, ImageSets/2017/val.txt)")
        self.protocol = get_protocol(DEFAULT_PROTOCOL, BENCHMARK)
        everything = DavisBenchmark(self.root, self.protocol)  # FileNotFoundError / ValueError naming what is missing
        self.sequences = [v.name for v in everything.videos][:config.eval_max_sequences]
        # every annotation readable and consistent: refused now, not after epoch K
        DavisBenchmark(self.root, self.protocol, sequences=self.sequences).check()

    def due(self, epoch: int, epochs: int) -> bool:
        return epoch > 0 and (epoch % self.every == 0 or epoch == epochs)

    def __call__(self, end: EpochEnd) -> None:
        run, rows = end.run, read_evals(end.run.evals_csv)
        if end.resumed:
            rows = self._forget_after(run, rows, end.epoch)
        if self.due(end.epoch, end.config.epochs) and not any(r["epoch"] == end.epoch for r in rows):
            rows.append(self.evaluate(end))
            write_evals(run.evals_csv, rows)

    def _forget_after(self, run: Any, rows: list[dict[str, Any]], epoch: int) -> list[dict[str, Any]]:
        """Rows and folders of epochs after `epoch` belong to a history the run has left: out of the CSV, folders
        moved to superseded/ (kept, not deleted)."""
        folders = {int(p.name[len("epoch-"):]) for p in run.evals_dir.glob("epoch-*") if p.name[6:].isdigit()}
        later = sorted(e for e in folders | {r["epoch"] for r in rows} if e > epoch)
        for e in later:
            folder = run.eval_dir(e)
            if folder.exists():
                target = run.evals_dir / "superseded" / f"{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(folder), str(target))
        kept = [r for r in rows if r["epoch"] <= epoch]
        if len(kept) != len(rows):
            write_evals(run.evals_csv, kept)
        return kept

    def evaluate(self, end: EpochEnd) -> dict[str, Any]:
        """One evaluation of the encoder after epoch `end.epoch`: its row of evals.csv."""
        encoder = copy.deepcopy(end.module.encoder).eval()  # frozen: training's weights are never touched
        start = time.perf_counter()
        with torch.no_grad():
            result = run_evaluation(BENCHMARK, self.root, end.run.eval_dir(end.epoch), encoder=encoder,
                                    arch=end.config.arch, protocol=self.protocol, device=end.device,
                                    sequences=self.sequences, progress=False)
        seconds = time.perf_counter() - start
        del encoder
        row = {"epoch": end.epoch, "benchmark": BENCHMARK, "protocol": self.protocol.name,
               "J&F-Mean": float(result["J&F-Mean"]), "J-Mean": float(result["J-Mean"]),
               "F-Mean": float(result["F-Mean"]), "seconds": seconds}
        end.log_scalar("eval/davis_J&F", row["J&F-Mean"], end.epoch)
        print_main(f"epoch {end.epoch}: DAVIS J&F {row['J&F-Mean']:.3f} (J {row['J-Mean']:.3f}, F {row['F-Mean']:.3f})"
                   f" on {len(self.sequences)} sequence(s) of {self.root}, protocol {self.protocol.name}, "
                   f"{seconds:.1f} s -> {end.run.evals_csv}")
        return row


def evaluation_hook(config: TrainConfig) -> DavisDuringTraining | None:
    """The hook `train(config, after_epoch=...)` needs for `config.eval_every` (None when it is 0)."""
    return DavisDuringTraining(config) if config.eval_every else None
