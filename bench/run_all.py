"""Runs every benchmark and rewrites the tables of BENCHMARKS.md (what `make bench` runs).

    python -m bench.run_all                          # data, train, propagation, cost: about 15 min on 2 cores
    python -m bench.run_all --only train             # one section (cost and the summary follow it)
    python -m bench.run_all --quick --output /tmp/B.md   # tiny sizes, seconds: a smoke run, never the committed file

Each section of the file lies between `<!-- bench:<name>:start -->` and `<!-- bench:<name>:end -->`;
only the sections run are rewritten, everything outside the markers (and sections not run) is kept
as it is. A section records the machine, the versions, the exact command, the load while it ran and
its figures (median and min-max of the timed runs, after a warm-up); its raw results are also kept
in the section as a JSON comment, so the cost estimate and the summary can be recomputed from the
file alone. Raw results also go to bench/results/ (not tracked by git).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

import mae  # noqa: F401  (first: makes torchvision importable for timm on a CPU-only torch)
from bench import read_section_payload, read_section_results  # noqa: F401  (tests read them here)
from ml.checkpoint import atomic_file

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
RESULTS_DIR = REPO / "bench" / "results"
SECTIONS = ("data", "train", "propagation", "cost")
RUN_ORDER = ("propagation", "data", "train")
TITLES = {
    "summary": "Ratios against the targets",
    "data": "1. Data loading: pairs per second per worker",
    "train": "2. Training step: pairs per second, FLOPs, utilisation",
    "propagation": "3. Label propagation at DAVIS resolution",
    "cost": "4. Cost of the paper's recipes, on paper",
}
LOADED_CORES = 0.25  # other processes using more than this many cores on average: the section says it was shared

TEMPLATE = """# Benchmarks

Every figure in this file is written by `make bench` (`python -m bench.run_all`), between the
`bench:*` markers; text outside them is kept. One section alone: `python -m bench.run_all --only
data|train|propagation|cost` (cost and the summary are recomputed from the file's figures after any
section). Each section states the machine, the versions, the exact command and the load while it ran;
figures are medians of at least 5 timed runs after a warm-up, with the spread (min-max) of the runs.

## Ratios against the targets

<!-- bench:summary:start -->
<!-- bench:summary:end -->

## 1. Data loading: pairs per second per worker

Our loader (`KineticsFramePairs`: open, seek, decode forward, RGB + crop/flip/normalise of the
wanted frames) against pytorchvideo 0.1.5's `Kinetics` + `EncodedVideo` (installed for the benchmark
only, into `outputs/bench-pytorchvideo`) and against the bound: PyAV's bare decode from the seek
point to the last wanted frame. One process pinned to one core with one decoding thread (one
worker's share); the loaders take turns item by item, ratios are medians of within-run ratios.
R = repeated sampling (pairs per decoded video). See `bench/bench_data.py`.

<!-- bench:data:start -->
<!-- bench:data:end -->

## 2. Training step: pairs per second, FLOPs, utilisation

One optimiser step (forward + backward + AdamW) on random frame pairs, CPU fp32, against a
baseline of the same model whose encoder runs on all of f2's patches with mask tokens in place.
FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode`; utilisation is achieved FLOP/s
over the measured peak of a 2048x2048 fp32 matmul, sampled after every timed step. See
`bench/bench_train.py`.

<!-- bench:train:start -->
<!-- bench:train:end -->

## 3. Label propagation at DAVIS resolution

ViT-S/16 features of whole 480p frames, propagation from the first frame and a queue of past
frames (DAVIS settings), upsampling and argmax, timed per frame (frames decoded beforehand); peak
memory of a fresh process running only this benchmark. Random weights: speed does not depend on
their values. See `bench/bench_propagation.py`.

<!-- bench:propagation:start -->
<!-- bench:propagation:end -->

## 4. Cost of the paper's recipes, on paper

The paper's ViT-S/16 recipes (Kinetics-400, about 240k training videos, repeated sampling 2,
batch 2048 pairs, 400 and 2000 epochs) from the measured ViT-S/16 step and its counted FLOPs.
See `bench/cost.py`.

<!-- bench:cost:start -->
<!-- bench:cost:end -->
"""


# ---------------------------------------------------------------- the file: markers and embedded results


def _marker(name: str, edge: str) -> str:
    return f"<!-- bench:{name}:{edge} -->"


def results_comment(name: str, payload: dict) -> str:
    # "--" may not appear inside an HTML comment: inside JSON it can only be in a string, where \u002d is the same
    text = json.dumps(payload, separators=(",", ":"), default=str).replace("--", "-\\u002d")
    return f"<!-- bench:{name}:results {text} -->"


def replace_section(text: str, name: str, body: str) -> str:
    """`text` with the lines between section `name`'s markers replaced by `body`; a missing section is appended."""
    start, end = _marker(name, "start"), _marker(name, "end")
    i, j = text.find(start), text.find(end)
    if i < 0 and j < 0:
        return text.rstrip("\n") + f"\n\n## {TITLES.get(name, name)}\n\n{start}\n{body.strip()}\n{end}\n"
    if i < 0 or j < 0 or j < i or text.count(start) > 1 or text.count(end) > 1:
        raise ValueError(f"section {name!r}: expected one {start} followed by one {end}; fix the markers by hand")
    return text[: i + len(start)] + "\n" + body.strip() + "\n" + text[j:]


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path, "w") as f:
        f.write(text)


# ---------------------------------------------------------------- machine, versions, load


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    ram_gib = None
    try:
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
        ram_gib = kib / 2**20
    except (OSError, StopIteration):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "usable_cores": usable, "ram_gib": ram_gib,
            "os": f"{platform.system()} {platform.release()} {platform.machine()}",
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def versions() -> dict:
    import av
    import numpy
    import timm

    return {"python": platform.python_version(), "torch": torch.__version__, "av": av.__version__,
            "timm": timm.__version__, "numpy": numpy.__version__}


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" with local changes" if dirty else "")


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class LoadMonitor:
    """Load average before and after, and how many cores other processes kept busy on average in between."""

    def __enter__(self) -> LoadMonitor:
        self.load_before = os.getloadavg()[0]
        self.busy0, self.own0, self.t0 = _busy_cpu_seconds(), _own_cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.load_after = os.getloadavg()[0]
        busy1 = _busy_cpu_seconds()
        self.other_cores = None
        if busy1 is not None and self.busy0 is not None and self.seconds > 0:
            others = (busy1 - self.busy0) - (_own_cpu_seconds() - self.own0)
            self.other_cores = max(0.0, others / self.seconds)

    def as_dict(self) -> dict:
        return {"seconds": self.seconds, "load_1min_before": self.load_before, "load_1min_after": self.load_after,
                "other_processes_cores": self.other_cores}


class KeepAffinityAndThreads:
    """Restores the CPU affinity and torch's thread count a benchmark may change (the data one pins to one core)."""

    def __enter__(self) -> KeepAffinityAndThreads:
        self.threads = torch.get_num_threads()
        self.affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        return self

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.threads)
        if self.affinity is not None:
            os.sched_setaffinity(0, self.affinity)


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _command(module: str, argv: list[str]) -> str:
    """The command line to type in the repository (absolute paths inside it shown relative)."""
    shown = [_rel(Path(a)) if os.path.isabs(a) else a for a in argv]
    return f"python -m {module} " + " ".join(shlex.quote(a) for a in shown)


# ---------------------------------------------------------------- the sections


def run_data(quick: bool, results_dir: Path) -> tuple[list[dict], str]:
    from bench import bench_data

    json_path = results_dir / "data.json"
    if quick:
        results = bench_data.run_benchmark(items=2, runs=1, warmup=0, clip_seconds=0.5, clip_dir=results_dir / "clips",
                                           img_size=32, pytorchvideo_dir=None, sets=("key1s",), clip_size=(64, 48),
                                           formats=False)
        write_text_atomic(json_path, json.dumps(results, indent=2))
        return results, "(quick: bench_data.run_benchmark at a tiny size, no pytorchvideo)"
    if not (bench_data.PYTORCHVIDEO_DIR / "pytorchvideo").is_dir():
        print(f"installing pytorchvideo for the benchmark into {_rel(bench_data.PYTORCHVIDEO_DIR)}")
        bench_data.install_pytorchvideo(bench_data.PYTORCHVIDEO_DIR)
    argv = ["--items", "40", "--runs", "5", "--warmup", "1", "--json", str(json_path.resolve())]
    return bench_data.main(argv), _command("bench.bench_data", argv)


def run_train(quick: bool, results_dir: Path) -> tuple[list[dict], str]:
    from bench import bench_train

    json_path = results_dir / "train.json"
    if quick:
        argv = ["--presets", "siammae_tiny", "--batch", "2", "--runs", "2", "--warmup", "1", "--device", "cpu"]
    else:
        presets = list(bench_train.DEFAULT_PRESETS)
        argv = ["--presets", *presets, "--batch", *map(str, bench_train.DEFAULT_BATCHES), "--runs", "5",
                "--warmup", "1", "--device", "cpu"]
    argv += ["--json", str(json_path.resolve())]
    results = bench_train.main(argv)
    commands = [_command("bench.bench_train", argv)]
    if not quick:  # the decoder variants of ViT-S/16, at the same batch
        variant_json = str((results_dir / "train_variants.json").resolve())
        variant_argv = ["--presets", *bench_train.DECODER_VARIANTS, "--batch", "8", "--runs", "5", "--warmup", "1",
                        "--device", "cpu", "--no-baseline", "--json", variant_json]
        results += bench_train.main(variant_argv)
        commands.append(_command("bench.bench_train", variant_argv))
    if torch.cuda.is_available() and not quick:  # the same on the GPU, bf16 autocast
        gpu_argv = ["--presets", "siammae_vit_small_patch16", "siammae_vit_base_patch16", "--batch", "64", "--runs",
                    "5", "--warmup", "2", "--device", "cuda", "--bf16", "--json",
                    str((results_dir / "train_gpu.json").resolve())]
        results += bench_train.main(gpu_argv)
        commands.append(_command("bench.bench_train", gpu_argv))
    return results, "; ".join(commands)


def run_propagation(quick: bool, results_dir: Path) -> tuple[list[dict], str]:
    from bench import bench_propagation

    json_path = results_dir / "propagation.json"
    if quick:
        results = bench_propagation.run_benchmark(arch="siammae_tiny", size=(64, 112), frames=3, frame_hw=(64, 112),
                                                  runs=1, use_davis_mini=False, isolate=False, protocols=("crw",))
        write_text_atomic(json_path, json.dumps(results, indent=1))
        return results, "(quick: bench_propagation.run_benchmark, siammae_tiny on 3 generated 64x112 frames)"
    argv = ["--runs", "5", "--davis-mini-runs", "5", "--output", str(json_path.resolve())]
    return bench_propagation.main(argv), _command("bench.bench_propagation", argv)


# ---------------------------------------------------------------- rendering


def _meta_lines(meta: dict) -> list[str]:
    m, v, load = meta["machine"], meta["versions"], meta["load"]
    ram = f", {m['ram_gib']:.1f} GiB RAM" if m.get("ram_gib") else ""
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"
    make = " (`make bench`)" if meta["run_all_command"] == "python -m bench.run_all" else ""
    lines = [
        f"- Run: {meta['date']}, commit {meta['commit']}, {load['seconds']:.0f} s.",
        f"- Machine: {m['cpu']}, {m['logical_cores']} logical cores ({m['usable_cores']} usable){ram}{gpu}; {m['os']}.",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        f"- Command: `{meta['run_all_command']}`{make}; this section alone: `{meta['command']}`.",
    ]
    others = load.get("other_processes_cores")
    shared = others is not None and others > LOADED_CORES
    load_line = (f"- Load: 1-min load average {load['load_1min_before']:.1f} before, {load['load_1min_after']:.1f} "
                 "after (this benchmark included)")
    if others is not None:
        load_line += f"; other processes kept {others:.2f} of {m['logical_cores']} cores busy on average while it ran"
    load_line += (". **The machine was shared**: figures are slower and noisier than on an idle machine." if shared
                  else ".")
    return lines + [load_line]


def _fmt_range(median: float, lo: float, hi: float, digits: int = 2) -> str:
    return f"{median:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def render_data(results: list[dict]) -> str:
    from bench.bench_data import format_formats, format_profile, format_table

    text = (format_table(results) + "\n\nPairs/s per worker, median (min-max) of the timed runs. The two ratio "
            "columns of time per pair are ours over the bare decode (1.00x: ours costs no more than decoding). "
            "\"prepared\": the same videos after `python -m dataset_loader.prepare` (JPEG frames, short side 256, "
            "quality 90), read by the same `KineticsFramePairs`.\n\nWhere a pair's time goes (ms per pair, R=2, "
            "224 px, one core):\n\n" + format_profile(results))
    if any("formats" in row for row in results):
        text += ("\n\nCandidate formats for prepared data (each set re-encoded at short side 256; PSNR of first, "
                 "middle and last frames against the source's):\n\n" + format_formats(results))
    return text


def render_train(results: list[dict]) -> str:
    from bench.bench_train import format_table

    lines = [format_table(results), ""]
    devices = sorted({(r["device"], r["precision"]) for r in results})
    for device, precision in devices:
        rows = [r for r in results if (r["device"], r["precision"]) == (device, precision)]
        lines.append(f"Peak matmul on {device} ({precision}, 2048x2048, sampled after every timed step): median "
                     f"{rows[0]['peak_matmul_gflops_median']:.0f} GFLOP/s, best "
                     f"{max(r['peak_matmul_gflops_max'] for r in rows):.0f} GFLOP/s; torch threads "
                     f"{rows[0]['threads']}; {rows[0]['runs']} timed steps after {rows[0]['warmup']} warm-up.")
    lines += [
        "",
        "Batch = frame pairs per step (stated per row). Pairs/s = batch / median step time. GFLOP/pair = forward + "
        "backward FLOPs counted by `FlopCounterMode` (2 per multiply-add of matmuls, attention and the patch "
        "convolution; norms, GELU, softmax, the loss and AdamW are not counted). Attention: "
        + ("`FlopCounterMode` alone counted **0 FLOPs** for `scaled_dot_product_attention` on these CPU tensors "
           "in this run (its formula table has no entry for the CPU kernels), so "
           if not all(r.get("torch_counts_attention", True) for r in results) else "")
        + "`bench_train.attention_flop_formulas()` counts every fused attention kernel analytically (2 matmuls "
        "forward, 4 backward, without the recomputation some kernels do: model FLOPs), which equals counting on "
        "the meta device, where attention runs as plain matmuls (the test suite checks this). \"Time in counted "
        "ops\" = their share of one profiled forward + backward (the profiler's overhead falls mostly on the many "
        "small operations, so a slight underestimate); \"their rate / peak\" = the step's FLOPs over their time, "
        "over the median peak. AdamW's share of the step: "
        + ", ".join(f"{r['preset']} {100 * r['optimizer_s_median'] / r['step_s_median']:.0f}%"
                    for r in results if "baseline_over_siammae_step_time" not in r) + ".",
    ]
    if not any(r["device"].startswith("cuda") for r in results):
        lines += ["", "GPU bf16 rows: **not measured** (no GPU on the machine of this run); run this section on a "
                      "CUDA machine to add them."]
    pairs = _baseline_pairs(results)
    if pairs:
        lines += ["", "| preset | batch | baseline step time / SiamMAE step time (median of within-run ratios) | "
                      "FLOPs per pair, baseline / SiamMAE |", "|---|---:|---:|---:|"]
        for ours, base in pairs:
            lines.append(f"| {ours['preset']} ({ours['device']}, {ours['precision']}) | {ours['batch']} | "
                         f"{base['baseline_over_siammae_step_time']:.2f}x | "
                         f"{base['gflop_per_pair'] / ours['gflop_per_pair']:.2f}x |")
    return "\n".join(lines)


def _baseline_pairs(results: list[dict]) -> list[tuple[dict, dict]]:
    """(SiamMAE row, baseline row) of each preset and device."""
    pairs = []
    for base in results:
        if "baseline_over_siammae_step_time" in base:
            ours = next(r for r in results if r["preset"] == base["preset"] and r["device"] == base["device"]
                        and r["precision"] == base["precision"] and "baseline_over_siammae_step_time" not in r)
            pairs.append((ours, base))
    return pairs


def render_propagation(results: list[dict]) -> str:
    lines = [
        "| protocol | data | model, device | frame → encoder input → grid | s/frame, median (min-max) | encode s | "
        "propagate s | CPU s/frame | peak RSS MiB (before the first frame) | DAVIS-2017 val (1999 frames) | "
        "timed frames |",
        "|---|---|---|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for r in results:
        memory = f"{r['peak_rss_mib']:.0f} ({r['rss_before_mib']:.0f})"
        if "peak_cuda_allocated_mib" in r:
            memory += f"; CUDA {r['peak_cuda_allocated_mib']:.0f}"
        lines.append(
            f"| {r.get('protocol', 'causal')} | {r['data']} | {r['arch']}, {r['device']} "
            f"({r['torch_threads']} threads) | "
            f"{r['frame_size'][0]}x{r['frame_size'][1]} → {r['encoder_input'][0]}x{r['encoder_input'][1]} → "
            f"{r['grid'][0]}x{r['grid'][1]} | "
            f"{_fmt_range(r['total_s_per_frame'], r['total_s_per_frame_min'], r['total_s_per_frame_max'], 3)} | "
            f"{r['encode_s_per_frame']:.3f} | {r['propagate_s_per_frame']:.3f} | {r['cpu_s_per_frame']:.2f} | "
            f"{memory} | {r['projected_davis2017_val_hours']:.2f} h | {r['timed_frames']} ({r['runs']} runs) |"
        )
    lines += ["", "Medians over every timed frame of every run (the first frame, encoded only, left out), after a "
                  "warm-up run; min-max over those frames. CPU s/frame is the process's CPU time (all threads). "
                  "The DAVIS-2017 val figure is s/frame x 1999 frames."]
    return "\n".join(lines)


# ---------------------------------------------------------------- cost and summary, from the file's figures


def cost_from_text(text: str) -> tuple[dict, dict] | None:
    """(cost estimate, its meta) from the train and data figures of a BENCHMARKS.md text; None if one is missing."""
    from bench.cost import COST_PRESET, cost_inputs, estimate_cost

    train, data = read_section_payload(text, "train"), read_section_payload(text, "data")
    if train is None or data is None:
        return None
    rows = [r for r in train["results"] if r["device"] == "cpu"]
    presets = [r["preset"] for r in rows]
    preset = COST_PRESET if COST_PRESET in presets else presets[0]
    cost = estimate_cost(*cost_inputs(rows, data["results"], preset))
    meta = {"train_run": train["meta"]["date"], "data_run": data["meta"]["date"]}
    return cost, meta


def render_cost(cost: dict, meta: dict, output: Path) -> str:
    from bench.cost import COST_PRESET, format_cost

    command = "python -m bench.cost" + ("" if output.resolve() == BENCHMARKS_MD else f" --benchmarks {_rel(output)}")
    lines = [f"- Derived (no timing of its own) from the train section's run of {meta['train_run']} and the data "
             f"section's run of {meta['data_run']}; recomputed whenever either is re-run.",
             f"- Command: `{command}` (reads those figures from this file)."]
    if cost["preset"] != COST_PRESET:
        lines += ["", f"**Computed from `{cost['preset']}`, not ViT-S/16: a quick run.**"]
    return "\n".join(lines) + "\n\n" + format_cost(cost)


def render_summary(text: str) -> str:
    """Ratios against the targets and what limits each, from the figures in the file."""
    data = read_section_results(text, "data")
    train = read_section_results(text, "train")
    prop = read_section_results(text, "propagation")
    cost = read_section_payload(text, "cost")
    out = []
    if data:
        out.append(_summary_data(data))
    if train:
        out.append(_summary_train(train))
    if prop:
        out.append(_summary_propagation(prop))
    if cost:
        out.append(_summary_cost(cost["results"]))
    if not out:
        return "_No figures yet: run `make bench`._"
    return "\n\n".join(out)


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _summary_data(data: list[dict]) -> str:
    from bench.bench_data import TARGET_PREPARED, TARGET_VS_BOUND, TARGET_VS_PYTORCHVIDEO

    parts = []
    prepared = [(r["set"], r["prepared / ours (R=2, 8-bit)"], r["storage prepared / original"]) for r in data
                if "prepared / ours (R=2, 8-bit)" in r]
    if prepared:
        ok = all(a >= TARGET_PREPARED for _, a, _ in prepared)
        parts.append(f"prepared / original files, R=2 (target >= {TARGET_PREPARED:g}x, {_met(ok)}): "
                     + ", ".join(f"{a:.2f}x on {s} for {b:.1f}x the bytes" for s, a, b in prepared))
    vs_ptv = [(r["set"], r["ours / pytorchvideo"], r["ours R=2 / pytorchvideo"]) for r in data
              if "ours / pytorchvideo" in r]
    if vs_ptv:
        ok = all(a >= TARGET_VS_PYTORCHVIDEO for _, a, _ in vs_ptv)
        parts.append(f"ours / pytorchvideo 0.1.5 (target >= {TARGET_VS_PYTORCHVIDEO:g}x, {_met(ok)}): "
                     + ", ".join(f"{a:.2f}x on {s} (R=2: {b:.2f}x)" for s, a, b in vs_ptv))
    else:
        parts.append("ours / pytorchvideo: not measured in this run (pytorchvideo left out)")
    bound = [(r["set"], r["bound / ours (R=1)"], r["bound / ours (R=2)"]) for r in data]
    ok = all(a <= TARGET_VS_BOUND for _, a, _ in bound)
    parts.append(f"time per pair, ours / bare decode (target <= {TARGET_VS_BOUND:g}x, {_met(ok)}): "
                 + ", ".join(f"{a:.2f}x on {s} (R=2: {b:.2f}x)" for s, a, b in bound))
    worst = max(a for _, a, _ in bound)
    if worst <= TARGET_VS_BOUND:
        limit = (f"Limit: decoding. Ours takes at most {worst:.2f}x the time of PyAV's bare decode from the seek "
                 "point to the last wanted frame, so H.264 decoding from the keyframe before the pair sets the rate")
    else:
        limit = (f"Limit: work beyond decoding. Ours takes up to {worst:.2f}x the time of PyAV's bare decode from the "
                 "seek point, so colour conversion, cropping, resizing and normalising cost more than the decode here")
    below = [s for s, _, b in bound if b < 1]
    if below:
        limit += (f"; with R=2 ours is faster than the \"bound\" on {', '.join(below)}: that bound decodes straight "
                  "through from the first pair's first frame to the last pair's last, while ours seeks forward "
                  "between the pairs when that saves decoding, so with R=2 it is no bound")
    rates = {r["set"]: r["ours (R=1)"]["pairs_per_s"] for r in data}
    if "key1s" in rates and "key8s" in rates:
        limit += (f"; with a keyframe every 8 s ours gives {rates['key8s']:.0f} pairs/s against {rates['key1s']:.0f} "
                  f"with one every second ({rates['key1s'] / rates['key8s']:.1f}x), since a seek may land up to 8 s "
                  "before the wanted frames")
    two = [(r["set"], r[k]["pairs_per_s"], r["ours (R=1)"]["pairs_per_s"]) for r in data for k in r
           if k.startswith("ours, DataLoader with 2 workers")]
    if two:
        parts.append("a DataLoader with 2 workers (2 cores, R=1) gives "
                     + ", ".join(f"{t:.0f} pairs/s on {s} ({t / one:.2f}x one worker)" for s, t, one in two))
    else:
        limit += ". Pairs/s with 2 workers: not measured (the data benchmark times one worker on one core)"
    return "**Data loading** (pairs/s per worker): " + "; ".join(parts) + ". " + limit + "."


def _summary_train(train: list[dict]) -> str:
    pairs = _baseline_pairs(train)
    parts = []
    for ours, base in pairs:
        parts.append(f"{ours['preset']} (batch {ours['batch']}, {ours['device']} {ours['precision']}): "
                     f"{ours['pairs_per_s']:.2f} pairs/s against {base['pairs_per_s']:.2f} for the baseline, whose "
                     f"step takes {base['baseline_over_siammae_step_time']:.2f}x as long for "
                     f"{base['gflop_per_pair'] / ours['gflop_per_pair']:.2f}x the FLOPs (visible-only encoding saves "
                     f"{100 * (1 - 1 / base['baseline_over_siammae_step_time']):.0f}% of the step)")
    cpu_rows = [r for r in train if r["device"] == "cpu" and "baseline_over_siammae_step_time" not in r]
    util = ", ".join(f"{r['preset']} {100 * r['utilisation']:.0f}%" for r in cpu_rows)
    limit = ""
    shares = [r for r in cpu_rows if "flop_op_time_share" in r]
    if shares:
        limit = (" Limit: " + "; ".join(
            f"{r['preset']} spends {100 * r['flop_op_time_share']:.0f}% of forward + backward in counted ops, which "
            f"run at {100 * r['flop_op_efficiency']:.0f}% of the matmul peak, and "
            f"{100 * r['optimizer_s_median'] / r['step_s_median']:.0f}% of the step in AdamW" for r in shares)
            + ". The time outside counted ops (norms, GELU, softmax, copies, masking gathers, AdamW) does no "
            "counted FLOPs")
        slow = [r for r in shares if r["flop_op_efficiency"] < 0.85]
        if slow:
            limit += ("; and the counted ops themselves stay below the square-matmul peak: "
                      + ", ".join(f"{100 * r['flop_op_efficiency']:.0f}% for {r['preset']}" for r in slow))
        limit += "."
    return ("**Training step** (what visible-only encoding buys): " + "; ".join(parts) + ". CPU fp32 utilisation "
            f"of the measured matmul peak: {util}." + limit)


def _summary_propagation(prop: list[dict]) -> str:
    parts = []
    for r in prop:
        parts.append(f"{r['data']}: {r['total_s_per_frame']:.2f} s/frame ({r['arch']}, {r['device']}, input "
                     f"{r['encoder_input'][0]}x{r['encoder_input'][1]}), "
                     f"{100 * r['encode_s_per_frame'] / r['total_s_per_frame']:.0f}% of it encoding, peak RSS "
                     f"{r['peak_rss_mib']:.0f} MiB; DAVIS-2017 val ~ {r['projected_davis2017_val_hours']:.1f} h")
    encode_share = min(r["encode_s_per_frame"] / r["total_s_per_frame"] for r in prop)
    limit = ("the ViT encoder on whole frames (the share above); propagation itself (affinities, top-k, softmax, "
             "upsampling) is the rest" if encode_share > 0.5 else
             "propagation itself (affinities to the first frame and the queue, top-k, upsampling), more than encoding")
    return "**Label propagation** (no target): " + "; ".join(parts) + f". Limit: {limit}."


def _summary_cost(cost: dict) -> str:
    from bench.cost import figure

    feed = sorted(cost["gpu_feed"], key=lambda g: g["mfu"])
    lo, hi = feed[0], feed[-1]
    recipes = []
    for row in cost["recipes"]:
        by_mfu = sorted(row["gpu"], key=lambda g: -g["mfu"])  # the higher MFU first: fewer hours
        on8 = [next((w["hours"] for w in g["wall"] if w["gpus"] == 8), None) for g in by_mfu]
        hours = " to ".join(figure(g["gpu_hours"]) for g in by_mfu)
        wall = " (" + " to ".join(figure(h) for h in on8) + " h on 8 GPUs)" if None not in on8 else ""
        recipes.append(f"{row['recipe']['name']}: {hours} H100-hours{wall}, "
                       f"{row['cpu_hours']['median'] / 24 / 365:,.1f} years on this CPU")
    workers = {name: (lo["loader_workers_per_gpu"][name], hi["loader_workers_per_gpu"][name])
               for name in lo["loader_workers_per_gpu"]}
    return (f"**Cost on paper** ({cost['preset']}, assumed {100 * lo['mfu']:.0f}-{100 * hi['mfu']:.0f}% MFU of "
            f"{cost['gpu_peak_flops'] / 1e12:,.0f} TFLOP/s): " + "; ".join(recipes) + ". Limit: data. One GPU "
            f"would train {lo['pairs_per_s_per_gpu']:,.0f}-{hi['pairs_per_s_per_gpu']:,.0f} pairs/s, which takes "
            + ", ".join(f"{a:,}-{b:,} loader workers (cores) on {name}" for name, (a, b) in workers.items())
            + " per GPU at our measured pairs/s per worker: on the original files decoding, not the GPU, bounds "
            "such a run; prepared data (JPEG frames) cuts the cores several-fold.")


# ---------------------------------------------------------------- main


def run_sections(sections: list[str], quick: bool, output: Path, results_dir: Path, run_all_command: str) -> dict:
    """Runs `sections`, rewrites them in `output` (then cost and the summary from the file); returns the results."""
    text = output.read_text() if output.is_file() else TEMPLATE
    for name in [*sections, "cost", "summary"]:  # fail before any benchmark runs if a marker is broken
        replace_section(text, name, "")
    runners = {"data": run_data, "train": run_train, "propagation": run_propagation}
    machine, vers, commit = machine_info(), versions(), git_commit()
    all_results = {}
    for name in sorted((s for s in sections if s != "cost"), key=RUN_ORDER.index):
        print(f"\n=== {name} ===", flush=True)
        with LoadMonitor() as load, KeepAffinityAndThreads():
            results, command = runners[name](quick, results_dir)
        meta = {"date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), "commit": commit,
                "machine": machine, "versions": vers, "load": load.as_dict(), "command": command,
                "run_all_command": run_all_command, "quick": quick}
        render = {"data": render_data, "train": render_train, "propagation": render_propagation}[name]
        body = "\n".join(_meta_lines(meta)) + "\n\n" + render(results) + "\n\n" + results_comment(
            name, {"meta": meta, "results": results})
        text = replace_section(text, name, body)
        write_text_atomic(output, text)  # each finished section is kept even if a later one fails
        all_results[name] = {"meta": meta, "results": results}
    if {"cost", "train", "data"} & set(sections):
        derived = cost_from_text(text)
        if derived is None:
            if "cost" in sections:
                raise SystemExit(f"cost needs the train and data sections in {output}: run "
                                 "python -m bench.run_all --only data train first")
        else:
            cost, meta = derived
            body = render_cost(cost, meta, output) + "\n\n" + results_comment("cost", {"meta": meta,
                                                                                         "results": cost})
            text = replace_section(text, "cost", body)
            all_results["cost"] = {"meta": meta, "results": cost}
            write_text_atomic(results_dir / "cost.json", json.dumps(cost, indent=2))
    text = replace_section(text, "summary", render_summary(text))
    write_text_atomic(output, text)
    write_text_atomic(results_dir / "run_all.json", json.dumps(all_results, indent=1, default=str))
    return all_results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds: a smoke run (needs --output)")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"the file to rewrite (default {_rel(BENCHMARKS_MD)}; created if absent)")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help=f"raw JSON results (default {_rel(RESULTS_DIR)}, its quick/ folder with --quick)")
    args = parser.parse_args(argv)
    output = args.output or BENCHMARKS_MD
    if args.quick and output.resolve() == BENCHMARKS_MD:
        parser.error(f"--quick figures never go to {_rel(BENCHMARKS_MD)}: give --output elsewhere")
    results_dir = args.results_dir or (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)
    sections = [s for s in SECTIONS if s in (args.only or SECTIONS)]
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m bench.run_all", *map(shlex.quote, given)])
    start = time.perf_counter()
    results = run_sections(sections, args.quick, output, results_dir, command)
    print(f"\n{_rel(output)} rewritten ({', '.join(sections)}) in {time.perf_counter() - start:.0f} s; raw results in "
          f"{_rel(results_dir)}")
    return results


if __name__ == "__main__":
    main()
