"""What the cells of `SiamMAE.ipynb` call, in the order of the notebook: the notebook itself only calls these.

Each function does one cell's work, prints what a reader should see and returns what later cells
use; figures are returned (and written as PNGs by `save_figure`).
"""

from __future__ import annotations

import platform
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

import mae
from ml.checkpoint import read_checkpoint_meta, seed_everything
from ml.config import NOTEBOOK_SETTINGS, TrainConfig, get_preset
from ml.plots import (  # noqa: F401  (re-exported for the notebook)
    plot_attention_maps,
    plot_losses,
    plot_pairs,
    plot_results_from_checkpoint,
    plot_sample,
    save_figure,
)
from ml.run import Run
from ml.samples import load_samples  # noqa: F401
from ml.train import build_model, make_test_loader, make_train_loader, train

SHARED_DAVIS_MINI = Path("..") / "shared" / "data" / "davis_mini"  # beside a clone of this repo, when present


# ---------------------------------------------------------------- 1. set-up
def environment_report() -> str:
    """Versions and devices, as one printable paragraph."""
    cuda = torch.cuda.is_available()
    gpu = f" ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} GPU(s))" if cuda else ""
    return (f"python {platform.python_version()}, torch {torch.__version__}, timm {version('timm')}, "
            f"numpy {np.__version__}, matplotlib {version('matplotlib')}\n"
            f"CUDA available: {cuda}{gpu}; CPU threads used by torch: {torch.get_num_threads()}")


# ---------------------------------------------------------------- 2. parameters
def notebook_config(setting: str, data: str = "", epochs: int = 0, prefix: str = "", output: str = ".",
                    pretrained: str = "", device: str = "", seed: int = 0) -> TrainConfig:
    """The training config of a notebook setting (quick | demo | paper) with the parameters cell's values.

    Empty strings and zeros keep the preset's value. `pretrained` may name an official MAE checkpoint,
    downloaded once into checkpoints/mae.
    """
    if setting not in NOTEBOOK_SETTINGS:
        raise ValueError(f"SETTING must be one of {', '.join(NOTEBOOK_SETTINGS)}, got {setting!r}")
    overrides: dict[str, Any] = {"output_dir": output, "seed": seed, "device": device or "auto"}
    overrides.update({k: v for k, v in (("data", data), ("epochs", epochs), ("prefix", prefix)) if v})
    if pretrained:
        overrides["pretrained"] = pretrained if Path(pretrained).is_file() else str(
            mae.download_pretrained_model(pretrained, "checkpoints/mae"))
    config = get_preset(NOTEBOOK_SETTINGS[setting], **overrides)
    seed_everything(config.seed)
    return config


def describe_config(config: TrainConfig, setting: str) -> str:
    run = Run.of(config)
    lines = [f"setting {setting!r} -> preset {NOTEBOOK_SETTINGS[setting]!r} on {config.device}"]
    for name in ("arch", "data", "img_size", "mask_ratio", "min_gap", "max_gap", "repeated_sampling", "batch_size",
                 "epochs", "warmup_epochs", "lr", "blr", "weight_decay", "precision", "seed", "prefix"):
        lines.append(f"  {name:18s} {getattr(config, name)}")
    lines.append(f"checkpoints: {run.checkpoint_dir}\nloss logs:   {run.losses}, {run.test_losses}")
    return "\n".join(lines)


# ---------------------------------------------------------------- 3. data
def show_data(config: TrainConfig, n: int = 4) -> tuple[Any, Any, Figure]:
    """The training and held-out loaders of the config, a description of them, and a figure of sampled pairs."""
    train_loader = make_train_loader(config)
    test_loader = make_test_loader(config)
    train_set = train_loader.dataset
    print(train_set)
    print(f"{len(train_set)} training videos -> {len(train_loader)} batches of {config.batch_size} pairs per epoch "
          f"({config.videos_per_batch} videos x {config.repeated_sampling} pairs each)")
    if test_loader is not None:
        print(f"{len(test_loader.dataset)} held-out videos (split {config.test_split!r}) for the per-epoch test loss")
    return train_loader, test_loader, plot_pairs(train_set, n=min(n, len(train_set)))


# ---------------------------------------------------------------- 4. model
def describe_model(config: TrainConfig) -> str:
    model = build_model(config)
    encoder_params = sum(p.numel() for p in model.encoder.parameters())
    decoder_params = sum(p.numel() for p in model.decoder.parameters())
    L = (model.img_size // model.patch_size) ** 2
    return (f"{config.arch}: {encoder_params:,} encoder + {decoder_params:,} decoder parameters; "
            f"{len(model.encoder.blocks)} encoder blocks of width {model.encoder.embed_dim}, "
            f"{len(model.decoder.blocks)} decoder blocks\n"
            f"{model.img_size}x{model.img_size} frames, {model.patch_size}x{model.patch_size} patches -> {L} per "
            f"frame; mask ratio {model.mask_ratio:.0%}: {int(L * (1 - model.mask_ratio))} visible patches of f2\n"
            f"encoder start: {config.pretrained or 'random initialisation (as the paper)'}")


# ---------------------------------------------------------------- 5-6. training and resuming
def train_then_stop(config: TrainConfig, test_loader: Any) -> torch.nn.Module:
    """Train, stopping one epoch before the end as if interrupted (or continue an interrupted notebook run)."""
    start = time.perf_counter()
    model = train(config, resume="auto", test_loader=test_loader, stop_after_epoch=max(1, config.epochs - 1),
                  progress=False)
    print(f"training cell: {time.perf_counter() - start:.1f} s")
    return model


def resume_training(config: TrainConfig, test_loader: Any) -> torch.nn.Module:
    """Continue the run from its latest checkpoint, in a fresh model: everything comes from the checkpoint."""
    run = Run.of(config)
    latest = run.latest_checkpoint()
    meta = read_checkpoint_meta(latest)
    print(f"{latest}: epoch {meta['epoch']}, optimiser step {meta['step']}, arch {meta['config']['arch']}")
    print("files:", ", ".join(sorted(p.name for p in run.checkpoint_dir.glob("*.pth"))))
    start = time.perf_counter()
    model = train(config, resume="auto", test_loader=test_loader, progress=False)
    meta = read_checkpoint_meta(run.latest_checkpoint())
    print(f"resumed run now at epoch {meta['epoch']} of {config.epochs}, step {meta['step']} "
          f"({time.perf_counter() - start:.1f} s)")
    return model


# ---------------------------------------------------------------- 7. loss curves
def loss_summary(config: TrainConfig) -> tuple[str, Figure]:
    """First and last mean training loss, held-out loss, and the loss-curve figure of the run."""
    run = Run.of(config)
    log = run.read_train_log()
    epochs = np.unique(log["epoch"]).astype(int)
    first = log["loss"][log["epoch"] == epochs[0]].mean()
    last = log["loss"][log["epoch"] == epochs[-1]].mean()
    lines = [f"{len(log['loss'])} iterations over {len(epochs)} epochs: mean training loss {first:.4f} (epoch "
             f"{epochs[0]}) -> {last:.4f} (epoch {epochs[-1]})"]
    if run.test_losses.is_file():
        test = run.read_test_log()
        if len(test["loss"]):
            best = int(test["loss"].argmin())
            lines.append(f"held-out loss {test['loss'][0]:.4f} (epoch {int(test['epoch'][0])}) -> "
                         f"{test['loss'][-1]:.4f} (epoch {int(test['epoch'][-1])}); lowest {test['loss'][best]:.4f} "
                         f"(epoch {int(test['epoch'][best])})")
    return "\n".join(lines), plot_losses(run)


# ---------------------------------------------------------------- 8. reconstructions
def untrained_reconstruction(config: TrainConfig, sample: dict, device: torch.device | str) -> Figure:
    """The first sample through the model at its random initialisation, for comparison."""
    torch.manual_seed(config.seed)
    fig = plot_sample(sample, build_model(config).to(device), device)
    fig.suptitle("the same pair through an untrained model (random initialisation)")
    return fig


# ---------------------------------------------------------------- 9. attention maps
def attention_figure(config: TrainConfig, model: torch.nn.Module, device: torch.device | str) -> Figure:
    """The last layer's [CLS] attention of `model` on a held-out frame at twice the training size."""
    from dataset_loader.dataset import KineticsFramePairs

    view = KineticsFramePairs(config.data, split=config.test_split or config.train_split, img_size=2 * config.img_size,
                              augment=False, fixed_pairs=True, seed=config.seed)
    info = view.describe(0)
    print(f"{info['video']}, frame {info['indices'][0]}, {tuple(info['f1'].shape[-2:])} pixels")
    return plot_attention_maps(model.to(device).eval(), info["f1"])


# ---------------------------------------------------------------- 10. label propagation
def davis_folder(davis: str, config: TrainConfig) -> Path:
    """The DAVIS-layout folder to evaluate on: `davis` if set, else ../shared/data/davis_mini when it is there,
    else (or with davis="synthetic") a small synthetic sequence written into the run's output folder."""
    from ml.evaluate import write_synthetic_davis

    if davis and davis != "synthetic":
        return Path(davis)
    if SHARED_DAVIS_MINI.is_dir() and not davis:
        return SHARED_DAVIS_MINI
    root = write_synthetic_davis(Path(config.output_dir) / "davis_synthetic", num_sequences=1, num_frames=8)
    why = "as asked" if davis else f"no DAVIS folder given and none at {SHARED_DAVIS_MINI}"
    print(f"{why}: wrote a synthetic sequence of moving discs to {root}")
    return root


def compare_on_davis(config: TrainConfig, model: torch.nn.Module, davis_root: Path, device: torch.device | str,
                     setting: str) -> tuple[dict[str, dict], Figure]:
    """Label propagation on the first sequence of `davis_root` with the trained encoder and its random
    initialisation; their scores and the figure of the trained encoder's masks."""
    from ml.evaluate import plot_propagation, run_evaluation, weights_fingerprint

    sequence = sorted(p.name for p in (davis_root / "JPEGImages" / "480p").iterdir() if p.is_dir())[0]
    size = None if setting == "paper" else 4 * config.img_size  # the protocol's 480p on GPUs; short side on CPU
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        baseline = build_model(config)  # the same preset at a seeded random initialisation
    results = {}
    for name, encoder in (("trained", model.encoder), ("random init", baseline.encoder)):
        out = Path(config.output_dir) / "eval" / f"davis-{weights_fingerprint(encoder)[:10]}"  # one folder per weights
        start = time.perf_counter()
        r = run_evaluation("davis", davis_root, out, encoder=encoder.to(device).eval(), arch=config.arch, size=size,
                           device=device, sequences=[sequence], progress=False)
        results[name] = r
        print(f"{name:12s} J&F {r['J&F-Mean']:.3f}  J {r['J-Mean']:.3f}  F {r['F-Mean']:.3f}  "
              f"({r['frames']} frames of {davis_root.name}/{sequence}, {time.perf_counter() - start:.1f} s)")
    return results, plot_propagation(davis_root, results["trained"]["output"], sequence)


def resolve_notebook_device(config: TrainConfig) -> torch.device:
    """The device the config's `device` names (auto: this machine's GPU when there is one, else the CPU)."""
    from ml.distributed import resolve_device

    return resolve_device(config.device)
