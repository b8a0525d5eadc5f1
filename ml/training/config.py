"""Every default of a training run: the `TrainConfig` dataclass, its presets, and its command-line form.

    cfg = get_preset("cpu_demo", epochs=20)       # a preset with some fields replaced
    cfg.peak_lr(world_size=1)                     # blr * effective batch / 256 unless `lr` is set

Batch sizes count frame pairs, as the paper does: with repeated sampling R each video read gives R
pairs, so a process's loader reads `batch_size / R` videos per iteration. The effective batch, which
the learning rate scales with, is `batch_size x world size x accum_iter`. Setting `total_batch_size`
derives `accum_iter` from the number of processes, so one recipe gives the same optimisation on 1 or
8 GPUs (the paper: 2048 pairs per step).

An epoch is counted as MAE-ST counts it and SiamMAE reports it: as many pairs as there are training
videos (an "effective" epoch). With repeated sampling R an epoch reads N / R of the N videos, a
different part each epoch, every video once every R epochs (`dataset_loader.loader.VideoSampler`).
The schedule, warm-up, logs, checkpoint numbers, held-out loss and the cost model all count these.

Each field carries its help text (`metadata["help"]`); `ml.training.options` turns the fields into
command-line options and `ml.training.presets` names whole recipes (each listing only what differs
from these defaults). A default that belongs to the code that uses it (the frame gap, the crop, the
mask ratio, the decoder sizes, AdamW's betas) is written there once and read here.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import torch

from dataset_loader.random_temporal_subsample import MAX_GAP, MIN_GAP, REFERENCE_FPS
from dataset_loader.transforms import CROP_SCALE
from ml.model import DECODER_SIZES, MASK_RATIO, check_decoder_type, check_mask_ratio, decoder_dims
from ml.training.distributed import DIST_TIMEOUT_MINUTES
from ml.training.optim import ADAMW_BETAS, WEIGHT_DECAY

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _dims(size: tuple) -> str:
    return "/".join(f"{v:g}" for v in size)


def _f(default: Any, help: str, flag: str | None = None, factory: bool = False) -> Any:
    """A dataclass field with its help text (and, optionally, the command-line flag it is known by)."""
    metadata = {"help": help, **({"flag": flag} if flag else {})}
    if factory:
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything a training run needs besides the model's weights (defaults: the paper's ViT-S/16 recipe)."""

    # model
    arch: str = _f("siammae_vit_small_patch16", "model preset of ml.model.SIAMMAE_PRESETS "
                                                "(e.g. siammae_vit_base_patch16)")
    model_kwargs: dict[str, Any] = _f(dict, "SiamMAE constructor arguments replacing the preset's, as a Python dict "
                                            "(e.g. \"{'decoder_type': 'cross'}\")", factory=True)
    decoder_size: str = _f("preset", "decoder width/depth/heads[/MLP ratio]: preset (the arch's own: MAE's for "
                                     "the ViTs), " + ", ".join(f"{k} ({_dims(v)})" for k, v in DECODER_SIZES.items())
                                     + " (small: CropMAE's SiamMAE) or W/D/H[/M]")
    decoder_type: str = _f("cross_self", "cross_self (the paper's), cross, joint (the paper's ablations)")
    f1_mask_ratio: float = _f(0.0, "fraction of f1's patches removed (0: f1 whole, as the paper; the masking ablation)")
    pretrained: str | None = _f(None, "official MAE checkpoint (file, or a name such as mae_pretrain_vit_base, "
                                      "downloaded once into checkpoints/mae) to start the encoder from")
    # data
    data: str = _f("dataset/kinetics400", "a Kinetics root folder (or CSV / list file) as dataset_loader reads it")
    train_split: str = _f("train", "split of `data` to train on")
    test_split: str | None = _f("val", "held-out split for the per-epoch test loss; None: no test loss")
    test_max_videos: int | None = _f(None, "evaluate on this many evenly spaced held-out videos (None: all)")
    max_videos: int | None = _f(None, "train on this many videos of the split, drawn once with a fixed seed (the same "
                                      "subset in every run; None: all). A subset list: pass it as `data`")
    img_size: int = _f(224, "side of the square training crops")
    crop_scale: tuple[float, float] = _f(CROP_SCALE, "area range of the random resized crop shared by both frames")
    min_gap: int = _f(MIN_GAP, f"smallest frame gap between f1 and f2, in frames at {REFERENCE_FPS:g} fps")
    max_gap: int = _f(MAX_GAP, f"largest frame gap between f1 and f2, in frames at {REFERENCE_FPS:g} fps")
    repeated_sampling: int = _f(2, "pairs drawn from one decoded video")
    mask_ratio: float = _f(MASK_RATIO, "fraction of f2's patches removed")
    # batch and optimisation
    batch_size: int = _f(256, "frame pairs per process per iteration (a multiple of repeated_sampling)")
    accum_iter: int = _f(1, "iterations per optimiser step (gradient accumulation)")
    total_batch_size: int | None = _f(None, "pairs per optimiser step over all processes; sets accum_iter from the "
                                            "number of processes")
    epochs: int = _f(400, "total epochs of the schedule")
    warmup_epochs: float = _f(40.0, "epochs of linear learning-rate warm-up")
    blr: float = _f(1.5e-4, "base learning rate, per 256 pairs of effective batch")
    lr: float | None = _f(None, "peak learning rate; None: blr * effective batch / 256")
    min_lr: float = _f(0.0, "the learning rate the cosine ends at")
    weight_decay: float = _f(WEIGHT_DECAY, "AdamW weight decay (not on biases, norms, embeddings, tokens)")
    betas: tuple[float, float] = _f(ADAMW_BETAS, "AdamW betas")
    clip_grad: float | None = _f(None, "clip the gradient norm to this value; None: no clipping")
    precision: str = _f("auto", "auto (bf16 on GPUs that have it, else fp16 with a gradient scaler; fp32 on the "
                                "CPU), fp32, bf16, fp16")
    # run
    seed: int = _f(0, "seed of pairs, augmentations, masks and initialisation")
    num_workers: int = _f(8, "data-loader processes per training process")
    uint8_batches: bool = _f(True, "the loader hands over 8-bit frames, normalised on the training device (a quarter "
                                   "of the bytes through the workers' shared memory and to the GPU)")
    prefix: str = _f("siammae", "run name: checkpoints/<prefix>/, losses/<prefix>.txt, test_losses/<prefix>.txt")
    output_dir: str = _f(".", "folder that receives checkpoints/, losses/ and test_losses/", flag="--output")
    num_epochs_per_save: int = _f(10, "write checkpoint-<epoch>.pth every this many epochs (checkpoint-last.pth: "
                                      "every epoch)", flag="--save-every")
    device: str = _f("auto", "auto (this process's GPU, else the CPU), cpu, cuda, cuda:1")
    dist_timeout_minutes: float = _f(DIST_TIMEOUT_MINUTES, "minutes a process waits for the others before the run "
                                                           "fails (torch.distributed timeout)", flag="--dist-timeout")
    compile: bool = _f(False, "torch.compile the model (GPUs: faster steps after a compile of a minute or two)")
    tensorboard: bool = _f(False, "also log losses, learning rate, held-out loss and reconstructions for TensorBoard "
                                  "(<output>/tensorboard/<prefix>)")
    tensorboard_figure_every: int = _f(10, "epochs between two reconstruction figures in TensorBoard")
    print_every: int = _f(1, "print the epoch summary line every this many epochs (and for the first and last "
                             "epoch of a call); the logs get every epoch whatever this is")
    eval_every: int = _f(0, "label propagation on --eval-davis every this many epochs and after the last (0: never); "
                            "main process, a frozen copy of the encoder, evals/<prefix>/")
    eval_davis: str = _f("", "DAVIS-2017 folder (or any in its layout) that --eval-every evaluates on")
    eval_max_sequences: int | None = _f(None, "evaluate on the first N sequences of --eval-davis only (None: all)")

    def __post_init__(self) -> None:
        self.crop_scale = tuple(self.crop_scale)
        self.betas = tuple(self.betas)
        self.model_kwargs = dict(self.model_kwargs)
        self.validate()

    # ------------------------------------------------------------- checks
    def validate(self) -> None:
        """Raise ValueError naming the first field that cannot work (types, ranges, finite numbers)."""
        _check_types(self)

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig: {message}")

        need(self.img_size > 0, f"img_size must be positive, got {self.img_size}")
        need(1 <= self.min_gap <= self.max_gap, f"need 1 <= min_gap <= max_gap, got {self.min_gap}, {self.max_gap}")
        need(len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
             f"crop_scale must be (lo, hi) with 0 < lo <= hi <= 1, got {self.crop_scale}")
        need(self.repeated_sampling >= 1, f"repeated_sampling must be >= 1, got {self.repeated_sampling}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(self.batch_size % self.repeated_sampling == 0,
             f"batch_size {self.batch_size} (pairs) must be a multiple of repeated_sampling {self.repeated_sampling}")
        need(self.accum_iter >= 1, f"accum_iter must be >= 1, got {self.accum_iter}")
        need(self.total_batch_size is None or self.total_batch_size >= self.batch_size,
             f"total_batch_size {self.total_batch_size} is smaller than batch_size {self.batch_size}")
        need(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        need(0 <= self.warmup_epochs <= self.epochs,
             f"warmup_epochs must be in [0, epochs={self.epochs}], got {self.warmup_epochs}")
        need(self.blr > 0, f"blr must be positive, got {self.blr}")
        need(self.lr is None or self.lr > 0, f"lr must be positive or None, got {self.lr}")
        need(self.min_lr >= 0, f"min_lr must be >= 0, got {self.min_lr}")
        need(self.min_lr <= (self.lr if self.lr is not None else math.inf),
             f"min_lr {self.min_lr} is above the peak lr {self.lr}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
             f"betas must be two numbers in [0, 1), got {self.betas}")
        need(self.clip_grad is None or self.clip_grad > 0, f"clip_grad must be positive or None, got {self.clip_grad}")
        need(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        need(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        need(self.num_epochs_per_save >= 1, f"num_epochs_per_save must be >= 1, got {self.num_epochs_per_save}")
        need(bool(self.prefix) and "/" not in self.prefix and self.prefix not in (".", ".."),
             f"prefix must be a non-empty name without '/', got {self.prefix!r}")
        need(self.test_max_videos is None or self.test_max_videos >= 1,
             f"test_max_videos must be >= 1 or None, got {self.test_max_videos}")
        need(bool(self.output_dir), "output_dir must not be empty")
        need(self.dist_timeout_minutes > 0, f"dist_timeout_minutes must be positive, got {self.dist_timeout_minutes}")
        need(self.max_videos is None or self.max_videos >= 1, f"max_videos must be >= 1 or None, got {self.max_videos}")
        need(self.print_every >= 1, f"print_every must be >= 1, got {self.print_every}")
        need(self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}")
        need(self.eval_every == 0 or bool(self.eval_davis), "eval_every needs eval_davis, the folder to evaluate on")
        need(self.eval_max_sequences is None or self.eval_max_sequences >= 1,
             f"eval_max_sequences must be >= 1 or None, got {self.eval_max_sequences}")
        need(self.tensorboard_figure_every >= 1,
             f"tensorboard_figure_every must be >= 1, got {self.tensorboard_figure_every}")
        try:  # the model's own checks, so that a bad value is refused before any work
            check_mask_ratio(self.mask_ratio)
            check_mask_ratio(self.f1_mask_ratio, "f1_mask_ratio")
            check_decoder_type(self.decoder_type)
            decoder_dims(self.decoder_size)
        except ValueError as err:
            raise ValueError(f"TrainConfig: {err}") from None
        _check_device_name(self.device)

    # ------------------------------------------------------------- derived values
    @property
    def videos_per_batch(self) -> int:
        """Videos a process's loader reads per iteration."""
        return self.batch_size // self.repeated_sampling

    def accum_steps(self, world_size: int = 1) -> int:
        """Iterations per optimiser step: `accum_iter`, or what `total_batch_size` requires on `world_size`."""
        if self.total_batch_size is None:
            return self.accum_iter
        per_iteration = self.batch_size * world_size
        if self.total_batch_size % per_iteration:
            raise ValueError(
                f"total_batch_size {self.total_batch_size} is not a multiple of batch_size {self.batch_size} x "
                f"{world_size} process(es) = {per_iteration}: choose a batch_size that divides it"
            )
        return self.total_batch_size // per_iteration

    def effective_batch_size(self, world_size: int = 1) -> int:
        """Pairs per optimiser step over all processes."""
        return self.batch_size * world_size * self.accum_steps(world_size)

    def videos_per_epoch(self, num_videos: int) -> int:
        """Videos one epoch reads: N / R, so that an epoch holds as many pairs as there are videos."""
        return num_videos // self.repeated_sampling

    def steps_per_epoch(self, num_videos: int, world_size: int = 1) -> int:
        """Optimiser steps in one epoch over `num_videos` training videos (what the loader yields, drop-last)."""
        per_process = self.videos_per_epoch(num_videos) // world_size
        batches = per_process // self.videos_per_batch
        return batches // self.accum_steps(world_size)

    def peak_lr(self, world_size: int = 1) -> float:
        """`lr` when set, else the linear scaling rule blr * effective batch / 256."""
        if self.lr is not None:
            return self.lr
        return self.blr * self.effective_batch_size(world_size) / 256

    def resolved(self, world_size: int = 1) -> TrainConfig:
        """A copy with `accum_iter` and `lr` filled in for `world_size` processes (what a run stores)."""
        return self.replace(accum_iter=self.accum_steps(world_size), lr=self.peak_lr(world_size))

    def model_kwargs_full(self) -> dict[str, Any]:
        """Constructor arguments replacing the preset's: the config's size, masking and decoder, then `model_kwargs`."""
        dims = decoder_dims(self.decoder_size)
        names = ("decoder_embed_dim", "decoder_depth", "decoder_num_heads", "decoder_mlp_ratio")
        decoder = {} if dims is None else dict(zip(names, dims))
        return {"img_size": self.img_size, "mask_ratio": self.mask_ratio, "f1_mask_ratio": self.f1_mask_ratio,
                "decoder_type": self.decoder_type, **decoder, **self.model_kwargs}

    # ------------------------------------------------------------- plain data
    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (unknown names are a ValueError)."""
        check_field_names(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (str, numbers, tuples, dicts): safe in a `weights_only` checkpoint and in JSON."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild a config from `to_dict` output; names this version does not know are a ValueError."""
        check_field_names(data)
        return cls(**data)


# fields that say where and how fast a run goes, not what it computes: they may change on resume
RUNTIME_FIELDS = frozenset(
    {"output_dir", "prefix", "num_workers", "num_epochs_per_save", "pretrained", "precision", "test_max_videos",
     "device", "dist_timeout_minutes", "compile", "tensorboard", "tensorboard_figure_every", "uint8_batches",
     "print_every", "eval_every", "eval_davis", "eval_max_sequences"}
)


def recipe_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Fields of two config dicts that make them different runs, as 'name: stored -> current'.

    Both should come from `resolved()`. `accum_iter` is left out when `total_batch_size` fixes the
    effective batch (the same run on another number of GPUs), and so are RUNTIME_FIELDS.
    """
    skip = set(RUNTIME_FIELDS)
    if stored.get("total_batch_size") is not None and stored.get("total_batch_size") == current.get("total_batch_size"):
        skip.add("accum_iter")
    out = []
    for name in sorted(set(stored) | set(current)):
        if name in skip:
            continue
        a, b = _plain(stored.get(name)), _plain(current.get(name))
        if a != b:
            out.append(f"{name}: {stored.get(name)!r} -> {current.get(name)!r}")
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def check_field_names(data: dict[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown TrainConfig field(s): {', '.join(unknown)}; valid: {', '.join(sorted(names))}")


def _check_device_name(device: str) -> None:
    if device == "auto":
        return
    try:
        kind = torch.device(device).type
    except RuntimeError as err:
        raise ValueError(f"TrainConfig: device {device!r} is not a device name (auto, cpu, cuda, cuda:1)") from err
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"TrainConfig: device {device!r}: training runs on the CPU or on CUDA GPUs (auto, cpu, cuda)")


# ---------------------------------------------------------------- field types
def field_types() -> dict[str, Any]:
    """The resolved type annotation of every TrainConfig field."""
    return typing.get_type_hints(TrainConfig)


def is_optional(tp: Any) -> tuple[bool, Any]:
    """(whether None is allowed, the type without None)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return True, args[0]  # every optional field has one other type
    return False, tp


def _check_types(config: TrainConfig) -> None:
    for name, tp in field_types().items():
        value = getattr(config, name)
        optional, base = is_optional(tp)
        if value is None:
            if not optional:
                raise ValueError(f"TrainConfig: {name} must not be None")
            continue
        origin = typing.get_origin(base) or base
        if origin is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif origin is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        elif origin is str:
            ok = isinstance(value, str)
        elif origin is bool:
            ok = isinstance(value, bool)
        elif origin is tuple:
            ok = isinstance(value, tuple) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  and math.isfinite(v) for v in value)
        elif origin is dict:
            ok = isinstance(value, dict)
        else:
            ok = True
        if not ok:
            raise ValueError(f"TrainConfig: {name} must be {type_name(tp)}, got {value!r}")


def type_name(tp: Any) -> str:
    optional, base = is_optional(tp)
    origin = typing.get_origin(base) or base
    name = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false",
            tuple: "two finite numbers (e.g. 0.5,1.0)", dict: "a Python dict literal"}.get(origin, str(base))
    return f"{name} or None" if optional else name
