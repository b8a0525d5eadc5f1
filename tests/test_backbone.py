"""The MAE ViT backbone: official keys and sizes, masking, features, loading, download."""

from __future__ import annotations

import http.server
import os
import pickle
import threading
from functools import partial
from pathlib import Path

import pytest
import torch

import mae
from mae.models_mae import MAEEncoder, MaskedAutoencoderViT
from mae.pretrained import CheckpointError, download_pretrained_model, load_mae_weights
from tests.conftest import read_frames, sample_videos

CONSTRUCTORS = {  # name -> (patch, width, depth, heads)
    "mae_vit_small_patch16": (16, 384, 12, 6),
    "mae_vit_small_patch8": (8, 384, 12, 6),
    "mae_vit_base_patch16": (16, 768, 12, 12),
    "mae_vit_large_patch16": (16, 1024, 24, 16),
    "mae_vit_huge_patch14": (14, 1280, 32, 16),
}


def tiny_mae(**kwargs) -> MaskedAutoencoderViT:
    args = dict(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=32,
                decoder_depth=1, decoder_num_heads=4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
    return MaskedAutoencoderViT(**{**args, **kwargs})


def expected_shapes(patch: int, dim: int, depth: int, img: int = 224, dec: int = 512, dec_depth: int = 8) -> dict:
    L = (img // patch) ** 2
    shapes = {
        "cls_token": (1, 1, dim), "pos_embed": (1, L + 1, dim),
        "patch_embed.proj.weight": (dim, 3, patch, patch), "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,), "norm.bias": (dim,),
        "mask_token": (1, 1, dec), "decoder_pos_embed": (1, L + 1, dec),
        "decoder_embed.weight": (dec, dim), "decoder_embed.bias": (dec,),
        "decoder_norm.weight": (dec,), "decoder_norm.bias": (dec,),
        "decoder_pred.weight": (patch * patch * 3, dec), "decoder_pred.bias": (patch * patch * 3,),
    }
    for prefix, d, n in (("blocks", dim, depth), ("decoder_blocks", dec, dec_depth)):
        for i in range(n):
            b = f"{prefix}.{i}"
            shapes.update({
                f"{b}.norm1.weight": (d,), f"{b}.norm1.bias": (d,),
                f"{b}.attn.qkv.weight": (3 * d, d), f"{b}.attn.qkv.bias": (3 * d,),
                f"{b}.attn.proj.weight": (d, d), f"{b}.attn.proj.bias": (d,),
                f"{b}.norm2.weight": (d,), f"{b}.norm2.bias": (d,),
                f"{b}.mlp.fc1.weight": (4 * d, d), f"{b}.mlp.fc1.bias": (4 * d,),
                f"{b}.mlp.fc2.weight": (d, 4 * d), f"{b}.mlp.fc2.bias": (d,),
            })
    return shapes


@pytest.mark.parametrize("name", ["mae_vit_small_patch16", "mae_vit_small_patch8", "mae_vit_base_patch16"])
def test_constructor_keys_and_shapes(name: str) -> None:
    patch, dim, depth, heads = CONSTRUCTORS[name]
    model = getattr(mae, name)()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected_shapes(patch, dim, depth)
    assert model.blocks[0].attn.num_heads == heads and model.decoder_blocks[0].attn.num_heads == 16
    assert model.norm.eps == 1e-6 and model.decoder_norm.eps == 1e-6
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad


@pytest.mark.parametrize("name", ["mae_vit_large_patch16", "mae_vit_huge_patch14"])
def test_large_constructors_on_meta_device(name: str) -> None:
    patch, dim, depth, heads = CONSTRUCTORS[name]
    with torch.device("meta"):
        model = getattr(mae, name)()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected_shapes(patch, dim, depth)
    assert model.blocks[0].attn.num_heads == heads


def test_base_parameter_count_matches_official() -> None:
    assert sum(p.numel() for p in mae.mae_vit_base_patch16().parameters()) == 111_907_840


def test_sincos_pos_embed_matches_mae_formula() -> None:
    model = tiny_mae()
    pos = model.pos_embed[0]
    assert torch.all(pos[0] == 0)  # cls slot
    # token for grid cell (row 1, col 2): first half encodes the column, second half the row
    d, g = model.embed_dim, model.grid_size[1]
    omega = 1.0 / 10000 ** (torch.arange(d // 4, dtype=torch.float64) / (d / 4))
    col, row = 2.0, 1.0
    expected = torch.cat([torch.sin(col * omega), torch.cos(col * omega),
                          torch.sin(row * omega), torch.cos(row * omega)])
    torch.testing.assert_close(pos[1 + 1 * g + 2].double(), expected, rtol=0, atol=1e-6)


def test_patchify_roundtrip_square_and_rectangular() -> None:
    model = tiny_mae()
    imgs = torch.randn(2, 3, 64, 64)
    patches = model.patchify(imgs)
    assert patches.shape == (2, 16, 16 * 16 * 3)
    assert torch.equal(model.unpatchify(patches), imgs)
    rect = torch.randn(1, 3, 32, 80)
    assert torch.equal(model.unpatchify(model.patchify(rect), grid=(2, 5)), rect)
    # patch (0, 1) holds pixels [0:16, 16:32] laid out as (p, p, C)
    assert torch.equal(patches[0, 1].reshape(16, 16, 3), imgs[0, :, 0:16, 16:32].permute(1, 2, 0))


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.9, 0.95])
def test_random_masking_keeps_exact_count(ratio: float) -> None:
    x = torch.randn(8, 196, 4)
    kept, mask, ids_restore = MAEEncoder.random_masking(x, ratio)
    n_keep = int(196 * (1 - ratio))
    assert kept.shape == (8, n_keep, 4)
    assert torch.all(mask.sum(1) == 196 - n_keep)
    # kept tokens are exactly the unmasked ones, in shuffled order
    for i in range(8):
        visible = x[i][mask[i] == 0]
        assert sorted(map(tuple, visible.tolist())) == sorted(map(tuple, kept[i].tolist()))
    # ids_restore inverts the shuffle
    assert torch.equal(torch.sort(ids_restore, dim=1).values, torch.arange(196).expand(8, -1))


def test_random_masking_is_independent_per_sample() -> None:
    torch.manual_seed(0)
    _, mask, _ = MAEEncoder.random_masking(torch.zeros(16, 196, 1), 0.75)
    assert len({tuple(m.tolist()) for m in mask}) == 16


def test_forward_shapes_and_mask() -> None:
    model = tiny_mae()
    loss, pred, mask = model(torch.randn(3, 3, 64, 64), mask_ratio=0.75)
    assert pred.shape == (3, 16, 16 * 16 * 3) and mask.shape == (3, 16)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert torch.all(mask.sum(1) == 12)


def test_loss_counts_only_masked_patches() -> None:
    model = tiny_mae(norm_pix_loss=True)
    imgs = torch.randn(2, 3, 64, 64)
    pred = torch.randn(2, 16, 768)
    mask = torch.zeros(2, 16)
    mask[:, :5] = 1
    base = model.forward_loss(imgs, pred, mask)
    pred2 = pred.clone()
    pred2[:, 10:] += 5.0  # visible patches: no effect
    assert torch.equal(model.forward_loss(imgs, pred2, mask), base)
    pred2[:, 0] += 5.0  # a masked patch: changes the loss
    assert model.forward_loss(imgs, pred2, mask) > base


def test_loss_falls_when_overfitting_real_frames() -> None:
    torch.manual_seed(0)
    videos = sample_videos()
    assert videos, "dataset/sample is empty"
    imgs = torch.cat([read_frames(v, [0, 10], size=64) for v in videos[:2]])  # (4, 3, 64, 64), real frames
    model = tiny_mae(norm_pix_loss=True)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for step in range(150):
        torch.manual_seed(step % 4)  # a few fixed masks
        loss, _, _ = model(imgs, mask_ratio=0.75)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-4:]) / 4 < 0.6 * sum(losses[:4]) / 4, losses


def test_forward_features_equals_unmasked_encoder() -> None:
    model = tiny_mae().eval()
    imgs = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(imgs)
    assert feats.shape == (2, 17, 64)
    latent, mask, ids_restore = model.forward_encoder(imgs, mask_ratio=0.0)
    assert torch.all(mask == 0)
    # with nothing masked the encoder sees every token, in shuffled order
    unshuffled = torch.gather(latent[:, 1:], 1, ids_restore.unsqueeze(-1).expand(-1, -1, 64))
    torch.testing.assert_close(unshuffled, feats[:, 1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(latent[:, 0], feats[:, 0], rtol=1e-5, atol=1e-5)


def test_forward_features_at_non_square_size_interpolates_positions() -> None:
    model = tiny_mae().eval()
    feats = model.forward_features(torch.randn(1, 3, 48, 112))
    assert feats.shape == (1, 1 + 3 * 7, 64) and torch.isfinite(feats).all()
    pos = model.pos_embed_for((3, 7))
    assert pos.shape == (1, 22, 64)
    torch.testing.assert_close(model.pos_embed_for(model.grid_size), model.pos_embed)
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        model.forward_features(torch.randn(1, 3, 50, 64))


def test_last_selfattention_rows_are_distributions() -> None:
    model = tiny_mae().eval()
    attn = model.get_last_selfattention(torch.randn(1, 3, 32, 48))
    assert attn.shape == (1, 4, 7, 7)
    torch.testing.assert_close(attn.sum(-1), torch.ones(1, 4, 7))


def test_load_rejects_wrong_shape_with_clear_message() -> None:
    model = tiny_mae()
    sd = model.state_dict()
    sd["blocks.0.attn.qkv.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match=r"blocks\.0\.attn\.qkv\.weight: file \(3, 3\) vs model \(192, 64\)"):
        load_mae_weights(tiny_mae(), sd)
    sd = tiny_mae().state_dict()
    sd["head.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match="unexpected keys: head.weight"):
        load_mae_weights(tiny_mae(), sd)


def test_load_encoder_only_file_reports_missing_decoder(tmp_path: Path) -> None:
    source = tiny_mae()
    encoder_only = {k: v for k, v in source.state_dict().items() if not k.startswith(("decoder_", "mask_token"))}
    path = tmp_path / "mae_pretrain_tiny.pth"
    torch.save({"model": {f"module.{k}": v for k, v in encoder_only.items()}}, path)
    target = tiny_mae()
    report = load_mae_weights(target, path)
    assert "mask_token" in report.missing and "decoder_pred.weight" in report.missing
    assert all(k.startswith(("decoder_", "mask_token")) for k in report.missing)
    assert torch.equal(target.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)
    # an encoder key missing is an error, not a silent partial load
    del encoder_only["norm.weight"]
    with pytest.raises(CheckpointError, match="missing keys: norm.weight"):
        load_mae_weights(tiny_mae(), encoder_only)


def test_full_checkpoint_loads_into_encoder_alone() -> None:
    full = tiny_mae()
    encoder = MAEEncoder(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=4,
                         norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
    report = load_mae_weights(encoder, full.state_dict(), ignore_prefixes=("decoder_", "mask_token"))
    assert report.missing == []
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(encoder.eval().forward_features(x), full.eval().forward_features(x))


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": _RunsCode()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_mae_weights(tiny_mae(), path)


@pytest.fixture
def http_dir(tmp_path: Path):
    served = tmp_path / "served"
    served.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_from_local_server_then_skip(http_dir, tmp_path: Path) -> None:
    served, base = http_dir
    torch.save({"model": tiny_mae().state_dict()}, served / "mae_pretrain_tiny.pth")
    dest_dir = tmp_path / "ckpt"
    path = download_pretrained_model(f"{base}/mae_pretrain_tiny.pth", dest_dir)
    assert path == dest_dir / "mae_pretrain_tiny.pth"
    assert path.read_bytes() == (served / "mae_pretrain_tiny.pth").read_bytes()
    assert [p.name for p in dest_dir.iterdir()] == ["mae_pretrain_tiny.pth"]  # no temporary left
    load_mae_weights(tiny_mae(), path)
    (served / "mae_pretrain_tiny.pth").unlink()  # a second call must not need the server
    assert download_pretrained_model(f"{base}/mae_pretrain_tiny.pth", dest_dir) == path


def test_download_offline_is_a_clear_error(http_dir, tmp_path: Path) -> None:
    _, base = http_dir
    dest = tmp_path / "ckpt"
    with pytest.raises(CheckpointError, match="could not download"):
        download_pretrained_model(f"{base}/missing.pth", dest)
    with pytest.raises(CheckpointError, match="Are you offline"):
        download_pretrained_model("http://127.0.0.1:9/none.pth", dest)
    assert not any(dest.iterdir())  # no partial file left behind


def test_official_url_table() -> None:
    urls = mae.MAE_PRETRAINED_URLS
    assert urls["mae_pretrain_vit_base"] == "https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_base.pth"
    assert urls["mae_visualize_vit_large"].endswith("/visualize/mae_visualize_vit_large.pth")
    assert len(urls) == 5
