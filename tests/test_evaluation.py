"""Label propagation and the DAVIS / JHMDB / VIP evaluations: protocols, the driver, the store, the command line.

Generated data (coloured discs, coloured joint squares) for the mechanics; the real davis_mini frames for the
CRW conventions, which are checked against a brute-force implementation of the CRW algorithm written here.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

import mae
from ml.eval import get_protocol, load_encoder, main, plot_propagation, run_evaluation, write_synthetic_davis
from ml.eval.cli import cli
from ml.eval.data import VIP_CLASSES, davis_videos, read_label_png, write_label_png
from ml.eval.encoders import PixelEncoder
from ml.eval.keypoints import crw_joint_stamps, heatmap_keypoints
from ml.eval.score import score_davis, score_vip
from ml.model import create_model
from ml.training.checkpoint import save_checkpoint
from tests.conftest import REPO, native

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


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A PNG whose header claims width x height pixels (a decompression bomb to Pillow), with no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


def test_a_decompression_bomb_frame_is_one_line_before_any_work(synthetic_davis: Path, tmp_path: Path,
                                                                capsys) -> None:
    data = tmp_path / "davis"
    shutil.copytree(synthetic_davis, data)
    bomb = sorted((data / "JPEGImages" / "480p" / "synthetic01").iterdir())[3]  # a frame after the first
    bomb.write_bytes(bomb_png())
    code, out, err = run_cli(["davis", "--checkpoint", "pixels", "--data", str(data), "--output",
                              str(tmp_path / "o")], capsys)
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert str(bomb) in err and "decompression bomb" in err
    assert not (tmp_path / "o").exists()  # refused before any work


def test_ctrl_c_during_an_evaluation_is_one_line_and_the_finished_sequences_stay(synthetic_davis: Path,
                                                                                  tmp_path: Path) -> None:
    out = tmp_path / "o"
    # a ViT-S/16 at the default 480x880: seconds per frame, so the run is still working when Ctrl-C comes
    command = [sys.executable, "-m", "ml.evaluate", "davis", "--checkpoint", "random", "--data", str(synthetic_davis),
               "--output", str(out), "--device", "cpu", "--no-progress"]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        for line in proc.stdout:  # printed once every check has passed, as the work starts
            if "estimated peak memory" in line:
                break
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert "interrupted" in stderr and (out / "run.json").is_file()


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


def test_encoders_of_other_projects_load_by_their_key_layout(tmp_path: Path, capsys) -> None:
    """DINO's full checkpoint and released backbone, a timm ViT state dict, an MAE/CropMAE checkpoint with its
    decoder: the encoder loads from each, one line says the layout and what was left out; a file of another
    architecture is refused naming the keys."""
    torch.manual_seed(2)
    encoder = create_model("siammae_tiny").encoder.state_dict()
    head = {"head.weight": torch.randn(10, 192), "head.bias": torch.zeros(10)}
    layouts = {
        "dino_full.pth": ({"teacher": {**{f"backbone.{k}": v for k, v in encoder.items()},
                                       "head.mlp.0.weight": torch.randn(4, 192), "head.last_layer.weight_g":
                                       torch.ones(1, 1)},
                           "student": {f"module.backbone.{k}": v for k, v in encoder.items()}, "epoch": 100},
                          "DINO full checkpoint (teacher)"),
        "dino_backbone.pth": (dict(encoder), "plain ViT state dict"),
        "timm_vit.pth": ({**encoder, **head}, "plain ViT state dict"),
        "cropmae.pth": ({"model": {**encoder, "decoder_embed.weight": torch.randn(8, 192), "mask_token":
                                   torch.zeros(1, 1, 8)}, "epoch": 3}, "MAE/CropMAE checkpoint"),
    }
    for name, (content, layout) in layouts.items():
        torch.save(content, tmp_path / name)
        loaded, _ = load_encoder(tmp_path / name, "siammae_tiny")
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in encoder.items()), name
        said = capsys.readouterr().out
        assert layout in said and len(said.strip().splitlines()) == 1, said
        assert ("ignored" in said) == (name in ("dino_full.pth", "timm_vit.pth", "cropmae.pth")), said
    with pytest.raises(mae.CheckpointError, match=r"timm_vit.pth \(plain ViT state dict.*\) does not fit "
                                                  r"siammae_vit_small_patch16: .*shape mismatch"):
        load_encoder(tmp_path / "timm_vit.pth", "siammae_vit_small_patch16")


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
