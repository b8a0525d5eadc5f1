"""The checkpoint file: one versioned format, verified reads, where a run's checkpoints are, and a model from one.

A checkpoint is a plain dict written with `torch.save` and read back with
`torch.load(weights_only=True)` (so a file can never run code):

    format "siammae-checkpoint", version 2
    model          SiamMAE state_dict
    model_args     every SiamMAE constructor argument (the model's configuration, stored once)
    config         the TrainConfig as plain data (accum_iter and lr resolved)
    optimizer, scaler, epoch (epochs done), step (optimiser steps done), world_size
    rng            per process: torch, CUDA, numpy, Python and data-loader random states (ml.training.rng)
    log_lines      {"train": n, "test": m}: the loss-log lines this checkpoint's history covers
    data_fingerprint  SHA-1 of the training videos' relative paths and sizes (a resume on other videos is refused)
    payload_crc32  CRC-32 of every tensor's bytes, in key order: a flipped byte is found at load

Writes are atomic (`ml.files.atomic_file`); reads verify the format, the checksum and that every
weight is finite. A run folder holds checkpoint-<epoch>.pth and checkpoint-last.pth (`ml.training.run`
writes them); `find_checkpoint` picks the newest, `prepare_model` rebuilds the model of any of them.
"""

from __future__ import annotations

import os
import re
import warnings
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from mae.pretrained import (
    CheckpointError,
    encoder_state_dict,
    extract_state_dict,
    load_checkpoint_file,
    load_mae_weights,
)
from ml.files import atomic_file
from ml.model import SiamMAE, create_model, load_mae_encoder

CHECKPOINT_FORMAT = "siammae-checkpoint"
CHECKPOINT_VERSION = 2
LAST_NAME = "checkpoint-last.pth"
NUMBERED = re.compile(r"^checkpoint-(\d+)\.pth$")


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
    return verify_checkpoint(load_checkpoint_file(path), path)


def verify_checkpoint(ckpt: Any, path: str | os.PathLike) -> dict:
    """`ckpt` (read from `path`) when it is a checkpoint of this format that passes its checks (format, checksum,
    finite weights); CheckpointError naming `path` otherwise."""
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


# ---------------------------------------------------------------- finding and loading
def checkpoints_in(folder: Path) -> list[tuple[int, Path]]:
    """Readable checkpoints of a folder as (epoch, path), oldest first (checkpoint-last after a numbered one
    of the same epoch)."""
    found = []
    if not folder.is_dir():
        return found
    for path in folder.iterdir():
        if path.name == LAST_NAME or NUMBERED.match(path.name):
            try:
                found.append((int(read_checkpoint_meta(path)["epoch"]), path.name == LAST_NAME, path))
            except (CheckpointError, KeyError, ValueError):
                continue
    return [(epoch, path) for epoch, _, path in sorted(found)]


def newest_valid_checkpoint(folder: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint of `folder` that passes every check of `load_checkpoint`, and what was skipped on
    the way ('name: reason', newest first; files whose header cannot even be read included).

    checkpoint-last.pth is a hard link of the newest numbered checkpoint, so one damaged block spoils both
    names: the next good one is then an earlier epoch's numbered file.
    """
    found = checkpoints_in(folder)
    readable = {path for _, path in found}
    skipped = [f"{p.name}: unreadable" for p in sorted(folder.glob("checkpoint-*.pth")) if p not in readable]
    for _, path in reversed(found):
        try:
            load_checkpoint(path)
        except CheckpointError as err:
            skipped.append(f"{path.name}: {str(err).splitlines()[0].removeprefix(str(path)).strip()}")
            continue
        return path, skipped
    return None, skipped


def say_skipped(skipped: list[str], chosen: Path | None) -> None:
    """Warn, in one message, which checkpoints were passed over for `chosen` and why."""
    if skipped:
        warnings.warn(f"skipped checkpoint(s) that fail their checks ({'; '.join(skipped)}); "
                      + (f"using {chosen}" if chosen else "none is left"), stacklevel=3)


def find_checkpoint(spec: str | os.PathLike, output_dir: str | os.PathLike = ".") -> Path:
    """A checkpoint file from what a user names: the file itself, a run's checkpoint folder (its newest
    checkpoint that passes its checks, with a warning naming any newer one skipped), or a run name under
    `<output_dir>/checkpoints/`. FileNotFoundError listing what was tried; CheckpointError when a folder
    holds checkpoints but none passes its checks."""
    path = Path(spec)
    if path.is_file():
        return path
    tried = [path]
    for folder in (path, Path(output_dir) / "checkpoints" / path):
        if checkpoints_in(folder) or list(folder.glob("checkpoint-*.pth")):
            chosen, skipped = newest_valid_checkpoint(folder)
            say_skipped(skipped, chosen)
            if chosen is None:
                raise CheckpointError(f"{folder} holds no checkpoint that passes its checks ({'; '.join(skipped)})")
            return chosen
        tried.append(folder / LAST_NAME)
    raise FileNotFoundError(f"no checkpoint at {spec} (looked for {', '.join(str(t) for t in tried)})")


def prepare_model(chkpt_dir: str | os.PathLike, arch: str | None = None) -> SiamMAE:
    """Build a model and load a checkpoint into it: this project's, or an official MAE one.

    `chkpt_dir` is a checkpoint file, or a run folder (its latest checkpoint). A project checkpoint
    is verified (checksum, finite weights) and rebuilt from the constructor arguments stored in it;
    `arch` may then be omitted, and must match the checkpoint's preset when given. An MAE checkpoint
    (official keys, no `encoder.` prefix) fills the encoder of preset `arch` and leaves the decoder as
    initialised. Every key is checked: an unexpected key, a shape mismatch or a missing key is a
    CheckpointError naming them.
    """
    try:
        path = find_checkpoint(chkpt_dir)
    except FileNotFoundError as err:
        raise CheckpointError(str(err)) from None
    checkpoint = load_checkpoint_file(path)
    if is_project_checkpoint(checkpoint):
        checkpoint = verify_checkpoint(checkpoint, path)
        saved_arch = checkpoint.get("config", {}).get("arch")
        if arch is not None and saved_arch != arch:
            raise CheckpointError(f"{path} holds a {saved_arch!r} model, not the requested {arch!r}")
        model = SiamMAE(**checkpoint["model_args"])
        load_mae_weights(model, checkpoint["model"], allowed_missing_prefixes=())
        return model
    if arch is None:
        raise ValueError(f"{path} is not a checkpoint of this project: pass the preset (arch) to build")
    model = create_model(arch)
    state_dict = extract_state_dict(checkpoint) if "teacher" not in checkpoint else {}
    if any(k.startswith(("encoder.", "decoder.")) for k in state_dict):  # a bare SiamMAE state dict
        load_mae_weights(model, state_dict, allowed_missing_prefixes=())
        return model
    layout, encoder, ignored = encoder_state_dict(checkpoint)
    try:
        report = load_mae_encoder(model, encoder)
    except CheckpointError as err:
        raise CheckpointError(f"{path} ({layout}) does not fit {arch}: {str(err).splitlines()[0]}") from None
    dropped = sorted({k.split(".")[0].removesuffix("_embed") for k in ignored})
    print(f"{arch}: encoder from {path}, {layout}: {report}" + (f"; ignored {len(ignored)} tensors of "
          f"{', '.join(dropped)}" if ignored else ""))
    return model
