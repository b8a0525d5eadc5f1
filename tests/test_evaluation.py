"""Label propagation and the DAVIS / JHMDB / VIP evaluations: protocols, the driver, the store, the command line.

Generated data (coloured discs, coloured joint squares) for the mechanics; the real davis_mini frames for the
CRW conventions, which are checked against a brute-force implementation of the CRW algorithm written here.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.io import savemat

import mae
from ml.eval import get_protocol, load_encoder, main, plot_propagation, run_evaluation, write_synthetic_davis
from ml.eval.cli import cli
from ml.eval.data import VIP_CLASSES, davis_palette, davis_videos, read_label_png, write_label_png
from ml.eval.encoders import PixelEncoder
from ml.eval.features import FeatureExtractor, input_size, labels_from_grid, labels_to_grid, one_hot, resize_ids
from ml.eval.keypoints import crw_joint_stamps, heatmap_keypoints
from ml.eval.plots import overlay_labels
from ml.eval.propagation import LabelPropagator, propagate
from ml.eval.protocols import IMAGENET_STD
from ml.eval.score import score_davis, score_vip
from ml.model import create_model
from ml.training.checkpoint import save_checkpoint

COLOUR = PixelEncoder(patch_size=4, pool=4)  # each 4x4 patch -> its mean colour: tracks the coloured discs


class CountingEncoder(PixelEncoder):
    """Pixel features that count the frames they encode, and can fail after `fail_after` frames (an interruption)."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__(patch_size=4, pool=4)
        self.frames = 0
        self.fail_after = fail_after

    def forward_features(self, imgs: torch.Tensor, pos_mode: str = "size") -> torch.Tensor:
        if self.fail_after is not None and self.frames >= self.fail_after:
            raise KeyboardInterrupt("interrupted")
        self.frames += imgs.shape[0]
        return super().forward_features(imgs)


@pytest.fixture(scope="module")
def synthetic_davis(tmp_path_factory) -> Path:
    return write_synthetic_davis(tmp_path_factory.mktemp("davis"), num_sequences=2, num_frames=8, size=(96, 160))


def native(name: str, dataset: str = "davis", **changes):
    """A protocol at the frames' own size (the generated frames are small)."""
    return get_protocol(name, dataset, size_rule="native", size=None, **changes)


# ----------------------------------------------------------------- protocols
def test_protocols_hold_the_published_parameters() -> None:
    crw = {d: get_protocol("crw", d) for d in ("davis", "vip", "jhmdb")}
    assert [crw[d].topk for d in ("davis", "vip", "jhmdb")] == [7, 10, 7]
    assert [crw[d].radius for d in ("davis", "vip", "jhmdb")] == [20.0, 8.0, 20.0]
    assert all(p.queue_length == 20 and p.temperature == 0.7 and p.queue_start == "first_frame_copies"
               for p in crw.values())
    assert crw["davis"].size == (480, 880) and crw["jhmdb"].size == (320, 320)
    assert (crw["vip"].size_rule, crw["vip"].size, crw["vip"].score_first_frame) == ("long_side_64", 880, True)
    dino = get_protocol("dino", "davis")
    assert (dino.temperature, dino.topk, dino.queue_length, dino.radius, dino.neighbourhood_shape, dino.norm_mask) == (
        0.1, 5, 7, 12.0, "square", True)
    causal = get_protocol("causal", "davis")
    assert (causal.queue_start, causal.labels_to_grid, causal.size_rule) == ("empty", "area", "native")
    with pytest.raises(ValueError, match="dino is defined for davis only"):
        get_protocol("dino", "jhmdb")
    for changes, message in (({"temperature": float("nan")}, "--temperature"), ({"radius": 0.0}, "--radius"),
                             ({"radius": float("inf")}, "--radius"), ({"topk": 0}, "--topk"),
                             ({"queue_length": -1}, "--queue-length"), ({"size": (7, -7)}, "--size")):
        with pytest.raises(ValueError, match=message):
            get_protocol("crw", "davis", **changes)
    with pytest.raises(ValueError, match="unknown protocol field"):
        get_protocol("crw", "davis", top_k=3)


def test_input_size_rules() -> None:
    assert input_size((480, 854), 16, get_protocol("crw", "davis")) == (480, 880)
    assert input_size((720, 1280), 16, get_protocol("crw", "vip")) == (448, 880)  # 495 floored to 448
    assert input_size((480, 854), 16, get_protocol("dino", "davis")) == (480, 832)
    assert input_size((480, 854), 16, native("causal")) == (480, 848)
    assert input_size((480, 854), 8, native("causal")) == (480, 856)
    assert input_size((720, 1280), 16, get_protocol("causal", "davis", size_rule="short_side", size=560)) == (560, 992)
    for size in ((7, 7), (20, 40)):  # not whole patches
        with pytest.raises(ValueError, match="--size: frames of 480x854 become"):
            input_size((480, 854), 16, get_protocol("crw", "davis", size=size))


# ----------------------------------------------------------------- propagation core
def test_softmax_over_the_top_k_by_hand() -> None:
    protocol = native("causal", temperature=0.5, topk=2, neighbourhood="none")
    query = torch.tensor([[1.0, 0.0]])
    prop = LabelPropagator(torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]]),
                           torch.tensor([[[1.0, 0.0, 0.5]], [[0.0, 1.0, 0.5]]]), protocol)
    out = propagate(query, prop.context(), prop.cell_yx[:1], protocol)
    w = math.exp(2) / (math.exp(2) + 1)  # logits 1/0.5 and 0/0.5; the third key is not in the top 2
    assert out[0].tolist() == pytest.approx([w, 1 - w], abs=1e-6)


def brute_force_step(frames: list[tuple[torch.Tensor, torch.Tensor, bool]], query: torch.Tensor,
                     grid: tuple[int, int], protocol) -> torch.Tensor:
    """Every context frame written out (copies included), full affinity, top-k, softmax: (Q, C)."""
    yy, xx = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    yx = torch.stack([yy.flatten(), xx.flatten()], 1).float()
    near = torch.cdist(yx, yx) < protocol.radius
    affinities = []
    for keys, _, restricted in frames:
        a = query @ keys.T / protocol.temperature
        affinities.append(a.masked_fill(~near, -1e10) if restricted else a)
    a = torch.cat(affinities, 1)
    labels = torch.cat([lab for _, lab, _ in frames])
    w, i = a.topk(protocol.topk, dim=1)
    return torch.einsum("qk,qkc->qc", w.softmax(1), labels[i])


def test_copies_of_the_first_frame_count_as_many_times_as_they_are_in_the_queue() -> None:
    """The multiset top-k over a queue of copies (kept once, with a count) equals the top-k over every copy."""
    g = torch.Generator().manual_seed(0)
    grid, D, C = (4, 6), 8, 3
    protocol = get_protocol("crw", "davis", topk=9, queue_length=5, radius=2.5)
    unit = lambda *s: F.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    first, first_labels = unit(*grid, D), torch.rand(C, *grid, generator=g)
    prop = LabelPropagator(first, first_labels, protocol)
    keys0, labels0 = first.reshape(-1, D), first_labels.flatten(1).T
    written = [(keys0, labels0, False)] + [(keys0, labels0, True)] * 5
    for step in range(7):
        target = unit(*grid, D)
        ours = prop.step(target).flatten(1).T
        expected = brute_force_step(written, target.reshape(-1, D), grid, protocol)
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5, msg=f"step {step}")
        written = [written[0]] + written[2:] + [(target.reshape(-1, D), expected, True)]
    assert sum(f.count for f in prop.queue) == 5 and len(prop.queue) == 5  # the copies have all left


def test_chunked_affinity_gives_the_same_labels() -> None:
    g = torch.Generator().manual_seed(1)
    feats = F.normalize(torch.randn(3, 6, 10, 8, generator=g), dim=-1)
    results = []
    for elements in (1 << 25, 500):
        prop = LabelPropagator(feats[0], torch.rand(4, 6, 10, generator=torch.Generator().manual_seed(2)),
                               get_protocol("crw", "davis", radius=3.0), max_affinity_elements=elements)
        results.append([prop.step(f) for f in feats[1:]])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_neighbourhood_rules_restrict_the_right_frames() -> None:
    """A distinctive cell of the first frame, 4 cells from the target: found unless the first frame is restricted."""
    grid, D = (1, 5), 2
    feats = torch.tensor([[0.0, 1.0]]).repeat(5, 1)
    first = feats.clone()
    first[0] = torch.tensor([1.0, 0.0])
    first_labels = torch.zeros(2, 1, 5)
    first_labels[0] = 1
    first_labels[:, 0, 0] = torch.tensor([0.0, 1.0])  # class 1 only at the distinctive cell
    target = feats.clone()
    target[4] = torch.tensor([1.0, 0.0])
    for neighbourhood, shape, expected in (("queue", "disk", 1.0), ("all", "disk", 0.0), ("none", "disk", 1.0),
                                           ("all", "square", 0.0)):
        protocol = native("causal", temperature=0.01, topk=1, radius=2.0, neighbourhood=neighbourhood,
                          neighbourhood_shape=shape)
        out = LabelPropagator(first.reshape(*grid, D), first_labels, protocol).step(target.reshape(*grid, D))
        assert out[1, 0, 4].item() == pytest.approx(expected), (neighbourhood, shape)
    # the square reaches the corner cells the disk leaves out: (2, 2) is 2.83 cells away
    protocol = native("dino", radius=2.0)
    corner = LabelPropagator(torch.zeros(3, 3, 2), torch.zeros(1, 3, 3), protocol)
    from ml.eval.propagation import neighbourhood as within
    assert within(corner.cell_yx[:1], corner.cell_yx, protocol).all()
    assert not within(corner.cell_yx[:1], corner.cell_yx, native("causal", radius=2.0))[0, 8]


def test_label_resizing_rules_match_opencv_and_pil() -> None:
    ids = np.arange(20, dtype=np.uint8).reshape(4, 5)
    floor = resize_ids(ids, (8, 11), "floor").numpy()
    rows, cols = (np.arange(8) * 4 / 8).astype(int), (np.arange(11) * 5 / 11).astype(int)  # OpenCV INTER_NEAREST
    assert (floor == ids[rows][:, cols]).all()
    centre = resize_ids(ids, (3, 7), "centre").numpy()
    assert (centre == np.asarray(Image.fromarray(ids).resize((7, 3), Image.NEAREST))).all()
    void = np.array([[0, 255], [1, 1]], np.uint8)
    assert one_hot(void, 2, "none")[:, 0, 1].tolist() == [0, 0]
    assert one_hot(void, 2, "background")[:, 0, 1].tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"label ids \[1\]"):
        one_hot(void, 1)
    # CRW: ids nearest-resized to the input, one-hot, bilinear (no antialias) to the grid
    crw = get_protocol("crw", "davis")
    grid = labels_to_grid(np.kron(np.eye(2, dtype=np.uint8), np.ones((8, 8), np.uint8)), 2, (16, 16), (4, 4), crw)
    assert grid[1].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    soft = torch.zeros(2, 2, 2)
    soft[1, 0, 0] = 1.0
    soft[0] = 1 - soft[1]
    out = labels_from_grid(soft, (8, 8), (5, 9), crw)  # bilinear to 8x8, argmax, nearest (floor) to 5x9
    assert out.shape == (5, 9) and out[0, 0] == 1 and out[-1, -1] == 0


def test_feature_extractor_gives_unit_patch_tokens_and_names_a_broken_frame(tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = mae.MAEEncoder(img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2)
    protocol = native("crw")
    extractor = FeatureExtractor(encoder, protocol)
    frames = torch.rand(2, 3, 48, 80)
    feats = extractor(frames)
    assert feats.shape == (2, 3, 5, 32) and encoder.training  # evaluated in eval mode, left as it was
    x = (frames - torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        tokens = encoder.forward_features(x, pos_mode="dino")[:, 1:]  # cls dropped, DINO's position interpolation
    assert torch.allclose(feats.reshape(2, 15, 32), F.normalize(tokens, dim=-1), atol=1e-5)
    with pytest.raises(TypeError, match="forward_features"):
        FeatureExtractor(torch.nn.Linear(2, 2), protocol)
    with torch.no_grad():
        encoder.blocks[0].mlp.fc1.weight[0, 0] = float("nan")
    Image.new("RGB", (80, 48)).save(tmp_path / "00007.jpg")
    with pytest.raises(ValueError, match=r"non-finite features for .*00007.jpg"):
        next(extractor.iter_frame_features([tmp_path / "00007.jpg"], (48, 80)))


# ----------------------------------------------------------------- label images
def test_png_write_and_read_keep_palette_and_ids(tmp_path: Path) -> None:
    ids = np.arange(12, dtype=np.uint8).reshape(3, 4)
    ids[0, 0] = 255
    custom = [7, 8, 9] + davis_palette()[3:]
    write_label_png(tmp_path / "a.png", ids, custom)
    back, palette = read_label_png(tmp_path / "a.png")
    assert (back == ids).all() and palette[:768] == custom
    assert davis_palette()[:12] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0]
    Image.new("RGB", (4, 3)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="not a label image"):
        read_label_png(tmp_path / "rgb.png")
    out = overlay_labels(np.full((2, 2, 3), 100, np.uint8), np.array([[0, 1], [2, 255]], np.uint8), alpha=0.5)
    assert out[0, 0].tolist() == [100, 100, 100] and out[1, 1].tolist() == [100, 100, 100]
    assert out[0, 1].tolist() == [114, 50, 50] and out[1, 0].tolist() == [50, 114, 50]


# ----------------------------------------------------------------- DAVIS
@pytest.mark.parametrize("name", ["crw", "causal", "dino"])
def test_colour_features_track_every_generated_object(synthetic_davis: Path, tmp_path: Path, name: str) -> None:
    result = run_evaluation("davis", synthetic_davis, tmp_path / "out", encoder=COLOUR,
                            protocol=native(name), progress=False)
    assert result["objects"] == 4 and result["sequences"] == 2 and result["protocol"] == name
    assert result["J-Mean"] > 0.9 and result["F-Mean"] > 0.9
    rows = (tmp_path / "out" / "per-sequence_results-val.csv").read_text().splitlines()
    assert rows[0] == "Sequence,J-Mean,F-Mean" and len(rows) == 5
    assert all(len(r.split(",")[1]) == 5 and float(r.split(",")[1]) > 0.8 for r in rows[1:])  # 3 decimals, tracked
    pred, palette = read_label_png(tmp_path / "out" / "masks" / "synthetic00" / "00005.png")
    gt, gt_palette = read_label_png(synthetic_davis / "Annotations" / "480p" / "synthetic00" / "00005.png")
    assert pred.shape == gt.shape and set(np.unique(pred)) <= {0, 1, 2} and palette[:9] == gt_palette[:9]
    record = json.loads((tmp_path / "out" / "run.json").read_text())["record"]
    assert record["protocol"] == json.loads(json.dumps(native(name).to_dict()))  # every choice recorded
    # the scorer on the written masks gives the evaluation's numbers
    scored = score_davis(synthetic_davis, tmp_path / "out" / "masks", quiet=True)
    assert scored["J&F-Mean"] == pytest.approx(result["J&F-Mean"], abs=1e-12)
    if name == "crw":
        fig = plot_propagation(synthetic_davis, tmp_path / "out", "synthetic00")
        assert len(fig.axes) == 8  # 2 rows (propagated, annotation) x 4 frames


def test_interrupted_run_continues_and_changed_results_are_recomputed(synthetic_davis: Path, tmp_path: Path) -> None:
    out, protocol = tmp_path / "run", native("crw")
    with pytest.raises(KeyboardInterrupt):
        run_evaluation("davis", synthetic_davis, out, encoder=CountingEncoder(fail_after=11),
                       protocol=protocol, progress=False)
    first = out / "sequences" / "synthetic00.json"
    assert first.is_file() and not (out / "sequences" / "synthetic01.json").exists()
    encoder = CountingEncoder()
    resumed = run_evaluation("davis", synthetic_davis, out, encoder=encoder, protocol=protocol, progress=False)
    assert encoder.frames == 8 and resumed["computed"] == 1  # only the unfinished sequence's 8 frames
    fresh = run_evaluation("davis", synthetic_davis, tmp_path / "fresh", encoder=CountingEncoder(), protocol=protocol,
                     progress=False)
    assert resumed["J&F-Mean"] == fresh["J&F-Mean"]

    def rerun(expected_warning: str) -> dict:
        encoder = CountingEncoder()
        with pytest.warns(UserWarning, match=expected_warning):
            result = run_evaluation("davis", synthetic_davis, out, encoder=encoder, protocol=protocol, progress=False)
        assert encoder.frames == 8 and result["computed"] == 1, expected_warning  # that sequence again
        assert result["J&F-Mean"] == fresh["J&F-Mean"]
        return result

    # an edited result (a better score typed in), a truncated one, a deleted mask folder: recomputed, named
    saved = json.loads(first.read_text())
    first.write_text(json.dumps({**saved, "J": [[1.0] * len(saved["J"][0])] * len(saved["J"])}))
    rerun(r"synthetic00.json was changed after it was written")
    first.write_text(first.read_text()[:40])
    rerun(r"synthetic00.json was changed after it was written")
    shutil.rmtree(out / "masks" / "synthetic01")
    rerun(r"masks/synthetic01/00000.png is missing")
    again = CountingEncoder()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run_evaluation("davis", synthetic_davis, out, encoder=again,
                              protocol=protocol, progress=False)["computed"] == 0
    assert again.frames == 0
    with pytest.raises(RuntimeError, match="different run .*protocol"):
        run_evaluation("davis", synthetic_davis, out, encoder=CountingEncoder(),
                       protocol=native("crw", topk=3), progress=False)


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
        run_evaluation("davis", bad, tmp_path / "out", encoder=encoder,
                       protocol=native("crw"), sequences=["synthetic00"],
                 progress=False)
    assert encoder.frames == 0 and not (tmp_path / "out").exists()  # refused before any work
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(RuntimeError, match="not empty"):
        run_evaluation("davis", synthetic_davis, tmp_path / "mine", encoder=COLOUR,
                       protocol=native("crw"), progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        cli(argv)
        code = 0
    except SystemExit as err:
        code = err.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_command_line_refuses_what_cannot_work_before_any_work(synthetic_davis: Path, tmp_path: Path,
                                                               capsys) -> None:
    base = ["davis", "--checkpoint", "pixels", "--data", str(synthetic_davis), "--output", str(tmp_path / "o")]
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    cases = [
        (["--size", "0"], "--size"), (["--size", "-5"], "--size"), (["--size", "7x7"], "--size: frames of 96x160"),
        (["--size", "20000"], "--size: estimated peak memory"), (["--temperature", "nan"], "--temperature"),
        (["--radius", "0"], "--radius"), (["--topk", "0"], "--topk"), (["--protocol", "dino", "--queue-length",
                                                                          "-2"], "--queue-length"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "device cuda was asked for"))
    for extra, message in cases:
        code, out, err = run_cli(base + extra, capsys)
        assert code == 1 and message in err, (extra, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()  # nothing written
    code, _, err = run_cli(["davis", "--checkpoint", "pixels", "--data", str(synthetic_davis), "--output",
                            str(a_file)], capsys)
    assert code == 1 and "is a file, not a folder" in err
    with pytest.raises(SystemExit):
        main(["jhmdb", "--checkpoint", "pixels", "--data", str(synthetic_davis), "--output", str(tmp_path),
              "--resolution", "480p"])
    capsys.readouterr()
    # without progress bars the result line is still printed
    code, out, err = run_cli(base + ["--size", "native", "--no-progress"], capsys)
    assert code == 0 and "DAVIS val (2 sequences, 4 objects, protocol crw): J&F-Mean" in out
    assert "estimated peak memory" in out


def test_score_davis_names_what_is_missing_and_refuses_unknown_ids(synthetic_davis: Path, tmp_path: Path,
                                                                   capsys) -> None:
    results = tmp_path / "results"
    for name in ("synthetic00", "synthetic01"):
        shutil.copytree(synthetic_davis / "Annotations" / "480p" / name, results / name)  # perfect predictions
    code, out, _ = run_cli(["score", "davis", "--data", str(synthetic_davis), "--results", str(results)], capsys)
    assert code == 0 and "J&F-Mean 1.000" in out
    lines = (results / "global_results-val.csv").read_text().splitlines()
    assert lines[0] == "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay"
    assert lines[1] == "1.000,1.000,1.000,0.000,1.000,1.000,0.000"
    (results / "synthetic01" / "00004.png").unlink()
    shutil.rmtree(results / "synthetic00")
    code, _, err = run_cli(["score", "davis", "--data", str(synthetic_davis), "--results", str(results)], capsys)
    assert code == 1 and "synthetic00 (all frames)" in err and "synthetic01: 00004" in err
    shutil.copytree(synthetic_davis / "Annotations" / "480p" / "synthetic00", results / "synthetic00")
    shutil.copy(synthetic_davis / "Annotations" / "480p" / "synthetic01" / "00004.png", results / "synthetic01")
    ids, palette = read_label_png(results / "synthetic01" / "00003.png")
    ids[0, 0] = 5
    write_label_png(results / "synthetic01" / "00003.png", ids, palette)
    code, _, err = run_cli(["score", "davis", "--data", str(synthetic_davis), "--results", str(results)], capsys)
    assert code == 1 and r"predicted ids [5] exceed the 2 objects" in err


def test_davis_mini_tiny_backbone_at_random_init(davis_mini: Path, tmp_path: Path) -> None:
    result = main(["davis", "--checkpoint", "random", "--arch", "siammae_tiny", "--data", str(davis_mini),
                   "--output", str(tmp_path / "out"), "--size", "128", "--device", "cpu", "--no-progress"])
    assert result["objects"] == 2 and result["frames"] == 5
    assert all(np.isfinite(result[k]) and 0 <= result[k] <= 1 for k in ("J&F-Mean", "J-Mean", "F-Mean"))
    run = json.loads((tmp_path / "out" / "run.json").read_text())["record"]
    assert run["model"] == "random:siammae_tiny:seed0" and run["protocol"]["size"] == 128
    pred, palette = read_label_png(tmp_path / "out" / "masks" / "street" / "00004.png")
    _, source_palette = read_label_png(davis_mini / "Annotations" / "480p" / "street" / "00000.png")
    assert pred.shape == (480, 853) and palette[:9] == source_palette[:9]


# ----------------------------------------------------------------- the CRW algorithm, written out
def crw_brute_force(encoder: mae.MAEEncoder, davis: Path, L: int = 20, K: int = 7, T: float = 0.7,
                    R: float = 20.0, size: tuple[int, int] = (480, 880)) -> np.ndarray:
    """The CRW test code's label propagation on one DAVIS sequence, as plainly as it can be written.

    The frame list is padded with L copies of the first frame; every target's context is the first frame
    (long-term memory, unrestricted) and the L frames before it in the padded list (restricted to a
    radius); the first L have the first frame's labels. Frames: float bilinear resize to `size`; labels:
    nearest to `size`, one-hot, bilinear to the grid; features with DINO's position interpolation;
    predictions: bilinear to `size`, argmax, nearest (OpenCV's rule) to the annotation size.
    """
    frames = sorted((davis / "JPEGImages" / "480p" / "street").glob("*.jpg"))
    gt0 = np.array(Image.open(davis / "Annotations" / "480p" / "street" / "00000.png"))
    H, W = size
    h, w = H // 16, W // 16
    mean, std = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1), torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)

    def features(path: Path) -> torch.Tensor:
        rgb = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255
        x = F.interpolate(rgb[None], size=(H, W), mode="bilinear", align_corners=False)
        x = (x - mean) / std
        tokens = encoder.patch_embed(x)  # (1, h*w, D)
        n = int(math.sqrt(encoder.pos_embed.shape[1] - 1))
        grid = encoder.pos_embed[:, 1:].reshape(1, n, n, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((h + 0.1) / n, (w + 0.1) / n), mode="bicubic")
        tokens = tokens + grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)
        cls = encoder.cls_token + encoder.pos_embed[:, :1]
        out = torch.cat([cls, tokens], 1)
        for block in encoder.blocks:
            out = block(out)
        return F.normalize(encoder.norm(out)[0, 1:], dim=-1)  # (h*w, D)

    with torch.no_grad():
        feats = [features(p) for p in frames]
    padded_feats = [feats[0]] * L + feats
    ids = sorted(np.unique(gt0).tolist())
    rows, cols = (np.arange(H) * gt0.shape[0] / H).astype(int), (np.arange(W) * gt0.shape[1] / W).astype(int)
    big = gt0[rows][:, cols]
    onehot = torch.from_numpy(np.stack([big == i for i in ids]).astype(np.float32))
    first = F.interpolate(onehot[None], size=(h, w), mode="bilinear", align_corners=False)[0].flatten(1).T
    labels = [first] * L + [torch.zeros_like(first)] * len(frames)
    yy, xx = np.mgrid[0:h, 0:w]
    yx = np.stack([yy.ravel(), xx.ravel()], 1)
    dist = np.sqrt(((yx[:, None, :] - yx[None, :, :]) ** 2).sum(-1))
    restrict = torch.from_numpy(np.where(dist < R, 0.0, -1e10)).float()  # (keys, queries)
    masks = [gt0]
    for t in range(len(frames)):
        query = padded_feats[t + L]
        context = [0] + list(range(t, t + L))
        A = torch.stack([padded_feats[k] @ query.T for k in context])  # (L + 1, keys, queries)
        A[1:] += restrict
        A = A.reshape(-1, h * w) / T
        weights, index = A.topk(K, dim=0)
        weights = weights.softmax(0)
        context_labels = torch.cat([labels[k] for k in context])  # ((L + 1) keys, C)
        pred = (context_labels[index] * weights[..., None]).sum(0)  # (queries, C)
        if t == 0:
            pred = labels[0]
        labels[t + L] = pred
        if t > 0:
            soft = pred.T.reshape(-1, h, w)
            up = F.interpolate(soft[None], size=(H, W), mode="bilinear", align_corners=False)[0]
            at_input = np.array(ids)[up.argmax(0).numpy()]
            r2, c2 = (np.arange(gt0.shape[0]) * H / gt0.shape[0]).astype(int), (np.arange(gt0.shape[1]) * W /
                                                                                gt0.shape[1]).astype(int)
            masks.append(at_input[r2][:, c2])
    return np.stack(masks)


def test_default_protocol_reproduces_the_crw_algorithm_on_real_frames(davis_mini: Path, tmp_path: Path) -> None:
    """With identical encoder weights, the default DAVIS protocol's masks equal the CRW algorithm's on >= 99.9% of
    the scored pixels (real davis_mini frames, a seeded random encoder)."""
    encoder, _ = load_encoder("random", "siammae_tiny", seed=0)
    expected = crw_brute_force(encoder, davis_mini)
    result = run_evaluation("davis", davis_mini, tmp_path / "out", encoder=encoder, progress=False)  # the defaults: crw
    assert result["protocol"] == "crw"
    ours = np.stack([read_label_png(tmp_path / "out" / "masks" / "street" / f"{t:05d}.png")[0] for t in range(5)])
    agreement = (ours[1:-1] == expected[1:-1]).mean()  # the scored frames
    assert agreement >= 0.999, agreement
    assert (ours[1:] != ours[0]).any()  # the masks moved: not a copy of the first frame


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


def test_crw_joint_stamps_and_decoding_by_hand() -> None:
    # a 64x80 frame on a 16x20 grid (4 pixels a cell): a joint at pixel (22, 9) sits at cell (5.5, 2.25)
    maps = crw_joint_stamps(np.array([[22.0, 9.0], [-30.0, 5.0]]), (64, 80), (16, 20))
    assert maps.shape == (3, 16, 20)
    joint = maps[1].numpy()
    # window from int(5.5 - 1.5) = 4 to 7 in x, int(2.25 - 1.5) = 0 to 3 in y; peak (value 1) at (x 6, y 2)
    assert np.argwhere(joint == 1.0).tolist() == [[2, 6]]
    assert set(np.nonzero(joint.any(0))[0].tolist()) == {4, 5, 6, 7} and set(np.nonzero(joint.any(1))[0]) == {0, 1,
                                                                                                             2, 3}
    assert joint[2, 5] == pytest.approx(math.exp(-2)) and joint[0, 4] == pytest.approx(math.exp(-16))
    assert maps[2].sum() == 0  # off the grid: an empty map
    assert ((maps[0] == 1) == (maps[1:].sum(0) == 0)).all()  # background where no joint has a value
    keypoints, visible = heatmap_keypoints(maps[1:], (64, 80), topk=1, coords="cell_corner")
    assert keypoints[0].tolist() == [24.0, 8.0] and visible.tolist() == [True, False]  # cell (6, 2) x 4 pixels


@pytest.mark.parametrize("name", ["crw", "causal"])
def test_jhmdb_propagation_tracks_joints(tmp_path: Path, name: str) -> None:
    write_synthetic_jhmdb(tmp_path / "JHMDB")
    protocol = get_protocol(name, "jhmdb", size=(64, 80))
    result = run_evaluation("jhmdb", tmp_path / "JHMDB", tmp_path / "out", encoder=COLOUR,
                            protocol=protocol, progress=False)
    assert result["videos"] == 1 and result["frames"] == 6
    assert result["PCK@0.2"] >= result["PCK@0.1"] > 0.85  # crw: 0.87 (its cell-corner convention), causal 0.91
    saved = json.loads((tmp_path / "out" / "sequences" / "walk" / "clip1.json").read_text())
    assert np.array(saved["distances"], dtype=float).shape == (5, 15)
    (tmp_path / "JHMDB" / "joint_positions" / "walk" / "clip1" / "joint_positions.mat").unlink()
    with pytest.raises(FileNotFoundError, match="joint positions"):
        run_evaluation("jhmdb", tmp_path / "JHMDB", tmp_path / "out2", encoder=COLOUR, progress=False)


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


@pytest.mark.parametrize("name", ["crw", "causal"])
def test_vip_parts_propagate_and_rescore(synthetic_davis: Path, tmp_path: Path, name: str) -> None:
    root = davis_to_vip(synthetic_davis, tmp_path / "VIP")
    protocol = native(name, "vip")
    result = run_evaluation("vip", root, tmp_path / "out", encoder=COLOUR, protocol=protocol, progress=False)
    assert result["videos"] == 2 and len(result["class_iou"]) == len(VIP_CLASSES) == 20
    present = [result["class_iou"][c] for c in VIP_CLASSES[:3]]
    assert all(v > 0.85 for v in present) and math.isnan(result["class_iou"]["dress"])
    assert result["mIoU"] == pytest.approx(np.mean(present))
    assert len(list((tmp_path / "out" / "masks" / "synthetic00").glob("*.png"))) == 8  # all frames written
    rescored = score_vip(root, tmp_path / "out" / "masks", skip_first=not protocol.score_first_frame, quiet=True)
    assert rescored["mIoU"] == pytest.approx(result["mIoU"], abs=1e-12)
    ann = root / "Annotations" / "Category_ids" / "synthetic01" / "00002.png"
    ids = read_label_png(ann)[0]
    ids[0, 0] = 21
    Image.fromarray(ids, mode="L").save(ann)
    with pytest.raises(ValueError, match=r"unknown label ids \[21\]"):
        run_evaluation("vip", root, tmp_path / "out2", encoder=COLOUR, protocol=protocol, progress=False)


def test_run_evaluation_from_the_notebook_keeps_an_encoder_where_it_is(synthetic_davis: Path, tmp_path: Path) -> None:
    encoder = create_model("siammae_tiny").encoder
    result = run_evaluation("davis", synthetic_davis, tmp_path / "nb", encoder=encoder, arch="siammae_tiny",
                            size=(96, 160), sequences=["synthetic00"], progress=False)
    assert result["sequences"] == 1 and result["protocol"] == "crw"
    assert next(encoder.parameters()).device.type == "cpu"
    with pytest.raises(ValueError, match="split_file do not apply to davis"):
        run_evaluation("davis", synthetic_davis, tmp_path / "x", encoder=encoder, split_file="a.txt")
