"""Label propagation and the DAVIS / JHMDB / VIP evaluations on generated and real (davis_mini) data."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

import mae
from bench.bench_propagation import run_benchmark
from ml.checkpoint import save_checkpoint
from ml.davis_metrics import sequence_scores
from ml.evaluate import (
    VIP_CLASSES,
    confusion_matrix,
    davis_palette,
    davis_videos,
    evaluate_davis,
    evaluate_jhmdb,
    evaluate_vip,
    heatmap_keypoints,
    iou_per_class,
    keypoint_heatmaps,
    load_encoder,
    main,
    overlay_labels,
    pck,
    pck_distances,
    plot_propagation,
    read_label_png,
    write_label_png,
    write_synthetic_davis,
)
from ml.label_propagation import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FeatureExtractor,
    LabelPropagator,
    PixelEncoder,
    PropagationConfig,
    evaluation_size,
    neighbourhood_mask,
    one_hot,
    propagate_frame,
    propagate_sequence,
    propagation_config,
    upsample_labels,
)
from ml.SiamMAE import create_model

COLOUR = PixelEncoder(patch_size=4, pool=4)  # each 4x4 patch -> its mean colour: tracks the coloured discs


class CountingEncoder(PixelEncoder):
    """Pixel features that count the frames they encode, and can fail after `fail_after` frames (an interruption)."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__(patch_size=4, pool=4)
        self.frames = 0
        self.fail_after = fail_after

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        if self.fail_after is not None and self.frames >= self.fail_after:
            raise KeyboardInterrupt("interrupted")
        self.frames += imgs.shape[0]
        return super().forward_features(imgs)


@pytest.fixture(scope="module")
def synthetic_davis(tmp_path_factory) -> Path:
    return write_synthetic_davis(tmp_path_factory.mktemp("davis"), num_sequences=2, num_frames=8, size=(96, 160))


# ----------------------------------------------------------------- propagation core
def test_evaluation_size_rounds_to_the_patch() -> None:
    assert evaluation_size((480, 854), 16) == (480, 848)  # DAVIS 480p: 30 x 53 cells
    assert evaluation_size((480, 854), 8) == (480, 856)
    assert evaluation_size((240, 320), 16, (320, 320)) == (320, 320)
    assert evaluation_size((720, 1280), 16, 560) == (560, 992)  # short side 560, 995.6 -> 992


def test_propagate_frame_softmax_over_topk_by_hand() -> None:
    query = torch.tensor([[1.0, 0.0]])
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    out = propagate_frame(query, keys, labels, PropagationConfig(temperature=0.5, topk=2, radius=None))
    w = math.exp(2) / (math.exp(2) + 1)  # logits 1/0.5 and 0/0.5; the third key is not in the top 2
    assert out[0].tolist() == pytest.approx([w, 1 - w], abs=1e-6)


def test_chunked_affinity_gives_the_same_labels() -> None:
    g = torch.Generator().manual_seed(0)
    query = torch.nn.functional.normalize(torch.randn(60, 8, generator=g), dim=1)
    keys = torch.nn.functional.normalize(torch.randn(3 * 60, 8, generator=g), dim=1)
    labels = torch.rand(3 * 60, 4, generator=g)
    allowed = neighbourhood_mask((6, 10), 3.0)
    whole = propagate_frame(query, keys, labels, PropagationConfig(radius=3.0), allowed, 60)
    small_chunks = PropagationConfig(radius=3.0, max_affinity_elements=500)
    chunked = propagate_frame(query, keys, labels, small_chunks, allowed, 60)
    assert torch.allclose(whole, chunked, atol=1e-6)


def test_neighbourhood_restricts_queue_frames_and_optionally_the_first() -> None:
    assert neighbourhood_mask((1, 5), 2.0)[0].tolist() == [True, True, False, False, False]  # strictly closer
    # one feature everywhere except a distinct one at cell 0 (first frame) and cell 4 (queue frame)
    grid, D = (1, 5), 2
    feats = torch.tensor([[0.0, 1.0]]).repeat(5, 1)
    first, queued = feats.clone(), feats.clone()
    first[0] = torch.tensor([1.0, 0.0])
    queued[4] = torch.nn.functional.normalize(torch.tensor([1.0, 0.2]), dim=0)  # a little less similar
    first_labels = torch.zeros(2, 1, 5)
    first_labels[0] = 1
    first_labels[:, 0, 0] = torch.tensor([0.0, 1.0])  # class 1 only at the distinct cell of the first frame
    target = feats.clone()
    target[4] = torch.tensor([1.0, 0.0])  # the distinct feature, at cell 4
    for restrict_first, expected in ((False, 1.0), (True, 0.0)):
        config = PropagationConfig(temperature=0.01, topk=1, radius=2.0, restrict_first_frame=restrict_first)
        prop = LabelPropagator(first.reshape(*grid, D), first_labels, config)
        prop.queue.append((queued, torch.tensor([[1.0, 0.0]]).repeat(5, 1)))
        out = prop.step(target.reshape(*grid, D))
        # unrestricted, the best match is the first frame's cell 0 (class 1); restricted, cell 0 is
        # 4 cells away, so the queue frame's cell 4 (class 0) wins
        assert out[1, 0, 4].item() == pytest.approx(expected)


def test_queue_holds_at_most_queue_length_frames() -> None:
    feats = torch.nn.functional.normalize(torch.rand(3, 4, 5), dim=-1)
    prop = LabelPropagator(feats, torch.rand(2, 3, 4), PropagationConfig(queue_length=3))
    for _ in range(6):
        out = prop.step(feats)
    assert len(prop.queue) == 3 and out.shape == (2, 3, 4)


def test_one_hot_rejects_unknown_ids_and_ignores_void() -> None:
    ids = np.array([[0, 1], [255, 2]], np.uint8)
    oh = one_hot(ids, 3)
    assert oh[:, 1, 0].tolist() == [0, 0, 0] and oh[2, 1, 1] == 1 and oh.sum() == 3
    with pytest.raises(ValueError, match=r"label ids \[2\]"):
        one_hot(ids, 2)


def test_feature_extractor_gives_unit_patch_tokens_of_the_encoder() -> None:
    torch.manual_seed(0)
    encoder = mae.MAEEncoder(img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2)
    extractor = FeatureExtractor(encoder)
    frames = torch.rand(2, 3, 48, 80)
    feats = extractor(frames)
    assert feats.shape == (2, 3, 5, 32) and encoder.training  # evaluated in eval mode, left as it was
    assert torch.allclose(feats.norm(dim=-1), torch.ones(2, 3, 5), atol=1e-5)
    x = (frames - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        tokens = encoder.forward_features(x)[:, 1:]  # the cls token is dropped, patches in row-major order
    assert torch.allclose(feats.reshape(2, 15, 32), torch.nn.functional.normalize(tokens, dim=-1), atol=1e-5)
    with pytest.raises(TypeError, match="forward_features"):
        FeatureExtractor(torch.nn.Linear(2, 2))


def test_propagation_config_defaults_and_overrides() -> None:
    assert (propagation_config("davis").topk, propagation_config("davis").radius) == (7, 20.0)
    assert (propagation_config("vip").topk, propagation_config("vip").radius) == (10, 8.0)
    assert propagation_config("jhmdb").temperature == 0.7 and propagation_config("jhmdb").queue_length == 20
    assert propagation_config("davis", radius=0).radius is None
    with pytest.raises(ValueError, match="temperature"):
        propagation_config("davis", temperature=0)


# ----------------------------------------------------------------- label images
def test_png_write_and_read_keep_palette_and_ids(tmp_path: Path) -> None:
    ids = np.arange(12, dtype=np.uint8).reshape(3, 4)
    ids[0, 0] = 255
    custom = [7, 8, 9] + davis_palette()[3:]
    write_label_png(tmp_path / "a.png", ids, custom)
    back, palette = read_label_png(tmp_path / "a.png")
    assert (back == ids).all() and palette[:768] == custom
    with Image.open(tmp_path / "a.png") as img:
        assert img.mode == "P"
    assert davis_palette()[:12] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0]
    Image.new("RGB", (4, 3)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="not a label image"):
        read_label_png(tmp_path / "rgb.png")


def test_overlay_blends_palette_colours_on_labelled_pixels() -> None:
    frame = np.full((2, 2, 3), 100, np.uint8)
    ids = np.array([[0, 1], [2, 255]], np.uint8)
    out = overlay_labels(frame, ids, alpha=0.5)
    assert out[0, 0].tolist() == [100, 100, 100] and out[1, 1].tolist() == [100, 100, 100]
    assert out[0, 1].tolist() == [114, 50, 50] and out[1, 0].tolist() == [50, 114, 50]


# ----------------------------------------------------------------- DAVIS
def test_colour_features_track_every_generated_object(synthetic_davis: Path, tmp_path: Path) -> None:
    result = evaluate_davis(COLOUR, synthetic_davis, tmp_path / "out", progress=False)
    assert result["objects"] == 4 and result["sequences"] == 2
    assert result["J-Mean"] > 0.9 and result["F-Mean"] > 0.9
    rows = (tmp_path / "out" / "per-sequence_results-val.csv").read_text().splitlines()
    assert rows[0] == "Sequence,J-Mean,F-Mean" and len(rows) == 5
    for row in rows[1:]:
        assert float(row.split(",")[1]) > 0.8, row  # every object is tracked
    pred, palette = read_label_png(tmp_path / "out" / "masks" / "synthetic00" / "00005.png")
    gt, gt_palette = read_label_png(synthetic_davis / "Annotations" / "480p" / "synthetic00" / "00005.png")
    assert pred.shape == gt.shape and set(np.unique(pred)) <= {0, 1, 2} and palette[:9] == gt_palette[:9]
    fig = plot_propagation(synthetic_davis, tmp_path / "out", "synthetic00")
    assert len(fig.axes) == 8  # 2 rows (propagated, annotation) x 4 frames


def test_interrupted_run_continues_without_recomputing(synthetic_davis: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        evaluate_davis(CountingEncoder(fail_after=11), synthetic_davis, out, progress=False)  # in sequence 2
    first = out / "sequences" / "synthetic00.json"
    assert first.is_file() and not (out / "sequences" / "synthetic01.json").exists()
    stamp = first.stat().st_mtime_ns
    encoder = CountingEncoder()
    resumed = evaluate_davis(encoder, synthetic_davis, out, progress=False)
    assert encoder.frames == 8 and resumed["computed"] == 1  # only the unfinished sequence's 8 frames
    assert first.stat().st_mtime_ns == stamp
    fresh = evaluate_davis(CountingEncoder(), synthetic_davis, tmp_path / "fresh", progress=False)
    assert resumed["J&F-Mean"] == pytest.approx(fresh["J&F-Mean"])
    again = CountingEncoder()
    assert evaluate_davis(again, synthetic_davis, out, progress=False)["computed"] == 0 and again.frames == 0
    with pytest.raises(ValueError, match="different run"):
        evaluate_davis(CountingEncoder(), synthetic_davis, out, config=propagation_config("davis", topk=3),
                       progress=False)


def test_clear_errors_on_bad_davis_folders(synthetic_davis: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="DAVIS folder not found"):
        davis_videos(tmp_path / "nowhere")
    bad = tmp_path / "bad"
    shutil.copytree(synthetic_davis, bad)
    (bad / "Annotations" / "480p" / "synthetic01" / "00003.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"'synthetic01': 1 frame\(s\) without an annotation .*00003.jpg"):
        davis_videos(bad)
    ann = bad / "Annotations" / "480p" / "synthetic00" / "00004.png"
    ids, palette = read_label_png(ann)
    ids[0, 0] = 7
    write_label_png(ann, ids, palette)
    encoder = CountingEncoder()
    with pytest.raises(ValueError, match=r"00004.png: unknown label ids \[7\]"):
        evaluate_davis(encoder, bad, tmp_path / "out", sequences=["synthetic00"], progress=False)
    assert encoder.frames == 0 and not (tmp_path / "out").exists()  # refused before any work
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="not empty"):
        evaluate_davis(COLOUR, synthetic_davis, tmp_path / "mine", progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_davis_mini_pixel_features_beat_shuffled_labels(davis_mini: Path) -> None:
    (video,) = davis_videos(davis_mini)
    gt = np.stack([read_label_png(p)[0] for p in video.annotations])
    extractor = FeatureExtractor(PixelEncoder(patch_size=16, pool=4))  # 4x4 colour grid per patch
    size_hw = extractor.input_size(gt.shape[1:])
    feats = list(extractor.iter_frame_features(video.frames, size_hw))
    shuffled = gt[0].flatten()[np.random.default_rng(0).permutation(gt[0].size)].reshape(gt[0].shape)
    scores = {}
    for name, first in (("true", gt[0]), ("shuffled", shuffled)):
        pred = [gt[0]] + [upsample_labels(s, gt.shape[1:]).argmax(0).numpy().astype(np.uint8)
                          for s in propagate_sequence(feats, one_hot(first, 3), propagation_config("davis"))]
        J, F = sequence_scores(gt, np.stack(pred), 2)
        scores[name] = (J.mean() + F.mean()) / 2
        assert np.isfinite(J).all() and np.isfinite(F).all()
    assert scores["true"] > scores["shuffled"] + 0.1, scores


def test_davis_mini_tiny_backbone_at_random_init(davis_mini: Path, tmp_path: Path) -> None:
    result = main(["davis", "--checkpoint", "random", "--arch", "siammae_tiny", "--data", str(davis_mini),
                   "--output", str(tmp_path / "out"), "--size", "128", "--device", "cpu", "--no-progress"])
    assert result["objects"] == 2 and result["frames"] == 5
    assert all(np.isfinite(result[k]) and 0 <= result[k] <= 1 for k in ("J&F-Mean", "J-Mean", "F-Mean"))
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["model"] == "random:siammae_tiny:seed0" and run["size"] == 128
    pred, palette = read_label_png(tmp_path / "out" / "masks" / "street" / "00004.png")
    _, source_palette = read_label_png(davis_mini / "Annotations" / "480p" / "street" / "00000.png")
    assert pred.shape == (480, 853) and palette[:9] == source_palette[:9]


# ----------------------------------------------------------------- checkpoints
def test_checkpoints_load_or_fail_clearly(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = create_model("siammae_tiny")
    path = tmp_path / "ckpt.pth"
    save_checkpoint({"model": model.state_dict(), "model_args": model.model_args, "config": {"arch": "siammae_tiny"},
                     "epoch": 1}, path)
    encoder, _ = load_encoder(path)
    assert torch.equal(encoder.blocks[0].attn.qkv.weight, model.encoder.blocks[0].attn.qkv.weight)
    with pytest.raises(mae.CheckpointError, match="siammae_tiny"):
        load_encoder(path, "siammae_vit_small_patch16")
    mae_file = tmp_path / "mae_like.pth"  # official MAE keys: the encoder's, unprefixed
    torch.save({"model": model.encoder.state_dict()}, mae_file)
    with pytest.raises(mae.CheckpointError, match="shape mismatch"):
        load_encoder(mae_file, "siammae_vit_small_patch16")
    random_a, _ = load_encoder("random", "siammae_tiny", seed=3)
    random_b, _ = load_encoder("random", "siammae_tiny", seed=3)
    assert torch.equal(random_a.patch_embed.proj.weight, random_b.patch_embed.proj.weight)


# ----------------------------------------------------------------- JHMDB
def write_synthetic_jhmdb(root: Path, frames: int = 6, size: tuple[int, int] = (64, 80)) -> np.ndarray:
    """15 coloured 8x8 squares (one per joint) translating together; returns the true joints (T, 15, 2)."""
    H, W = size
    hues = np.linspace(0, 1, 15, endpoint=False)
    colours = (np.stack([np.clip(np.abs((hues * 6 + s) % 6 - 3) - 1, 0, 1) for s in (0, 4, 2)], 1) * 230 + 10)
    grid = np.array([(10 + 16 * (i % 4), 10 + 14 * (i // 4)) for i in range(15)], dtype=float)  # (x, y) corners
    joints = np.zeros((frames, 15, 2))
    out = root / "Rename_Images" / "walk" / "clip1"
    out.mkdir(parents=True)
    for t in range(frames):
        img = np.full((H, W, 3), 120, np.uint8)
        shift = np.array([1.5 * t, 0.5 * t])
        for j in range(15):
            x, y = (grid[j] + shift).round().astype(int)
            img[y: y + 8, x: x + 8] = colours[j]
            joints[t, j] = (x + 3.5, y + 3.5)  # centre, 0-based pixels
        Image.fromarray(img).save(out / f"{t + 1:05d}.png")
    mat = root / "joint_positions" / "walk" / "clip1"
    mat.mkdir(parents=True)
    savemat(mat / "joint_positions.mat", {"pos_img": (joints + 1).transpose(2, 1, 0)})  # 1-based (2, 15, T)
    return joints


def test_pck_normalisation_by_hand() -> None:
    gt = np.array([[[0.0, 0.0], [30.0, 40.0]]])  # box 30 x 40: diagonal 50, unit 0.6 * 50 = 30
    pred = gt + np.array([[[3.0, 0.0], [0.0, 9.0]]])
    d = pck_distances(pred, gt)
    assert d.shape == (1, 2) and d[0].tolist() == pytest.approx([0.1, 0.3])
    assert pck(d, 0.1) == 0.5 and pck(d, 0.3) == 1.0


def test_heatmaps_round_trip_to_keypoints() -> None:
    points = np.array([[10.0, 20.0], [47.0, 5.0]])
    heat = keypoint_heatmaps(points, (48, 64), (12, 16), sigma=0.5)
    assert heat.shape == (2, 12, 16)
    assert np.abs(heatmap_keypoints(heat, (48, 64)) - points).max() < 2.0  # within half a 4-px cell


def test_jhmdb_propagation_tracks_joints(tmp_path: Path) -> None:
    write_synthetic_jhmdb(tmp_path / "JHMDB")
    result = evaluate_jhmdb(COLOUR, tmp_path / "JHMDB", tmp_path / "out", size=(64, 80), progress=False)
    assert result["videos"] == 1 and result["frames"] == 6
    assert result["PCK@0.2"] >= result["PCK@0.1"] > 0.9
    saved = json.loads((tmp_path / "out" / "sequences" / "walk" / "clip1.json").read_text())
    assert np.array(saved["distances"]).shape == (5, 15)
    (tmp_path / "JHMDB" / "joint_positions" / "walk" / "clip1" / "joint_positions.mat").unlink()
    with pytest.raises(FileNotFoundError, match="joint positions"):
        evaluate_jhmdb(COLOUR, tmp_path / "JHMDB", tmp_path / "out2", progress=False)


# ----------------------------------------------------------------- VIP
def davis_to_vip(davis: Path, root: Path, annotate_every: int = 2) -> Path:
    """The generated DAVIS sequences in VIP's layout, objects as part classes, every other frame annotated."""
    names = (davis / "ImageSets" / "2017" / "val.txt").read_text().split()
    for name in names:
        shutil.copytree(davis / "JPEGImages" / "480p" / name, root / "Images" / name)
        ann = root / "Annotations" / "Category_ids" / name
        ann.mkdir(parents=True)
        for i, png in enumerate(sorted((davis / "Annotations" / "480p" / name).glob("*.png"))):
            if i % annotate_every == 0:
                Image.fromarray(read_label_png(png)[0], mode="L").save(ann / png.name)
    (root / "lists").mkdir()
    (root / "lists" / "val_videos.txt").write_text("\n".join(names) + "\n")
    return root


def test_confusion_and_iou_by_hand() -> None:
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 0, 1]])
    c = confusion_matrix(gt, pred, 3)
    assert c.tolist() == [[1, 1, 0], [0, 3, 0], [1, 0, 1]]
    assert iou_per_class(c).tolist() == pytest.approx([1 / 3, 3 / 4, 1 / 2])


def test_vip_parts_propagate(synthetic_davis: Path, tmp_path: Path) -> None:
    root = davis_to_vip(synthetic_davis, tmp_path / "VIP")
    result = evaluate_vip(COLOUR, root, tmp_path / "out", size=None, progress=False)
    assert result["videos"] == 2 and len(result["class_iou"]) == len(VIP_CLASSES) == 20
    present = [result["class_iou"][c] for c in VIP_CLASSES[:3]]
    assert all(v > 0.85 for v in present) and math.isnan(result["class_iou"]["dress"])
    assert result["mIoU"] == pytest.approx(np.mean(present))
    assert len(list((tmp_path / "out" / "masks" / "synthetic00").glob("*.png"))) == 8  # all frames written
    ann = root / "Annotations" / "Category_ids" / "synthetic01" / "00002.png"
    ids = read_label_png(ann)[0]
    ids[0, 0] = 21
    Image.fromarray(ids, mode="L").save(ann)
    with pytest.raises(ValueError, match=r"unknown label ids \[21\]"):
        evaluate_vip(COLOUR, root, tmp_path / "out2", progress=False)


# ----------------------------------------------------------------- command line and benchmark
def test_cli_rejects_options_of_other_datasets(synthetic_davis: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["jhmdb", "--checkpoint", "pixels", "--data", str(synthetic_davis), "--output", str(tmp_path),
              "--resolution", "480p"])
    result = main(["davis", "--checkpoint", "pixels", "--data", str(synthetic_davis), "--output",
                   str(tmp_path / "px"), "--size", "native", "--radius", "0", "--no-progress"])
    assert json.loads((tmp_path / "px" / "run.json").read_text())["propagation"]["radius"] is None
    assert np.isfinite(result["J&F-Mean"])


def test_benchmark_runs_at_a_tiny_size() -> None:
    (result,) = run_benchmark("siammae_tiny", size=(32, 48), frames=3, frame_hw=(32, 48), runs=1,
                              use_davis_mini=False, isolate=False)
    assert result["timed_frames"] == 2 and result["grid"] == [2, 3]
    assert result["total_s_per_frame"] > 0 and result["peak_rss_mib"] >= result["rss_before_mib"] > 0
