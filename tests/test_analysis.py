"""What the model learned: the f1 ablation with fixed masks, the decoder's own cross-attention, their figures."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from ml.model import create_model  # noqa: E402
from ml.notebook.analysis import (
    F1_CONDITIONS,
    FixedPairs,
    attention_locality,
    cross_attention,
    f1_ablation,
    f1_substitutes,
    fixed_pairs,
    format_f1_ablation,
    kept_cross_attention,
    masked_patch_loss,
    other_video_frames,
    textured_masked_patches,
)
from ml.notebook.plots import plot_cross_attention, plot_f1_ablation  # noqa: E402
from tests.conftest import SAMPLE_DIR  # noqa: E402


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("siammae_tiny", img_size=64, mask_ratio=0.75).eval()


@pytest.fixture(scope="module")
def pairs() -> FixedPairs:
    return fixed_pairs(str(SAMPLE_DIR), "val", img_size=64, pairs_per_video=2)


def test_fixed_pairs_are_the_same_every_time_and_name_their_videos(pairs) -> None:
    again = fixed_pairs(str(SAMPLE_DIR), "val", img_size=64, pairs_per_video=2)
    assert torch.equal(pairs.f1, again.f1) and torch.equal(pairs.f2, again.f2)
    assert pairs.f1.shape == pairs.f2.shape == (len(pairs), 3, 64, 64) and len(set(pairs.videos)) >= 2
    assert all(4 <= j - i for i, j in pairs.indices)


def test_another_videos_frame_comes_from_another_video(pairs) -> None:
    others = other_video_frames(pairs)
    for k in range(len(pairs)):
        source = [j for j in range(len(pairs)) if torch.equal(pairs.f1[j], others[k])]
        assert source and all(pairs.videos[j] != pairs.videos[k] for j in source)
    one_video = FixedPairs("x", pairs.f1[:2], pairs.f2[:2], (pairs.videos[0],) * 2, pairs.indices[:2])
    with pytest.raises(ValueError, match="one video only"):
        other_video_frames(one_video)
    substitutes = f1_substitutes(pairs)
    assert list(substitutes) == list(F1_CONDITIONS) and torch.equal(substitutes["f2 itself"], pairs.f2)
    grey = substitutes["a grey frame"]
    assert (grey - grey[:, :, :1, :1]).abs().max() == 0  # one colour everywhere


def test_every_row_of_the_ablation_uses_the_same_masks(model, pairs) -> None:
    """The masks come from the seed and the number of pairs only, never from f1: the rows differ by f1 alone."""
    masks = []
    for f1 in f1_substitutes(pairs).values():
        torch.manual_seed(0)
        with torch.no_grad():
            masks.append(model(f1, pairs.f2)[2])
    assert all(torch.equal(m, masks[0]) for m in masks)
    a = masked_patch_loss(model, pairs.f1, pairs.f2)
    assert masked_patch_loss(model, pairs.f1, pairs.f2) == a  # the same masks each call
    assert masked_patch_loss(model, pairs.f1, pairs.f2, mask_seed=1) != a  # other masks, another loss
    assert masked_patch_loss(model, pairs.f1, pairs.f2, batch_size=3) == pytest.approx(a, rel=1e-5)


def test_ablation_table_reads_f1_and_formats(model, pairs) -> None:
    table = f1_ablation(model, {"val": pairs})
    assert list(table) == list(F1_CONDITIONS) and all(set(row) == {"val"} for row in table.values())
    # even untrained, the decoder attends to f1: a different f1 gives a different loss
    assert len({round(row["val"], 6) for row in table.values()}) == len(F1_CONDITIONS)
    text = format_f1_ablation(table, {"val": pairs})
    true = table[F1_CONDITIONS[0]]["val"]
    assert f"{table['a grey frame']['val']:.3f} ({table['a grey frame']['val'] - true:+.3f})" in text
    assert f"val ({len(pairs)} pairs)" in text
    fig = plot_f1_ablation(table)
    assert len(fig.axes[0].patches) == len(F1_CONDITIONS)
    plt.close(fig)


def test_kept_attention_is_the_attention_the_model_uses(model, pairs) -> None:
    """The explicit path that keeps the weights computes what the fused kernel computes."""
    f1, f2 = pairs.f1[:2], pairs.f2[:2]
    torch.manual_seed(3)
    with torch.no_grad():
        fused = model(f1, f2)
    with kept_cross_attention(model) as layer:
        torch.manual_seed(3)
        with torch.no_grad():
            explicit = model(f1, f2)
        weights = layer.attention  # (N, heads, 1 + L, 1 + L)
    assert torch.allclose(fused[1], explicit[1], atol=1e-5) and torch.equal(fused[2], explicit[2])
    L = (64 // 16) ** 2
    assert weights.shape == (2, 4, 1 + L, 1 + L) and torch.allclose(weights.sum(-1), torch.ones(2, 4, 1 + L))
    assert layer.keep_attention is False and layer.attention is None  # restored on leaving
    result = cross_attention(model, pairs.f1[0], pairs.f2[0])
    assert result["attention"].shape == (4, L, L) and result["grid"] == (4, 4)
    assert torch.allclose(result["attention"].sum(-1), torch.ones(4, L))
    with pytest.raises(ValueError, match="no cross-attention"):
        cross_attention(create_model("siammae_tiny", img_size=64, decoder_type="joint"), pairs.f1[0], pairs.f2[0])


def test_a_decoder_that_looks_at_the_same_place_is_found_local(pairs) -> None:
    """A cross-attention made to match positions (tokens = one-hot position codes, one copy per head; identity
    query and key maps) is measured 100% local; the measure's chance level is the neighbourhood's share."""
    torch.manual_seed(0)
    local = create_model("siammae_tiny", img_size=64, mask_ratio=0.75, decoder_depth=1).eval()
    attention = local.decoder.blocks[-1].cross_attn
    width, heads, L = attention.q.in_features, attention.num_heads, 16
    codes = torch.zeros(1, 1 + L, width)
    for i in range(L):
        for h in range(heads):
            codes[0, 1 + i, h * (width // heads) + i] = 1.0  # position i, once in each head's channels
    with torch.no_grad():
        local.decoder.pos_embed.copy_(codes)
        local.decoder.embed.weight.zero_()  # tokens = the position codes alone
        local.decoder.embed.bias.zero_()
        local.decoder.mask_token.zero_()
        for linear in (attention.q, attention.kv):
            linear.weight.zero_()
            linear.bias.zero_()
        attention.q.weight.copy_(10 * torch.eye(width))
        attention.kv.weight[:width].copy_(torch.eye(width))
    found = attention_locality(local, pairs)
    assert found["peak_near"] == 1.0 and found["mass_near"] > 0.9
    # 4x4 grid, radius 1: corners see 4 patches, edges 6, the middle 9 -> (4*4 + 8*6 + 4*9) / 16 / 16
    assert found["uniform"] == pytest.approx((4 * 4 + 8 * 6 + 4 * 9) / 16 / 16, rel=0.15)
    torch.manual_seed(0)
    untrained = attention_locality(create_model("siammae_tiny", img_size=64, mask_ratio=0.75).eval(), pairs)
    assert untrained["peak_near"] < 1.0 and 0 < untrained["patches"] == found["patches"]


def test_textured_patches_are_masked_apart_and_the_figure_has_every_panel(model, pairs) -> None:
    f2 = pairs.f2[0]
    result = cross_attention(model, pairs.f1[0], f2)
    chosen = textured_masked_patches(f2, result["mask"], 16, count=3)
    assert 1 <= len(chosen) <= 3 and all(result["mask"][q] == 1 for q in chosen)
    assert all(max(abs(a // 4 - b // 4), abs(a % 4 - b % 4)) > 1 for a in chosen for b in chosen if a != b)
    fig = plot_cross_attention(pairs.f1[0], f2, {"trained": result, "untrained": result}, chosen, 16)
    assert len([ax for ax in fig.axes if ax.get_images()]) == len(chosen) * (1 + 2 + 4)
    plt.close(fig)
