"""The benchmarks run end to end at a tiny size (figures come from `make bench`, never from the tests).

Training step (FLOP counting included), label propagation, cost on paper, and `bench.run_all`
rewriting only its own sections of a BENCHMARKS.md; the data benchmark has its own tests.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench import BENCHMARKS_MD, REPO, bench_propagation, bench_train, read_section_results, report, run_all, summary
from bench.bench_data import TARGET_PREPARED, TARGET_VS_BOUND, TARGET_VS_PYTORCHVIDEO
from bench.cost import PAPER_RECIPES, cost_inputs, estimate_cost
from bench.count_flops import forward_flops
from ml.model import create_model


def test_attention_flops_are_counted_on_cpu():
    """Attention on CPU tensors counts 2 matmuls forward, 4 backward: as on the meta device, where it runs as bmm."""
    q = torch.randn(2, 3, 10, 8, requires_grad=True)
    k, v = torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
    with FlopCounterMode(display=False, custom_mapping=bench_train.attention_flop_formulas()) as counter:
        F.scaled_dot_product_attention(q, k, v).sum().backward()
    forward = 2 * 2 * 3 * 10 * 7 * (8 + 8)  # q @ k^T and p @ v, 2 FLOPs per multiply-add
    assert counter.get_total_flops() == 3 * forward

    torch.manual_seed(0)
    model = create_model("siammae_tiny")
    f1, f2 = torch.randn(2, 3, 112, 112), torch.randn(2, 3, 112, 112)
    with torch.device("meta"):
        meta_model = create_model("siammae_tiny")
        meta_baseline = bench_train.VisibleAndMaskTokensSiamMAE(meta_model)
    for cpu_module, meta_module in ((model, meta_model), (bench_train.VisibleAndMaskTokensSiamMAE(model),
                                                          meta_baseline)):
        with FlopCounterMode(display=False) as meta_counter:
            meta_module(f1.to("meta"), f2.to("meta"))[0].backward()
        assert bench_train.step_flops(cpu_module, f1, f2) == meta_counter.get_total_flops()


def test_train_benchmark_rows_at_a_tiny_size():
    rows = bench_train.run_benchmark(("siammae_tiny",), batch=2, runs=2, warmup=1)
    ours, base = rows
    assert (ours["variant"], base["variant"]) == (bench_train.VISIBLE_ONLY, bench_train.BASELINE)
    for r in rows:
        assert r["batch"] == 2 and r["runs"] == 2 and r["precision"] == "fp32"
        assert 0 < r["step_s_min"] <= r["step_s_median"] <= r["step_s_max"]
        assert r["pairs_per_s_min"] <= r["pairs_per_s"] <= r["pairs_per_s_max"]
        assert 0 < r["utilisation_min"] <= r["utilisation"] <= r["utilisation_max"]
        assert 0 < r["flop_op_time_share"] <= 1 and r["peak_matmul_gflops_median"] > 0
    # a training step is forward + backward: about 3x the forward FLOPs (the input needs no gradient)
    with torch.device("meta"):
        forward = forward_flops(create_model("siammae_tiny", mask_ratio=0.95), 112)["total"]
    assert 2.5 < ours["gflop_per_pair"] * 1e9 / forward <= 3.0
    # the baseline encodes all 49 patches of f2 instead of 2: more FLOPs for the same model
    assert base["gflop_per_pair"] > 1.2 * ours["gflop_per_pair"]
    assert base["baseline_over_siammae_step_time"] > 0
    table = bench_train.format_table(rows)
    assert table.count("\n| siammae_tiny |") == 2


def test_train_benchmark_rejects_mismatched_batches():
    with pytest.raises(ValueError, match="one batch size or one per preset"):
        bench_train.run_benchmark(("siammae_tiny", "siammae_tiny", "siammae_tiny"), batch=(2, 4))


def test_propagation_benchmark_at_a_tiny_size():
    rows = bench_propagation.run_benchmark(arch="siammae_tiny", size=(64, 112), frames=3, frame_hw=(64, 112), runs=2,
                                           use_davis_mini=False, isolate=False)
    assert [r["protocol"] for r in rows] == ["crw", "causal", "dino"]
    row = rows[0]
    assert row["grid"] == [4, 7] and row["frame_size"] == [64, 112]
    assert row["timed_frames"] == 2 * 2  # frames after the first, in each run
    assert row["total_s_per_frame_min"] <= row["total_s_per_frame"] <= row["total_s_per_frame_max"]
    assert row["encode_s_per_frame"] > 0 and row["propagate_s_per_frame"] > 0
    assert row["peak_rss_mib"] >= row["rss_before_mib"] > 0
    table = report.render_propagation(rows)
    assert "| crw | generated 64x112, 3 frames | siammae_tiny, cpu" in table and "64x112 → 64x112 → 4x7" in table


def _train_row(step_s: float = 2.0, batch: int = 8, gflop_per_pair: float = 70.0) -> dict:
    return {"preset": "siammae_vit_small_patch16", "variant": bench_train.VISIBLE_ONLY, "batch": batch,
            "step_s_median": step_s, "step_s_min": step_s * 0.9, "step_s_max": step_s * 1.2,
            "gflop_per_pair": gflop_per_pair, "threads": 2}


def test_cost_on_paper():
    # an epoch = as many pairs as videos: 240,000 pairs, 117 drop-last batches of 2048
    assert PAPER_RECIPES[0].steps_per_epoch == 240_000 // 2048 == 117
    cost = estimate_cost(_train_row(), {"key1s": 100.0, "key8s": 30.0}, mfus=(0.3, 0.4))
    short, long = cost["recipes"]
    assert long["total_flops"] == pytest.approx(5 * short["total_flops"])  # 2000 epochs against 400
    assert short["total_flops"] == pytest.approx(117 * 400 * 2048 * 70e9)
    assert short["cpu_hours"]["median"] == pytest.approx(117 * 400 * 2048 / 4.0 / 3600)  # 8 pairs in 2 s
    assert short["cpu_hours"]["fastest"] < short["cpu_hours"]["median"] < short["cpu_hours"]["slowest"]
    at30, at40 = short["gpu"]
    assert at30["gpu_hours"] * 0.3 == pytest.approx(at40["gpu_hours"] * 0.4)
    assert at30["gpu_hours"] == pytest.approx(short["total_flops"] / (989e12 * 0.3) / 3600)
    assert [w["hours"] for w in at30["wall"]] == pytest.approx([at30["gpu_hours"], at30["gpu_hours"] / 8])
    for feed in cost["gpu_feed"]:
        assert feed["pairs_per_s_per_gpu"] == pytest.approx(989e12 * feed["mfu"] / 70e9)
        for name, rate in {"key1s": 100.0, "key8s": 30.0}.items():
            workers = feed["loader_workers_per_gpu"][name]
            assert (workers - 1) * rate < feed["pairs_per_s_per_gpu"] <= workers * rate
    with pytest.raises(ValueError, match="MFU"):
        estimate_cost(_train_row(), {"key1s": 100.0}, mfus=(0.0,))


def test_cost_takes_the_visible_only_row_of_the_preset():
    base = {**_train_row(step_s=5.0), "variant": bench_train.BASELINE}
    tiny = {**_train_row(step_s=0.1), "preset": "siammae_tiny"}
    data = [{"set": "sample", "ours (R=2)": {"pairs_per_s": 40.0}, "ours (R=2, 8-bit)": {"pairs_per_s": 50.0},
             "prepared (R=2, 8-bit)": {"pairs_per_s": 220.0}}]
    row, rates = cost_inputs([tiny, base, _train_row()], data)
    assert row == _train_row() and rates == {"sample, original files": 50.0, "sample, prepared": 220.0}
    with pytest.raises(ValueError, match="no SiamMAE training-step row for siammae_vit_base_patch16"):
        cost_inputs([tiny, base], data, "siammae_vit_base_patch16")


def _block(text: str, name: str) -> str:
    return text[text.index(f"<!-- bench:{name}:start -->"):text.index(f"<!-- bench:{name}:end -->")]


def test_run_all_rewrites_only_its_sections(tmp_path):
    out, results_dir = tmp_path / "BENCHMARKS.md", tmp_path / "results"
    user_text = "Notes written by hand -- kept.\n"
    out.write_text(report.TEMPLATE.replace("## 2. Training step", user_text + "\n## 2. Training step")
                   .replace("<!-- bench:propagation:start -->\n", "<!-- bench:propagation:start -->\nstale\n"))

    first = run_all.main(["--quick", "--output", str(out), "--results-dir", str(results_dir)])
    text = out.read_text()
    assert user_text in text and "stale" not in text
    for name in ("data", "storage", "train", "propagation"):
        block = _block(text, name)
        assert "- Machine: " in block and "- Versions: python " in block and "torch " in block and "av " in block
        assert "| siammae_tiny |" in block or name != "train"
        # the embedded raw results read back as run, and the raw JSON files are written
        assert read_section_results(text, name) == json.loads(json.dumps(first[name]["results"]))
        assert (results_dir / f"{name}.json").is_file()
    assert "not measured" in _block(text, "train")  # no GPU rows on a CPU machine
    assert "Computed from `siammae_tiny`, not ViT-S/16" in _block(text, "cost")
    table = _summary_table(text)  # one table, a row for each section's figures, each linked to its heading
    for name in ("data", "storage", "train", "propagation", "cost"):
        anchor = summary.section_anchor(text, name)
        assert any(row["figure"].endswith(f"](#{anchor})") for row in table)
        assert "**Limit**: " in _block(text, name).split("<!-- bench:")[-2]  # the section's last line
    assert "**Limit**" not in _block(text, "summary")  # the limits stay in their sections

    second = run_all.main(["--quick", "--only", "train", "--output", str(out), "--results-dir", str(results_dir)])
    again = out.read_text()
    for name in ("data", "storage", "propagation"):
        assert _block(again, name) == _block(text, name)  # not re-run: kept as it was
    assert user_text in again
    new_row = second["train"]["results"][0]
    cost = read_section_results(again, "cost")  # follows the new train figures
    assert math.isclose(cost["cpu_pairs_per_s"]["median"], new_row["batch"] / new_row["step_s_median"])


def test_run_all_from_figures_rewrites_the_text_without_running(tmp_path, monkeypatch):
    out = tmp_path / "BENCHMARKS.md"
    run_all.main(["--quick", "--output", str(out), "--results-dir", str(tmp_path / "results")])
    run = out.read_text()
    # the summary and the Limit lines gone stale, a hand-written note outside the markers
    stale = re.sub(r"\n\n\*\*Limit\*\*: [^\n]*", "", run).replace(_block(run, "summary"),
                                                                   "<!-- bench:summary:start -->\nstale\n")
    assert "**Limit**" not in stale and "stale" in stale
    out.write_text(stale + "\nA note.\n")

    def no_benchmark(*args, **kwargs):
        raise AssertionError("--from-figures ran a benchmark")

    monkeypatch.setattr(run_all, "run_sections", no_benchmark)
    assert run_all.main(["--from-figures", "--output", str(out)]) == {}
    assert out.read_text() == run + "\nA note.\n"  # the same text as the run wrote, from its recorded figures
    with pytest.raises(SystemExit):
        run_all.main(["--from-figures", "--only", "cost", "--output", str(out)])


def test_run_all_refuses_broken_markers_and_quick_figures_in_the_committed_file(tmp_path):
    out = tmp_path / "B.md"
    broken = "# B\n<!-- bench:train:start -->\nold figures\n"
    out.write_text(broken)
    with pytest.raises(ValueError, match="section 'train'"):
        run_all.main(["--quick", "--only", "train", "--output", str(out), "--results-dir", str(tmp_path)])
    assert out.read_text() == broken
    with pytest.raises(SystemExit):
        run_all.main(["--quick"])


def test_embedded_results_survive_comment_closers():
    payload = {"meta": {}, "results": [{"name": "a --> b -- c", "x": 1.5}]}
    text = report.replace_section(report.TEMPLATE, "train", report.results_comment("train", payload))
    assert read_section_results(text, "train") == payload["results"]
    assert text.count("-->") == report.TEMPLATE.count("-->") + 1


def test_decoder_variants_and_the_gpu_check_without_a_gpu(capsys):
    from bench import gpu_check

    rows = bench_train.run_benchmark(("siammae_tiny+decoder_size=small", "siammae_tiny+decoder_type=cross"), batch=2,
                                     runs=1, baseline=False, profile_ops=False)
    small, cross = rows
    assert small["decoder_params"] > cross["decoder_params"]  # 256 wide, 4 blocks against the tiny 128 x 2
    with pytest.raises(ValueError, match="unknown variant field"):
        bench_train.run_benchmark(("siammae_tiny+depth=3",), batch=2, runs=1, baseline=False)
    if not torch.cuda.is_available():
        assert gpu_check.main([]) == 0
        assert "no CUDA GPU here" in capsys.readouterr().out


def _summary_table(text: str) -> list[dict]:
    """The summary block's table as rows of {column: cell}; asserts the block is that one table and its caption."""
    lines = _block(text, "summary").splitlines()[1:]
    assert lines[0] == "| figure | target | measured | met |" and lines[1] == "|---|---|---|---|"
    rows = lines[2:lines.index("")]
    assert rows and lines[len(rows) + 2:] == ["", summary.CAPTION]
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]
    assert all(len(c) == 4 for c in cells)
    links = [re.fullmatch(r"\[(.+)\]\(#([^)]+)\)", c[0]) for c in cells]
    assert all(links), [c[0] for c, m in zip(cells, links) if not m]
    anchors = {anchor for _, anchor in summary.headings(text)}
    assert {m.group(2) for m in links} <= anchors  # every link resolves to a heading of the file
    return [dict(zip(summary.HEADER, c)) for c in cells]


def test_github_anchors_of_headings():
    assert summary.github_anchor("4. Cost of the paper's recipes, on paper") == "4-cost-of-the-papers-recipes-on-paper"
    assert summary.github_anchor("2. Training step: pairs/s, FLOPs_x") == "2-training-step-pairss-flops_x"
    text = "# A\n\n```\n# not a heading\n```\n## A\n## B ##\n"
    assert [a for _, a in summary.headings(text)] == ["a", "a-1", "b"]


def test_committed_summary_is_one_linked_table():
    text = BENCHMARKS_MD.read_text()
    table = _summary_table(text)
    for row in table:
        assert (row["target"] == "none") == (row["met"] == "—") or row["measured"].startswith("not measured")
        assert row["met"] in ("yes", "—") or row["met"].startswith("no (")
    # the links follow the headings as the file spells them
    moved = text.replace("## 1. Data loading: pairs per second per worker", "## 1. Data: loading (pairs/s)")
    moved = report.replace_section(moved, "summary", summary.render_summary(moved))
    assert "](#1-data-loading-pairss)" in _block(moved, "summary")
    assert _summary_table(moved)
    docs = (REPO / "docs" / "BENCHMARKS.md").read_text()  # links into the file from its guide
    links = re.findall(r"\(\.\./BENCHMARKS\.md#([^)]+)\)", docs)
    assert links and set(links) <= {anchor for _, anchor in summary.headings(text)}


def _data_row(name: str, prepared: float, vs_ptv: float | None, vs_bound: float) -> dict:
    row = {"set": name, "prepared / ours (R=2, 8-bit)": prepared, "storage prepared / original": 12.0,
           "bound / ours (R=1)": vs_bound, "bound / ours (R=2)": 0.8, "ours (R=1)": {"pairs_per_s": 40.0}}
    return row if vs_ptv is None else {**row, "ours / pytorchvideo": vs_ptv}


def _met(rows: list[dict]) -> dict[str, tuple[str, str]]:
    payload = {"meta": {}, "results": rows}
    text = report.replace_section(report.TEMPLATE, "data", report.results_comment("data", payload))
    text = report.replace_section(text, "summary", summary.render_summary(text))
    return {re.sub(r"^\[(.*)\]\(.*$", r"\1", r["figure"]): (r["measured"], r["met"]) for r in _summary_table(text)}


def test_summary_met_compares_each_set_with_its_target():
    prepared, ptv, bound = ("data: prepared / original files, pairs/s, R=2", "data: ours / pytorchvideo 0.1.5, "
                            "pairs/s, R=1", "data: time per pair, ours / bare decode, R=1")
    at_target = _data_row("a", TARGET_PREPARED, TARGET_VS_PYTORCHVIDEO, TARGET_VS_BOUND)  # the bounds count as met
    rows = _met([at_target, _data_row("b", TARGET_PREPARED + 1, TARGET_VS_PYTORCHVIDEO + 1, TARGET_VS_BOUND - 1)])
    assert [rows[k][1] for k in (prepared, ptv, bound)] == ["yes"] * 3
    assert rows["data: bytes, prepared / original files"] == ("12.0x (a), 12.0x (b)", "—")  # no target
    missed = _data_row("b", TARGET_PREPARED - 0.1, TARGET_VS_PYTORCHVIDEO - 0.1, TARGET_VS_BOUND + 0.1)
    rows = _met([at_target, missed])
    assert [rows[k][1] for k in (prepared, ptv, bound)] == ["no (b)"] * 3
    assert rows[bound][0] == f"{TARGET_VS_BOUND:.2f}x (a), {TARGET_VS_BOUND + 0.1:.2f}x (b)"
    rows = _met([_data_row("a", TARGET_PREPARED, None, TARGET_VS_BOUND)])  # pytorchvideo left out of the run
    assert rows[ptv] == ("not measured (pytorchvideo left out)", "—")
