"""Runs every benchmark and rewrites the tables of BENCHMARKS.md (what `make bench` runs).

    python -m bench.run_all                          # data, storage, train, propagation, cost: about 17 min on 2 cores
    python -m bench.run_all --only train             # one section (cost and the summary follow it)
    python -m bench.run_all --quick --output /tmp/B.md   # tiny sizes, seconds: a smoke run, never the committed file
    python -m bench.run_all --from-figures           # no run: every section's text again from the recorded figures

Each section of the file lies between `<!-- bench:<name>:start -->` and `<!-- bench:<name>:end -->`;
only the sections run are rewritten, everything outside the markers (and sections not run) is kept
as it is. A section records the machine, the versions, the exact command, the load while it ran and
its figures (median and min-max of the timed runs, after a warm-up); its raw results are also kept
in the section as a JSON comment, so the cost estimate and the summary can be recomputed from the
file alone (`--from-figures` rewrites every section that way, after a change to how figures are shown).
Raw results also go to bench/results/ (not tracked by git).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from bench import (
    BENCHMARKS_MD,
    REPO,
    bench_data,
    bench_propagation,
    bench_storage,
    bench_train,
    read_section_payload,
    relative,
)
from bench.machine import KeepAffinityAndThreads, LoadMonitor, git_commit, machine_info, versions
from bench.pytorchvideo_baseline import PYTORCHVIDEO_DIR, install_pytorchvideo
from bench.report import TEMPLATE, cost_body, cost_from_text, replace_section, section_body, write_text_atomic
from bench.summary import render_summary

RESULTS_DIR = REPO / "bench" / "results"
SECTIONS = ("data", "storage", "train", "propagation", "cost")
RUN_ORDER = ("propagation", "data", "storage", "train")
MEASURED = ("data", "storage", "train", "propagation")  # the sections with a run of their own (cost is derived)


def _command(module: str, argv: list[str]) -> str:
    """The command line to type in the repository (absolute paths inside it shown relative)."""
    shown = [relative(Path(a)) if os.path.isabs(a) else a for a in argv]
    return f"python -m {module} " + " ".join(shlex.quote(a) for a in shown)


# ---------------------------------------------------------------- the sections


def run_data(quick: bool, results_dir: Path) -> tuple[list[dict], str]:
    json_path = results_dir / "data.json"
    if quick:
        results = bench_data.run_benchmark(items=2, runs=1, warmup=0, clip_seconds=0.5, clip_dir=results_dir / "clips",
                                           img_size=32, pytorchvideo_dir=None, sets=("key1s",), clip_size=(64, 48),
                                           formats=False)
        write_text_atomic(json_path, json.dumps(results, indent=2))
        return results, "(quick: bench_data.run_benchmark at a tiny size, no pytorchvideo)"
    if not (PYTORCHVIDEO_DIR / "pytorchvideo").is_dir():
        print(f"installing pytorchvideo for the benchmark into {relative(PYTORCHVIDEO_DIR)}")
        install_pytorchvideo(PYTORCHVIDEO_DIR)
    argv = ["--items", "40", "--runs", "5", "--warmup", "1", "--json", str(json_path.resolve())]
    return bench_data.main(argv), _command("bench.bench_data", argv)


def run_storage(quick: bool, results_dir: Path) -> tuple[list[dict], str]:
    json_path = results_dir / "storage.json"
    if quick:
        two = dict(list(bench_storage.SETTINGS.items())[::2][:2])  # the default and one at 15 fps
        results = bench_storage.run_benchmark(items=2, runs=1, warmup=0, clip_dir=results_dir / "clips", img_size=32,
                                              sets=("key1s",), clip_seconds=0.5, clip_size=(64, 48), settings=two)
        write_text_atomic(json_path, json.dumps(results, indent=2))
        return results, "(quick: bench_storage.run_benchmark at a tiny size, two settings)"
    argv = ["--items", "40", "--runs", "5", "--warmup", "1", "--json", str(json_path.resolve())]
    return bench_storage.main(argv), _command("bench.bench_storage", argv)


def run_train(quick: bool, results_dir: Path) -> tuple[list[dict], str]:
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
    json_path = results_dir / "propagation.json"
    if quick:
        results = bench_propagation.run_benchmark(arch="siammae_tiny", size=(64, 112), frames=3, frame_hw=(64, 112),
                                                  runs=1, use_davis_mini=False, isolate=False, protocols=("crw",))
        write_text_atomic(json_path, json.dumps(results, indent=1))
        return results, "(quick: bench_propagation.run_benchmark, siammae_tiny on 3 generated 64x112 frames)"
    argv = ["--runs", "5", "--davis-mini-runs", "5", "--output", str(json_path.resolve())]
    return bench_propagation.main(argv), _command("bench.bench_propagation", argv)


# ---------------------------------------------------------------- main


def run_sections(sections: list[str], quick: bool, output: Path, results_dir: Path, run_all_command: str) -> dict:
    """Runs `sections`, rewrites them in `output` (then cost and the summary from the file); returns the results."""
    text = output.read_text() if output.is_file() else TEMPLATE
    for name in [*sections, "cost", "summary"]:  # fail before any benchmark runs if a marker is broken
        replace_section(text, name, "")
    runners = {"data": run_data, "storage": run_storage, "train": run_train, "propagation": run_propagation}
    machine, vers, commit = machine_info(), versions(), git_commit()
    all_results = {}
    for name in sorted((s for s in sections if s != "cost"), key=RUN_ORDER.index):
        print(f"\n=== {name} ===", flush=True)
        with LoadMonitor() as load, KeepAffinityAndThreads():
            results, command = runners[name](quick, results_dir)
        meta = {"date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), "commit": commit,
                "machine": machine, "versions": vers, "load": load.as_dict(), "command": command,
                "run_all_command": run_all_command, "quick": quick}
        text = replace_section(text, name, section_body(name, {"meta": meta, "results": results}))
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
            text = replace_section(text, "cost", cost_body(cost, meta, output))
            all_results["cost"] = {"meta": meta, "results": cost}
            write_text_atomic(results_dir / "cost.json", json.dumps(cost, indent=2))
    text = replace_section(text, "summary", render_summary(text))
    write_text_atomic(output, text)
    write_text_atomic(results_dir / "run_all.json", json.dumps(all_results, indent=1, default=str))
    return all_results


def rewrite_from_figures(output: Path) -> str:
    """Every section of `output` rewritten from the raw results embedded in it, cost and summary recomputed; runs
    no benchmark (the sections keep the run, machine and load they record). Returns the new text."""
    text = output.read_text()
    for name in MEASURED:
        payload = read_section_payload(text, name)
        if payload is not None:
            text = replace_section(text, name, section_body(name, payload))
    derived = cost_from_text(text)
    if derived is not None:
        text = replace_section(text, "cost", cost_body(*derived, output))
    text = replace_section(text, "summary", render_summary(text))
    write_text_atomic(output, text)
    return text


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds: a smoke run (needs --output)")
    parser.add_argument("--from-figures", action="store_true",
                        help="run nothing: rewrite every section's text, the cost and the summary from the figures "
                             "recorded in the file")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"the file to rewrite (default {relative(BENCHMARKS_MD)}; created if absent)")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help=f"raw JSON results (default {relative(RESULTS_DIR)}, its quick/ folder with --quick)")
    args = parser.parse_args(argv)
    output = args.output or BENCHMARKS_MD
    if args.quick and output.resolve() == BENCHMARKS_MD:
        parser.error(f"--quick figures never go to {relative(BENCHMARKS_MD)}: give --output elsewhere")
    if args.from_figures:
        if args.only or args.quick:
            parser.error("--from-figures runs no section: it takes neither --only nor --quick")
        if not output.is_file():
            parser.error(f"--from-figures: no {relative(output)} to read the figures from")
        rewrite_from_figures(output)
        print(f"{relative(output)} rewritten from the figures recorded in it (no benchmark run)")
        return {}
    results_dir = args.results_dir or (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)
    sections = [s for s in SECTIONS if s in (args.only or SECTIONS)]
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m bench.run_all", *map(shlex.quote, given)])
    start = time.perf_counter()
    results = run_sections(sections, args.quick, output, results_dir, command)
    print(f"\n{relative(output)} rewritten ({', '.join(sections)}) in {time.perf_counter() - start:.0f} s; raw results "
          f"in {relative(results_dir)}")
    return results


if __name__ == "__main__":
    main()
