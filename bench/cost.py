"""The paper's pre-training recipes on paper: compute, CPU hours and GPU hours, from measured figures.

Inputs come from the other benchmarks: the training step of ViT-S/16 (seconds per step on this CPU
and the FLOPs per pair counted by FlopCounterMode, forward + backward) and the data loader's pairs/s
per worker. Outputs, for each recipe (ViT-S/16 on Kinetics-400, about 240k training videos,
repeated sampling 2, batch 2048 pairs, drop-last batches, 400 or 2000 epochs):

- total model FLOPs = steps x batch x counted FLOPs per pair;
- hours on this CPU at the measured step rate (and core-hours: hours x torch threads);
- GPU-hours at an assumed model-FLOP utilisation (MFU) of a GPU's dense bf16 peak, and the wall
  clock on 1 and on 8 GPUs (8 GPUs assumed to scale perfectly): assumptions, not measurements;
- the pairs/s each GPU then consumes, and the data-loader workers it needs at our measured
  pairs/s per worker.

    python -m bench.cost                                  # from the figures in BENCHMARKS.md
    python -m bench.cost --train bench/results/train.json --data bench/results/data.json
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import BENCHMARKS_MD, read_section_results, save_json
from dataset_loader.dataset import KINETICS400_TRAIN_VIDEOS
from ml.training.config import TrainConfig
from ml.training.presets import get_preset

H100_BF16_DENSE_PEAK = 989e12  # FLOP/s: H100 SXM, bf16 tensor cores, dense (no sparsity), from NVIDIA's data sheet
MFU_ASSUMPTIONS = (0.30, 0.40)  # model-FLOP utilisation a well-tuned ViT training run reaches: an assumption
GPU_COUNTS = (1, 8)
COST_PRESET = get_preset("paper_vit_s16_400").arch  # the model whose measured step the cost uses
# the loaders the cost counts workers for, with the recipe's repeated sampling 2 and 8-bit batches
LOADER_VARIANTS = {"original files": "ours (R=2, 8-bit)", "prepared": "prepared (R=2, 8-bit)"}


@dataclass(frozen=True)
class Recipe:
    """A preset of ml.training.presets run over `videos` training videos (the step count training would take)."""

    name: str
    preset: str
    videos: int = KINETICS400_TRAIN_VIDEOS

    @property
    def config(self) -> TrainConfig:
        return get_preset(self.preset)

    @property
    def epochs(self) -> int:
        return self.config.epochs

    @property
    def batch(self) -> int:
        """Frame pairs per optimiser step (on any number of GPUs: the presets fix the total)."""
        return self.config.effective_batch_size(self._world)

    @property
    def steps_per_epoch(self) -> int:
        return self.config.steps_per_epoch(self.videos, self._world)

    @property
    def steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    @property
    def pairs(self) -> int:
        return self.steps * self.batch

    @property
    def _world(self) -> int:
        """A process count the preset's batch divides (the paper's: 8 GPUs)."""
        config = self.config
        if config.total_batch_size is None:
            return 1
        return max(1, config.total_batch_size // config.batch_size)


PAPER_RECIPES = (Recipe("ViT-S/16, 400 epochs", "paper_vit_s16_400"),
                 Recipe("ViT-S/16, 2000 epochs", "paper_vit_s16_2000"))


def estimate_cost(
    train_row: dict,
    loader_pairs_per_s: dict[str, float],
    recipes: tuple[Recipe, ...] = PAPER_RECIPES,
    gpu_peak_flops: float = H100_BF16_DENSE_PEAK,
    mfus: tuple[float, ...] = MFU_ASSUMPTIONS,
    gpu_counts: tuple[int, ...] = GPU_COUNTS,
) -> dict:
    """Cost of each recipe from one training-step row (bench_train) and loader pairs/s per worker by data set.

    CPU hours use the measured step time (median, and the min-max range of the runs); GPU hours use
    the counted FLOPs per pair at each assumed MFU of `gpu_peak_flops`.
    """
    if not 0 < min(mfus) <= max(mfus) <= 1:
        raise ValueError(f"MFU assumptions must be in (0, 1], got {mfus}")
    if any(rate <= 0 for rate in loader_pairs_per_s.values()):
        raise ValueError(f"loader pairs/s must be positive, got {loader_pairs_per_s}")
    flop_per_pair = train_row["gflop_per_pair"] * 1e9
    cpu_pairs_per_s = {"median": train_row["batch"] / train_row["step_s_median"],
                       "slowest": train_row["batch"] / train_row["step_s_max"],
                       "fastest": train_row["batch"] / train_row["step_s_min"]}
    threads = train_row.get("threads", 1)
    gpu = []
    for mfu in mfus:
        pairs_per_s = gpu_peak_flops * mfu / flop_per_pair  # what one GPU trains, hence must be fed
        workers = {name: math.ceil(pairs_per_s / rate) for name, rate in loader_pairs_per_s.items()}
        gpu.append({"mfu": mfu, "pairs_per_s_per_gpu": pairs_per_s, "loader_workers_per_gpu": workers})
    rows = []
    for recipe in recipes:
        total_flops = recipe.pairs * flop_per_pair
        cpu_hours = {k: recipe.pairs / rate / 3600 for k, rate in cpu_pairs_per_s.items()}
        row = {"recipe": asdict(recipe) | {"steps": recipe.steps, "pairs": recipe.pairs}, "total_flops": total_flops,
               "cpu_hours": cpu_hours, "cpu_core_hours": {k: h * threads for k, h in cpu_hours.items()}, "gpu": []}
        for g in gpu:
            gpu_hours = total_flops / (gpu_peak_flops * g["mfu"]) / 3600
            row["gpu"].append({"mfu": g["mfu"], "gpu_hours": gpu_hours,
                               "wall": [{"gpus": n, "hours": gpu_hours / n} for n in gpu_counts]})
        rows.append(row)
    return {
        "preset": train_row["preset"], "batch_measured": train_row["batch"], "threads": threads,
        "gflop_per_pair": train_row["gflop_per_pair"], "cpu_pairs_per_s": cpu_pairs_per_s,
        "gpu_peak_flops": gpu_peak_flops, "gpu_counts": list(gpu_counts), "gpu_feed": gpu,
        "loader_pairs_per_s_per_worker": dict(loader_pairs_per_s), "recipes": rows,
    }


def figure(x: float) -> str:
    """A quantity with 3 significant figures or more: 0.123, 1.23, 12.3, 123, 1,234."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _hours(h: float) -> str:
    return f"{figure(h)} h ({h / 24:,.1f} days)" if h >= 48 else f"{figure(h)} h"


def format_cost(cost: dict) -> str:
    """Markdown: the recipes' compute, CPU hours and GPU hours, then what the data loader must deliver."""
    peak_t = cost["gpu_peak_flops"] / 1e12
    mfus = " or ".join(f"{100 * g['mfu']:.0f}%" for g in cost["gpu_feed"])
    lines = [
        f"Measured inputs: `{cost['preset']}` training step on this CPU ({cost['threads']} threads, batch "
        f"{cost['batch_measured']}): {cost['cpu_pairs_per_s']['median']:.2f} pairs/s (runs ranged "
        f"{cost['cpu_pairs_per_s']['slowest']:.2f}-{cost['cpu_pairs_per_s']['fastest']:.2f}); "
        f"{cost['gflop_per_pair']:.1f} GFLOP per pair counted (forward + backward).",
        "",
        "| recipe | steps (pairs) | model FLOPs | this CPU: hours (range) | CPU core-hours | "
        + " | ".join(f"H100 at {100 * g['mfu']:.0f}% MFU: GPU-hours; wall on " +
                     ", ".join(f"{n}" for n in cost["gpu_counts"]) + " GPUs" for g in cost["gpu_feed"]) + " |",
        "|---|---|---:|---|---:|" + "---|" * len(cost["gpu_feed"]),
    ]
    for row in cost["recipes"]:
        r, cpu = row["recipe"], row["cpu_hours"]
        gpu_cells = [f"{figure(g['gpu_hours'])}; " + ", ".join(_hours(w["hours"]) for w in g["wall"])
                     for g in row["gpu"]]
        lines.append(
            f"| {r['name']} | {r['steps']:,} ({r['pairs'] / 1e6:,.0f}M) | {row['total_flops']:.2e} | "
            f"{cpu['median']:,.0f} h = {cpu['median'] / 24 / 365:,.1f} years ({cpu['fastest']:,.0f}-"
            f"{cpu['slowest']:,.0f} h) | {row['cpu_core_hours']['median']:,.0f} | " + " | ".join(gpu_cells) + " |"
        )
    lines += [
        "",
        f"Assumed, not measured: a dense bf16 peak of {peak_t:,.0f} TFLOP/s per GPU (H100 SXM) and a model-FLOP "
        f"utilisation of {mfus}; 8 GPUs scale perfectly; "
        "the FLOPs per pair are the model's matmul, attention and convolution FLOPs (norms, GELU, softmax, the "
        "loss and AdamW are left out, as MFU conventionally counts).",
        "",
        "What the data loader must deliver (pairs/s per GPU = peak x MFU / FLOPs per pair; workers = that / our "
        "loader's measured pairs/s per worker with repeated sampling 2 and 8-bit batches, one CPU core each, on the "
        "original files and on their copy made by `python -m dataset_loader.prepare`):",
        "",
        "| MFU | pairs/s per GPU | " + " | ".join(
            f"workers per GPU, {name} ({rate:.0f} pairs/s each)"
            for name, rate in cost["loader_pairs_per_s_per_worker"].items()) + " |",
        "|---|---:|" + "---:|" * len(cost["loader_pairs_per_s_per_worker"]),
    ]
    for g in cost["gpu_feed"]:
        lines.append(f"| {100 * g['mfu']:.0f}% | {g['pairs_per_s_per_gpu']:,.0f} | "
                     + " | ".join(f"{w:,}" for w in g["loader_workers_per_gpu"].values()) + " |")
    return "\n".join(lines)


def cost_inputs(train_results: list[dict], data_results: list[dict], preset: str = COST_PRESET) -> tuple[dict, dict]:
    """The SiamMAE row of `preset` from bench_train's rows, and our loader's pairs/s per worker by data set."""
    rows = [r for r in train_results if r["preset"] == preset and not r["variant"].startswith("baseline")]
    if not rows:
        raise ValueError(f"no SiamMAE training-step row for {preset} (presets there: "
                         f"{sorted({r['preset'] for r in train_results})})")
    rates = {f"{row['set']}, {label}": row[variant]["pairs_per_s"]
             for row in data_results for label, variant in LOADER_VARIANTS.items() if variant in row}
    if not rates:
        raise ValueError(f"no {sorted(LOADER_VARIANTS.values())} loader figures in the data results")
    return rows[0], rates


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmarks", type=Path, default=BENCHMARKS_MD,
                        help="read the train and data figures embedded in this file")
    parser.add_argument("--train", type=Path, help="bench_train results (JSON) instead")
    parser.add_argument("--data", type=Path, help="bench_data results (JSON) instead")
    parser.add_argument("--preset", default=COST_PRESET)
    parser.add_argument("--gpu-peak-tflops", type=float, default=H100_BF16_DENSE_PEAK / 1e12)
    parser.add_argument("--mfu", type=float, nargs="+", default=list(MFU_ASSUMPTIONS))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if (args.train is None) != (args.data is None):
        parser.error("give both --train and --data, or neither (then both come from --benchmarks)")
    if args.train is not None:
        train, data = json.loads(args.train.read_text()), json.loads(args.data.read_text())
    else:
        text = args.benchmarks.read_text()
        train, data = read_section_results(text, "train"), read_section_results(text, "data")
        if train is None or data is None:
            raise SystemExit(f"{args.benchmarks} has no train or data figures: run python -m bench.run_all first")
    cost = estimate_cost(*cost_inputs(train, data, args.preset), gpu_peak_flops=args.gpu_peak_tflops * 1e12,
                         mfus=tuple(args.mfu))
    print(format_cost(cost))
    save_json(args.json, cost)
    return cost


if __name__ == "__main__":
    main()
