"""Named SiamMAE architectures, building a model from one, and moving encoder weights in and out.

    model = create_model("siammae_tiny", img_size=64)                 # a preset with some arguments replaced
    model = create_model("siammae_vit_base_patch16", pretrained=path)  # encoder from an official MAE file
    vit = encoder_to_timm(model)                                      # the encoder as a timm ViT
    timm_arch(model)                                                  # timm's ViT of the encoder's shape, if any
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping

from timm.models.vision_transformer import VisionTransformer

from mae.models_mae import LayerNorm6
from mae.pretrained import DECODER_PREFIXES, LoadReport, load_mae_weights
from ml.model.siammae import SiamMAE

SIAMMAE_PRESETS: dict[str, dict] = {
    # the paper's encoders; every decoder is MAE's size (DECODER_SIZES['mae']) unless overridden
    "siammae_vit_small_patch16": {"patch_size": 16, "embed_dim": 384, "depth": 12, "num_heads": 6},
    "siammae_vit_small_patch8": {"patch_size": 8, "embed_dim": 384, "depth": 12, "num_heads": 6},
    "siammae_vit_base_patch16": {"patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12},
    "siammae_vit_large_patch16": {"patch_size": 16, "embed_dim": 1024, "depth": 24, "num_heads": 16},
    # for the tests and the CPU demo: a training step on 8 pairs at 112x112 takes a fraction of a second
    "siammae_tiny": {
        "img_size": 112, "patch_size": 16, "embed_dim": 192, "depth": 4, "num_heads": 3,
        "decoder_embed_dim": 128, "decoder_depth": 2, "decoder_num_heads": 4,
    },
}

# timm's plain ViTs (3 channels, MLP ratio 4, a class token, 224x224) by (patch, width, depth, heads): the names an
# encoder of that shape is published under (`python -m ml.export`)
TIMM_VITS: dict[tuple[int, int, int, int], str] = {
    (16, 192, 12, 3): "vit_tiny_patch16_224",
    (16, 384, 12, 6): "vit_small_patch16_224",
    (8, 384, 12, 6): "vit_small_patch8_224",
    (16, 768, 12, 12): "vit_base_patch16_224",
    (8, 768, 12, 12): "vit_base_patch8_224",
    (16, 1024, 24, 16): "vit_large_patch16_224",
    (14, 1280, 32, 16): "vit_huge_patch14_224",
}


def model_args_for(arch: str, **overrides) -> dict:
    """Every constructor argument of preset `arch` with `overrides` (what `create_model` builds, as plain data)."""
    if arch not in SIAMMAE_PRESETS:
        raise ValueError(f"unknown SiamMAE preset {arch!r}; valid: {', '.join(SIAMMAE_PRESETS)}")
    signature = inspect.signature(SiamMAE.__init__)
    valid_args = set(signature.parameters) - {"self"}
    unknown = sorted(set(overrides) - valid_args)
    if unknown:
        raise ValueError(f"unknown SiamMAE argument(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid_args))}")
    defaults = {name: p.default for name, p in signature.parameters.items() if name != "self"}
    return {**defaults, **SIAMMAE_PRESETS[arch], **overrides}


def preset_of(model_args: Mapping) -> tuple[str | None, dict]:
    """The preset closest to `model_args` and the arguments that differ from it ((None, all) if none fits)."""
    best: tuple[str | None, dict] = (None, dict(model_args))
    for arch in SIAMMAE_PRESETS:
        base = model_args_for(arch)
        if set(model_args) - set(base):
            continue
        diff = {k: v for k, v in model_args.items() if base.get(k) != v}
        if best[0] is None or len(diff) < len(best[1]):
            best = (arch, diff)
    return best


def create_model(arch: str, pretrained: str | os.PathLike | None = None, **overrides) -> SiamMAE:
    """A SiamMAE preset, optionally with its encoder initialised from an official MAE checkpoint.

    `overrides` replace the preset's constructor arguments (e.g. `img_size=112, decoder_type="cross"`).
    `pretrained` loads the encoder weights of an MAE checkpoint (encoder-only or encoder+decoder file;
    the MAE decoder is dropped, the cross decoder starts from scratch) and prints what was loaded.
    """
    model = SiamMAE(**model_args_for(arch, **overrides))
    if pretrained is not None:
        report = load_mae_encoder(model, pretrained)
        print(f"{arch}: encoder from {pretrained}: {report}")
    return model


def load_mae_encoder(model: SiamMAE, checkpoint: str | os.PathLike | Mapping) -> LoadReport:
    """Load an MAE checkpoint's encoder (official keys) into `model.encoder`; every encoder key must be there."""
    return load_mae_weights(model.encoder, checkpoint, allowed_missing_prefixes=(), ignore_prefixes=DECODER_PREFIXES)

def encoder_shape(model: SiamMAE) -> tuple[int, int, int, int]:
    """(patch, width, depth, heads) of the encoder: the key of TIMM_VITS."""
    enc = model.encoder
    return enc.patch_size, enc.embed_dim, len(enc.blocks), enc.num_heads


def timm_arch(model: SiamMAE) -> str | None:
    """The name of timm's ViT with the encoder's shape (None when timm has none, e.g. siammae_tiny's 4 blocks)."""
    enc = model.encoder
    if enc.in_chans != 3 or enc.blocks[0].mlp.fc1.out_features != 4 * enc.embed_dim:
        return None
    return TIMM_VITS.get(encoder_shape(model))


def encoder_to_timm(model: SiamMAE, num_classes: int = 1000) -> VisionTransformer:
    """The trained encoder as a plain timm VisionTransformer (cls-token pooling, a fresh `num_classes` head).

    Every encoder weight is loaded; only the classifier head (none when num_classes=0) is left as
    timm initialises it. `forward_features` of the result equals `model.encode`.
    """
    enc = model.encoder
    vit = VisionTransformer(
        img_size=model.img_size, patch_size=enc.patch_size, in_chans=enc.in_chans, num_classes=num_classes,
        global_pool="token", embed_dim=enc.embed_dim, depth=len(enc.blocks), num_heads=enc.num_heads,
        mlp_ratio=enc.blocks[0].mlp.fc1.out_features / enc.embed_dim, qkv_bias=True, norm_layer=LayerNorm6,
        dynamic_img_size=True,
    )
    result = vit.load_state_dict(enc.state_dict(), strict=False)
    head_keys = {k for k in vit.state_dict() if k.startswith("head.")}
    if result.unexpected_keys or set(result.missing_keys) != head_keys:
        raise RuntimeError(
            f"encoder does not map onto timm's VisionTransformer: missing {result.missing_keys}, "
            f"unexpected {result.unexpected_keys}"
        )
    return vit
