"""The output folder of an evaluation run: what was run, each finished sequence's result, and proof of both.

    <output>/run.json                 {"record": what was run (model, weights hash, protocol, ...),
                                       "files": {sequence: {relative path: sha256}}}
    <output>/sequences/<name>.json    one finished sequence's numbers
    <output>/masks/<name>/...         its predicted label maps

A sequence is reused by a later run into the same folder only when its result file and every mask
file still have the hashes recorded when they were written; an edited, truncated or missing file
is recomputed, with a warning naming it. A run with another model or other parameters into the
same folder is refused, and a non-empty folder without run.json is never written into.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ml.files import atomic_file, unwritable_reason


class StoreError(RuntimeError):
    """An output folder that cannot be used (a file, read-only, holding another run or other files)."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ResultStore:
    """run.json, sequences/<name>.json and the hashes that make a reused result trustworthy."""

    def __init__(self, output: str | os.PathLike, record: dict[str, Any]) -> None:
        self.root = Path(output)
        record = json.loads(json.dumps(record))  # as it reads back from disk
        check_output_folder(self.root)
        self.run_file = self.root / "run.json"
        self.files: dict[str, dict[str, str]] = {}
        if self.run_file.is_file():
            try:
                stored = json.loads(self.run_file.read_text())
                old, self.files = stored["record"], dict(stored.get("files") or {})
            except (ValueError, KeyError, TypeError) as err:
                raise StoreError(f"{self.run_file} is not a run record of this project ({err}); choose another "
                                 f"--output or remove that folder") from None
            if old != record:
                changed = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
                raise StoreError(f"{self.root} holds results of a different run (differs in: {', '.join(changed)}); "
                                 "choose another --output, or remove that folder to start over")
        else:
            if self.root.is_dir() and any(self.root.iterdir()):
                raise StoreError(f"{self.root} is not empty and holds no run.json; choose an empty or new --output")
            self.root.mkdir(parents=True, exist_ok=True)
        self.record = record
        self._write_run_file()

    def result_path(self, name: str) -> Path:
        return self.root / "sequences" / f"{name}.json"

    def load(self, name: str) -> dict | None:
        """The saved result of sequence `name` if it and its files are exactly as written, else None (a warning
        names what changed)."""
        hashes = self.files.get(name)
        path = self.result_path(name)
        if hashes is None:
            if path.exists():
                warnings.warn(f"{path} has no recorded hash (written by an interrupted run?): recomputing it",
                              stacklevel=3)
            return None
        for rel, digest in hashes.items():
            file = self.root / rel
            if not file.is_file():
                warnings.warn(f"{file} is missing: recomputing sequence {name}", stacklevel=3)
                return None
            if file_sha256(file) != digest:
                warnings.warn(f"{file} was changed after it was written: recomputing sequence {name}", stacklevel=3)
                return None
        return json.loads(path.read_text())

    def save(self, name: str, result: dict, files: list[Path]) -> None:
        """Write the sequence's result, then record its hash and those of its `files` (e.g. mask PNGs)."""
        path = self.result_path(name)
        write_json(path, result)
        self.files[name] = {str(p.relative_to(self.root)): file_sha256(p) for p in [path, *files]}
        self._write_run_file()

    def forget(self, name: str) -> None:
        self.files.pop(name, None)
        self._write_run_file()

    def _write_run_file(self) -> None:
        write_json(self.run_file, {"record": self.record, "files": self.files})


def check_output_folder(root: Path) -> None:
    """StoreError (one line) when `root` is a file or cannot be created or written."""
    reason = unwritable_reason(root)
    if reason:
        raise StoreError(f"--output {root} {reason}")


def write_json(path: Path, obj: Any) -> None:
    with atomic_file(path, "w") as f:  # a result file is complete or absent
        f.write(json.dumps(obj, indent=1))


def write_csv(path: Path, rows: list[dict], digits: int | None = None, columns: Sequence[str] | None = None) -> None:
    """Rows as CSV, written whole and atomically (header: `columns`, else the first row's keys); floats with `digits`
    decimals when given (the official tool: 3)."""
    def cell(v: Any) -> Any:
        return f"{v:.{digits}f}" if digits is not None and isinstance(v, float) else v

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns or rows[0]))
        writer.writeheader()
        writer.writerows({k: cell(v) for k, v in row.items()} for row in rows)


def read_csv(path: str | os.PathLike, columns: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a CSV file as text; ValueError naming the `columns` it lacks."""
    reader = csv.DictReader(io.StringIO(Path(path).read_text()))
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{path} lacks the column(s) {', '.join(missing)} (expected {','.join(columns)})")
    return list(reader)
