"""Files that are whole or absent: atomic writes, writability checks, and cleaning up after dead writers.

    with atomic_file(path, "w") as f:    # written to a temporary beside `path`, renamed over it when complete
        f.write(text)

Used by every writer of the project (checkpoints, loss logs, evaluation results, prepared videos,
samples.pickle, BENCHMARKS.md): a reader never sees a half-written file, and a full disk raises
DiskFullError with the previous file intact.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"
# the write failures that mean "no room for this file", each said in the words a user can act on
_NO_ROOM = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file-size limit (ulimit -f) or the filesystem",
}


class DiskFullError(OSError):
    """No room for a file being written (disk full, quota, file-size limit); its previous version is intact."""


# ---------------------------------------------------------------- files
def temp_name(path: Path) -> Path:
    """The temporary name a write of `path` goes to: same folder (the rename stays on one disk), our PID inside."""
    return path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", **open_kwargs: Any) -> Iterator[Any]:
    """Open a temporary file beside `path` for writing; on success flush it to disk and rename it over `path`.

    If anything fails midway the temporary file is removed and `path` keeps its previous content
    (or stays absent): a reader never sees a half-written file. A full disk raises DiskFullError.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_name = temp_name(path)
    writer = None
    try:
        with open(tmp_name, mode, **open_kwargs) as f:
            writer = _ErrorRecordingWriter(f)
            yield writer
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException as err:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        cause = writer.error if writer is not None and writer.error is not None else err
        if isinstance(cause, OSError) and cause.errno in _NO_ROOM:
            kept = f"{path} keeps its previous content" if path.exists() else f"{path} was not written"
            raise DiskFullError(cause.errno, f"{_NO_ROOM[cause.errno]} while writing {path}: {kept}") from err
        raise


def unwritable_reason(folder: Path) -> str | None:
    """Why files cannot be written into `folder` (creating it if need be), or None when they can."""
    if folder.exists() and not folder.is_dir():
        return "is a file, not a folder"
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot be created: {existing} is a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"is not writable ({existing} is read-only for this user)"
    return None


class _ErrorRecordingWriter:
    """A file object that remembers the OSError of a failed write: `torch.save` replaces it by a vague RuntimeError."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def remove_temp_files(folder: Path, names: set[str] | None = None) -> list[Path]:
    """Delete temporary files of `atomic_file` left in `folder` by processes that died (kill -9, power loss).

    With `names`, only temporaries of those target file names. Call it while holding the run's lock:
    no live process is then writing them. Returns what was removed.
    """
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if not (p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX)):
            continue
        target = p.name[1:].rsplit(".", 2)[0]  # ".<name>.<pid>.tmp" -> <name>
        if names is None or target in names:
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
