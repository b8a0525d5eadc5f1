"""The data-loading benchmark runs end to end at a tiny size (speed figures come from `python -m bench.bench_data`)."""

from __future__ import annotations

from bench.bench_data import (
    compare_formats,
    format_formats,
    format_profile,
    format_table,
    run_benchmark,
)
from bench.bench_storage import DEFAULT_SETTING, format_storage
from bench.bench_storage import run_benchmark as run_storage
from bench.clips import make_bench_clips
from dataset_loader import VideoReader


def test_bench_clips_have_the_asked_keyframe_interval(tmp_path):
    (path,) = make_bench_clips(tmp_path, keyframe_seconds=0.2, seconds=1.0, fps=30, width=64, height=48, count=1)
    with VideoReader(path) as video:
        assert video.num_frames == 30 and video.fps == 30 and (video.width, video.height) == (64, 48)
        keyframes = [video.index_of(f.pts) for f in video.container.decode(video.stream) if f.key_frame]
    assert keyframes == [0, 6, 12, 18, 24]


def test_bench_runs_at_a_tiny_size(tmp_path):
    results = run_benchmark(items=2, runs=1, warmup=0, clip_seconds=0.5, clip_dir=tmp_path, img_size=32,
                            pytorchvideo_dir=None, sets=("key1s",), clip_size=(64, 48), formats=False)
    (row,) = results
    assert row["set"] == "key1s" and row["videos"] == 4
    for name in ("ours (R=1)", "ours (R=2)", "ours (R=2, 8-bit)", "prepared (R=2, 8-bit)", "decode bound (R=1)",
                 "decode bound (R=2)"):
        assert row[name]["pairs_per_s"] > 0 and row[name]["runs"] == 1
    assert row["bound / ours (R=1)"] > 0 and row["prepared / ours (R=2, 8-bit)"] > 0
    assert row["storage prepared / original"] > 0
    assert set(row["stages"]) == {"original", "prepared"} and row["stages"]["original"]["read"] > 0
    table = format_table(results)
    assert table.count("\n") == 2 and "key1s (4 videos)" in table
    assert format_profile(results).count("\n") == 3


def test_format_comparison_runs_at_a_tiny_size(tmp_path):
    clips = make_bench_clips(tmp_path, keyframe_seconds=0.5, seconds=1.0, fps=30, width=64, height=48, count=2)
    comparison = compare_formats(clips, tmp_path / "formats", img_size=32, items=2, runs=1, warmup=0)
    assert len(comparison) == 5
    assert all(r["pairs_per_s"] > 0 and r["bytes vs original"] > 0 for r in comparison.values())
    assert comparison["original files"]["vs original"] == 1.0
    assert all(r["psnr_db"] > 30 for r in comparison.values())  # each copy holds the source's frames
    assert format_formats([{"set": "x", "formats": comparison}]).count("\n") == 6


def test_storage_settings_run_at_a_tiny_size(tmp_path):
    rows = run_storage(items=2, runs=1, warmup=0, clip_dir=tmp_path, sets=("key1s",), clip_seconds=1,
                       clip_size=(64, 48), img_size=32)
    by_setting = {r["setting"]: r for r in rows}
    assert len(rows) == 6 and by_setting["original files"]["vs original"] == 1.0
    default, half = by_setting[DEFAULT_SETTING], by_setting["256 px, q90, 15 fps"]
    assert (default["frames"], half["frames"]) == (4 * 30, 4 * 15)  # 30 fps clips: every other frame kept
    assert 0.4 < half["bytes"] / default["bytes"] < 0.6 and abs(half["psnr_db"] - default["psnr_db"]) < 1
    assert all(r["psnr_db"] > 30 and r["pairs_per_s"] > 0 and r["kinetics400_train_gb"] > 0 for r in rows)
    assert format_storage(rows).count("\n") == 7
