"""Training checkpoints: atomic writes, safe reads, and the random-number states that make resuming exact.

A checkpoint is a plain dict written with `torch.save` and read back with
`torch.load(weights_only=True)` (so a file can never run code). It holds tensors and plain Python
data only: the numpy and Python RNG states, which are objects of their own, are stored as tensors
and lists. Writes go to a temporary file in the same folder that is renamed over the target only
once complete, so a crash or a full disk mid-write leaves the previous checkpoint whole.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mae.pretrained import CheckpointError, load_checkpoint_file

LAST_NAME = "checkpoint-last.pth"
_NUMBERED = re.compile(r"^checkpoint-(\d+)\.pth$")


# ---------------------------------------------------------------- files
@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", **open_kwargs: Any) -> Iterator[Any]:
    """Open a temporary file beside `path` for writing; on success flush it to disk and rename it over `path`.

    If anything fails midway the temporary file is removed and `path` keeps its previous content
    (or stays absent): a reader never sees a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_name = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # same folder: the rename stays on one disk
    try:
        with open(tmp_name, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write `state` to `path` atomically (see `atomic_file`)."""
    with atomic_file(path) as f:
        torch.save(dict(state), f)
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint with `weights_only=True`; CheckpointError when missing, truncated or unsafe."""
    ckpt = load_checkpoint_file(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict")
    return ckpt


def read_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The non-tensor entries of a checkpoint (epoch, step, arch, config, ...), its tensors left on disk.

    Memory-maps the file instead of reading it, so this is cheap even for large checkpoints.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # any failure means: not a readable checkpoint
        raise CheckpointError(f"could not read checkpoint {path}: {err}") from err
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict")
    return {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "rng")}


def read_checkpoint_config(path: str | os.PathLike) -> dict[str, Any]:
    """The training config stored in a checkpoint, as a plain dict ({} when it has none)."""
    return dict(read_checkpoint_meta(path).get("config") or {})


def numbered_checkpoints(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """`checkpoint-<epoch>.pth` files of a run folder as (epoch, path), oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NUMBERED.match(p.name))]
    return sorted(found)


def find_latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The checkpoint to resume a run folder from: `checkpoint-last.pth`, else the newest numbered one.

    A `checkpoint-last.pth` that cannot be read (say, a disk failure) is passed over for the newest
    numbered checkpoint that can.
    """
    folder = Path(folder)
    candidates = [folder / LAST_NAME] + [p for _, p in reversed(numbered_checkpoints(folder))]
    for path in candidates:
        if path.is_file():
            try:
                read_checkpoint_meta(path)
            except CheckpointError:
                continue
            return path
    return None


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
