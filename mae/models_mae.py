"""Masked Autoencoder with a ViT backbone (He et al., CVPR 2022).

Our implementation on timm's `Block` and `PatchEmbed`. Keyword arguments, defaults, parameter
names and shapes follow facebookresearch/mae's `models_mae.py`, so its checkpoints load unchanged
(see `mae.pretrained.load_mae_weights`). Beyond the original: `forward_features` runs the unmasked
encoder at any input size divisible by the patch size, and `get_last_selfattention` returns the
last block's attention weights (for attention-map plots).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block

from mae.pos_embed import get_2d_sincos_pos_embed, resize_pos_embed

NORM_PIX_EPS = 1.0e-6  # MAE's: added to the variance of a target patch


def patch_statistics(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch mean and standard deviation of (N, L, p*p*C) patches, as MAE's norm-pix targets use them.

    -> mean (N, L, 1), std (N, L, 1) with std = sqrt(unbiased variance + 1e-6).
    """
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return mean, (var + NORM_PIX_EPS) ** 0.5


def normalize_patches(patches: torch.Tensor) -> torch.Tensor:
    """MAE's norm-pix targets: each patch minus its mean, over its standard deviation."""
    mean, std = patch_statistics(patches)
    return (patches - mean) / std


def insert_mask_tokens(x: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
    """(N, 1 + L_keep, D) cls + visible tokens -> (N, 1 + L, D) with `mask_token` in the removed places.

    `ids_restore` (N, L) is what `random_masking` returned: it puts the shuffled order back.
    """
    N, L = ids_restore.shape
    mask_tokens = mask_token.to(x.dtype).expand(N, L + 1 - x.shape[1], -1)
    x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)  # (N, L, D), shuffled order
    x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # unshuffle
    return torch.cat([x[:, :1, :], x_], dim=1)  # cls first


class MAEEncoder(nn.Module):
    """The encoder half of MAE: patch embedding, cls token, fixed position table, blocks, final norm.

    Its parameter names are those of the official MAE (and of timm's VisionTransformer), so the
    encoder loads MAE checkpoints and its weights load into timm. SiamMAE shares one of these
    between its two frames.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, strict_img_size=False)
        self.grid_size: tuple[int, int] = tuple(self.patch_embed.grid_size)
        self.num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, embed_dim), requires_grad=False)  # fixed
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth)]
        )
        self.norm = norm_layer(embed_dim)
        self.initialize_encoder_weights()

    def initialize_encoder_weights(self) -> None:
        """MAE's initialisation: sin-cos position table, xavier for linears and the patch projection."""
        pos = get_2d_sincos_pos_embed(self.pos_embed.shape[-1], self.grid_size, cls_token=True)
        self.pos_embed.data.copy_(torch.from_numpy(pos).float().unsqueeze(0))
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))  # as a linear layer, not a conv
        nn.init.normal_(self.cls_token, std=0.02)
        self.apply(init_linear_and_norm)

    # ------------------------------------------------------------- patches
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, h*w, p*p*C), patches in row-major order, pixels as (p, p, C)."""
        p, c = self.patch_size, self.in_chans
        n, _, H, W = imgs.shape
        h, w = self._grid_of(H, W)
        x = imgs.reshape(n, c, h, p, w, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(n, h * w, p * p * c)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """(N, h*w, p*p*C) -> (N, C, h*p, w*p); `grid` = (h, w), square when omitted."""
        p, c = self.patch_size, self.in_chans
        if grid is None:
            h = w = int(round(x.shape[1] ** 0.5))
        else:
            h, w = grid
        if h * w != x.shape[1]:
            raise ValueError(f"{x.shape[1]} patches do not form a {h}x{w} grid")
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def _grid_of(self, H: int, W: int) -> tuple[int, int]:
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"image size {H}x{W} is not divisible by the patch size {p}")
        return H // p, W // p

    # ------------------------------------------------------------- masking
    @staticmethod
    def random_masking(
        x: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep `int(L * (1 - mask_ratio))` random tokens per sample (independent noise per sample).

        x: (N, L, D) -> x_kept (N, L_keep, D), mask (N, L) with 0 kept / 1 removed,
        ids_restore (N, L) that puts shuffled tokens back in place.
        """
        N, L, D = x.shape
        len_keep = int(L * (1 - mask_ratio))
        noise = torch.rand(N, L, device=x.device, generator=generator)  # (N, L) in [0, 1)
        ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
        mask = torch.ones(N, L, device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return x_kept, mask, ids_restore

    # ------------------------------------------------------------- encoder
    def pos_embed_for(self, grid: tuple[int, int], mode: str = "size") -> torch.Tensor:
        """(1, 1 + h*w, D) position table for a patch grid, resized from the training grid if needed
        (`mode`: see `mae.pos_embed.resize_pos_embed`)."""
        return resize_pos_embed(self.pos_embed, self.grid_size, grid, mode=mode)

    def embed_patches(self, imgs: torch.Tensor, pos_mode: str = "size") -> tuple[torch.Tensor, torch.Tensor]:
        """Patch tokens with position embeddings (N, h*w, D) and the cls position (1, 1, D)."""
        grid = self._grid_of(*imgs.shape[-2:])
        pos = self.pos_embed_for(grid, pos_mode)
        x = self.patch_embed(imgs) + pos[:, 1:, :]
        return x, pos[:, :1, :]

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """Transformer blocks and the final norm on a token sequence (N, T, D)."""
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the visible patches: (N, 1 + L_keep, D) latent, (N, L) mask, (N, L) ids_restore."""
        x, cls_pos = self.embed_patches(imgs)  # (N, L, D)
        x, mask, ids_restore = self.random_masking(x, mask_ratio, generator)  # (N, L_keep, D)
        cls = (self.cls_token + cls_pos).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)  # (N, 1 + L_keep, D)
        return self.forward_blocks(x), mask, ids_restore

    def forward_features(self, imgs: torch.Tensor, pos_mode: str = "size") -> torch.Tensor:
        """The unmasked encoder at any size divisible by the patch size: (N, 1 + h*w, D), cls first.

        `pos_mode` says how the position table is resized to other grids ("size" or "dino").
        """
        x, cls_pos = self.embed_patches(imgs, pos_mode)
        cls = (self.cls_token + cls_pos).expand(x.shape[0], -1, -1)
        return self.forward_blocks(torch.cat([cls, x], dim=1))

    @torch.no_grad()
    def get_last_selfattention(self, imgs: torch.Tensor) -> torch.Tensor:
        """Attention weights of the last block over the unmasked tokens: (N, heads, 1 + h*w, 1 + h*w)."""
        x, cls_pos = self.embed_patches(imgs)
        x = torch.cat([(self.cls_token + cls_pos).expand(x.shape[0], -1, -1), x], dim=1)
        for blk in self.blocks[:-1]:
            x = blk(x)
        last = self.blocks[-1]
        attn = last.attn
        y = last.norm1(x)
        N, T, D = y.shape
        qkv = attn.qkv(y).reshape(N, T, 3, attn.num_heads, D // attn.num_heads).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])  # (N, heads, T, d)
        return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


MAE_DECODER_DIMS = (512, 8, 16)  # the official MAE decoder: width, depth, heads


class MaskedAutoencoderViT(MAEEncoder):
    """MAE: the ViT encoder on the visible patches, a light ViT decoder that predicts the masked ones."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        decoder_embed_dim: int = MAE_DECODER_DIMS[0],
        decoder_depth: int = MAE_DECODER_DIMS[1],
        decoder_num_heads: int = MAE_DECODER_DIMS[2],
        mlp_ratio: float = 4.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        norm_pix_loss: bool = False,
    ) -> None:
        super().__init__(img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, norm_layer)
        self.norm_pix_loss = norm_pix_loss
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, self.num_patches + 1, decoder_embed_dim), requires_grad=False
        )  # fixed sin-cos
        self.decoder_blocks = nn.ModuleList(
            [
                Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
                for _ in range(decoder_depth)
            ]
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans, bias=True)
        self.initialize_decoder_weights()  # the encoder was initialised by MAEEncoder

    def initialize_weights(self) -> None:
        """Encoder and decoder initialised as the official MAE."""
        self.initialize_encoder_weights()
        self.initialize_decoder_weights()

    def initialize_decoder_weights(self) -> None:
        dec_pos = get_2d_sincos_pos_embed(self.decoder_pos_embed.shape[-1], self.grid_size, cls_token=True)
        self.decoder_pos_embed.data.copy_(torch.from_numpy(dec_pos).float().unsqueeze(0))
        nn.init.normal_(self.mask_token, std=0.02)
        for module in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            module.apply(init_linear_and_norm)

    # ------------------------------------------------------------- decoder
    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """(N, 1 + L_keep, D) latent -> (N, L, p*p*C) predicted pixels (cls removed)."""
        x = self.decoder_embed(x)  # (N, 1 + L_keep, Dd)
        x = insert_mask_tokens(x, self.mask_token, ids_restore)  # (N, 1 + L, Dd)
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        return self.decoder_pred(x)[:, 1:, :]  # (N, L, p*p*C)

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error on the removed patches; per-patch normalised targets with norm_pix_loss."""
        target = self.patchify(imgs)  # (N, L, p*p*C)
        if self.norm_pix_loss:
            target = normalize_patches(target)
        loss = ((pred - target) ** 2).mean(dim=-1)  # (N, L) per patch
        return (loss * mask).sum() / mask.sum()

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float = 0.75
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio)
        pred = self.forward_decoder(latent, ids_restore)  # (N, L, p*p*3)
        loss = self.forward_loss(imgs, pred, mask)
        return loss, pred, mask


def init_linear_and_norm(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)  # as the official (JAX ViT) init
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.bias, 0)
        nn.init.constant_(m.weight, 1.0)


LayerNorm6 = partial(nn.LayerNorm, eps=1e-6)  # MAE's and timm ViT's norm


def _mae_vit(patch_size: int, embed_dim: int, depth: int, num_heads: int, **kwargs) -> MaskedAutoencoderViT:
    """An MAE ViT with the official decoder (MAE_DECODER_DIMS) unless `kwargs` say otherwise."""
    kwargs = {"mlp_ratio": 4.0, "norm_layer": LayerNorm6, **kwargs}
    return MaskedAutoencoderViT(patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads, **kwargs)


def mae_vit_small_patch16(**kwargs) -> MaskedAutoencoderViT:
    return _mae_vit(16, 384, 12, 6, **kwargs)


def mae_vit_small_patch8(**kwargs) -> MaskedAutoencoderViT:
    return _mae_vit(8, 384, 12, 6, **kwargs)


def mae_vit_base_patch16(**kwargs) -> MaskedAutoencoderViT:
    return _mae_vit(16, 768, 12, 12, **kwargs)


def mae_vit_large_patch16(**kwargs) -> MaskedAutoencoderViT:
    return _mae_vit(16, 1024, 24, 16, **kwargs)


def mae_vit_huge_patch14(**kwargs) -> MaskedAutoencoderViT:
    return _mae_vit(14, 1280, 32, 16, **kwargs)
