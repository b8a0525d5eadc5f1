"""The checkpoint file: one versioned format, atomic writes, verified reads, and the random states of a run.

A checkpoint is a plain dict written with `torch.save` and read back with
`torch.load(weights_only=True)` (so a file can never run code):

    format "siammae-checkpoint", version 2
    model          SiamMAE state_dict
    model_args     every SiamMAE constructor argument (the model's configuration, stored once)
    config         the TrainConfig as plain data (accum_iter and lr resolved)
    optimizer, scheduler, scaler, epoch (epochs done), step (optimiser steps done), world_size
    rng            per process: torch, CUDA, numpy, Python and data-loader random states
    log_lines      {"train": n, "test": m}: the loss-log lines this checkpoint's history covers
    payload_crc32  CRC-32 of every tensor's bytes, in key order: a flipped byte is found at load

Writes go to a temporary file in the same folder that is renamed over the target only once
complete; a full disk mid-write raises DiskFullError and leaves the previous file whole. Reads
verify the format, the checksum and that every weight is finite.
"""

from __future__ import annotations

import errno
import os
import random
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mae.pretrained import CheckpointError, load_checkpoint_file

CHECKPOINT_FORMAT = "siammae-checkpoint"
CHECKPOINT_VERSION = 2
TEMP_SUFFIX = ".tmp"


class DiskFullError(OSError):
    """The disk filled up while a file was written; the file's previous version is intact."""


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
        if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
            kept = f"{path} keeps its previous content" if path.exists() else f"{path} was not written"
            raise DiskFullError(errno.ENOSPC, f"disk full while writing {path}: {kept}") from err
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


# ---------------------------------------------------------------- checksum
def _tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor inside nested dicts/lists/tuples, with a path name, in a fixed order."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for key in sorted(obj, key=str):
            yield from _tensors(obj[key], f"{prefix}/{key}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors(value, f"{prefix}/{i}")


def payload_checksum(state: Mapping[str, Any]) -> int:
    """CRC-32 over the names, dtypes, shapes and bytes of every tensor in `state` (the checksum entry left out)."""
    crc = 0
    for name, tensor in _tensors({k: v for k, v in state.items() if k != "payload_crc32"}):
        t = tensor.detach().to("cpu").contiguous()
        crc = zlib.crc32(f"{name}|{t.dtype}|{tuple(t.shape)}".encode(), crc)
        if t.numel():
            crc = zlib.crc32(t.reshape(-1).view(torch.uint8).numpy(), crc)
    return crc


# ---------------------------------------------------------------- writing and reading
def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write `state` as a checkpoint of this format to `path` atomically (format, version and checksum added)."""
    full = {**state, "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION}
    full["payload_crc32"] = payload_checksum(full)
    with atomic_file(path) as f:
        torch.save(full, f)
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read and verify a checkpoint of this format; CheckpointError when missing, truncated, unsafe,
    of another format, failing its checksum, or holding non-finite weights."""
    ckpt = load_checkpoint_file(path)
    check_format(ckpt, path)
    stored = ckpt.get("payload_crc32")
    if stored is None or payload_checksum(ckpt) != int(stored):
        raise CheckpointError(f"{path} is corrupt: its tensor data does not match the checksum written with it "
                              f"(a damaged file); use another checkpoint of the run")
    bad = non_finite_tensors(ckpt["model"])
    if bad:
        raise CheckpointError(f"{path} holds non-finite weights ({', '.join(bad[:3])}"
                              f"{' ...' if len(bad) > 3 else ''}): a diverged state; use an earlier checkpoint")
    return ckpt


def check_format(ckpt: Any, path: str | os.PathLike) -> None:
    """CheckpointError unless `ckpt` is a dict of this project's checkpoint format and version."""
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict")
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a training checkpoint of this project (format "
                              f"{ckpt.get('format')!r}, expected {CHECKPOINT_FORMAT!r})")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {ckpt.get('version')!r}; this code reads version "
                              f"{CHECKPOINT_VERSION}")


def is_project_checkpoint(ckpt: Any) -> bool:
    """Whether a loaded dict is a checkpoint of this project (as opposed to, say, an official MAE file)."""
    return isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT


def non_finite_tensors(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors holding NaN or infinity."""
    return [name for name, t in state_dict.items()
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())]


def read_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The non-tensor entries of a checkpoint (epoch, step, config, log_lines, ...), its tensors left on disk.

    Memory-maps the file instead of reading it, so this is cheap even for large checkpoints. The
    checksum is not verified here (`load_checkpoint` does).
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # any failure means: not a readable checkpoint
        raise CheckpointError(f"could not read checkpoint {path}: {err}") from err
    check_format(ckpt, path)
    return {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "rng", "scaler")}


# ---------------------------------------------------------------- random-number states
def capture_rng_state(data_loader: Any = None) -> dict[str, Any]:
    """Every RNG state that sampling and masking use, as tensors and plain data.

    torch (CPU, and this process's current CUDA device), numpy's global state, Python's `random`, and
    the torch generators of the data loader and its sampler when they have one.
    """
    np_state = np.random.get_state()  # ("MT19937", uint32[624], pos, has_gauss, cached_gaussian)
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        # this process's GPU only: asking for every GPU's state would open a context on each
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        "numpy": {
            "algorithm": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
        "loader": _loader_generator_states(data_loader),
    }
    return state


def restore_rng_state(state: Mapping[str, Any], data_loader: Any = None) -> None:
    """Put back the RNG states of `capture_rng_state` (the CUDA one into the current CUDA device)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])  # this process's GPU (the current device)
    npst = state["numpy"]
    np.random.set_state(
        (npst["algorithm"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
         npst["cached_gaussian"])
    )
    pyst = state["python"]
    random.setstate((pyst["version"], tuple(int(v) for v in pyst["internal"].tolist()), pyst["gauss_next"]))
    for name, generator in _loader_generators(data_loader).items():
        saved = state.get("loader", {}).get(name)
        if saved is not None:
            generator.set_state(saved)


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy and Python's `random`."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _loader_generators(data_loader: Any) -> dict[str, torch.Generator]:
    if data_loader is None:
        return {}
    found = {}
    for name, owner in (("loader", data_loader), ("sampler", getattr(data_loader, "sampler", None)),
                        ("batch_sampler", getattr(data_loader, "batch_sampler", None))):
        generator = getattr(owner, "generator", None)
        if isinstance(generator, torch.Generator):
            found[name] = generator
    return found


def _loader_generator_states(data_loader: Any) -> dict[str, torch.Tensor]:
    return {name: g.get_state() for name, g in _loader_generators(data_loader).items()}
