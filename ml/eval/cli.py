"""The evaluation's entry points: `run_evaluation` (the notebook's and the command line's) and `python -m ml.evaluate`.

    python -m ml.evaluate davis --checkpoint checkpoints/run --data /data/DAVIS --output outputs/eval/davis
    python -m ml.evaluate jhmdb --checkpoint random --arch siammae_vit_small_patch16 --data /data/JHMDB --output ...
    python -m ml.evaluate vip --checkpoint mae_pretrain_vit_base.pth --arch siammae_vit_base_patch16 --data ...
    python -m ml.evaluate davis ... --protocol causal --topk 10        # another protocol, one choice changed
    python -m ml.evaluate score davis --data /data/DAVIS --results DIR  # score any folder of predicted masks
    python -m ml.evaluate make-benchmark outputs/corr                 # the generated correspondence benchmark
    python -m ml.evaluate curve --run outputs/demo/run --data outputs/corr --sizes 112 480x880 --output DIR
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mae.pretrained import CheckpointError
from ml.eval.benchmarks import BENCHMARKS, DEFAULT_PROTOCOL, run_benchmark
from ml.eval.correspondence import DIFFICULTIES, write_correspondence_benchmark
from ml.eval.curve import learning_curve
from ml.eval.encoders import DEFAULT_ARCH, load_encoder
from ml.eval.features import FeatureExtractor
from ml.eval.propagation import DEFAULT_MAX_AFFINITY_ELEMENTS
from ml.eval.protocols import PROTOCOLS, Protocol, get_protocol, protocol_table, write_protocol_table
from ml.eval.score import score_davis, score_vip
from ml.eval.store import StoreError, check_output_folder
from ml.training.distributed import resolve_device

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, CheckpointError, StoreError)
PROTOCOL_OPTIONS = ("temperature", "topk", "queue_length", "radius", "heatmap_sigma")
DATASET_OPTIONS = {"davis": ("split", "resolution", "sequences"), "jhmdb": ("split_file", "sequences"),
                   "vip": ("split", "list_file", "sequences")}


def size_override(size: int | tuple[int, int] | str | None) -> dict[str, Any]:
    """Protocol fields for a --size: None keeps the protocol's; "native"; an int (short side); (H, W) (fixed)."""
    if size is None:
        return {}
    if size == "native":
        return {"size_rule": "native", "size": None}
    if isinstance(size, (tuple, list)):
        return {"size_rule": "fixed", "size": tuple(size)}
    return {"size_rule": "short_side", "size": size}


def run_evaluation(
    dataset: str,
    data: str | os.PathLike,
    output: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    arch: str | None = None,
    encoder: nn.Module | None = None,
    *,
    protocol: str | Protocol = DEFAULT_PROTOCOL,
    size: int | tuple[int, int] | str | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 1,
    seed: int = 0,
    progress: bool = True,
    max_affinity_elements: int = DEFAULT_MAX_AFFINITY_ELEMENTS,
    **options: Any,
) -> dict[str, Any]:
    """Evaluate one benchmark ('davis', 'jhmdb', 'vip') with an encoder given directly or loaded from `checkpoint`.

    `protocol`: 'crw' (default), 'causal', 'dino' or a Protocol of this dataset; `size` replaces its input size;
    `options`: protocol parameters (temperature, topk, queue_length, radius, heatmap_sigma; None keeps the
    protocol's) and the benchmark's own (split, resolution, sequences, list_file, split_file). Everything is
    checked before any model work: the protocol's values, the data and output folders, the device.
    """
    if dataset not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {dataset!r}; choose from {', '.join(BENCHMARKS)}")
    unknown = sorted(set(options) - set(PROTOCOL_OPTIONS) - set(DATASET_OPTIONS[dataset]))
    if unknown:
        raise ValueError(f"option(s) {', '.join(unknown)} do not apply to {dataset}")
    overrides = {k: v for k in PROTOCOL_OPTIONS if (v := options.pop(k, None)) is not None}
    if isinstance(protocol, Protocol):
        if protocol.dataset != dataset:
            raise ValueError(f"protocol {protocol.name} is for {protocol.dataset}, not {dataset}")
        the_protocol = protocol.replace(**size_override(size), **overrides)
    else:
        the_protocol = get_protocol(protocol, dataset, **size_override(size), **overrides)
    if max_affinity_elements < 1:
        raise ValueError(f"--max-affinity-elements must be >= 1, got {max_affinity_elements}")
    if not Path(data).is_dir():
        raise FileNotFoundError(f"--data {data}: no {dataset} folder there (expected layouts: dataset/EVALUATION.md)")
    check_output_folder(Path(output))
    if device is not None:
        device = resolve_device(device)
    if encoder is None:
        if checkpoint is None:
            raise ValueError("pass a checkpoint (a file, 'random' or 'pixels') or an encoder")
        encoder, model_name = load_encoder(checkpoint, arch, seed)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    else:
        model_name = arch or type(encoder).__name__  # device None: the encoder stays where it is
    benchmark = BENCHMARKS[dataset](data, the_protocol, **{k: v for k, v in options.items() if v is not None})
    extractor = FeatureExtractor(encoder, the_protocol, device=device, batch_size=batch_size)
    return run_benchmark(benchmark, extractor, output, model_name, progress, max_affinity_elements)


def _parse_size(text: str) -> int | tuple[int, int] | str:
    if text == "native":
        return text
    try:
        if "x" in text.lower():
            h, w = text.lower().split("x")
            return int(h), int(w)
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'native', N (short side) or HxW") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ml.evaluate", description="Label propagation with frozen features: "
                                "DAVIS-2017 J&F, JHMDB PCK, VIP mIoU (dataset/EVALUATION.md).")
    sub = p.add_subparsers(dest="command", required=True,
                           metavar="{davis,jhmdb,vip,score,protocols,make-benchmark,curve}")
    for dataset in BENCHMARKS:
        e = sub.add_parser(dataset, help=f"evaluate an encoder on {dataset}")
        e.add_argument("--checkpoint", required=True,
                       help="checkpoint file or run folder, 'random' (seeded init) or 'pixels' (raw patches)")
        e.add_argument("--arch", default=None, help=f"model preset (default: the checkpoint's, else {DEFAULT_ARCH})")
        e.add_argument("--data", required=True, help="dataset root (layouts: dataset/EVALUATION.md)")
        e.add_argument("--output", required=True, help="results folder (an interrupted run continues in it)")
        e.add_argument("--protocol", default=DEFAULT_PROTOCOL, choices=PROTOCOLS,
                       help=f"the set of conventions (default {DEFAULT_PROTOCOL}: comparable with published tables)")
        e.add_argument("--size", type=_parse_size, default=None,
                       help="encoder input: 'native', N (short side) or HxW; default: the protocol's")
        for option in DATASET_OPTIONS[dataset]:
            e.add_argument(f"--{option.replace('_', '-')}", nargs="+" if option == "sequences" else None,
                           default=None, help={"split": "split (default val)", "resolution":
                                               "annotation resolution folder (default 480p)",
                                               "sequences": "only these sequences/videos",
                                               "list_file": "file listing the videos",
                                               "split_file": "file of <action>/<video> lines"}[option])
        e.add_argument("--temperature", type=float, default=None)
        e.add_argument("--topk", type=int, default=None)
        e.add_argument("--queue-length", type=int, default=None)
        e.add_argument("--radius", type=float, default=None, help="neighbourhood radius in feature cells")
        if dataset == "jhmdb":
            e.add_argument("--heatmap-sigma", type=float, default=None, help="joint heatmap sigma in feature cells")
        e.add_argument("--max-affinity-elements", type=int, default=DEFAULT_MAX_AFFINITY_ELEMENTS,
                       help="affinity floats held at once (memory bound)")
        e.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: a GPU when there is one)")
        e.add_argument("--batch-size", type=int, default=1, help="frames encoded at once")
        e.add_argument("--seed", type=int, default=0, help="seed of --checkpoint random")
        e.add_argument("--no-progress", action="store_true", help="no progress bars (the summary line stays)")
    t = sub.add_parser("protocols", help="every field of every protocol as a markdown table")
    t.add_argument("--write", metavar="FILE", help="rewrite the table between FILE's protocols markers instead of "
                                                  "printing it (dataset/EVALUATION.md)")
    s = sub.add_parser("score", help="score a folder of predicted masks (official layout)")
    s.add_argument("dataset", choices=("davis", "vip"))
    s.add_argument("--data", required=True, help="dataset root with the annotations")
    s.add_argument("--results", required=True, help="folder of <sequence>/<frame>.png predictions (CSVs go there)")
    s.add_argument("--split", default="val")
    s.add_argument("--sequences", nargs="+", default=None)
    s.add_argument("--list-file", default=None, help="VIP: file listing the videos")
    s.add_argument("--skip-first", action="store_true", help="VIP: leave the first (given) frame unscored")
    add_benchmark_commands(sub)
    return p


def add_benchmark_commands(sub: Any) -> None:
    """`make-benchmark` (the generated correspondence benchmark) and `curve` (J&F against training steps)."""
    m = sub.add_parser("make-benchmark", help="write the generated correspondence benchmark (a DAVIS layout)")
    m.add_argument("output", help="a new (or empty) folder")
    m.add_argument("--sequences", type=int, default=4)
    m.add_argument("--frames", type=int, default=10)
    m.add_argument("--size", type=_parse_size, default=(480, 854), help="frame size HxW (default 480x854)")
    m.add_argument("--textures", default="heldout", help="'heldout' (dataset/sample/val, the default), 'train' "
                                                          "(dataset/sample/train) or a folder of videos")
    m.add_argument("--difficulty", default="medium", choices=DIFFICULTIES)
    m.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("curve", help="J&F of a run's checkpoints against steps, with random init and pixels")
    c.add_argument("--run", required=True, help="a run folder (checkpoints/<prefix>/) or a checkpoint folder")
    c.add_argument("--data", required=True, nargs="+", help="DAVIS-layout folders (e.g. a make-benchmark output)")
    c.add_argument("--sizes", required=True, nargs="+", type=_parse_size, help="encoder inputs: N (short side), HxW")
    c.add_argument("--output", required=True, help="evaluation folders and curve.csv (an interrupted curve continues)")
    c.add_argument("--every", type=int, default=1, help="every k-th checkpoint (the last always)")


def main(argv: Sequence[str] | None = None) -> dict:
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.command == "protocols":
        if a.write:
            write_protocol_table(a.write)
        else:
            print(protocol_table())
        return {}
    if a.command == "score":
        if a.dataset == "davis":
            if a.list_file or a.skip_first:
                parser.error("--list-file and --skip-first apply to vip")
            return score_davis(a.data, a.results, a.split, a.sequences)
        return score_vip(a.data, a.results, a.split, a.list_file, a.sequences, a.skip_first)
    if a.command == "make-benchmark":
        if not isinstance(a.size, tuple):
            parser.error("make-benchmark --size is HxW")
        root = write_correspondence_benchmark(a.output, a.sequences, a.frames, a.size, a.textures, a.difficulty,
                                              a.seed)
        print(f"wrote {a.sequences} sequence(s) of {a.frames} frames ({a.difficulty}, textures {a.textures}) -> {root}")
        return {"output": str(root)}
    if a.command == "curve":
        return {"rows": learning_curve(a.run, a.data, a.sizes, a.output, run_evaluation, every=a.every)}
    options = {k: getattr(a, k) for k in (*PROTOCOL_OPTIONS, *DATASET_OPTIONS[a.command])
               if getattr(a, k, None) is not None}
    return run_evaluation(a.command, a.data, a.output, a.checkpoint, a.arch, protocol=a.protocol, size=a.size,
                          device=a.device, batch_size=a.batch_size, seed=a.seed, progress=not a.no_progress,
                          max_affinity_elements=a.max_affinity_elements, **options)


def cli(argv: Sequence[str] | None = None) -> None:
    """`python -m ml.evaluate`: a one-line error (exit 1) for bad input instead of a traceback."""
    try:
        main(argv)
    except USER_ERRORS as err:
        print(f"python -m ml.evaluate: error: {str(err).splitlines()[0]}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C: every finished sequence is already saved with its hash
        print("python -m ml.evaluate: interrupted; the sequences finished so far are kept, the same command "
              "continues", file=sys.stderr)
        sys.exit(130)
