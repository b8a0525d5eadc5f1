"""A trained encoder as a timm model for the Hugging Face Hub: its weights, timm's config, and a model card.

    export("runs/checkpoints/paper_vit_s16_400", "outputs/hub/siammae-vit-s16")
    python -m ml.export runs/checkpoints/paper_vit_s16_400 outputs/hub/siammae-vit-s16

    OUT/model.safetensors   the encoder in timm's key names, no classifier; its position table for 224x224
    OUT/config.json         timm's pretrained config (architecture, num_classes 0, ...), a "siammae" block: the recipe
    OUT/README.md           the model card: use, recipe, data, the run's label-propagation numbers, licence, citation

    timm.create_model("vit_small_patch16_224", pretrained=True, num_classes=0,
                      pretrained_cfg_overlay=dict(file="OUT/model.safetensors"))
    timm.create_model("local-dir:OUT", pretrained=True)     # config.json's settings too (or hf-hub:<user>/<repo>)

Only shapes timm has a ViT of are exported (`ml.model.TIMM_VITS`); `forward_features` of the timm model equals our
encoder's on 224x224 frames.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm  # importable: ml/__init__.py loaded mae's torchvision shim first
import torch
from safetensors.torch import save as safetensors_bytes

from dataset_loader.transforms import IMAGENET_MEAN, IMAGENET_STD
from mae.pretrained import CheckpointError
from ml.eval.encoders import weights_fingerprint
from ml.eval.report import ReportError, evaluation_row, format_report, run_row
from ml.files import atomic_file, unwritable_reason
from ml.model import TIMM_VITS, SiamMAE, encoder_to_timm, timm_arch
from ml.model.presets import encoder_shape
from ml.training.checkpoint import checkpoints_in, find_checkpoint, prepare_model, read_checkpoint_meta
from ml.training.run import Run

TIMM_IMG_SIZE = 224  # every name of TIMM_VITS is timm's 224x224 model
CITATION = """@inproceedings{gupta2023siamese,
  title     = {Siamese Masked Autoencoders},
  author    = {Gupta, Agrim and Wu, Jiajun and Deng, Jia and Fei-Fei, Li},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2023}
}"""

# the Hub's metadata of the card; `license: other` until the publisher picks one the training videos' terms allow
CARD_METADATA = """---
library_name: timm
license: other
pipeline_tag: image-feature-extraction
tags: [timm, image-feature-extraction, siammae, self-supervised, label-propagation]
---
"""


class ExportError(ValueError):
    """A run or checkpoint that cannot be exported (no checkpoint, a shape timm has no ViT of, other weights)."""


# ---------------------------------------------------------------- the checkpoint
def resolve_checkpoint(run: str | os.PathLike) -> Path:
    """The checkpoint to export: the file itself, or a run folder's newest checkpoint that passes its checks (an
    output folder holding exactly one run counts as that run)."""
    path = Path(run)
    if path.is_dir() and not checkpoints_in(path) and (path / "checkpoints").is_dir():
        runs = sorted(d for d in (path / "checkpoints").iterdir() if checkpoints_in(d))
        if len(runs) > 1:
            raise ExportError(f"{path} holds several runs ({', '.join(d.name for d in runs)}): name one, e.g. "
                              f"{runs[0]}")
        path = runs[0] if runs else path
    try:
        checkpoint = find_checkpoint(path)
    except FileNotFoundError as err:
        raise ExportError(str(err)) from None
    read_checkpoint_meta(checkpoint)  # CheckpointError unless a checkpoint of this project
    return checkpoint


def timm_weights(model: SiamMAE) -> tuple[str, dict[str, torch.Tensor]]:
    """(timm architecture, its state dict) of the encoder; ExportError when timm has no ViT of its shape.

    The position table is the one the encoder uses on 224x224 frames (resized from its training grid if need be:
    timm's 224 models are fixed-size), so timm's features at 224x224 are ours.
    """
    arch = timm_arch(model)
    if arch is None:
        patch, width, depth, heads = encoder_shape(model)
        raise ExportError(f"timm has no ViT of this encoder's shape (patch {patch}, width {width}, {depth} blocks, "
                          f"{heads} heads): exportable are the shapes of {', '.join(TIMM_VITS.values())} (MLP "
                          f"ratio 4, 3 channels)")
    state = dict(encoder_to_timm(model, num_classes=0).state_dict())
    grid = TIMM_IMG_SIZE // model.encoder.patch_size
    state["pos_embed"] = model.encoder.pos_embed_for((grid, grid))
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        reference = timm.create_model(arch, pretrained=False, num_classes=0).state_dict()
    wrong = sorted(set(reference) ^ set(state)) + sorted(k for k in reference if k in state and
                                                          reference[k].shape != state[k].shape)
    if wrong:
        raise ExportError(f"the encoder does not map onto timm's {arch}: {', '.join(wrong[:5])}")
    return arch, {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in state.items()}


def hf_config(arch: str, model: SiamMAE, meta: dict[str, Any], checkpoint: Path, fingerprint: str) -> dict[str, Any]:
    """config.json: timm's pretrained-config layout (what `local-dir:` / `hf-hub:` read) and the recipe."""
    config = dict(meta.get("config") or {})
    world = int(meta.get("world_size") or 1)
    effective = (config["batch_size"] * world * int(config.get("accum_iter") or 1)) if "batch_size" in config else None
    return {
        "architecture": arch, "num_classes": 0, "num_features": model.encoder.embed_dim, "global_pool": "token",
        "model_args": {"img_size": TIMM_IMG_SIZE, "patch_size": model.encoder.patch_size},
        "pretrained_cfg": {
            "tag": "siammae", "custom_load": False, "input_size": [3, TIMM_IMG_SIZE, TIMM_IMG_SIZE],
            "fixed_input_size": True, "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center",
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "num_classes": 0, "pool_size": None,
            "first_conv": "patch_embed.proj", "classifier": "head"},
        "siammae": {
            "arch": config.get("arch"), "epochs": meta.get("epoch"), "steps": meta.get("step"), "world_size": world,
            "effective_batch": effective, "trained_img_size": model.img_size, "checkpoint": str(checkpoint),
            "encoder_weights_sha1": fingerprint, "data_fingerprint": meta.get("data_fingerprint"),
            "model_args": meta.get("model_args"), "config": config},
    }


# ---------------------------------------------------------------- the model card
def results_rows(checkpoint: Path, fingerprint: str, evaluations: Sequence[str | os.PathLike]) -> list[dict]:
    """The report rows for the card: the run's evaluations during training (evals/<prefix>/) and `evaluations`,
    folders that must have evaluated these very weights."""
    rows = []
    run = Run(checkpoint.parent.parent.parent, checkpoint.parent.name)  # <output>/checkpoints/<prefix>/<file>
    if checkpoint.parent.parent.name == "checkpoints" and run.evals_csv.is_file():
        rows.append(run_row(run))
    for folder in evaluations:
        if not (Path(folder) / "run.json").is_file():
            raise ExportError(f"--evaluations {folder}: no run.json there (not an evaluation folder)")
        row = evaluation_row(Path(folder))
        if row.get("weights_sha1") != fingerprint:
            raise ExportError(f"--evaluations {folder} evaluated other weights than {checkpoint}'s encoder")
        rows.append(row)
    return rows


def model_card(arch: str, config: dict[str, Any], results: str) -> str:
    """README.md: how to load it, the recipe, the data, the numbers, the licence note, the citation."""
    s = config["siammae"]
    recipe = s["config"]
    fields = ("arch", "img_size", "mask_ratio", "min_gap", "max_gap", "repeated_sampling", "decoder_type",
              "decoder_size", "f1_mask_ratio", "pretrained", "epochs", "warmup_epochs", "blr", "lr", "weight_decay",
              "betas", "precision", "seed")
    table = "\n".join(f"| `{k}` | {recipe[k]} |" for k in fields if k in recipe)
    title = f"SiamMAE encoder, {s['arch'] or arch}, {s['epochs']} epochs"
    patch, size, trained = config["model_args"]["patch_size"], TIMM_IMG_SIZE, s["trained_img_size"]
    resized = f" (the position table resized to {size}x{size} here)" if trained != size else ""
    scheduled = f" of {recipe['epochs']} scheduled" if recipe.get("epochs") not in (None, s["epochs"]) else ""
    files = f", fingerprint of the files `{s['data_fingerprint']}`" if s["data_fingerprint"] else ""
    return f"""{CARD_METADATA}
# {title}

The encoder of a Siamese Masked Autoencoder (Gupta et al., NeurIPS 2023) trained by this project, as timm's
`{arch}` without a classifier. `forward_features` gives the cls token and one token per {patch}x{patch} patch of a
{size}x{size} frame (ImageNet mean and std); label propagation uses the patch tokens, L2-normalised.

```python
import timm
model = timm.create_model("hf-hub:<user>/<repo>", pretrained=True)          # or "local-dir:<this folder>"
tokens = model.forward_features(frames)   # (N, 1 + patches, {config['num_features']}), cls first
```

## Recipe

{s['steps']} optimiser steps in {s['epochs']} epochs{scheduled} (effective epochs: as many pairs as training videos),
{s['effective_batch']} frame pairs per step on {s['world_size']} process(es), {trained}x{trained} crops{resized}. The
whole configuration is `siammae.config` in config.json.

| field | value |
|---|---|
{table}

## Data

Frame pairs of the videos under `{recipe.get('data')}` (split `{recipe.get('train_split')}`{files}).
Kinetics-400's videos are YouTube videos under their owners' terms; the project's sample clips (`dataset/sample`)
carry their licences in `dataset/sample/ATTRIBUTION.md`.

## Results

{results}
## Licence

The weights are derived from the training videos above and keep their terms; this card sets `license: other`
until the publisher chooses one that those terms allow.

## Citation

```bibtex
{CITATION}
```
"""


# ---------------------------------------------------------------- export
def export(run: str | os.PathLike, out: str | os.PathLike,
           evaluations: Sequence[str | os.PathLike] = ()) -> dict[str, Path | str]:
    """Write OUT/model.safetensors, config.json and README.md for the checkpoint `run` names (see the module's
    docstring); every check (output writable, checkpoint, timm shape, evaluations' weights) comes first."""
    out = Path(out)
    reason = unwritable_reason(out)
    if reason:
        raise ExportError(f"OUT {out} {reason}")
    checkpoint = resolve_checkpoint(run)
    meta = read_checkpoint_meta(checkpoint)
    model = prepare_model(checkpoint).eval()
    arch, state = timm_weights(model)
    fingerprint = weights_fingerprint(model.encoder)
    rows = results_rows(checkpoint, fingerprint, evaluations)
    config = hf_config(arch, model, meta, checkpoint, fingerprint)
    results = (format_report(rows, title="") if rows else "No label-propagation result of these weights was found "
               "(`--eval-every` during training, or `python -m ml.evaluate` and `--evaluations`).\n")
    with atomic_file(out / "model.safetensors") as f:
        f.write(safetensors_bytes(state, metadata={"format": "pt"}))
    with atomic_file(out / "config.json", "w") as f:
        f.write(json.dumps(config, indent=2) + "\n")
    with atomic_file(out / "README.md", "w") as f:
        f.write(model_card(arch, config, results))
    print(f"{checkpoint} -> {out}: {arch} ({len(state)} tensors), config.json, README.md")
    return {"arch": arch, "checkpoint": checkpoint, "weights": out / "model.safetensors",
            "config": out / "config.json", "card": out / "README.md"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ml.export", description="A run's encoder as a timm model for the "
                                "Hugging Face Hub: OUT/model.safetensors, config.json, README.md (model card).")
    p.add_argument("run", metavar="RUN", help="a checkpoint file, or a run folder (its newest valid checkpoint)")
    p.add_argument("out", metavar="OUT", help="folder that receives the three files")
    p.add_argument("--evaluations", nargs="+", default=(), metavar="DIR",
                   help="evaluation folders (python -m ml.evaluate --output) of these weights, for the card")
    return p


def cli(argv: Sequence[str] | None = None) -> None:
    """`python -m ml.export`: bad input is one line (exit 2), before anything is written."""
    a = build_parser().parse_args(argv)
    try:
        export(a.run, a.out, a.evaluations)
    except (ExportError, ReportError, CheckpointError, OSError) as err:
        print(f"python -m ml.export: error: {str(err).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
