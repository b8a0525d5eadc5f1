"""The random-number states of a run: seeding, and capturing / restoring every state that sampling and masking use
(what a checkpoint stores per process, so that a resumed run draws the same pairs and masks)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


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
