"""The SiamMAE model: shared encoder, asymmetric masking, cross decoders, loss, presets, loading."""

from __future__ import annotations

from functools import partial

import pytest
import torch

import mae
from mae.pretrained import CheckpointError
from ml.model import DECODER_TYPES, SIAMMAE_PRESETS, CrossDecoder, SiamMAE, create_model, encoder_to_timm
from ml.training.checkpoint import prepare_model, save_checkpoint
from tests.conftest import read_frames, sample_videos

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def small_model(**kwargs) -> SiamMAE:
    """Smaller than siammae_tiny, for tests that only need the wiring: 32x32 frames, 4x4 patches of 8."""
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32,
                decoder_depth=2, decoder_num_heads=2)
    return SiamMAE(**{**args, **kwargs})


def frames(n: int = 2, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randn(n, 3, size, size, generator=g)


def patch_slice(index: int, grid_w: int, p: int) -> tuple[slice, slice, slice, slice]:
    """Pixels of patch `index` (row-major) in an (N, C, H, W) tensor."""
    r, c = divmod(index, grid_w)
    return slice(None), slice(None), slice(r * p, (r + 1) * p), slice(c * p, (c + 1) * p)


# ----------------------------------------------------------------------------- the encoder's inputs
@pytest.mark.parametrize(("img_size", "ratio"), [(112, 0.95), (112, 0.75), (112, 0.0), (224, 0.95), (224, 0.9)])
def test_encoder_sees_all_of_f1_and_only_visible_tokens_of_f2(img_size: int, ratio: float) -> None:
    model = create_model("siammae_tiny", img_size=img_size, mask_ratio=ratio)
    lengths: list[int] = []
    model.encoder.blocks[0].register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    f1, f2 = frames(3, img_size)
    _, pred, mask = model(f1, f2)
    L = (img_size // 16) ** 2
    n_visible = int(L * (1 - ratio))
    assert lengths == [1 + L, 1 + n_visible]  # one pass per frame, cls + patches; no mask token inside
    assert torch.all(mask.sum(dim=1) == L - n_visible)
    assert pred.shape == (3, L, 16 * 16 * 3)
    if (img_size, ratio) == (224, 0.95):
        assert lengths[1] == 1 + 9  # int(196 * 0.05) = 9 visible patches at the paper's setting


def test_default_mask_ratio_is_the_papers_and_used_when_none_given() -> None:
    model = create_model("siammae_tiny")
    assert model.mask_ratio == 0.95
    _, _, mask = model(*frames(2, 112))
    assert torch.all(mask.sum(dim=1) == 49 - int(49 * 0.05))


def test_one_encoder_is_shared_by_both_frames() -> None:
    model = small_model()
    encoders = [m for m in model.modules() if isinstance(m, mae.MAEEncoder)]
    assert encoders == [model.encoder]
    keys = model.state_dict().keys()
    assert all(k.startswith(("encoder.", "decoder.")) for k in keys)
    assert "encoder.blocks.0.attn.qkv.weight" in keys and "encoder.pos_embed" in keys  # official MAE names
    # encode() is the shared encoder on whole frames
    f1, _ = frames()
    assert torch.equal(model.encode(f1), model.encoder.forward_features(f1))


def test_gradients_reach_the_shared_encoder_from_both_frames() -> None:
    torch.manual_seed(0)
    model = small_model(mask_ratio=0.5)
    f1, f2 = frames()
    latent1, latent2, mask, ids_restore, _ = model.forward_encoder(f1, f2)
    params = [p for p in model.encoder.parameters() if p.requires_grad]

    def encoder_grads(l1: torch.Tensor, l2: torch.Tensor) -> list[torch.Tensor]:
        loss = model.forward_loss(f2, model.forward_decoder(l1, l2, ids_restore), mask)
        return torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)

    full = encoder_grads(latent1, latent2)
    via_f1 = encoder_grads(latent1, latent2.detach())  # only f1's pass reaches the encoder
    via_f2 = encoder_grads(latent1.detach(), latent2)  # only f2's pass
    assert all(g is not None for g in via_f1 + via_f2)
    assert sum(g.abs().sum() for g in via_f1) > 0 and sum(g.abs().sum() for g in via_f2) > 0
    # one set of weights: the full gradient is the sum of what each frame's pass contributes
    for g, a, b in zip(full, via_f1, via_f2):
        torch.testing.assert_close(g, a + b, rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------------- the loss
@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_loss_depends_only_on_the_masked_patches_of_f2(norm_pix_loss: bool) -> None:
    model = small_model(norm_pix_loss=norm_pix_loss, mask_ratio=0.5)
    f1, f2 = frames()
    torch.manual_seed(3)
    loss, pred, mask = model(f1, f2)
    assert torch.allclose(loss, model.forward_loss(f2, pred, mask))  # forward's loss is this one
    grid_w, p = 4, 8
    visible, masked = (mask[0] == 0).nonzero()[0].item(), (mask[0] == 1).nonzero()[0].item()

    target = f2.clone()
    target[0][patch_slice(visible, grid_w, p)[1:]] += torch.randn(3, p, p) * 3.0
    assert torch.equal(model.forward_loss(target, pred, mask), loss)  # a visible patch: no effect

    target = f2.clone()
    target[0][patch_slice(masked, grid_w, p)[1:]] += torch.randn(3, p, p) * 3.0
    assert not torch.allclose(model.forward_loss(target, pred, mask), loss)  # a masked patch counts


def test_norm_pix_loss_normalises_each_target_patch() -> None:
    f1, f2 = frames()
    torch.manual_seed(1)
    normed = small_model(norm_pix_loss=True, mask_ratio=0.5)
    raw = small_model(norm_pix_loss=False, mask_ratio=0.5)
    raw.load_state_dict(normed.state_dict())
    _, pred, mask = normed(f1, f2)
    masked = (mask[0] == 1).nonzero()[0].item()
    brighter = f2.clone()
    sl = patch_slice(masked, 4, 8)[1:]
    brighter[0][sl] = brighter[0][sl] * 2.5 + 1.0  # contrast and brightness of one masked patch
    # per-patch normalised targets ignore it (up to the 1e-6 in the variance); raw pixels do not
    torch.testing.assert_close(normed.forward_loss(brighter, pred, mask), normed.forward_loss(f2, pred, mask),
                               rtol=1e-5, atol=1e-6)
    assert not torch.allclose(raw.forward_loss(brighter, pred, mask), raw.forward_loss(f2, pred, mask))
    # and with pred equal to the normalised target of every patch the loss is zero
    target = normed.encoder.patchify(f2)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    assert normed.forward_loss(f2, target, mask).item() < 1e-10
    assert raw.forward_loss(f2, raw.encoder.patchify(f2), mask).item() == 0.0


# ----------------------------------------------------------------------------- the decoder
@pytest.mark.parametrize("decoder_type", DECODER_TYPES)
def test_prediction_reads_f1(decoder_type: str) -> None:
    model = small_model(decoder_type=decoder_type, mask_ratio=0.75)
    f1, f2 = frames(seed=0)
    noise, _ = frames(seed=1)
    with torch.no_grad():
        torch.manual_seed(0)
        _, pred, mask = model(f1, f2)
        torch.manual_seed(0)
        _, pred_noise, mask_noise = model(noise, f2)
    assert torch.equal(mask, mask_noise)  # the same masks, only f1 differs
    assert (pred - pred_noise).abs().mean() > 1e-2 * pred.abs().mean()


@pytest.mark.parametrize("decoder_type", DECODER_TYPES)
def test_f1_tokens_carry_decoder_position_embeddings(decoder_type: str) -> None:
    """Attention is blind to the order of the f1 tokens unless they carry position embeddings.

    The default gives them the decoder's (shared spatial frame with f2's queries); switched off,
    shuffling f1's patch tokens cannot change the prediction.
    """
    f1, f2 = frames()
    shuffle = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    perm = torch.cat([torch.zeros(1, dtype=torch.long), 1 + shuffle])  # cls stays first
    for with_pos in (True, False):
        torch.manual_seed(0)
        model = small_model(decoder_type=decoder_type, f1_decoder_pos_embed=with_pos, mask_ratio=0.75)
        with torch.no_grad():
            latent1, latent2, _, ids_restore, _ = model.forward_encoder(f1, f2)
            pred = model.forward_decoder(latent1, latent2, ids_restore)
            pred_shuffled = model.forward_decoder(latent1[:, perm], latent2, ids_restore)
        if with_pos:
            assert (pred - pred_shuffled).abs().max() > 1e-3
        else:
            torch.testing.assert_close(pred, pred_shuffled, rtol=1e-4, atol=1e-5)
    assert small_model().decoder.f1_decoder_pos_embed  # the default


def test_decoder_blocks_have_the_requested_layers() -> None:
    keys = {t: set(small_model(decoder_type=t).decoder.blocks[0].state_dict()) for t in DECODER_TYPES}
    assert {"cross_attn.q.weight", "cross_attn.kv.weight", "attn.qkv.weight", "mlp.fc1.weight"} <= keys["cross_self"]
    assert "cross_attn.q.weight" in keys["cross"] and not any(k.startswith("attn.") for k in keys["cross"])
    assert "attn.qkv.weight" in keys["joint"] and not any(k.startswith("cross_attn") for k in keys["joint"])
    dec = create_model("siammae_tiny").decoder
    assert (len(dec.blocks), dec.embed.out_features, dec.blocks[0].cross_attn.num_heads) == (2, 128, 4)


def test_non_square_frames_and_other_sizes() -> None:
    model = create_model("siammae_tiny", mask_ratio=0.75)
    f1, f2 = torch.randn(2, 3, 96, 160), torch.randn(2, 3, 96, 160)
    loss, pred, mask = model(f1, f2)
    assert pred.shape == (2, 6 * 10, 768) and mask.shape == (2, 60) and torch.isfinite(loss)
    assert model.encode(f1).shape == (2, 1 + 60, 192)
    latent1, latent2, _, ids_restore, _ = model.forward_encoder(f1, f2)
    assert model.forward_decoder(latent1, latent2, ids_restore, grid=(6, 10)).shape == (2, 60, 768)
    with pytest.raises(ValueError, match="do not both form the 8x8 grid"):
        model.forward_decoder(latent1, latent2, ids_restore)  # a square grid is assumed without `grid`


# ----------------------------------------------------------------------------- learning
def real_pair(size: int = 112) -> tuple[torch.Tensor, torch.Tensor]:
    video = sample_videos()[0]
    pair = (read_frames(video, [0, 8], size) - IMAGENET_MEAN) / IMAGENET_STD  # ImageNet-normalised
    return pair[:1], pair[1:]


@pytest.mark.parametrize("decoder_type", DECODER_TYPES)
def test_every_decoder_overfits_one_real_pair(decoder_type: str) -> None:
    f1, f2 = real_pair()
    torch.manual_seed(0)
    model = create_model("siammae_tiny", decoder_type=decoder_type)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    losses = []
    for _ in range(200):  # a fresh random mask every step (at 100, cross_self had not yet come to use f1)
        loss, pred, mask = model(f1, f2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    final = sum(losses[-10:]) / 10
    zero_prediction = model.forward_loss(f2, torch.zeros_like(pred), mask).item()  # ~1 on normalised patches
    assert final < 0.6 * losses[0], losses
    assert final < 0.75 * zero_prediction, (final, zero_prediction)
    with torch.no_grad():  # what it learnt uses f1: a noise f1 with the same masks does worse
        torch.manual_seed(1)
        loss_real, _, _ = model(f1.expand(8, -1, -1, -1), f2.expand(8, -1, -1, -1))
        torch.manual_seed(1)
        loss_noise, _, _ = model(torch.randn(8, *f1.shape[1:]), f2.expand(8, -1, -1, -1))
    assert loss_noise > loss_real


# ----------------------------------------------------------------------------- state and checkpoints
def test_state_dict_round_trip_gives_identical_outputs(tmp_path) -> None:
    torch.manual_seed(0)
    trained = create_model("siammae_tiny")
    torch.manual_seed(1)
    fresh = create_model("siammae_tiny")
    f1, f2 = frames(2, 112)

    def run(model: SiamMAE) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            torch.manual_seed(5)
            return model(f1, f2)

    assert not torch.equal(run(trained)[1], run(fresh)[1])
    torch.save(trained.state_dict(), tmp_path / "sd.pth")
    fresh.load_state_dict(torch.load(tmp_path / "sd.pth", weights_only=True))
    for a, b in zip(run(trained), run(fresh)):
        assert torch.equal(a, b)


def save_project_checkpoint(path, model: SiamMAE, arch: str, model_args: dict | None = None, epoch: int = 1) -> None:
    """A checkpoint of this project's format holding `model` (its model_args unless others are given)."""
    save_checkpoint({"model": model.state_dict(), "model_args": model_args or model.model_args,
                     "config": {"arch": arch}, "epoch": epoch}, path)


def test_prepare_model_loads_a_project_checkpoint(tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model("siammae_tiny", decoder_type="cross", norm_pix_loss=False)
    path = tmp_path / "run" / "checkpoint-last.pth"
    save_project_checkpoint(path, model, "siammae_tiny")
    for source, arch in ((path, "siammae_tiny"), (path, None), (path.parent, "siammae_tiny")):
        loaded = prepare_model(source, arch)
        assert loaded.decoder.decoder_type == "cross" and loaded.norm_pix_loss is False
        for k, v in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), k

    with pytest.raises(CheckpointError, match="'siammae_tiny'.*'siammae_vit_small_patch16'"):
        prepare_model(path, "siammae_vit_small_patch16")

    extra = create_model("siammae_tiny", decoder_type="cross", norm_pix_loss=False)
    extra.decoder.extra = torch.nn.Linear(1, 1, bias=False)
    save_project_checkpoint(tmp_path / "x.pth", extra, "siammae_tiny", model.model_args)
    with pytest.raises(CheckpointError, match=r"unexpected keys: decoder\.extra\.weight"):
        prepare_model(tmp_path / "x.pth", "siammae_tiny")

    # a cross decoder's weights recorded with cross_self arguments: self-attention is missing
    save_project_checkpoint(tmp_path / "wrong_args.pth", model, "siammae_tiny",
                            {**model.model_args, "decoder_type": "cross_self"})
    with pytest.raises(CheckpointError, match=r"missing keys: decoder\.blocks\.0\.attn\."):
        prepare_model(tmp_path / "wrong_args.pth", "siammae_tiny")


def tiny_mae(**kwargs) -> mae.MaskedAutoencoderViT:
    """An official-format MAE of siammae_tiny's encoder size."""
    args = dict(img_size=112, patch_size=16, embed_dim=192, depth=4, num_heads=3, decoder_embed_dim=64,
                decoder_depth=1, decoder_num_heads=4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
    return mae.MaskedAutoencoderViT(**{**args, **kwargs})


def test_mae_checkpoint_initialises_the_encoder_only(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    mae_model = tiny_mae()
    mae_sd = mae_model.state_dict()
    torch.save({"model": mae_sd}, tmp_path / "mae_visualize.pth")  # encoder + MAE decoder
    encoder_only = {k: v for k, v in mae_sd.items() if not k.startswith(("decoder_", "mask_token"))}
    torch.save({"model": encoder_only}, tmp_path / "mae_pretrain.pth")  # as the official pretrain files
    for name in ("mae_visualize.pth", "mae_pretrain.pth"):
        for model in (prepare_model(tmp_path / name, "siammae_tiny"),
                      create_model("siammae_tiny", pretrained=tmp_path / name)):
            for k, v in model.encoder.state_dict().items():
                assert torch.equal(v, mae_sd[k]), k
        assert capsys.readouterr().out.count("loaded all 54 tensors") == 2  # 6 + 12 per block: the whole encoder
    # a fresh decoder, the same encoder output as MAE's own encoder
    x = torch.randn(1, 3, 112, 112)
    torch.testing.assert_close(model.encode(x), mae_model.forward_features(x))

    extra = {**encoder_only, "head.weight": torch.zeros(10, 192)}
    torch.save({"model": extra}, tmp_path / "finetuned.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys: head\.weight"):
        prepare_model(tmp_path / "finetuned.pth", "siammae_tiny")
    torch.save({"model": tiny_mae(embed_dim=96).state_dict()}, tmp_path / "narrow.pth")
    with pytest.raises(CheckpointError, match=r"shape mismatches: .*cls_token"):
        create_model("siammae_tiny", pretrained=tmp_path / "narrow.pth")
    with pytest.raises(ValueError, match="not a checkpoint of this project: pass the preset"):
        prepare_model(tmp_path / "mae_pretrain.pth")


def test_encoder_loads_into_plain_timm_vision_transformer() -> None:
    from timm.models.vision_transformer import VisionTransformer

    model = create_model("siammae_tiny")
    vit = encoder_to_timm(model, num_classes=7)
    assert type(vit) is VisionTransformer
    result = vit.load_state_dict(model.encoder.state_dict(), strict=False)
    assert sorted(result.missing_keys) == ["head.bias", "head.weight"] and result.unexpected_keys == []
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_features(x), model.encode(x), rtol=1e-5, atol=1e-5)
        assert vit(x).shape == (2, 7)
    assert encoder_to_timm(model, num_classes=0)(x).shape == (2, 192)  # pooled cls features


# ----------------------------------------------------------------------------- bad arguments
def test_clear_errors_for_bad_arguments() -> None:
    model = small_model()
    f1, f2 = frames()
    for ratio in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\)"):
            small_model(mask_ratio=ratio)
    with pytest.raises(ValueError, match=r"f1_mask_ratio must be in \[0, 1\)"):
        small_model(f1_mask_ratio=1.0)
    with pytest.raises(ValueError, match="same shape"):
        model(f1, f2[:, :, :24])
    with pytest.raises(ValueError, match="same shape"):
        model(f1, f2[:1])
    with pytest.raises(ValueError, match="not divisible by the patch size 8"):
        model(f1[..., :30, :30], f2[..., :30, :30])
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        small_model(img_size=30)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        model(f1[0], f2[0])
    with pytest.raises(ValueError, match="unknown decoder_type 'mlp'; valid: cross_self, cross, joint"):
        small_model(decoder_type="mlp")
    with pytest.raises(ValueError, match="unknown decoder_type"):
        CrossDecoder(32, 32, 1, 2, num_patches=16, decoder_type="self")
    with pytest.raises(ValueError, match="unknown SiamMAE preset 'siammae_vit_huge'; valid: siammae_vit_small_patch16"):
        create_model("siammae_vit_huge")
    with pytest.raises(ValueError, match="unknown SiamMAE argument.*decoder_width"):
        create_model("siammae_tiny", decoder_width=64)
    with pytest.raises(ValueError, match="not divisible by 5 heads"):
        small_model(decoder_num_heads=5)


# ----------------------------------------------------------------------------- sizes
def block_params(d: int) -> int:
    """timm's ViT block (norms, qkv, proj, MLP 4x): 12 d^2 + 13 d."""
    return 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (4 * d * d + 4 * d) + (4 * d * d + d)


def decoder_block_params(d: int, decoder_type: str) -> int:
    cross = 2 * d + 2 * d + (d * d + d) + (2 * d * d + 2 * d) + (d * d + d)  # norm, context norm, q, kv, proj
    mlp = 2 * d + (4 * d * d + 4 * d) + (4 * d * d + d)
    self_attn = 2 * d + (3 * d * d + 3 * d) + (d * d + d)
    return {"cross_self": cross + self_attn + mlp, "cross": cross + mlp, "joint": self_attn + mlp}[decoder_type]


def expected_params(patch: int, dim: int, depth: int, img: int = 224, dec: int = 512, dec_depth: int = 8,
                    decoder_type: str = "cross_self") -> tuple[int, int]:
    """(encoder, decoder) parameter counts from the architecture, fixed sin-cos tables included."""
    L, pixels = (img // patch) ** 2, patch * patch * 3
    encoder = (pixels * dim + dim) + dim + (L + 1) * dim + depth * block_params(dim) + 2 * dim
    decoder = ((dim * dec + dec) + dec + (L + 1) * dec + dec_depth * decoder_block_params(dec, decoder_type)
               + 2 * dec + (dec * pixels + pixels))
    return encoder, decoder


# (encoder, decoder) parameters as printed in the README table (python -m bench.count_flops)
README_PARAMS = {
    "siammae_vit_small_patch16": (21_665_664, 34_333_952),
    "siammae_vit_small_patch8": (21_670_272, 34_339_520),
    "siammae_vit_base_patch16": (85_798_656, 34_530_560),
    "siammae_vit_large_patch16": (303_301_632, 34_661_632),
    "siammae_tiny": (1_937_280, 660_224),
}
TIMM_NAMES = {
    "siammae_vit_small_patch16": "vit_small_patch16_224",
    "siammae_vit_small_patch8": "vit_small_patch8_224",
    "siammae_vit_base_patch16": "vit_base_patch16_224",
    "siammae_vit_large_patch16": "vit_large_patch16_224",
}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("arch", list(SIAMMAE_PRESETS))
def test_preset_parameter_counts(arch: str) -> None:
    import timm

    preset = SIAMMAE_PRESETS[arch]
    with torch.device("meta"):
        model = create_model(arch)
    expected = expected_params(preset["patch_size"], preset["embed_dim"], preset["depth"],
                               img=preset.get("img_size", 224), dec=preset.get("decoder_embed_dim", 512),
                               dec_depth=preset.get("decoder_depth", 8))
    assert (count(model.encoder), count(model.decoder)) == expected == README_PARAMS[arch]
    assert model.encoder.blocks[0].attn.num_heads == preset["num_heads"]
    if arch in TIMM_NAMES:  # the encoder is exactly timm's ViT of that name without its classifier
        with torch.device("meta"):
            vit = timm.create_model(TIMM_NAMES[arch], pretrained=False, num_classes=0)
        assert count(vit) == expected[0]
    else:
        assert (model.img_size, model.decoder.blocks[0].cross_attn.num_heads) == (112, 4)


@pytest.mark.parametrize("decoder_type", ["cross", "joint"])
def test_decoder_variant_parameter_counts(decoder_type: str) -> None:
    with torch.device("meta"):
        model = create_model("siammae_vit_small_patch16", decoder_type=decoder_type)
    assert count(model.decoder) == expected_params(16, 384, 12, decoder_type=decoder_type)[1]
