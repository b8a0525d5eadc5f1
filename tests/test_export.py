"""`python -m ml.export`: a run's encoder loads into timm (by file and from the exported folder's config.json) with
our encoder's features; the model card carries the run's numbers; what timm cannot hold is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm  # importable: conftest imported ml, which loads mae's torchvision shim first
import torch

from dataset_loader.transforms import IMAGENET_MEAN
from ml.eval import run_evaluation, write_synthetic_davis
from ml.eval.export import ExportError, cli, export
from ml.model import TIMM_VITS, create_model, timm_arch
from ml.training.checkpoint import save_checkpoint
from ml.training.run import EVALS_COLUMNS, Run
from tests.conftest import native

SMALL_DECODER = dict(decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=2)  # the encoder is what is exported


def saved_run(root: Path, arch: str, epoch: int = 3, **overrides) -> tuple[Run, torch.nn.Module]:
    """A run folder holding one checkpoint of a freshly initialised `arch` (no training: export reads weights)."""
    torch.manual_seed(0)
    model = create_model(arch, **overrides).eval()
    run = Run(root, "run")
    config = {"arch": arch, "img_size": model.img_size, "batch_size": 8, "accum_iter": 4, "epochs": 10,
              "data": "dataset/sample", "train_split": "train", "mask_ratio": 0.95}
    save_checkpoint({"model": model.state_dict(), "model_args": model.model_args, "config": config, "epoch": epoch,
                     "step": 5 * epoch, "world_size": 2}, run.checkpoint(epoch))
    return run, model


def timm_from_file(weights: Path) -> torch.nn.Module:
    return timm.create_model("vit_small_patch16_224", pretrained=True, num_classes=0,
                             pretrained_cfg_overlay=dict(file=str(weights))).eval()


def test_the_exported_encoder_is_timms_vit_with_our_features(tmp_path: Path, capsys) -> None:
    run, model = saved_run(tmp_path / "out", "siammae_vit_small_patch16", **SMALL_DECODER)
    run.evals_dir.mkdir(parents=True)  # evaluations during training, as --eval-every writes them
    run.evals_csv.write_text(",".join(EVALS_COLUMNS) + "\n1,davis,crw,0.412,0.4,0.424,9\n3,davis,crw,0.5,0.45,0.55,9\n")
    out = tmp_path / "hub"
    cli([str(run.checkpoint_dir), str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    x = torch.randn(2, 3, 224, 224)
    by_file, by_folder = timm_from_file(out / "model.safetensors"), timm.create_model(f"local-dir:{out}",
                                                                                       pretrained=True).eval()
    with torch.no_grad():
        ours = model.encoder.forward_features(x)
        for vit in (by_file, by_folder):
            torch.testing.assert_close(vit.forward_features(x), ours, atol=1e-5, rtol=0)
    assert by_folder.num_classes == 0 and by_folder.pretrained_cfg["mean"] == list(IMAGENET_MEAN)
    config = json.loads((out / "config.json").read_text())
    assert (config["architecture"], config["num_classes"], config["global_pool"]) == ("vit_small_patch16_224", 0,
                                                                                      "token")
    assert config["model_args"] == {"img_size": 224, "patch_size": 16}
    recipe = config["siammae"]
    assert (recipe["epochs"], recipe["steps"], recipe["effective_batch"], recipe["config"]["epochs"]) == (3, 15, 64, 10)
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: timm\n") and "15 optimiser steps in 3 epochs of 10 scheduled" in card
    assert "| 50.0 (45.0 / 55.0) | not run | not run |" in card  # the run's latest evaluation, then its curve
    assert "| 1 | crw | 41.2 | 40.0 | 42.4 | 9.0 |" in card and "| 62.0 | 37.3 | 47.0 / 76.1 |" in card
    assert "@inproceedings{gupta2023siamese" in card and "license: other" in card
    assert "vit_small_patch16_224 (150 tensors)" in capsys.readouterr().out


def test_a_run_trained_at_another_size_exports_its_224_position_table(tmp_path: Path) -> None:
    run, model = saved_run(tmp_path / "out", "siammae_vit_small_patch16", img_size=112, **SMALL_DECODER)
    data = write_synthetic_davis(tmp_path / "davis", num_sequences=1, num_frames=4)
    evaluated = tmp_path / "eval"
    run_evaluation("davis", data, evaluated, run.checkpoint_dir, protocol=native("crw"), progress=False)
    result = export(tmp_path / "out", tmp_path / "hub", evaluations=[evaluated])  # the output folder of one run
    assert result["arch"] == "vit_small_patch16_224" and result["checkpoint"] == run.checkpoint(3)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():  # our encoder resizes its 7x7 table to 14x14 at 224x224: the export holds that table
        torch.testing.assert_close(timm_from_file(tmp_path / "hub" / "model.safetensors").forward_features(x),
                                   model.encoder.forward_features(x), atol=1e-5, rtol=0)
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "112x112 crops (the position table resized to 224x224 here)" in card and f"| {evaluated} |" in card
    pixels = tmp_path / "pixels"
    run_evaluation("davis", data, pixels, "pixels", protocol=native("crw"), progress=False)
    with pytest.raises(ExportError, match="evaluated other weights"):
        export(run.checkpoint_dir, tmp_path / "hub2", evaluations=[pixels])
    assert not (tmp_path / "hub2").exists()


def test_timm_names_follow_the_encoder_shape() -> None:
    with torch.device("meta"):
        assert timm_arch(create_model("siammae_vit_base_patch16")) == "vit_base_patch16_224"
        assert timm_arch(create_model("siammae_vit_small_patch8")) == "vit_small_patch8_224"
        assert timm_arch(create_model("siammae_tiny")) is None  # 192 wide like vit_tiny, but 4 blocks, not 12
    assert all(timm.is_model(name) for name in TIMM_VITS.values())


def test_what_cannot_be_exported_is_one_line_and_nothing_is_written(tmp_path: Path, capsys) -> None:
    tiny, _ = saved_run(tmp_path / "tiny", "siammae_tiny")
    (tmp_path / "a_file").write_text("x")
    torch.save({"model": {"cls_token": torch.zeros(1, 1, 8)}}, tmp_path / "mae.pth")
    cases = {"timm has no ViT of this encoder's shape": [str(tiny.checkpoint_dir)],
             "no checkpoint at": [str(tmp_path / "nowhere")],
             "not a training checkpoint of this project": [str(tmp_path / "mae.pth")],
             "is a file": [str(tiny.checkpoint_dir), "--out-is-a-file"]}
    for says, args in cases.items():
        out = tmp_path / "a_file" if args[-1] == "--out-is-a-file" else tmp_path / "hub"
        with pytest.raises(SystemExit) as exit_:
            cli([args[0], str(out)])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("\n") == 1 and err.startswith("python -m ml.export: error: ")
        assert says in err, err
        assert not (tmp_path / "hub").exists() and (tmp_path / "a_file").read_text() == "x"
