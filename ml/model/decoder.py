"""The SiamMAE decoder: f2's tokens (visible + mask tokens) attend to f1's tokens, then predict f2's pixels.

    decoder = CrossDecoder(embed_dim=384, decoder_type="cross_self")
    pred = decoder(latent1, latent2, ids_restore)   # (N, L, p*p*3) predicted pixels of every patch of f2

Three decoder types (the paper's main one and its two ablations) and the named decoder sizes live here.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp  # importable: ml/__init__.py loaded mae's torchvision shim first
from timm.models.vision_transformer import Attention, Block

from mae.models_mae import MAE_DECODER_DIMS, LayerNorm6, init_linear_and_norm, insert_mask_tokens
from mae.pos_embed import get_2d_sincos_pos_embed, resize_pos_embed

DECODER_TYPES = ("cross_self", "cross", "joint")
# named decoder sizes, (width, depth, heads, MLP ratio): MAE's decoder, and the one CropMAE's SiamMAE re-run
# uses (PyTorch's decoder layer with its default 2048-wide feed-forward: MLP ratio 8 at width 256)
DECODER_SIZES: dict[str, tuple[int, int, int, float]] = {"mae": (*MAE_DECODER_DIMS, 4.0), "small": (256, 4, 8, 8.0)}


def check_decoder_type(decoder_type: str) -> None:
    """ValueError unless `decoder_type` is one of DECODER_TYPES (the decoder's and the config's one check)."""
    if decoder_type not in DECODER_TYPES:
        raise ValueError(f"unknown decoder_type {decoder_type!r}; valid: {', '.join(DECODER_TYPES)}")


def decoder_dims(size: str) -> tuple[int, int, int, float] | None:
    """(width, depth, heads, MLP ratio) of a decoder size: a name of DECODER_SIZES or "W/D/H[/M]" (M: MLP ratio,
    4 when left out); None for "preset" (the arch's own decoder)."""
    if size == "preset":
        return None
    if size in DECODER_SIZES:
        return DECODER_SIZES[size]
    try:
        parts = size.split("/")
        if len(parts) not in (3, 4):
            raise ValueError
        width, depth, heads = (int(v) for v in parts[:3])
        ratio = float(parts[3]) if len(parts) == 4 else 4.0
    except ValueError:
        raise ValueError(f"decoder_size must be preset, {', '.join(DECODER_SIZES)} or WIDTH/DEPTH/HEADS[/MLP_RATIO] "
                         f"(e.g. 384/6/12), got {size!r}") from None
    if min(width, depth, heads) < 1 or width % heads or not ratio > 0:
        raise ValueError(f"decoder_size {size}: width, depth, heads and MLP ratio must be positive, width divisible "
                         f"by heads")
    return width, depth, heads, ratio


# ----------------------------------------------------------------------------- decoder layers
class CrossAttention(nn.Module):
    """Multi-head attention of query tokens (N, T, D) over context tokens (N, S, D).

    With `keep_attention` set, the attention weights of the last call are kept in `attention`
    (N, heads, T, S) (computed explicitly instead of by the fused kernel: for analysis, not training).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.keep_attention = False
        self.attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        N, T, D = x.shape
        S, h = context.shape[1], self.num_heads
        q = self.q(x).reshape(N, T, h, D // h).transpose(1, 2)  # (N, h, T, d)
        k, v = self.kv(context).reshape(N, S, 2, h, D // h).permute(2, 0, 3, 1, 4)  # 2 x (N, h, S, d)
        if self.keep_attention:
            weights = (q @ k.transpose(-2, -1) * (D // h) ** -0.5).softmax(dim=-1)  # (N, h, T, S)
            self.attention = weights.detach()
            x = weights @ v
        else:
            x = F.scaled_dot_product_attention(q, k, v)  # (N, h, T, d)
        return self.proj(x.transpose(1, 2).reshape(N, T, D))


class CrossBlock(nn.Module):
    """Pre-norm residual decoder block: cross-attention to the context, [self-attention], MLP.

    With `self_attention` (the paper's cross-self decoder) the queries also attend to each other
    between the cross-attention and the MLP; without it, this is the cross decoder's block.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        self_attention: bool = True,
        norm_layer: type[nn.Module] = LayerNorm6,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.norm_context = norm_layer(dim)
        self.cross_attn = CrossAttention(dim, num_heads)
        if self_attention:
            self.norm2 = norm_layer(dim)
            self.attn = Attention(dim, num_heads, qkv_bias=True)  # timm's: scaled_dot_product_attention
        self.self_attention = self_attention
        self.norm3 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.cross_attn(self.norm1(x), self.norm_context(context))
        if self.self_attention:
            x = x + self.attn(self.norm2(x))
        return x + self.mlp(self.norm3(x))


class CrossDecoder(nn.Module):
    """Predicts f2's pixels from f2's visible tokens and f1's tokens (both as the encoder returns them).

    decoder_type:
      "cross_self": per block cross-attention (queries f2, keys/values f1), self-attention among f2, MLP.
      "cross":      cross-attention and MLP only.
      "joint":      self-attention over f1's and f2's tokens together; predictions read from f2's part.
    f2's sequence is MAE's: cls token, then one token per patch (the encoded visible ones and the mask
    token elsewhere), each with the fixed sin-cos decoder position embedding. f1's projected tokens get
    the same position embeddings when `f1_decoder_pos_embed` (the default), so that queries and keys
    share one spatial frame (no temporal embedding, as in the paper).
    """

    def __init__(
        self,
        embed_dim: int,
        decoder_embed_dim: int = DECODER_SIZES["mae"][0],
        depth: int = DECODER_SIZES["mae"][1],
        num_heads: int = DECODER_SIZES["mae"][2],
        mlp_ratio: float = DECODER_SIZES["mae"][3],
        num_patches: int = 196,
        decoder_type: str = "cross_self",
        patch_size: int = 16,
        in_chans: int = 3,
        f1_decoder_pos_embed: bool = True,
        norm_layer: type[nn.Module] = LayerNorm6,
    ) -> None:
        super().__init__()
        check_decoder_type(decoder_type)
        if decoder_embed_dim % num_heads:
            raise ValueError(f"decoder width {decoder_embed_dim} is not divisible by {num_heads} heads")
        side = round(num_patches**0.5)
        if side * side != num_patches:
            raise ValueError(f"num_patches {num_patches} is not a square grid")
        self.decoder_type = decoder_type
        self.f1_decoder_pos_embed = f1_decoder_pos_embed
        self.grid_size = (side, side)
        self.embed = nn.Linear(embed_dim, decoder_embed_dim)  # one projection for both frames
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False)
        if decoder_type == "joint":
            blocks = [Block(decoder_embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
                      for _ in range(depth)]
        else:
            blocks = [CrossBlock(decoder_embed_dim, num_heads, mlp_ratio, decoder_type == "cross_self", norm_layer)
                      for _ in range(depth)]
        self.blocks = nn.ModuleList(blocks)
        self.norm = norm_layer(decoder_embed_dim)
        self.pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """As MAE's decoder: sin-cos position table, xavier linears, unit norms, mask token N(0, 0.02)."""
        pos = get_2d_sincos_pos_embed(self.pos_embed.shape[-1], self.grid_size, cls_token=True)
        self.pos_embed.data.copy_(torch.from_numpy(pos).float().unsqueeze(0))
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(init_linear_and_norm)

    def forward(
        self,
        latent1: torch.Tensor,
        latent2: torch.Tensor,
        ids_restore: torch.Tensor,
        grid: tuple[int, int] | None = None,
        f1_keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """latent1 (N, 1 + L, D), latent2 (N, 1 + L_keep, D), ids_restore (N, L) -> (N, L, p*p*C).

        `grid` = (h, w) patch grid of the frames; a square one is assumed when omitted. `f1_keep` (N, L1)
        are the patch indices of f1's tokens when f1 was masked too (latent1 then (N, 1 + L1, D)).
        """
        if grid is None:
            side = round(ids_restore.shape[1] ** 0.5)
            grid = (side, side)
        f1_tokens = ids_restore.shape[1] if f1_keep is None else f1_keep.shape[1]
        if grid[0] * grid[1] != ids_restore.shape[1] or latent1.shape[1] != 1 + f1_tokens:
            raise ValueError(f"{ids_restore.shape[1]} patches of f2 and {latent1.shape[1] - 1} of f1 do not "
                             f"both form the {grid[0]}x{grid[1]} grid")
        pos = resize_pos_embed(self.pos_embed, self.grid_size, grid)  # (1, 1 + L, Dd)
        x1 = self.embed(latent1)  # (N, 1 + L1, Dd)
        if self.f1_decoder_pos_embed:
            if f1_keep is None:
                x1 = x1 + pos
            else:  # the position rows of f1's visible patches
                rows = torch.gather(pos[:, 1:].expand(x1.shape[0], -1, -1), 1,
                                    f1_keep.unsqueeze(-1).expand(-1, -1, pos.shape[-1]))
                x1 = x1 + torch.cat([pos[:, :1].expand(x1.shape[0], -1, -1), rows], dim=1)
        x2 = insert_mask_tokens(self.embed(latent2), self.mask_token, ids_restore) + pos  # (N, 1 + L, Dd)
        if self.decoder_type == "joint":
            x = torch.cat([x1, x2], dim=1)  # (N, 2 + 2L, Dd)
            for blk in self.blocks:
                x = blk(x)
            x2 = x[:, x1.shape[1]:, :]  # f2's part
        else:
            for blk in self.blocks:
                x2 = blk(x2, x1)  # f1 stays the same context in every block
        x2 = self.norm(x2)
        return self.pred(x2)[:, 1:, :]  # (N, L, p*p*C), cls dropped
