"""The MAE ViT backbone (He et al. 2022): model, position embeddings, checkpoint loading."""

# first: timm (imported below) needs torchvision, which needs this on a CPU-only torch
from mae import torchvision_compat  # noqa: F401, I001
from mae.models_mae import (
    MAEEncoder,
    MaskedAutoencoderViT,
    mae_vit_base_patch16,
    mae_vit_huge_patch14,
    mae_vit_large_patch16,
    mae_vit_small_patch8,
    mae_vit_small_patch16,
)
from mae.pretrained import (
    MAE_PRETRAINED_URLS,
    CheckpointError,
    LoadReport,
    download_pretrained_model,
    load_checkpoint_file,
    load_mae_weights,
)

__all__ = [
    "MAEEncoder",
    "MaskedAutoencoderViT",
    "mae_vit_small_patch16",
    "mae_vit_small_patch8",
    "mae_vit_base_patch16",
    "mae_vit_large_patch16",
    "mae_vit_huge_patch14",
    "MAE_PRETRAINED_URLS",
    "CheckpointError",
    "LoadReport",
    "download_pretrained_model",
    "load_checkpoint_file",
    "load_mae_weights",
]
