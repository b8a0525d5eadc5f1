"""What the cells of `SiamMAE.ipynb` call, in the order of the notebook: the notebook itself only calls these.

Each function does one cell's work, prints what a reader should see and returns what later cells
use; figures are returned (and written as PNGs by `save_figure`).
"""

from __future__ import annotations

import contextlib
import io
import platform
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

import mae
from dataset_loader.dataset import KineticsFramePairs
from ml.eval import plot_propagation, run_evaluation, weights_fingerprint, write_synthetic_davis
from ml.eval.correspondence import write_correspondence_benchmark
from ml.eval.curve import curve_table, learning_curve
from ml.eval.encoders import PixelEncoder
from ml.notebook.analysis import (
    F1_CONDITIONS,
    attention_locality,
    cross_attention,
    f1_ablation,
    fixed_pairs,
    format_f1_ablation,
    textured_masked_patches,
)
from ml.notebook.curves import plot_correspondence_curve, plot_losses
from ml.notebook.plots import (  # noqa: F401  (the notebook calls these through this module)
    plot_attention_maps,
    plot_cross_attention,
    plot_f1_ablation,
    plot_pairs,
    plot_results_from_checkpoint,
    plot_sample,
    save_figure,
)
from ml.notebook.samples import load_samples  # noqa: F401
from ml.training.build import build_model, make_test_loader, make_train_loader
from ml.training.checkpoint import read_checkpoint_meta
from ml.training.config import TrainConfig
from ml.training.distributed import resolve_device
from ml.training.engine import progress_file
from ml.training.presets import NOTEBOOK_SETTINGS, get_preset
from ml.training.pretrain import train
from ml.training.rng import seed_everything
from ml.training.run import Run

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
                  progress=True)
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
    model = train(config, resume="auto", test_loader=test_loader, progress=True)
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
    fig = plot_sample(sample, untrained_model(config).to(device), device)
    fig.suptitle("the same pair through an untrained model (random initialisation)")
    return fig


def untrained_model(config: TrainConfig) -> torch.nn.Module:
    """The config's model at its seeded random initialisation (the baseline of every comparison below)."""
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        return build_model(config).eval()


# ---------------------------------------------------------------- 9. does the decoder use the past frame?
PAIRS_PER_VIDEO = 4  # fixed pairs per video in the analyses


def analysis_pairs(config: TrainConfig) -> dict[str, Any]:
    """Fixed pairs (no augmentation) from every video of the training and the held-out split."""

    splits = [config.train_split] + ([config.test_split] if config.test_split else [])
    return {split: fixed_pairs(config.data, split, config.img_size, PAIRS_PER_VIDEO, seed=config.seed,
                               min_gap=config.min_gap, max_gap=config.max_gap) for split in splits}


def f1_ablation_report(config: TrainConfig, model: torch.nn.Module, pairs: dict[str, Any],
                       device: torch.device | str) -> tuple[dict, str, Figure]:
    """The masked-patch loss with four choices of f1 (trained model and its initialisation), as a table, a
    reading of it, and a bar chart of the trained model's losses."""

    trained = f1_ablation(model.to(device), pairs)
    untrained = f1_ablation(untrained_model(config).to(device), pairs)
    true, other, _, itself = F1_CONDITIONS
    train_split, test_split = config.train_split, config.test_split or config.train_split
    copies = trained[itself][train_split] - trained[true][train_split]
    needs = trained[other][test_split] - trained[true][test_split]
    lines = ["trained model:", format_f1_ablation(trained, pairs), "", "the same at its random initialisation:",
             format_f1_ablation(untrained, pairs), "",
             f"f1 = f2 itself vs the true past frame, {train_split} pairs: {copies:+.3f} "
             f"({'lower: the decoder copies from f1 what f1 shows' if copies < 0 else 'not lower: no copying yet'})",
             f"another video's frame vs the true past frame, {test_split} pairs: {needs:+.3f} "
             f"({'the decoder relies on the past frame' if needs >= 0.05 else 'under 0.05: little reliance on f1'})"]
    fig = plot_f1_ablation(trained, title=f"does the decoder use the past frame?\n({config.prefix}; the same pairs "
                                          f"and masks in every bar)")
    return trained, "\n".join(lines), fig


# ---------------------------------------------------------------- 10. where the decoder looks
def cross_attention_report(config: TrainConfig, model: torch.nn.Module, pairs: dict[str, Any],
                           device: torch.device | str, pair: int = -1, queries: int = 3) -> tuple[str, Figure]:
    """Cross-attention maps of a few masked patches of one held-out pair: every decoder block of the trained model
    and the last block of the untrained one (the mean over heads), and each head of the trained block whose
    attention is the most local; and, over all held-out pairs, how often each block's attention peaks near the
    masked patch's own position."""

    fixed = pairs[config.test_split or config.train_split]
    baseline = untrained_model(config).to(device)
    model = model.to(device)
    depth = len(model.decoder.blocks)
    lines, locality = [], {}
    for name, m in (("trained", model), ("untrained", baseline)):
        for block in range(depth):
            loc = attention_locality(m, fixed, block=block)
            locality[(name, block)] = loc["peak_near"]
            lines.append(f"{name:9s} block {block + 1} of {depth}: the attention of {loc['patches']} masked patches "
                         f"({len(fixed)} {fixed.split} pairs) peaks within one patch of the patch's own position "
                         f"{loc['peak_near']:.0%} of the time, with {loc['mass_near']:.0%} of its mass there "
                         f"(uniform attention: {loc['uniform']:.0%})")
    local = max(range(depth), key=lambda b: locality[("trained", b)])
    pair = pair % len(fixed)
    f1, f2 = fixed.f1[pair], fixed.f2[pair]
    maps = {f"trained, block {b + 1}": cross_attention(model, f1, f2, block=b) for b in range(depth)}
    maps[f"untrained, block {depth}"] = cross_attention(baseline, f1, f2, block=depth - 1)
    chosen = textured_masked_patches(f2, maps[f"trained, block {depth}"]["mask"], model.patch_size, queries)
    lines.insert(0, f"maps: {Path(fixed.videos[pair]).name}, frames {fixed.indices[pair][0]} -> "
                    f"{fixed.indices[pair][1]}; masked patches {chosen}; heads of trained block {local + 1}")
    fig = plot_cross_attention(f1, f2, maps, chosen, model.patch_size, heads_of=f"trained, block {local + 1}")
    return "\n".join(lines), fig


# ---------------------------------------------------------------- 11. encoder attention maps
def attention_figure(config: TrainConfig, model: torch.nn.Module, device: torch.device | str) -> Figure:
    """The last layer's [CLS] attention of `model` on a held-out frame at twice the training size."""

    view = KineticsFramePairs(config.data, split=config.test_split or config.train_split, img_size=2 * config.img_size,
                              augment=False, fixed_pairs=True, seed=config.seed)
    info = view.describe(0)
    print(f"{info['video']}, frame {info['indices'][0]}, {tuple(info['f1'].shape[-2:])} pixels")
    return plot_attention_maps(model.to(device).eval(), info["f1"])


# ---------------------------------------------------------------- 12. label propagation
def davis_folder(davis: str, config: TrainConfig) -> Path:
    """The DAVIS-layout folder to evaluate on: `davis` if set, else ../shared/data/davis_mini when it is there,
    else (or with davis="synthetic") a small synthetic sequence written into the run's output folder."""

    if davis and davis != "synthetic":
        return Path(davis)
    if SHARED_DAVIS_MINI.is_dir() and not davis:
        return SHARED_DAVIS_MINI
    root = write_synthetic_davis(Path(config.output_dir) / "davis_synthetic", num_sequences=1, num_frames=8)
    why = "as asked" if davis else f"no DAVIS folder given and none at {SHARED_DAVIS_MINI}"
    print(f"{why}: wrote a synthetic sequence of moving discs to {root}")
    return root


def compare_on_davis(config: TrainConfig, model: torch.nn.Module, davis_root: Path, device: torch.device | str,
                     ) -> tuple[dict[str, dict], Figure]:
    """Label propagation with the evaluation's default protocol on the first sequence of `davis_root`: the trained
    encoder, its random initialisation and raw pixels; their scores and the figure of the trained encoder's masks."""

    sequence = sorted(p.name for p in (davis_root / "JPEGImages" / "480p").iterdir() if p.is_dir())[0]
    encoders = {"trained": model.encoder, "random init": untrained_model(config).encoder,
                "raw pixels": PixelEncoder(patch_size=model.patch_size)}
    results, lines = {}, []
    for name, encoder in tqdm(encoders.items(), desc="label propagation", unit="encoder", file=progress_file()):
        tag = "pixels" if name == "raw pixels" else weights_fingerprint(encoder)[:10]
        out = Path(config.output_dir) / "eval" / f"davis-{tag}"  # one folder per weights
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # the evaluation's own lines: the table below says it all
            r = run_evaluation("davis", davis_root, out, encoder=encoder.to(device).eval(), arch=config.arch,
                               device=device, sequences=[sequence], progress=False)
        results[name] = r
        lines.append(f"{name:12s} J&F {r['J&F-Mean']:.3f}  J {r['J-Mean']:.3f}  F {r['F-Mean']:.3f}  "
                     f"({r['frames']} frames of {davis_root.name}/{sequence}, protocol {r['protocol']}, "
                     f"{time.perf_counter() - start:.1f} s, masks in {out})")
    print("\n".join(lines))
    return results, plot_propagation(davis_root, results["trained"]["output"], sequence)


def resolve_notebook_device(config: TrainConfig) -> torch.device:
    """The device the config's `device` names (auto: this machine's GPU when there is one, else the CPU)."""

    return resolve_device(config.device)


# the notebook's learning curve per setting: (sequences, frames, frame size) of the benchmark, encoder input sizes,
# every k-th checkpoint, and whether davis_mini (or DAVIS) joins; the quick one costs about a second
CURVE_SETTINGS: dict[str, tuple[int, int, tuple[int, int], list, int, bool]] = {
    "quick": (1, 3, (96, 176), [64], 1, False),
    "demo": (2, 6, (480, 854), [112, (480, 880)], 2, True),
    "paper": (4, 10, (480, 854), [224, (480, 880)], 1, True),
}


def correspondence_curve(config: TrainConfig, setting: str, davis_root: Path) -> tuple[list[dict[str, Any]], Figure]:
    """Does training improve correspondence? The generated benchmark (held-out textures, `ml.eval.correspondence`)
    written into the run's folder, then J&F of the run's checkpoints against steps at the setting's input sizes,
    beside random initialisation and raw pixels (`python -m ml.evaluate curve`, which the README's numbers use)."""

    sequences, frames, size, sizes, every, with_davis = CURVE_SETTINGS.get(setting, CURVE_SETTINGS["paper"])
    bench = Path(config.output_dir) / "correspondence"
    if not (bench / "ImageSets").is_dir():
        write_correspondence_benchmark(bench, sequences, frames, size)
    data = [bench, davis_root] if with_davis else [bench]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # a summary line per evaluation: the table says it all
        rows = learning_curve(Path(config.output_dir) / "checkpoints" / config.prefix, data, sizes,
                              Path(config.output_dir) / "eval" / "curve", run_evaluation, every=every)
    print(curve_table(rows))
    print(f"({len(rows)} evaluations in {time.perf_counter() - start:.0f} s; J&F, 0-1)")
    return rows, plot_correspondence_curve(rows)
