"""Figures: reconstruction rows, loss curves, attention maps, sampled pairs; saved as real PNGs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from dataset_loader.dataset import KineticsFramePairs  # noqa: E402
from ml.model import (
    create_model,  # noqa: E402
    reconstruct,
)
from ml.notebook.curves import PALETTE, epoch_of_step, plot_losses  # noqa: E402
from ml.notebook.plots import (
    last_layer_cls_attention,
    mask_image,
    plot_attention_maps,
    plot_pairs,
    plot_results_from_checkpoint,
    plot_sample,
    save_figure,
    to_display_image,
)
from ml.notebook.samples import load_samples  # noqa: E402
from ml.training.checkpoint import save_checkpoint  # noqa: E402
from ml.training.engine import evaluate_loss  # noqa: E402
from ml.training.run import Run, read_log  # noqa: E402
from tests.conftest import REPO, SAMPLE_DIR, read_frames, sample_videos  # noqa: E402

IMAGENET_MEAN = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)
IMAGENET_STD = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("siammae_tiny").eval()


@pytest.fixture(scope="module")
def real_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """Two frames 8 apart of a shipped clip, ImageNet-normalised (3, 112, 112)."""
    frames = read_frames(sample_videos()[0], [0, 8], size=112)  # (2, 3, 112, 112) in [0, 1]
    frames = (frames - IMAGENET_MEAN) / IMAGENET_STD
    return frames[0], frames[1]


def image_axes(fig: plt.Figure) -> list:
    return [ax for ax in fig.axes if ax.get_images()]


def test_plot_sample_shows_six_labelled_panels(tiny_model, real_pair) -> None:
    fig = plot_sample(real_pair, tiny_model, "cpu")
    panels = image_axes(fig)
    assert len(panels) == 6
    titles = [ax.get_title() for ax in panels]
    assert titles[0].startswith("f1") and titles[1].startswith("f2 and its mask")
    assert titles[2].startswith("target") and "normalised" in titles[2]
    assert titles[3].startswith("prediction") and "model output only" in titles[3]
    assert "TRUE" in titles[4]  # says that the colours of this panel come from f2's true patch statistics
    assert titles[5].startswith("squared error")
    assert "47 shaded" in titles[1] and "2 of 49 given" in titles[1]  # 95% of a 7x7 grid removed
    assert fig._suptitle is not None and "95%" in fig._suptitle.get_text()
    plt.close(fig)


def test_reconstruction_panels_draw_the_patch_grid_the_mask_and_the_error(tiny_model, real_pair) -> None:
    """The overlay darkens exactly the masked patches, the error map is the squared error of the prediction on
    them (NaN on the given ones), and every image panel carries the 7x7 patch grid."""
    f1, f2 = real_pair
    result = reconstruct(tiny_model, f1, f2, seed=0)
    fig = plot_sample(real_pair, tiny_model, "cpu", seed=0)
    panels = image_axes(fig)
    masked = mask_image(result["mask"], 112) > 0  # (112, 112), 16 px patches
    overlay = panels[1].get_images()[1].get_array()  # RGBA over f2
    assert np.array_equal(np.asarray(overlay[..., 3]) > 0, masked)
    error = np.asarray(panels[5].get_images()[0].get_array().filled(np.nan))
    expected = ((result["prediction"] - result["target_normalised"]) ** 2).mean(0).numpy()
    assert np.isnan(error[~masked]).all() and np.allclose(error[masked], expected[masked])
    assert f"mean {expected[masked].mean():.3f}" in panels[5].get_title()
    for ax in panels:
        assert len(ax.get_lines()) == 2 * 6  # 6 inner boundaries each way
    plt.close(fig)


def test_reconstruction_is_unnormalised_back_to_image_space(tiny_model, real_pair) -> None:
    """Re-normalising the shown reconstruction per patch gives back the model's loss; visible patches are f2's."""
    f1, f2 = real_pair
    result = reconstruct(tiny_model, f1, f2, seed=3)
    enc = tiny_model.encoder
    mask = result["mask"]  # (L,) 1 = removed
    target = enc.patchify(f2[None])[0]  # (L, p*p*3)
    recon = enc.patchify(result["reconstruction"][None])[0]
    # the shown reconstruction, normalised with the target patches' statistics, is the model's prediction
    mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
    pred = (recon - mean) / (var + 1e-6) ** 0.5
    norm_target = (target - mean) / (var + 1e-6) ** 0.5
    loss = (((pred - norm_target) ** 2).mean(-1) * mask).sum() / mask.sum()
    assert loss.item() == pytest.approx(result["loss"], rel=1e-4)
    pasted = enc.patchify(result["pasted"][None])[0]
    assert torch.allclose(pasted[mask == 0], target[mask == 0])
    assert torch.allclose(pasted[mask == 1], recon[mask == 1])
    # the same seed gives the same mask; another seed a different one
    assert torch.equal(reconstruct(tiny_model, f1, f2, seed=3)["mask"], mask)
    assert not torch.equal(reconstruct(tiny_model, f1, f2, seed=4)["mask"], mask)


def test_the_prediction_panel_holds_nothing_of_the_masked_patches(tiny_model, real_pair) -> None:
    """Changing what f2 shows under its masked patches changes the target and the true-statistics panel, never
    the prediction panel: that one is the model's output alone."""
    f1, f2 = real_pair
    mask = reconstruct(tiny_model, f1, f2, seed=2)["mask"]
    p = tiny_model.patch_size
    mask_image = tiny_model.encoder.unpatchify(mask[None, :, None].expand(-1, -1, p * p * 3).float())[0]
    other = f2 * (1 - mask_image) + (3 * f2.flip(-1) + 1) * mask_image  # same visible patches, other content
    a, b = reconstruct(tiny_model, f1, f2, seed=2), reconstruct(tiny_model, f1, other, seed=2)
    assert torch.equal(a["mask"], b["mask"])
    assert torch.equal(a["prediction"], b["prediction"])
    assert not torch.allclose(a["target_normalised"], b["target_normalised"])
    assert not torch.allclose(a["pasted"], b["pasted"])
    # the prediction panel is the model's per-patch normalised output on masked patches, black on visible ones
    torch.manual_seed(2)  # the mask of seed 2, as `reconstruct` draws it
    with torch.no_grad():
        _, pred, _ = tiny_model(f1[None], f2[None])
    shown = tiny_model.encoder.patchify(a["prediction"][None])[0]
    assert torch.allclose(shown[mask == 1], pred[0][mask == 1], atol=1e-6)
    assert (shown[mask == 0] == -2).all()


def test_reconstruction_of_a_model_predicting_plain_pixels(real_pair) -> None:
    """Without norm_pix_loss the prediction is in image space already: its error on removed patches is the loss."""
    torch.manual_seed(0)
    model = create_model("siammae_tiny", norm_pix_loss=False).eval()
    f1, f2 = real_pair
    result = reconstruct(model, f1, f2, seed=1)
    assert not result["norm_pix_loss"]
    target, recon = model.encoder.patchify(f2[None])[0], model.encoder.patchify(result["reconstruction"][None])[0]
    mask = result["mask"]
    loss = (((recon - target) ** 2).mean(-1) * mask).sum() / mask.sum()
    assert loss.item() == pytest.approx(result["loss"], rel=1e-4)
    fig = plot_sample(real_pair, model, seed=1)
    titles = [ax.get_title() for ax in image_axes(fig)]
    assert len(titles) == 5 and not any("TRUE" in t for t in titles)  # nothing of f2's statistics is used
    error = np.asarray(image_axes(fig)[4].get_images()[0].get_array().filled(np.nan))
    masked = mask_image(result["mask"], 112) > 0
    assert np.allclose(error[masked], ((result["reconstruction"] - f2) ** 2).mean(0).numpy()[masked], atol=1e-5)
    plt.close(fig)


def test_plot_results_from_checkpoint_loads_the_run_and_plots_every_sample(tmp_path: Path) -> None:
    torch.manual_seed(5)
    model = create_model("siammae_tiny", img_size=64, mask_ratio=0.75).eval()
    run = tmp_path / "checkpoints" / "tiny_run"
    save_checkpoint({"model": model.state_dict(), "model_args": model.model_args, "config": {"arch": "siammae_tiny"},
                     "epoch": 3}, run / "checkpoint-last.pth")
    samples = load_samples(REPO / "samples.pickle")
    small = [torch.nn.functional.interpolate(torch.stack([s[k] for s in samples]), size=64, mode="bilinear")
             for k in ("f1", "f2")]
    loader = [(small[0][:2], small[1][:2]), (small[0][2:], small[1][2:])]
    fig = plot_results_from_checkpoint(run, loader, "cpu", samples_path=REPO / "samples.pickle")
    panels = image_axes(fig)
    assert len(panels) == 6 * len(samples)
    # the checkpoint's weights, size and mask ratio were used: the losses shown are those of the saved model
    expected = reconstruct(model, samples[1]["f1"], samples[1]["f2"], seed=1)
    assert f"loss {expected['loss']:.3f}" in panels[6 + 3].get_title()
    assert "4 of 16 given" in panels[1].get_title()  # 25% of a 4x4 grid visible
    assert f"{evaluate_loss(model, loader, 'cpu'):.4f}" in fig._suptitle.get_text()
    assert [ax.get_ylabel().split("\n")[0] for ax in panels[::6]] == [
        f"{s['split']}: {Path(s['video']).stem}" for s in samples]
    plt.close(fig)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        plot_results_from_checkpoint(tmp_path / "elsewhere", None, "cpu")


def test_display_image_inverts_imagenet_normalisation(real_pair) -> None:
    f1, _ = real_pair
    rgb = to_display_image(f1)  # (H, W, 3) in [0, 1]
    expected = (f1 * IMAGENET_STD + IMAGENET_MEAN).permute(1, 2, 0).numpy()
    assert rgb.shape == (112, 112, 3)
    assert np.allclose(rgb, expected.clip(0, 1), atol=1e-6)
    with pytest.raises(ValueError, match="expected a frame"):
        to_display_image(torch.zeros(4, 8, 8))


def write_log(path: Path, header: str, rows: list[tuple]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header] + [" ".join(str(v) for v in row) for row in rows]) + "\n")


def test_plot_losses_two_runs(tmp_path: Path) -> None:
    losses, test_losses = tmp_path / "losses", tmp_path / "test_losses"
    rng = np.random.default_rng(0)
    for prefix, scale in (("run_a", 1.0), ("run_b", 0.8)):
        rows = [(e, (e - 1) * 20 + s, 1e-4 * ((e - 1) * 20 + s + 1),
                 scale * (1.5 - 0.1 * e) + 0.01 * rng.standard_normal()) for e in range(1, 4) for s in range(20)]
        write_log(losses / f"{prefix}.txt", "# epoch step lr loss", rows)
    write_log(test_losses / "run_a.txt", "# epoch loss", [(1, 1.45), (2, 1.36), (3, 1.3)])
    fig = plot_losses(["run_a", Run(tmp_path, "run_b")], tmp_path)
    ax_steps, ax_epochs = fig.axes[0], fig.axes[1]
    for ax in (ax_steps, ax_epochs):
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title() and ax.get_yscale() == "log"
        assert ax.get_legend() is not None
    labels = [t.get_text() for t in ax_epochs.get_legend().get_texts()]
    assert labels == ["run_a train (mean of the epoch)", "run_a held-out", "run_b train (mean of the epoch)"]
    train, held_out = ax_epochs.get_lines()[:2]
    assert train.get_color() != held_out.get_color() and train.get_marker() != held_out.get_marker()
    assert {train.get_color(), held_out.get_color()} <= set(PALETTE)  # the colour-blind-safe palette
    assert np.allclose(train.get_xdata(), [1, 2, 3])  # an epoch's mean sits at its end
    assert train.get_ydata()[0] == pytest.approx(np.mean([r[3] for r in read_rows(losses / "run_a.txt")][:20]))
    raw, smooth = ax_steps.get_lines()[:2]
    assert np.allclose(raw.get_xdata(), np.arange(1, 61))  # optimiser steps done
    assert raw.get_alpha() < 1 and smooth.get_linewidth() > raw.get_linewidth()
    assert np.allclose(smooth.get_ydata()[0], raw.get_ydata()[:6].mean())  # a tenth of the 60 steps
    lr_axis = next(ax for ax in fig.axes if ax.get_ylabel() == "learning rate")
    assert np.allclose(lr_axis.get_lines()[0].get_ydata(), 1e-4 * np.arange(1, 61))
    assert "run_a learning rate" in [t.get_text() for t in ax_steps.get_legend().get_texts()]
    plt.close(fig)
    with pytest.raises(FileNotFoundError, match="run_c"):
        plot_losses("run_c", tmp_path)


def test_the_step_and_epoch_axes_map_onto_each_other() -> None:
    """Epoch e ends after the steps it logged: 5 steps an epoch -> epoch 2 done at 10 steps."""
    log = {"epoch": np.repeat([1.0, 2.0, 3.0], 5), "step": np.arange(15.0)}
    steps, epochs = epoch_of_step(log)
    assert steps.tolist() == [0, 5, 10, 15] and epochs.tolist() == [0, 1, 2, 3]
    resumed = {"epoch": np.array([2.0, 2.0, 3.0]), "step": np.array([5.0, 6.0, 7.0])}  # a log read from epoch 2 on
    assert epoch_of_step(resumed)[0].tolist() == [0, 7, 8]


def read_rows(path: Path) -> list[list[float]]:
    return [[float(v) for v in line.split()] for line in path.read_text().splitlines()[1:]]


def test_read_log_shows_the_history_a_resumed_run_continues(tmp_path: Path) -> None:
    path = tmp_path / "run.txt"
    # steps 0-4, then a run resumed after step 1 (before its first save) wrote steps 2 and 3 again
    write_log(path, "# epoch step lr loss", [(1, 0, 1e-4, 2.0), (1, 1, 1e-4, 1.9), (2, 2, 1e-4, 1.8),
                                             (2, 3, 1e-4, 1.7), (3, 4, 1e-4, 1.65), (2, 2, 1e-4, 1.75),
                                             (2, 3, 1e-4, 1.6)])
    with open(path, "a") as f:
        f.write("3 4 1e-4\n")  # a line cut short by a crash
    log = read_log(path)
    assert list(log) == ["epoch", "step", "lr", "loss"]
    assert log["loss"].tolist() == [2.0, 1.9, 1.75, 1.6]
    path.write_text("0 1.0\n")
    with pytest.raises(ValueError, match="no header"):
        read_log(path)


def test_cls_attention_at_another_resolution(tiny_model, real_pair) -> None:
    """At 80x128 (not the training size) every head's cls attention covers the 5x8 patch grid."""
    frame = torch.nn.functional.interpolate(real_pair[0][None], size=(80, 128), mode="bilinear")[0]
    maps = last_layer_cls_attention(tiny_model, frame)
    heads = tiny_model.encoder.num_heads
    assert maps.shape == (heads, 5, 8)
    full = tiny_model.encoder.get_last_selfattention(frame[None])  # (1, heads, 41, 41)
    assert torch.allclose(maps.flatten(1), full[0, :, 0, 1:])
    assert (maps >= 0).all() and (maps.flatten(1).sum(-1) < 1).all()  # the rest goes to the cls token itself
    fig = plot_attention_maps(tiny_model, frame, ncols=4)
    panels = image_axes(fig)
    assert len(panels) == heads + 1
    assert [ax.get_title() for ax in panels[1:]] == [f"head {k + 1}" for k in range(heads)]
    plt.close(fig)


def test_plot_pairs_titles_each_pair_with_its_gap() -> None:
    dataset = KineticsFramePairs(SAMPLE_DIR, split="val", img_size=64, repeated_sampling=2, seed=3)
    fig = plot_pairs(dataset, n=3, pairs_per_row=2)
    panels = image_axes(fig)
    assert len(panels) == 6 and len(fig.axes) == 8  # 2 rows of 2 pairs, the last slot left empty
    for k in range(3):
        info = dataset.describe(k % len(dataset))  # with repeated sampling the first pair is shown
        (i, j), gap = info["indices"][0], info["gap_frames"][0]
        assert panels[2 * k].get_title().endswith(f"f1: frame {i}")
        assert panels[2 * k + 1].get_title().startswith(f"gap {gap} frames") and f"f2: frame {j}" in \
            panels[2 * k + 1].get_title()
    plt.close(fig)


def test_save_figure_writes_a_png_of_the_figure_size(tiny_model, real_pair, tmp_path: Path) -> None:
    fig = plot_sample(real_pair, tiny_model)
    width, height = (fig.get_size_inches() * 100).round().astype(int)
    path = save_figure(fig, tmp_path / "figs" / "sample.png")
    plt.close(fig)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (width, height)
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 24)) > 100  # a real picture, not a blank page
    with pytest.raises(ValueError, match="PNG"):
        save_figure(fig, tmp_path / "sample.jpg")
