"""BENCHMARKS.md as text: its template, the marked sections, their raw results, and each section's tables.

Each section lies between `<!-- bench:<name>:start -->` and `<!-- bench:<name>:end -->`; its raw results
are kept inside it as a JSON comment, so the cost estimate and the summary are recomputed from the file.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench import BENCHMARKS_MD, read_section_payload, relative
from bench.bench_data import format_formats, format_profile
from bench.bench_data import format_table as format_data_table
from bench.bench_storage import format_storage
from bench.bench_train import format_table as format_train_table
from bench.cost import COST_PRESET, cost_inputs, estimate_cost, format_cost
from bench.summary import baseline_pairs, cost_limit, data_limit, propagation_limit, storage_limit, train_limit
from ml.files import atomic_file

TITLES = {
    "summary": "Ratios against the targets",
    "data": "1. Data loading: pairs per second per worker",
    "storage": "Storage settings of prepared data",
    "train": "2. Training step: pairs per second, FLOPs, utilisation",
    "propagation": "3. Label propagation at DAVIS resolution",
    "cost": "4. Cost of the paper's recipes, on paper",
}
LOADED_CORES = 0.25  # other processes using more than this many cores on average: the section says it was shared

TEMPLATE = """# Benchmarks

Every figure in this file is written by `make bench` (`python -m bench.run_all`), between the
`bench:*` markers; text outside them is kept. One section alone: `python -m bench.run_all --only
data|train|propagation|cost` (cost and the summary are recomputed from the file's figures after any
section); `python -m bench.run_all --from-figures` rewrites every section's text from the recorded figures,
running nothing. Each section states the machine, the versions, the exact command and the load while it ran;
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

### Storage settings of prepared data

What `python -m dataset_loader.prepare`'s options that cut storage (`--quality`, `--fps`, `--short-side`) cost
in fidelity and give in bytes and speed, on the same videos; and what full Kinetics-400 would take in each
setting, extrapolated from the bytes per video-second. See `bench/bench_storage.py`.

<!-- bench:storage:start -->
<!-- bench:storage:end -->

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


# ---------------------------------------------------------------- rendering


def meta_lines(meta: dict) -> list[str]:
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
    text = (format_data_table(results) + "\n\nPairs/s per worker, median (min-max) of the timed runs. The two ratio "
            "columns of time per pair are ours over the bare decode (1.00x: ours costs no more than decoding). "
            "\"prepared\": the same videos after `python -m dataset_loader.prepare` (JPEG frames, short side 256, "
            "quality 90), read by the same `KineticsFramePairs`.\n\nWhere a pair's time goes (ms per pair, R=2, "
            "224 px, one core):\n\n" + format_profile(results))
    if any("formats" in row for row in results):
        text += ("\n\nCandidate formats for prepared data (each set re-encoded at short side 256; PSNR of first, "
                 "middle and last frames against the source's):\n\n" + format_formats(results))
    return text + "\n\n" + data_limit(results)


def render_storage(results: list[dict]) -> str:
    return (format_storage(results) + "\n\nkB per video-second: the prepared files' bytes over the videos' duration "
            "(from their headers), what `prepare`'s estimate multiplies by a tree's duration. PSNR: first, middle and "
            "last kept frame of each video against the source's frame at the same time resized to the copy's size, "
            "so JPEG's loss only (224 px also loses detail that is not counted). Pairs/s: `KineticsFramePairs` on the "
            "copy, R=2, 224 px crops, 8-bit, one core, the rows taking turns item by item; speed vs original is the "
            "median of within-run ratios to the original files. Kinetics-400 train: kB per video-second x ~240k "
            "clips x 10 s (667 hours), an extrapolation; the sample holds 10-30 fps clips, the generated key1s clips "
            "are 30 fps like most of Kinetics. `--fps 15` keeps every frame of a clip at 22 fps or less (the whole "
            "step nearest its rate / 15 is 1), hence its smaller saving on the sample, whose clips run at 10-30 fps."
            "\n\n"
            + storage_limit(results))


def render_train(results: list[dict]) -> str:
    lines = [format_train_table(results), ""]
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
    pairs = baseline_pairs(results)
    if pairs:
        lines += ["", "| preset | batch | baseline step time / SiamMAE step time (median of within-run ratios) | "
                      "FLOPs per pair, baseline / SiamMAE |", "|---|---:|---:|---:|"]
        for ours, base in pairs:
            lines.append(f"| {ours['preset']} ({ours['device']}, {ours['precision']}) | {ours['batch']} | "
                         f"{base['baseline_over_siammae_step_time']:.2f}x | "
                         f"{base['gflop_per_pair'] / ours['gflop_per_pair']:.2f}x |")
    limit = train_limit(results)
    return "\n".join(lines + (["", limit] if limit else []))


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
                  "The DAVIS-2017 val figure is s/frame x 1999 frames.", "", propagation_limit(results)]
    return "\n".join(lines)


# ---------------------------------------------------------------- cost, from the file's figures


def cost_from_text(text: str) -> tuple[dict, dict] | None:
    """(cost estimate, its meta) from the train and data figures of a BENCHMARKS.md text; None if one is missing."""

    train, data = read_section_payload(text, "train"), read_section_payload(text, "data")
    if train is None or data is None:
        return None
    rows = [r for r in train["results"] if r["device"] == "cpu"]
    presets = [r["preset"] for r in rows]
    preset = COST_PRESET if COST_PRESET in presets else presets[0]
    cost = estimate_cost(*cost_inputs(rows, data["results"], preset))
    meta = {"train_run": train["meta"]["date"], "data_run": data["meta"]["date"]}
    return cost, meta


def cost_body(cost: dict, meta: dict, output: Path) -> str:
    """The cost section's text: the estimate and its raw results."""
    return render_cost(cost, meta, output) + "\n\n" + results_comment("cost", {"meta": meta, "results": cost})


def render_cost(cost: dict, meta: dict, output: Path) -> str:
    elsewhere = "" if output.resolve() == BENCHMARKS_MD else f" --benchmarks {relative(output)}"
    command = "python -m bench.cost" + elsewhere
    lines = [f"- Derived (no timing of its own) from the train section's run of {meta['train_run']} and the data "
             f"section's run of {meta['data_run']}; recomputed whenever either is re-run.",
             f"- Command: `{command}` (reads those figures from this file)."]
    if cost["preset"] != COST_PRESET:
        lines += ["", f"**Computed from `{cost['preset']}`, not ViT-S/16: a quick run.**"]
    return "\n".join(lines) + "\n\n" + format_cost(cost) + "\n\n" + cost_limit(cost)


RENDERERS = {"data": render_data, "storage": render_storage, "train": render_train,
             "propagation": render_propagation}


def section_body(name: str, payload: dict) -> str:
    """The text of a measured section (data, train, propagation): its run, its tables and its raw results."""
    return ("\n".join(meta_lines(payload["meta"])) + "\n\n" + RENDERERS[name](payload["results"]) + "\n\n"
            + results_comment(name, payload))
