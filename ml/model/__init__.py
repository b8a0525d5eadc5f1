"""The network: SiamMAE (one MAE encoder for both frames, a cross decoder, MAE's loss on f2's removed patches),
its decoder layers, named architectures, and a model's reconstruction of a pair under fixed masks.
Depends only on `mae/` (and the pixel normalisation of `dataset_loader.transforms`)."""

from ml.model.decoder import (
    DECODER_SIZES,
    DECODER_TYPES,
    CrossAttention,
    CrossBlock,
    CrossDecoder,
    check_decoder_type,
    decoder_dims,
)
from ml.model.presets import (
    SIAMMAE_PRESETS,
    TIMM_VITS,
    create_model,
    encoder_to_timm,
    load_mae_encoder,
    model_args_for,
    preset_of,
    timm_arch,
)
from ml.model.reconstruct import fixed_masks, reconstruct
from ml.model.siammae import MASK_RATIO, SiamMAE, check_mask_ratio

__all__ = [
    "DECODER_SIZES", "DECODER_TYPES", "MASK_RATIO", "SIAMMAE_PRESETS", "CrossAttention", "CrossBlock", "CrossDecoder",
    "SiamMAE", "TIMM_VITS", "check_decoder_type", "check_mask_ratio", "create_model", "decoder_dims",
    "encoder_to_timm", "fixed_masks", "load_mae_encoder", "model_args_for", "preset_of", "reconstruct", "timm_arch",
]
