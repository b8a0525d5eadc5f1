"""The folder of one training run, and the one place that reads and writes it.

    run = Run.of(config)                     # <output_dir>/checkpoints/<prefix>/, losses/, test_losses/
    with run.locked():                       # an OS lock: a second process on this run is refused
        start = run.resolve_resume("auto", config)
        run.open_logs(start)
        ...                                  # run.log_train(...), run.log_test(...)
        run.save(state, epoch, numbered=True)

Layout under `output_dir`, for a run named `prefix`:
    checkpoints/<prefix>/checkpoint-<epoch>.pth   every `num_epochs_per_save` epochs and the last one
    checkpoints/<prefix>/checkpoint-last.pth      after every epoch (a hard link to the numbered file when both)
    checkpoints/<prefix>/.lock                    held by the live run (its PID inside); dies with the process
    checkpoints/<prefix>/superseded-<time>/       what a rewound run replaced (later checkpoints, old logs)
    losses/<prefix>.txt                           '# epoch step lr loss', one line per iteration
    test_losses/<prefix>.txt                      '# epoch loss', one line per epoch
    tensorboard/<prefix>/                         TensorBoard events, with --tensorboard

What holds whatever instant the process dies (kill -9, a full disk, power loss after fsync):
- every file is written to a temporary name and renamed when complete; temporaries of dead
  processes are removed at the next start;
- a due checkpoint-<N>.pth is written before checkpoint-last.pth; a resume takes the newest epoch
  among both, so a kill between the two loses nothing;
- each checkpoint records how many log lines its history covers; a resume keeps those lines and
  appends after them, and only the first save of the resumed run rewrites the logs (and moves
  the checkpoints of a rewound history aside), so an interrupted rewind loses nothing.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import os
import shutil
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from mae.pretrained import CheckpointError
from ml.files import atomic_file, remove_temp_files, temp_name, unwritable_reason
from ml.training.checkpoint import (
    LAST_NAME,
    checkpoints_in,
    load_checkpoint,
    newest_valid_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
    say_skipped,
)
from ml.training.config import TrainConfig, recipe_differences

LOCK_NAME = ".lock"
TRAIN_LOG_HEADER = "# epoch step lr loss"
TEST_LOG_HEADER = "# epoch loss"
# evals/<prefix>/evals.csv: one row per evaluation during training (--eval-every), read by `python -m ml.report`
EVALS_COLUMNS = ("epoch", "benchmark", "protocol", "J&F-Mean", "J-Mean", "F-Mean", "seconds")


class RunError(RuntimeError):
    """A run folder that cannot be used: locked by another process, not writable, holding another run."""


class RunLockedError(RunError):
    """Another live process holds the run folder."""


class Run:
    """Paths, lock, checkpoints and loss logs of the run `prefix` under `output_dir`."""

    def __init__(self, output_dir: str | os.PathLike, prefix: str) -> None:
        self.root = Path(output_dir)
        self.prefix = prefix
        self.checkpoint_dir = self.root / "checkpoints" / prefix
        self.losses = self.root / "losses" / f"{prefix}.txt"
        self.test_losses = self.root / "test_losses" / f"{prefix}.txt"
        self.tensorboard_dir = self.root / "tensorboard" / prefix
        self.evals_dir = self.root / "evals" / prefix  # epoch-<E>/ evaluation folders and evals.csv
        self.evals_csv = self.evals_dir / "evals.csv"
        self._lock_file: IO | None = None
        self._logs: dict[str, _Log] = {}
        self._superseded: list[Path] = []  # checkpoints of a rewound history, moved aside at the first save
        self._resumed_epoch = 0

    @classmethod
    def of(cls, config: TrainConfig) -> Run:
        return cls(config.output_dir, config.prefix)

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint_dir / LAST_NAME

    def checkpoint(self, epoch: int) -> Path:
        return self.checkpoint_dir / f"checkpoint-{epoch}.pth"

    def eval_dir(self, epoch: int) -> Path:
        """The evaluation folder of the encoder after `epoch` (as `python -m ml.evaluate --output` writes one)."""
        return self.evals_dir / f"epoch-{epoch:04d}"

    def __repr__(self) -> str:
        return f"Run({str(self.root)!r}, {self.prefix!r})"

    # ------------------------------------------------------------- where it may write
    def check_writable(self) -> None:
        """RunError (one line) when the output folder is a file, or cannot be created or written, or when a folder
        stands where the run writes a file (a loss log, checkpoint-last.pth, the lock) or a file where it needs a
        folder: found before any work instead of after an epoch."""
        reason = unwritable_reason(self.root)
        if reason:
            raise RunError(f"output folder {self.root} {reason}: choose another --output")
        for folder in (self.checkpoint_dir, self.losses.parent, self.test_losses.parent):
            if folder.exists() and not folder.is_dir():
                raise RunError(f"{folder} is a file where the run needs a folder: move it away or choose another "
                               f"--output or --prefix")
        for path in (self.losses, self.test_losses, self.last_checkpoint, self.checkpoint_dir / LOCK_NAME):
            if path.is_dir():
                raise RunError(f"{path} is a folder where the run writes a file: move it away or choose another "
                               f"--output or --prefix")

    # ------------------------------------------------------------- the lock
    def acquire_lock(self) -> None:
        """Take the run's exclusive lock (an flock, released by the OS when the process dies).

        RunLockedError naming the holder's PID when another live process has it.
        """
        self.check_writable()
        try:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            f = open(self.checkpoint_dir / LOCK_NAME, "a+")
        except OSError as err:
            raise RunError(f"cannot create the run folder {self.checkpoint_dir}: {err.strerror}") from err
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise RunLockedError(f"run folder {self.checkpoint_dir} is in use by process {holder}: wait for it "
                                     f"to finish or stop it first") from None
            raise
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self._lock_file = f

    def release_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing the descriptor releases the flock
            self._lock_file = None

    @contextmanager
    def locked(self) -> Iterator[Run]:
        self.acquire_lock()
        try:
            yield self
        finally:
            self.close_logs()
            self.release_lock()

    def remove_temp_files(self) -> list[Path]:
        """Temporaries left by dead writers of this run's files (only while holding the lock)."""
        removed = remove_temp_files(self.checkpoint_dir)
        for log in (self.losses, self.test_losses):
            removed += remove_temp_files(log.parent, {log.name})
        return removed

    # ------------------------------------------------------------- checkpoints in the folder
    def checkpoints(self) -> list[tuple[int, Path]]:
        """Readable checkpoints of the folder as (epoch, path), oldest first."""
        return checkpoints_in(self.checkpoint_dir)

    def unreadable_checkpoints(self) -> list[Path]:
        readable = {p for _, p in self.checkpoints()}
        present = [p for p in self.checkpoint_dir.glob("checkpoint-*.pth")] if self.checkpoint_dir.is_dir() else []
        return sorted(p for p in present if p not in readable)

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint with the most epochs done (what `resume="auto"` continues from), None if none."""
        found = self.checkpoints()
        return found[-1][1] if found else None

    def newest_valid_checkpoint(self) -> Path | None:
        """The newest checkpoint that passes every check of `load_checkpoint` (checksum, finite weights)."""
        return newest_valid_checkpoint(self.checkpoint_dir)[0]

    # ------------------------------------------------------------- resuming
    def resolve_resume(self, resume: str | os.PathLike | None, config: TrainConfig, data_fingerprint: str | None = None,
                       allow_new_data: bool = False) -> Path | None:
        """The checkpoint to start from, or None for a fresh run; a clear error when the folder holds another run.

        `config` should be `resolved()` for the run's world size. resume=None: the folder must hold no
        checkpoint. "auto": the folder's latest checkpoint when its recipe matches. A path: that
        checkpoint; recipe differences are a warning (e.g. more epochs), a folder of another run an error.
        Other training videos (`data`) are a recipe change refused in both cases, unless they are the same
        files moved elsewhere (`data_fingerprint` equal to the stored one) or `allow_new_data`: then a warning
        names both.
        """
        latest = self.latest_checkpoint()
        if latest is None and self.unreadable_checkpoints():
            names = ", ".join(p.name for p in self.unreadable_checkpoints())
            raise CheckpointError(f"{self.checkpoint_dir} holds checkpoints ({names}) but none can be read: move "
                                  f"them away or choose another prefix or output folder")
        stored = dict(read_checkpoint_meta(latest).get("config") or {}) if latest else {}
        folder_differences = recipe_differences(stored, config.to_dict()) if latest else []
        if latest is not None and resume is not None:
            folder_differences = _accept_data_change(folder_differences, read_checkpoint_meta(latest), config,
                                                     data_fingerprint, allow_new_data)
        where = f"{self.checkpoint_dir} holds checkpoints of a different run ({'; '.join(folder_differences)})"
        if resume is None:
            if latest is None:
                return None
            if folder_differences:
                raise RunError(f"{where}: choose another prefix or output folder, or move them away")
            epoch = int(read_checkpoint_meta(latest)["epoch"])
            raise RunError(f"{self.checkpoint_dir} already holds this run's checkpoints (up to epoch {epoch}): pass "
                           f"resume='auto' (--resume auto) to continue it, or choose another prefix or output folder")
        if str(resume) == "auto":
            if latest is None:
                return None
            if any(d.startswith("data:") for d in folder_differences):
                raise RunError(f"{where}: pass --allow-new-data (allow_new_data=True) to continue on these videos; "
                               f"else choose another prefix or output folder")
            if folder_differences:
                raise RunError(f"{where}: to continue from {latest} with the new settings anyway, pass its path as "
                               f"resume; else choose another prefix or output folder")
            chosen, skipped = newest_valid_checkpoint(self.checkpoint_dir)
            say_skipped(skipped, chosen)
            if chosen is None:
                raise CheckpointError(f"{self.checkpoint_dir} holds no checkpoint that passes its checks "
                                      f"({'; '.join(skipped)}): move them away, or start again with another "
                                      f"prefix or output folder")
            return chosen
        path = Path(resume)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint to resume from, {path}, does not exist")
        try:
            load_checkpoint(path)
        except CheckpointError as err:
            good = newest_valid_checkpoint(path.parent)[0]
            advice = f"{good} passes its checks" if good else "no checkpoint beside it passes its checks"
            raise CheckpointError(f"{str(err).splitlines()[0]} ({advice})") from None
        inside = path.resolve().parent == self.checkpoint_dir.resolve()
        if folder_differences and not inside:
            raise RunError(f"{where}: resuming from {path} would overwrite them; choose another prefix or output "
                           f"folder")
        meta = read_checkpoint_meta(path)
        differences = recipe_differences(dict(meta.get("config") or {}), config.to_dict())
        differences = _accept_data_change(differences, meta, config, data_fingerprint, allow_new_data)
        if any(d.startswith("data:") for d in differences):
            raise RunError(f"{path} was trained on other videos ({_data_difference(differences)}): pass "
                           f"--allow-new-data to continue on these, or choose another prefix or output folder")
        if differences:
            warnings.warn(f"resuming from {path}, written with other settings: {'; '.join(differences)}",
                          stacklevel=2)
        return path

    # ------------------------------------------------------------- loss logs
    def open_logs(self, start: Path | None = None) -> None:
        """Open both logs for appending, as the continuation of checkpoint `start` (None: a fresh run).

        Nothing already in the files is removed now: the lines `start` covers are kept, and the first
        `save` rewrites each log as those lines followed by the new ones. Checkpoints of the folder
        with more epochs than `start` (a rewind) are moved aside at that same moment.
        """
        meta = read_checkpoint_meta(start) if start is not None else {}
        covered = dict(meta.get("log_lines") or {})
        self._resumed_epoch = int(meta.get("epoch", 0))
        inside = start is not None and start.resolve().parent == self.checkpoint_dir.resolve()
        self._superseded = [p for epoch, p in self.checkpoints() if epoch > self._resumed_epoch]
        for name, path, header in (("train", self.losses, TRAIN_LOG_HEADER), ("test", self.test_losses,
                                                                              TEST_LOG_HEADER)):
            self._logs[name] = _Log(path, header, int(covered.get(name, 0)), warn_short=inside)

    def log_train(self, epoch: int, step: int, lr: float, loss: float) -> None:
        self._logs["train"].write(f"{epoch} {step} {lr:.9g} {loss:.9g}")

    def log_test(self, epoch: int, loss: float) -> None:
        self._logs["test"].write(f"{epoch} {loss:.9g}")

    def close_logs(self) -> None:
        for log in self._logs.values():
            log.close()
        self._logs = {}

    # ------------------------------------------------------------- saving
    def save(self, state: dict[str, Any], epoch: int, numbered: bool) -> Path:
        """Write the checkpoint of `epoch` (epochs done): checkpoint-<epoch>.pth when `numbered`, then
        checkpoint-last.pth. Returns the path written last.

        The first save after `open_logs` also moves the checkpoints of a rewound history aside and
        rewrites the logs to the lines this history covers. The logs reach the disk before the
        checkpoint that counts their lines.
        """
        if self._superseded:
            self._move_superseded()
        counts = {}
        for name, log in self._logs.items():
            counts[name] = log.commit()
        state = {**state, "log_lines": counts}
        if numbered:
            target = save_checkpoint(state, self.checkpoint(epoch))
            tmp = temp_name(self.last_checkpoint)
            try:
                os.link(target, tmp)  # the same file under two names: no second write
            except OSError:
                shutil.copyfile(target, tmp)
            os.replace(tmp, self.last_checkpoint)
            return self.last_checkpoint
        return save_checkpoint(state, self.last_checkpoint)

    def _move_superseded(self) -> None:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
        folder = self.checkpoint_dir / f"superseded-{stamp}-after-epoch-{self._resumed_epoch}"
        folder.mkdir(parents=True, exist_ok=True)
        for log in (self.losses, self.test_losses):  # the whole old history, as it was
            if log.is_file():
                shutil.copy2(log, folder / f"{log.parent.name}-{log.name}")
        for path in self._superseded:
            if path.exists():
                os.replace(path, folder / path.name)
        warnings.warn(f"{len(self._superseded)} checkpoint(s) of the history after epoch {self._resumed_epoch} "
                      f"were moved to {folder}", stacklevel=3)
        self._superseded = []

    # ------------------------------------------------------------- reading
    def read_train_log(self) -> dict[str, np.ndarray]:
        return read_log(self.losses)

    def read_test_log(self) -> dict[str, np.ndarray]:
        return read_log(self.test_losses)


def _data_difference(differences: list[str]) -> str:
    return next(d for d in differences if d.startswith("data:"))


def _accept_data_change(differences: list[str], meta: dict[str, Any], config: TrainConfig,
                        data_fingerprint: str | None, allow_new_data: bool) -> list[str]:
    """`differences` without the change of `data` when it may pass (with a warning naming both): the same files
    moved elsewhere (their fingerprint is the stored one), or other videos asked for with `allow_new_data`."""
    if not any(d.startswith("data:") for d in differences):
        return differences
    stored = (meta.get("config") or {}).get("data")
    if data_fingerprint is not None and meta.get("data_fingerprint") == data_fingerprint:
        warnings.warn(f"the training videos moved: {stored} -> {config.data} (the same files), continuing",
                      stacklevel=4)
    elif allow_new_data:
        warnings.warn(f"continuing on other training videos, as asked (--allow-new-data): {stored} -> "
                      f"{config.data}", stacklevel=4)
    else:
        return differences
    return [d for d in differences if not d.startswith("data:")]


class _Log:
    """One loss log: appended line by line, rewritten once (at the first commit) to the covered lines + new ones."""

    def __init__(self, path: Path, header: str, covered: int, warn_short: bool) -> None:
        self.path = path
        self.header = header
        self.covered = covered
        path.parent.mkdir(parents=True, exist_ok=True)
        existing = path.read_bytes() if path.is_file() else b""
        lines = _data_lines(existing.decode(errors="replace"))
        if len(lines) < covered and warn_short:
            warnings.warn(f"{path} holds {len(lines)} of the {covered} lines its checkpoint covers (was it edited?)",
                          stacklevel=3)
        self.covered = min(covered, len(lines))
        # rewrite at the first commit unless the file is exactly header + the covered lines
        self.needs_rewrite = not existing.startswith((header + "\n").encode()) or len(lines) != self.covered
        self.file = open(path, "a", buffering=1)  # line-buffered: each line reaches the OS as it is written
        if existing and not existing.endswith(b"\n"):
            self.file.write("\n")  # a line cut short by a crash stays a line of its own, never joined to the next
        elif not existing:
            self.file.write(header + "\n")
            self.needs_rewrite = False
        self.start = self.file.tell()
        self.new = 0

    def write(self, line: str) -> None:
        self.file.write(line + "\n")
        self.new += 1

    def commit(self) -> int:
        """Make the file exactly header + covered lines + new lines, on disk; return its number of lines."""
        self.file.flush()
        if self.needs_rewrite:
            data = self.path.read_bytes()
            kept = _data_lines(data.decode(errors="replace"))[: self.covered]
            new = data[self.start:].decode(errors="replace").splitlines()
            self.file.close()
            with atomic_file(self.path, "w") as f:
                f.write("\n".join([self.header, *kept, *new]) + "\n")
            self.file = open(self.path, "a", buffering=1)
            self.needs_rewrite = False
        else:
            os.fsync(self.file.fileno())
        self.covered += self.new
        self.new = 0
        self.start = self.file.tell()
        return self.covered

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()


def _data_lines(text: str) -> list[str]:
    """The lines of a log that hold values (not the header, not empty)."""
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def read_log(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A loss log as a dict of columns (`epoch`, `step`, `lr`, `loss` or `epoch`, `loss`).

    The view is that of the run's current history: a line whose step (or epoch, for the test log)
    is not after the previous one starts again from there and replaces the earlier lines from that
    point on (what a resumed run wrote before its first save); lines cut short are skipped.
    """
    path = Path(path)
    lines = path.read_text().splitlines()
    if not lines or not lines[0].startswith("#"):
        raise ValueError(f"{path} has no header line (expected {TRAIN_LOG_HEADER!r} or {TEST_LOG_HEADER!r})")
    names = lines[0].lstrip("#").split()
    key = names.index("step") if "step" in names else names.index("epoch")
    rows: list[list[float]] = []
    for line in lines[1:]:
        values = line.split()
        if not values or line.startswith("#") or len(values) != len(names):
            continue
        try:
            row = [float(v) for v in values]
        except ValueError:
            continue
        while rows and rows[-1][key] >= row[key]:
            rows.pop()
        rows.append(row)
    table = np.array(rows, dtype=np.float64).reshape(-1, len(names))
    return {name: table[:, i] for i, name in enumerate(names)}
