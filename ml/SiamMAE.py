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

import inspect
import os
from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp  # importable: ml/__init__.py loaded mae's torchvision shim first
from timm.models.vision_transformer import Attention, Block, VisionTransformer

from mae.models_mae import LayerNorm6, MAEEncoder, init_linear_and_norm, insert_mask_tokens, normalize_patches
from mae.pos_embed import get_2d_sincos_pos_embed, resize_pos_embed
from mae.pretrained import (
    DECODER_PREFIXES,
    CheckpointError,
    LoadReport,
    extract_state_dict,
    load_checkpoint_file,
    load_mae_weights,
)

DECODER_TYPES = ("cross_self", "cross", "joint")
# named decoder sizes, (width, depth, heads, MLP ratio): MAE's decoder, and the one CropMAE's SiamMAE re-run
# uses (PyTorch's decoder layer with its default 2048-wide feed-forward: MLP ratio 8 at width 256)
DECODER_SIZES: dict[str, tuple[int, int, int, float]] = {"mae": (512, 8, 16, 4.0), "small": (256, 4, 8, 8.0)}


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
        decoder_embed_dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_patches: int = 196,
        decoder_type: str = "cross_self",
        patch_size: int = 16,
        in_chans: int = 3,
        f1_decoder_pos_embed: bool = True,
        norm_layer: type[nn.Module] = LayerNorm6,
    ) -> None:
        super().__init__()
        if decoder_type not in DECODER_TYPES:
            raise ValueError(f"unknown decoder_type {decoder_type!r}; valid: {', '.join(DECODER_TYPES)}")
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


# ----------------------------------------------------------------------------- the model
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
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        decoder_type: str = "cross_self",
        norm_pix_loss: bool = True,
        mask_ratio: float = 0.95,
        f1_decoder_pos_embed: bool = True,
        f1_mask_ratio: float = 0.0,
        decoder_mlp_ratio: float | None = None,
    ) -> None:
        super().__init__()
        # the model's whole configuration as plain data: checkpoints store it, `SiamMAE(**model_args)` rebuilds it
        self.model_args = {name: value for name, value in locals().items() if name not in ("self", "__class__")}
        _check_mask_ratio(mask_ratio)
        _check_mask_ratio(f1_mask_ratio)
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by the patch size {patch_size}")
        if embed_dim % num_heads:
            raise ValueError(f"encoder width {embed_dim} is not divisible by {num_heads} heads")
        if decoder_type not in DECODER_TYPES:
            raise ValueError(f"unknown decoder_type {decoder_type!r}; valid: {', '.join(DECODER_TYPES)}")
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
        self, f1: torch.Tensor, f2: torch.Tensor, mask_ratio: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Encode f1 (whole, as the paper) and f2's visible patches only (two calls of the same encoder).

        -> latent1 (N, 1 + L, D), latent2 (N, 1 + L_keep, D), mask (N, L) 1 = removed, ids_restore (N, L),
        f1_keep: None, or with `f1_mask_ratio` > 0 (the masking ablation) the patch indices (N, L1) of
        f1's visible tokens, latent1 then (N, 1 + L1, D). Masks are drawn from the global torch RNG.
        """
        if self.f1_mask_ratio > 0:
            latent1, _, ids_restore1 = self.encoder.forward_encoder(f1, self.f1_mask_ratio)
            f1_keep = torch.argsort(ids_restore1, dim=1)[:, : latent1.shape[1] - 1]  # kept patches, in kept order
        else:
            latent1, f1_keep = self.encoder.forward_features(f1), None
        latent2, mask, ids_restore = self.encoder.forward_encoder(f2, mask_ratio)
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

    def forward(
        self, f1: torch.Tensor, f2: torch.Tensor, mask_ratio: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """f1, f2 (N, C, H, W) -> loss, pred (N, L, p*p*C), mask (N, L) with 1 = removed patch of f2."""
        mask_ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        _check_mask_ratio(mask_ratio)
        grid = self._check_frames(f1, f2)
        latent1, latent2, mask, ids_restore, f1_keep = self.forward_encoder(f1, f2, mask_ratio)
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


def _check_mask_ratio(mask_ratio: float) -> None:
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")


# ----------------------------------------------------------------------------- presets and loading
SIAMMAE_PRESETS: dict[str, dict] = {
    # the paper's encoders; every decoder is MAE's size (512 wide, 8 deep, 16 heads) unless overridden
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


def prepare_model(chkpt_dir: str | os.PathLike, arch: str | None = None) -> SiamMAE:
    """Build a model and load a checkpoint into it: this project's, or an official MAE one.

    `chkpt_dir` is a checkpoint file, or a run folder (its latest checkpoint). A project checkpoint
    is verified (checksum, finite weights) and rebuilt from the constructor arguments stored in it;
    `arch` may then be omitted, and must match the checkpoint's preset when given. An MAE checkpoint
    (official keys, no `encoder.` prefix) fills the encoder of preset `arch` and leaves the decoder as
    initialised. Every key is checked: an unexpected key, a shape mismatch or a missing key is a
    CheckpointError naming them.
    """
    from ml.checkpoint import is_project_checkpoint, load_checkpoint
    from ml.run import find_checkpoint

    try:
        path = find_checkpoint(chkpt_dir)
    except FileNotFoundError as err:
        raise CheckpointError(str(err)) from None
    checkpoint = load_checkpoint_file(path)
    if is_project_checkpoint(checkpoint):
        checkpoint = load_checkpoint(path)  # verified
        saved_arch = checkpoint.get("config", {}).get("arch")
        if arch is not None and saved_arch != arch:
            raise CheckpointError(f"{path} holds a {saved_arch!r} model, not the requested {arch!r}")
        model = SiamMAE(**checkpoint["model_args"])
        load_mae_weights(model, checkpoint["model"], allowed_missing_prefixes=())
        return model
    if arch is None:
        raise ValueError(f"{path} is not a checkpoint of this project: pass the preset (arch) to build")
    model = create_model(arch)
    state_dict = extract_state_dict(checkpoint)
    if any(k.startswith(("encoder.", "decoder.")) for k in state_dict):  # a bare SiamMAE state dict
        load_mae_weights(model, state_dict, allowed_missing_prefixes=())
    else:
        report = load_mae_encoder(model, state_dict)
        print(f"{arch}: encoder from MAE checkpoint {path}: {report}")
    return model


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
