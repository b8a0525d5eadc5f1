"""The summary of BENCHMARKS.md (one table: figure, target, measured, met) and each section's Limit line.

Both come from the raw results embedded in the file, so they are recomputed whenever a section is
re-run (or with `python -m bench.run_all --from-figures`). Each row's figure links to the heading
of the section its numbers come from, with GitHub's anchor for that heading as the file spells it.
"""

from __future__ import annotations

import re

from bench import read_section_payload, read_section_results
from bench.bench_data import TARGET_PREPARED, TARGET_VS_BOUND, TARGET_VS_PYTORCHVIDEO
from bench.bench_storage import DEFAULT_SETTING
from bench.cost import COST_PRESET, figure

HEADER = ["figure", "target", "measured", "met"]
NO_TARGET = ("none", "—")  # target and met of a figure without a target
CAPTION = ("Met: yes when every set meets the target, else no and the sets that miss it. Each figure links to its "
           "section, whose last line, \"Limit\", says what bounds it.")
OPS = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b}


# ---------------------------------------------------------------- anchors of the file's headings


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading's text: lower case, punctuation dropped (not - or _), each space a hyphen."""
    text = heading.strip().lower()
    return "".join(c for c in text if c.isalnum() or c in "-_ ").replace(" ", "-")


def headings(text: str) -> list[tuple[int, str]]:
    """(offset, anchor) of every ATX heading of a markdown text outside code fences; repeats get -1, -2 as on GitHub."""
    found, seen, fenced, offset = [], {}, False, 0
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r" {0,3}#{1,6}[ \t]+(.*?)[ \t]*#*[ \t]*$", line.rstrip("\n"))
        if match:
            anchor = github_anchor(match.group(1))
            count = seen.get(anchor, 0)
            seen[anchor] = count + 1
            found.append((offset, anchor if count == 0 else f"{anchor}-{count}"))
        offset += len(line)
    return found


def section_anchor(text: str, name: str) -> str | None:
    """Anchor of the heading above section `name`'s start marker (None without a marker or a heading above it)."""
    start = text.find(f"<!-- bench:{name}:start -->")
    above = [anchor for offset, anchor in headings(text) if offset < start]
    return above[-1] if start >= 0 and above else None


# ---------------------------------------------------------------- rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _short(preset: str) -> str:
    return preset.removeprefix("siammae_")


def target_row(figure_text: str, values: list[tuple[str, float]], op: str, bound: float) -> list[str]:
    """[figure, target, measured, met] of ratios against `op bound`; met names the sets that miss it."""
    missed = [label for label, v in values if not OPS[op](v, bound)]
    met = "yes" if not missed else f"no ({', '.join(missed)})"
    return [figure_text, f"{op} {bound:g}x per set", ", ".join(f"{v:.2f}x ({label})" for label, v in values), met]


def data_rows(data: list[dict]) -> list[list[str]]:
    rows = []
    prepared = [r for r in data if "prepared / ours (R=2, 8-bit)" in r]
    if prepared:
        rows.append(target_row("data: prepared / original files, pairs/s, R=2",
                               [(r["set"], r["prepared / ours (R=2, 8-bit)"]) for r in prepared], ">=",
                               TARGET_PREPARED))
        rows.append(["data: bytes, prepared / original files", NO_TARGET[0],
                     ", ".join(f"{r['storage prepared / original']:.1f}x ({r['set']})" for r in prepared),
                     NO_TARGET[1]])
    vs_ptv = [(r["set"], r["ours / pytorchvideo"]) for r in data if "ours / pytorchvideo" in r]
    figure_ptv = "data: ours / pytorchvideo 0.1.5, pairs/s, R=1"
    rows.append(target_row(figure_ptv, vs_ptv, ">=", TARGET_VS_PYTORCHVIDEO) if vs_ptv else
                [figure_ptv, f">= {TARGET_VS_PYTORCHVIDEO:g}x per set", "not measured (pytorchvideo left out)", "—"])
    rows.append(target_row("data: time per pair, ours / bare decode, R=1",
                           [(r["set"], r["bound / ours (R=1)"]) for r in data], "<=", TARGET_VS_BOUND))
    two = [(r["set"], r[k]["pairs_per_s"] / r["ours (R=1)"]["pairs_per_s"]) for r in data for k in r
           if k.startswith("ours, DataLoader with 2 workers")]
    if two:
        rows.append(["data: DataLoader with 2 workers / 1 worker, pairs/s, R=1", NO_TARGET[0],
                     ", ".join(f"{v:.2f}x ({s})" for s, v in two), NO_TARGET[1]])
    return rows


def baseline_pairs(results: list[dict]) -> list[tuple[dict, dict]]:
    """(SiamMAE row, baseline row) of each preset and device of the train results."""
    pairs = []
    for base in results:
        if "baseline_over_siammae_step_time" in base:
            ours = next(r for r in results if r["preset"] == base["preset"] and r["device"] == base["device"]
                        and r["precision"] == base["precision"] and "baseline_over_siammae_step_time" not in r)
            pairs.append((ours, base))
    return pairs


def _label(row: dict) -> str:
    where = "" if (row["device"], row["precision"]) == ("cpu", "fp32") else f", {row['device']} {row['precision']}"
    return _short(row["preset"]) + where


def train_rows(train: list[dict]) -> list[list[str]]:
    pairs = baseline_pairs(train)
    rows = []
    if pairs:
        rows.append(["training step: visible-only encoding, baseline step time / SiamMAE step time", NO_TARGET[0],
                     ", ".join(f"{b['baseline_over_siammae_step_time']:.2f}x ({_label(o)})" for o, b in pairs),
                     NO_TARGET[1]])
        rows.append(["training step: FLOPs per pair, baseline / SiamMAE", NO_TARGET[0],
                     ", ".join(f"{b['gflop_per_pair'] / o['gflop_per_pair']:.2f}x ({_label(o)})" for o, b in pairs),
                     NO_TARGET[1]])
    ours = [r for r in train if "baseline_over_siammae_step_time" not in r]
    variants = [100 * r["utilisation"] for r in ours if "+" in r["preset"]]  # the decoder variants, as a range
    utilisation = ", ".join(f"{100 * r['utilisation']:.0f}% ({_label(r)})" for r in ours if "+" not in r["preset"])
    if variants:
        utilisation += f"; decoder variants {min(variants):.0f}-{max(variants):.0f}%"
    rows.append(["training step: utilisation of the measured matmul peak", NO_TARGET[0], utilisation,
                 NO_TARGET[1]])
    return rows


def _by_data(prop: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in prop:
        groups.setdefault(r["data"], []).append(r)
    return groups


def propagation_rows(prop: list[dict]) -> list[list[str]]:
    groups = _by_data(prop)
    speed = "; ".join(", ".join(f"{r['total_s_per_frame']:.2f} ({r.get('protocol', 'causal')})" for r in rows)
                      + f" on {data}" for data, rows in groups.items())
    memory = ", ".join(f"{min(r['peak_rss_mib'] for r in rows):.0f}-{max(r['peak_rss_mib'] for r in rows):.0f} MiB "
                       f"({data})" for data, rows in groups.items())
    return [["label propagation: seconds per frame, DAVIS resolution", NO_TARGET[0], speed, NO_TARGET[1]],
            ["label propagation: peak memory (RSS)", NO_TARGET[0], memory, NO_TARGET[1]]]


def _mfus(cost: dict) -> str:
    """The assumed MFUs as a range: "30-40% MFU"."""
    mfus = sorted({round(100 * g["mfu"]) for g in cost["gpu_feed"]})
    return (f"{mfus[0]}-{mfus[-1]}" if len(mfus) > 1 else f"{mfus[0]}") + "% MFU"


def _files(loader: str) -> str:
    """"original files" or "prepared files" of a loader named "<set>, original files" or "<set>, prepared"."""
    return loader.partition(", ")[2].removesuffix(" files") + " files"


def cost_rows(cost: dict) -> list[list[str]]:
    quick = "" if cost["preset"] == COST_PRESET else f" (from {cost['preset']}: not ViT-S/16)"
    rows = []
    for recipe in cost["recipes"]:
        gpu = sorted(recipe["gpu"], key=lambda g: g["gpu_hours"])
        on8 = [next((w["hours"] for w in g["wall"] if w["gpus"] == 8), None) for g in gpu]
        wall = f" ({figure(on8[0])}-{figure(on8[-1])} h on 8 GPUs)" if None not in on8 else ""
        rows.append([f"cost: H100-hours, {recipe['recipe']['name']}, {_mfus(cost)}{quick}", NO_TARGET[0],
                     f"{figure(gpu[0]['gpu_hours'])}-{figure(gpu[-1]['gpu_hours'])}{wall}", NO_TARGET[1]])
    rows.append([f"cost: years on this CPU{quick}", NO_TARGET[0],
                 ", ".join(f"{r['cpu_hours']['median'] / 24 / 365:,.1f} ({r['recipe']['name']})"
                           for r in cost["recipes"]), NO_TARGET[1]])
    feed = sorted(cost["gpu_feed"], key=lambda g: g["mfu"])
    kinds: dict[str, list[str]] = {}
    for name in feed[0]["loader_workers_per_gpu"]:
        data_set, kind = name.partition(", ")[0], _files(name)
        counts = [g["loader_workers_per_gpu"][name] for g in feed]
        kinds.setdefault(kind, []).append(f"{min(counts)}-{max(counts)} ({data_set})")
    rows.append([f"cost: loader workers (cores) per GPU, {_mfus(cost)}", NO_TARGET[0],
                 "; ".join(f"{kind}: {', '.join(v)}" for kind, v in kinds.items()), NO_TARGET[1]])
    return rows


# ---------------------------------------------------------------- each section's Limit line


def data_limit(data: list[dict]) -> str:
    """What bounds our loader's pairs/s: decoding, or the work after it."""
    bound = [(r["set"], r["bound / ours (R=1)"], r["bound / ours (R=2)"]) for r in data]
    worst = max(a for _, a, _ in bound)
    if worst <= TARGET_VS_BOUND:
        limit = (f"decoding. Ours takes at most {worst:.2f}x the time of PyAV's bare decode from the seek point to "
                 "the last wanted frame, so H.264 decoding from the keyframe before the pair sets the rate")
    else:
        limit = (f"work beyond decoding. Ours takes up to {worst:.2f}x the time of PyAV's bare decode from the seek "
                 "point, so colour conversion, cropping, resizing and normalising cost more than the decode here")
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
    if not any(k.startswith("ours, DataLoader with 2 workers") for r in data for k in r):
        limit += ". Pairs/s with 2 workers: not measured (the data benchmark times one worker on one core)"
    return f"**Limit**: {limit}."


def storage_limit(rows: list[dict]) -> str:
    """What each setting saves against the default and what it costs, on the set closest to Kinetics (30 fps)."""
    kinetics_like = [r for r in rows if r["set"] == "key1s"] or rows
    base = next((r for r in kinetics_like if r["setting"] == DEFAULT_SETTING), None)
    if base is None:
        return "**Limit**: bytes: JPEG frames take several times the originals' bytes."
    others = [r for r in kinetics_like if r["setting"] not in ("original files", DEFAULT_SETTING)]
    limit = (f"bytes, not speed: on {base['set']} the default takes {base['bytes vs original']:.1f}x the originals' "
             "bytes; against it " + "; ".join(f"{r['setting']} takes {r['bytes'] / base['bytes']:.0%} "
                                              f"({round(r['psnr_db'] - base['psnr_db'], 1) + 0.0:+.1f} dB PSNR)"
                                              for r in others))
    if any(r["fps"] for r in others):
        limit += ("; frames kept at 15 fps are the same JPEGs, half as many: gaps of 2-24 kept frames, the paper's "
                  "4-48 at 30 fps in time, in steps of 2")
    return f"**Limit**: {limit}."


def storage_rows(rows: list[dict]) -> list[list[str]]:
    """Kinetics-400 train prepared in each setting, extrapolated from the 30 fps set when measured."""
    kinetics_like = [r for r in rows if r["set"] == "key1s"] or rows
    measured = "; ".join(f"{r['setting']}: {r['kinetics400_train_gb']:,.0f} GB" for r in kinetics_like
                         if r["setting"] != "original files")
    return [[f"storage: Kinetics-400 train prepared (667 h), extrapolated from {kinetics_like[0]['set']}", NO_TARGET[0],
             measured, NO_TARGET[1]]]


def train_limit(train: list[dict]) -> str:
    """Where the step's time goes besides counted FLOPs (the CPU rows that were profiled)."""
    shares = [r for r in train if r["device"] == "cpu" and "baseline_over_siammae_step_time" not in r
              and "flop_op_time_share" in r]
    if not shares:
        return ""
    counted = [100 * r["flop_op_time_share"] for r in shares]
    adamw = [100 * r["optimizer_s_median"] / r["step_s_median"] for r in shares]
    limit = (f"the SiamMAE rows spend {min(counted):.0f}-{max(counted):.0f}% of forward + backward in counted ops "
             f"(\"time in counted ops\") and {min(adamw):.0f}-{max(adamw):.0f}% of the step in AdamW; the time "
             "outside counted ops (norms, GELU, softmax, copies, masking gathers, AdamW) does no counted FLOPs")
    slow = [r for r in shares if r["flop_op_efficiency"] < 0.85]
    if slow:
        limit += ("; and the counted ops themselves stay below the square-matmul peak (\"their rate / peak\"): "
                  + ", ".join(f"{100 * r['flop_op_efficiency']:.0f}% for {r['preset']}" for r in slow))
    return f"**Limit**: {limit}."


def propagation_limit(prop: list[dict]) -> str:
    """Encoding whole frames or propagating labels, whichever takes more of a frame's time."""
    shares = [r["encode_s_per_frame"] / r["total_s_per_frame"] for r in prop]
    spread = f"{100 * min(shares):.0f}-{100 * max(shares):.0f}%"
    if min(shares) > 0.5:
        limit = (f"the ViT encoder on whole frames ({spread} of a frame's time, encode s over s/frame); propagation "
                 "itself (affinities, top-k, softmax, upsampling) is the rest")
    else:
        limit = (f"propagation itself (affinities to the first frame and the queue, top-k, upsampling), more than "
                 f"encoding on some rows (encoding: {spread} of a frame's time)")
    return f"**Limit**: {limit}."


def cost_limit(cost: dict) -> str:
    """Data: the loader cores a GPU needs at the assumed MFU, on the original files and on prepared ones."""
    feed = sorted(cost["gpu_feed"], key=lambda g: g["mfu"])
    lo, hi = feed[0], feed[-1]
    kinds: dict[str, list[int]] = {}
    for name in lo["loader_workers_per_gpu"]:
        kinds.setdefault(_files(name), []).extend(g["loader_workers_per_gpu"][name] for g in feed)
    limit = (f"data. One GPU would train {lo['pairs_per_s_per_gpu']:,.0f}-{hi['pairs_per_s_per_gpu']:,.0f} pairs/s, "
             "which takes " + " and ".join(f"{min(n):,}-{max(n):,} loader workers (cores) on {kind}"
                                           for kind, n in kinds.items())
             + " per GPU at our measured pairs/s per worker (table above): on the original files decoding, not the "
             "GPU, bounds such a run")
    folds = [g["loader_workers_per_gpu"][name] / g["loader_workers_per_gpu"][prepared] for g in feed
             for name in g["loader_workers_per_gpu"] if name.endswith(", original files")
             and (prepared := name.replace(", original files", ", prepared")) in g["loader_workers_per_gpu"]]
    if folds:
        limit += f"; prepared data (JPEG frames) needs {min(folds):.1f}-{max(folds):.1f}x fewer cores"
    return f"**Limit**: {limit}."


# ---------------------------------------------------------------- the table


def summary_rows(text: str) -> list[tuple[str, list[str]]]:
    """(section, [figure, target, measured, met]) of every figure in a BENCHMARKS.md text, in section order."""
    rows = []
    for name, build in (("data", data_rows), ("storage", storage_rows), ("train", train_rows),
                        ("propagation", propagation_rows)):
        results = read_section_results(text, name)
        if results:
            rows += [(name, row) for row in build(results)]
    cost = read_section_payload(text, "cost")
    if cost:
        rows += [("cost", row) for row in cost_rows(cost["results"])]
    return rows


def render_summary(text: str) -> str:
    """The summary: one table of the figures against their targets, each figure linked to its section."""
    rows = summary_rows(text)
    if not rows:
        return "_No figures yet: run `make bench`._"
    lines = ["| " + " | ".join(HEADER) + " |", "|---|---|---|---|"]
    for name, (figure_text, target, measured, met) in rows:
        anchor = section_anchor(text, name)
        shown = f"[{_cell(figure_text)}](#{anchor})" if anchor else _cell(figure_text)
        lines.append(f"| {shown} | {_cell(target)} | {_cell(measured)} | {_cell(met)} |")
    return "\n".join(lines) + "\n\n" + CAPTION
