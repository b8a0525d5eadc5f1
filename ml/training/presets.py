"""Named training recipes: each lists only what differs from the TrainConfig defaults (the paper's ViT-S/16).

    cfg = get_preset("cpu_demo", epochs=20)       # a preset with some fields replaced
"""

from __future__ import annotations

from typing import Any

from ml.training.config import TrainConfig, check_field_names

# the paper's ViT-S/16 run at its scale: 8 GPUs x 256 pairs = 2048 per step (fewer GPUs accumulate gradients);
# lr = blr * 2048 / 256 = 1.2e-3
_PAPER = dict(total_batch_size=2048, num_workers=10, test_max_videos=1000, num_epochs_per_save=20)
# the seed's experiments: an official MAE encoder (downloaded once) trained as the SiamMAE encoder
_MAE_B16 = dict(_PAPER, arch="siammae_vit_base_patch16", pretrained="mae_pretrain_vit_base")
# on 2 cores: the tiny model on the shipped sample clips, full precision, no loader processes
_CPU = dict(arch="siammae_tiny", batch_size=4, lr=1e-3, precision="fp32", num_workers=0, data="dataset/sample")

PRESETS: dict[str, dict[str, Any]] = {
    "paper_vit_s16_400": dict(_PAPER, prefix="paper_vit_s16_400"),
    "paper_vit_s16_2000": dict(_PAPER, epochs=2000, prefix="paper_vit_s16_2000", num_epochs_per_save=100),
    **{f"mae_vit_b16_mask{round(100 * r):03d}": dict(_MAE_B16, prefix=f"mae_vit_b16_mask{round(100 * r):03d}",
                                                     **({} if r == TrainConfig.mask_ratio else {"mask_ratio": r}))
       for r in (0.50, 0.75, TrainConfig.mask_ratio)},
    "mae_vit_l16_mask075": dict(_PAPER, arch="siammae_vit_large_patch16", pretrained="mae_pretrain_vit_large",
                                mask_ratio=0.75, batch_size=128, prefix="mae_vit_l16_mask075"),
    # the notebook's CPU run on dataset/sample (see the README for its measured time): long enough that the decoder
    # relies on f1 and copies from it (the notebook's section 9 measures both)
    "cpu_demo": dict(_CPU, img_size=112, epochs=600, warmup_epochs=30, min_lr=1e-5, prefix="cpu_demo",
                     num_epochs_per_save=100, print_every=25),
    # a seconds-long check that the whole path runs (tests, the notebook's quick setting)
    "quick": dict(_CPU, img_size=64, mask_ratio=0.75, epochs=2, warmup_epochs=1, prefix="quick", num_epochs_per_save=1),
}

# the notebook's settings (SIAMMAE_SETTING / `python -m ml.demo --setting`) and the preset each runs
NOTEBOOK_SETTINGS: dict[str, str] = {"quick": "quick", "demo": "cpu_demo", "paper": "paper_vit_s16_400"}


def get_preset(name: str, **overrides: Any) -> TrainConfig:
    """The TrainConfig of preset `name` with `overrides` applied (unknown preset or field: ValueError)."""
    if name not in PRESETS:
        raise ValueError(f"unknown training preset {name!r}; valid: {', '.join(PRESETS)}")
    check_field_names(overrides)
    return TrainConfig(**{**PRESETS[name], **overrides})
