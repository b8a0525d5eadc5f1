"""The training recipe as one plain dataclass, and the named presets.

    cfg = get_preset("cpu_demo", epochs=20)       # a preset with some fields replaced
    cfg.peak_lr(world_size=1)                     # blr * effective batch / 256 unless `lr` is set

Batch sizes count frame pairs, as the paper does: with repeated sampling R each video read gives R
pairs, so a process's loader reads `batch_size / R` videos per iteration. The effective batch, which
the learning rate scales with, is `batch_size x world size x accum_iter`. Setting `total_batch_size`
derives `accum_iter` from the number of processes, so one recipe gives the same optimisation on 1 or
8 GPUs (the paper: 2048 pairs per step).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Everything a training run needs besides the model's weights (defaults: the paper's ViT-S/16 recipe)."""

    # model
    arch: str = "siammae_vit_small_patch16"  # a preset of ml.SiamMAE.SIAMMAE_PRESETS
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # constructor arguments replacing the preset's
    pretrained: str | None = None  # an official MAE checkpoint (name or path) to start the encoder from
    # data
    data: str = "dataset/kinetics400"  # a Kinetics root folder (or CSV / list file) as dataset_loader reads it
    train_split: str = "train"
    test_split: str | None = "val"  # held-out split for the per-epoch test loss; None: no test loss
    test_max_videos: int | None = None  # evaluate on this many evenly spaced held-out videos (None: all)
    img_size: int = 224
    crop_scale: tuple[float, float] = (0.5, 1.0)  # random resized crop, the same for both frames of a pair
    min_gap: int = 4  # frame gap between f1 and f2, in frames at 30 fps
    max_gap: int = 48
    repeated_sampling: int = 2  # pairs drawn from one decoded video
    mask_ratio: float = 0.95
    # batch and optimisation
    batch_size: int = 256  # frame pairs per process per iteration (a multiple of repeated_sampling)
    accum_iter: int = 1  # iterations per optimiser step (gradient accumulation)
    total_batch_size: int | None = None  # if set: accum_iter = total_batch_size / (batch_size * world_size)
    epochs: int = 400
    warmup_epochs: float = 40.0
    blr: float = 1.5e-4  # base learning rate, per 256 pairs of effective batch
    lr: float | None = None  # peak learning rate; None: blr * effective batch / 256
    min_lr: float = 0.0  # the rate the cosine ends at
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad: float | None = None  # max gradient norm; None: no clipping
    precision: str = "auto"  # auto: bf16 on GPUs that have it, else fp16 with a gradient scaler; fp32 on CPU
    # run
    seed: int = 0
    num_workers: int = 8  # data-loader processes per training process
    prefix: str = "siammae"  # names the run: checkpoints/<prefix>/, losses/<prefix>.txt, test_losses/<prefix>.txt
    output_dir: str = "."  # where checkpoints/, losses/ and test_losses/ go
    num_epochs_per_save: int = 10  # checkpoint-<epoch>.pth every this many epochs (checkpoint-last.pth every epoch)

    def __post_init__(self) -> None:
        self.crop_scale = tuple(self.crop_scale)
        self.betas = tuple(self.betas)
        self.model_kwargs = dict(self.model_kwargs)
        self.validate()

    # ------------------------------------------------------------- checks
    def validate(self) -> None:
        """Raise ValueError naming the first field that cannot work."""
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig: {message}")

        need(self.img_size > 0, f"img_size must be positive, got {self.img_size}")
        need(0.0 <= self.mask_ratio < 1.0, f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
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

    def peak_lr(self, world_size: int = 1) -> float:
        """`lr` when set, else the linear scaling rule blr * effective batch / 256."""
        if self.lr is not None:
            return self.lr
        return self.blr * self.effective_batch_size(world_size) / 256

    def resolved(self, world_size: int = 1) -> TrainConfig:
        """A copy with `accum_iter` and `lr` filled in for `world_size` processes (what a run stores)."""
        return self.replace(accum_iter=self.accum_steps(world_size), lr=self.peak_lr(world_size))

    # ------------------------------------------------------------- plain data
    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (unknown names are a ValueError)."""
        _check_field_names(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (str, numbers, tuples, dicts): safe in a `weights_only` checkpoint and in JSON."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild a config from `to_dict` output; names this version does not know are a ValueError."""
        _check_field_names(data)
        return cls(**data)


# fields that say where and how fast a run goes, not what it computes: they may change on resume
RUNTIME_FIELDS = frozenset(
    {"data", "output_dir", "prefix", "num_workers", "num_epochs_per_save", "pretrained", "precision", "test_max_videos"}
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


def _check_field_names(data: dict[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown TrainConfig field(s): {', '.join(unknown)}; valid: {', '.join(sorted(names))}")


# ---------------------------------------------------------------- presets
_PAPER_VIT_S16 = dict(
    arch="siammae_vit_small_patch16",
    img_size=224, crop_scale=(0.5, 1.0), min_gap=4, max_gap=48, repeated_sampling=2, mask_ratio=0.95,
    batch_size=256, total_batch_size=2048,  # 8 GPUs x 256 pairs; fewer GPUs accumulate gradients
    warmup_epochs=40, blr=1.5e-4, min_lr=0.0, weight_decay=0.05, betas=(0.9, 0.95),
    precision="auto", num_workers=10, data="dataset/kinetics400", test_max_videos=1000,
)

PRESETS: dict[str, dict[str, Any]] = {
    # the paper's main recipe (ViT-S/16 on Kinetics-400); lr = 1.5e-4 * 2048 / 256 = 1.2e-3
    "paper_vit_s16_400": {**_PAPER_VIT_S16, "epochs": 400, "prefix": "paper_vit_s16_400", "num_epochs_per_save": 20},
    "paper_vit_s16_2000": {**_PAPER_VIT_S16, "epochs": 2000, "prefix": "paper_vit_s16_2000",
                           "num_epochs_per_save": 100},
    # the notebook's CPU run on dataset/sample (5 training videos): a few minutes on 2 cores
    "cpu_demo": dict(
        arch="siammae_tiny", img_size=112, mask_ratio=0.95, min_gap=4, max_gap=48,
        repeated_sampling=4, batch_size=8, accum_iter=1, epochs=60, warmup_epochs=6, lr=1e-3, min_lr=1e-5,
        weight_decay=0.05, betas=(0.9, 0.95), precision="fp32", num_workers=0, data="dataset/sample",
        prefix="cpu_demo", num_epochs_per_save=20,
    ),
    # a seconds-long check that the whole path runs (tests, the notebook's quick setting)
    "quick": dict(
        arch="siammae_tiny", img_size=64, mask_ratio=0.75, min_gap=4, max_gap=48,
        repeated_sampling=2, batch_size=4, accum_iter=1, epochs=2, warmup_epochs=1, lr=1e-3, min_lr=0.0,
        weight_decay=0.05, betas=(0.9, 0.95), precision="fp32", num_workers=0, data="dataset/sample",
        prefix="quick", num_epochs_per_save=1,
    ),
}


def get_preset(name: str, **overrides: Any) -> TrainConfig:
    """The TrainConfig of preset `name` with `overrides` applied (unknown preset or field: ValueError)."""
    if name not in PRESETS:
        raise ValueError(f"unknown training preset {name!r}; valid: {', '.join(PRESETS)}")
    _check_field_names(overrides)
    return TrainConfig(**{**PRESETS[name], **overrides})
