"""Siamese Masked Autoencoders (Gupta et al., NeurIPS 2023) on the MAE ViT backbone.

Two frames of a video go through one shared MAE encoder: the past frame f1 whole, the future frame
f2 with most of its patches removed (95%). A decoder projects both to its width, puts mask tokens in
f2's missing places and predicts their pixels from f1 by cross-attention. The loss is MAE's: mean
squared error on f2's removed patches, per-patch normalised pixels by default.

    model = create_model("siammae_vit_small_patch16")
    loss, pred, mask = model(f1, f2)          # pred (N, L, p*p*3), mask (N, L) 1 = removed
    feats = model.encode(frames)              # (N, 1 + h*w, D): the encoder alone, for downstream use
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mae.models_mae import LayerNorm6, MAEEncoder, normalize_patches
from ml.model.decoder import DECODER_SIZES, CrossDecoder

MASK_RATIO = 0.95  # the paper's: 95% of f2's patches removed

class SiamMAE(nn.Module):
    """One MAE encoder shared by both frames, a cross decoder, and MAE's loss on f2's removed patches."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        decoder_embed_dim: int = DECODER_SIZES["mae"][0],
        decoder_depth: int = DECODER_SIZES["mae"][1],
        decoder_num_heads: int = DECODER_SIZES["mae"][2],
        mlp_ratio: float = 4.0,
        decoder_type: str = "cross_self",
        norm_pix_loss: bool = True,
        mask_ratio: float = MASK_RATIO,
        f1_decoder_pos_embed: bool = True,
        f1_mask_ratio: float = 0.0,
        decoder_mlp_ratio: float | None = None,
    ) -> None:
        super().__init__()
        # the model's whole configuration as plain data: checkpoints store it, `SiamMAE(**model_args)` rebuilds it
        self.model_args = {name: value for name, value in locals().items() if name not in ("self", "__class__")}
        check_mask_ratio(mask_ratio)
        check_mask_ratio(f1_mask_ratio, "f1_mask_ratio")
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by the patch size {patch_size}")
        if embed_dim % num_heads:
            raise ValueError(f"encoder width {embed_dim} is not divisible by {num_heads} heads")
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.mask_ratio = mask_ratio
        self.f1_mask_ratio = f1_mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.encoder = MAEEncoder(img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, LayerNorm6)
        self.decoder = CrossDecoder(
            embed_dim, decoder_embed_dim, decoder_depth, decoder_num_heads,
            mlp_ratio if decoder_mlp_ratio is None else decoder_mlp_ratio,
            num_patches=self.encoder.num_patches, decoder_type=decoder_type, patch_size=patch_size,
            in_chans=in_chans, f1_decoder_pos_embed=f1_decoder_pos_embed,
        )

    def no_weight_decay(self) -> set[str]:
        """Parameters AdamW leaves undecayed besides biases and norms (timm's convention): tokens, position tables."""
        return {"*pos_embed", "*cls_token", "*mask_token"}

    # ------------------------------------------------------------- stages
    def forward_encoder(
        self, f1: torch.Tensor, f2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Encode f1 (whole, as the paper) and f2's visible patches only (two calls of the same encoder); f2 loses
        `mask_ratio` of its patches (the model's one mask ratio, set at construction).

        -> latent1 (N, 1 + L, D), latent2 (N, 1 + L_keep, D), mask (N, L) 1 = removed, ids_restore (N, L),
        f1_keep: None, or with `f1_mask_ratio` > 0 (the masking ablation) the patch indices (N, L1) of
        f1's visible tokens, latent1 then (N, 1 + L1, D). Masks are drawn from the global torch RNG.
        """
        if self.f1_mask_ratio > 0:
            latent1, _, ids_restore1 = self.encoder.forward_encoder(f1, self.f1_mask_ratio)
            f1_keep = torch.argsort(ids_restore1, dim=1)[:, : latent1.shape[1] - 1]  # kept patches, in kept order
        else:
            latent1, f1_keep = self.encoder.forward_features(f1), None
        latent2, mask, ids_restore = self.encoder.forward_encoder(f2, self.mask_ratio)
        return latent1, latent2, mask, ids_restore, f1_keep

    def forward_decoder(
        self, latent1: torch.Tensor, latent2: torch.Tensor, ids_restore: torch.Tensor,
        grid: tuple[int, int] | None = None, f1_keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """-> (N, L, p*p*C) predicted pixels of every patch of f2 (per-patch normalised with norm_pix_loss)."""
        return self.decoder(latent1, latent2, ids_restore, grid, f1_keep)

    def forward_loss(self, f2: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over f2's removed patches only; targets per-patch normalised with norm_pix_loss."""
        target = self.encoder.patchify(f2)  # (N, L, p*p*C), from the (ImageNet-normalised) input
        if self.norm_pix_loss:
            target = normalize_patches(target)
        loss = ((pred.float() - target.float()) ** 2).mean(dim=-1)  # (N, L) per patch
        return (loss * mask).sum() / mask.sum()

    def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """f1, f2 (N, C, H, W) -> loss, pred (N, L, p*p*C), mask (N, L) with 1 = removed patch of f2."""
        grid = self._check_frames(f1, f2)
        latent1, latent2, mask, ids_restore, f1_keep = self.forward_encoder(f1, f2)
        pred = self.forward_decoder(latent1, latent2, ids_restore, grid, f1_keep)
        loss = self.forward_loss(f2, pred, mask)
        return loss, pred, mask

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """The encoder on whole frames: (N, C, H, W) -> (N, 1 + h*w, D), cls first (features for downstream)."""
        return self.encoder.forward_features(frames)

    def _check_frames(self, f1: torch.Tensor, f2: torch.Tensor) -> tuple[int, int]:
        if f1.shape != f2.shape:
            raise ValueError(f"f1 and f2 must have the same shape, got {tuple(f1.shape)} and {tuple(f2.shape)}")
        if f1.ndim != 4 or f1.shape[1] != self.in_chans:
            raise ValueError(f"frames must be (N, {self.in_chans}, H, W), got {tuple(f1.shape)}")
        H, W = f1.shape[-2:]
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"frame size {H}x{W} is not divisible by the patch size {p}")
        return H // p, W // p


def check_mask_ratio(mask_ratio: float, name: str = "mask_ratio") -> None:
    """ValueError unless 0 <= mask_ratio < 1 (the one check of a mask ratio: the model's and the config's)."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {mask_ratio}")
