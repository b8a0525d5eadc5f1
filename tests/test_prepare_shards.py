"""`prepare --shard I/N` on N machines, `--merge`, the storage estimate, and frames kept at a lower rate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dataset_loader import KineticsFramePairs, RandomTemporalSubsample
from dataset_loader.estimate import format_estimate, sample_of
from dataset_loader.frames_file import FramesReader
from dataset_loader.prepare import REPORT_NAME, estimate_storage, main, prepare
from dataset_loader.prepare_steps import frame_step
from dataset_loader.random_temporal_subsample import MAX_GAP, MIN_GAP, REFERENCE_FPS
from dataset_loader.shards import MANIFEST_DIR, merge_shards, shard_of
from dataset_loader.synthetic_videos import make_indexed_video, read_barcode
from tests.conftest import FPS_2997

NAMES = [f"train/c{i % 3}/v{i}.mp4" for i in range(8)]  # 2 shards: v0 v3 v4 v6 v7 | v1 v2 v5
OWN_FILES = ("prepare_report.json", "prepare_settings.json", ".prepare.lock")  # each run's own, not the copy


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    """A Kinetics-style tree of eight index-bar videos and a list file naming two of them."""
    root = tmp_path_factory.mktemp("shards") / "src"
    for i, rel in enumerate(NAMES):
        make_indexed_video(root / rel, 20 + 3 * i, keyframe_interval=10)
    (root / "train.txt").write_text("train/c0/v0.mp4 0\ntrain/c1/v1.mp4 1\n")
    return root


def tree_files(root: Path) -> dict[str, bytes]:
    """Every file of a prepared copy by relative path (the runs' own bookkeeping left out)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in OWN_FILES and MANIFEST_DIR not in p.parts}


def manifest(dst: Path, index: int, count: int) -> dict:
    return json.loads((dst / MANIFEST_DIR / f"shard-{index}-of-{count}.json").read_text())


def test_two_shards_make_the_copy_one_run_makes(src, tmp_path, capsys):
    whole = prepare(src, tmp_path / "whole", workers=1, progress=False)
    dst = tmp_path / "sharded"
    for index in (1, 2):
        assert main([str(src), str(dst), "--shard", f"{index}/2", "--workers", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "shard 1/2: 5 videos" in out and "shard 2/2: 3 videos" in out and f"--merge {dst}" in out
    owned = [set(manifest(dst, i, 2)["videos"]) for i in (1, 2)]
    assert owned[0].isdisjoint(owned[1]) and owned[0] | owned[1] == set(NAMES)
    assert all(manifest(dst, i, 2)["complete"] for i in (1, 2))
    assert not (dst / REPORT_NAME).exists()  # the merge writes the tree's report
    assert main(["--merge", str(dst)]) == 0
    assert tree_files(dst) == tree_files(tmp_path / "whole")  # same files, same bytes, the list file included
    report = json.loads((dst / REPORT_NAME).read_text())
    assert (report["videos"], report["prepared_files"], report["shards"]) == (8, 8, 2)
    assert (report["bytes_before"], report["bytes_after"]) == (whole["bytes_before"], whole["bytes_after"])
    assert len(KineticsFramePairs(dst, img_size=32)) == 2  # train.txt, pointing at the prepared files


def test_a_video_keeps_its_shard_whatever_else_the_tree_holds():
    """The split hashes each path: a machine that sees one more or one fewer video moves no other one."""
    many = [f"train/class{i % 40}/video{i}.mp4" for i in range(4000)]
    owners = {rel: shard_of(rel, 16) for rel in many}
    assert owners == {rel: shard_of(rel, 16) for rel in many[::-1]} and set(owners.values()) == set(range(1, 17))
    counts = np.bincount(list(owners.values()))[1:]
    assert counts.min() > 0.75 * 4000 / 16 and counts.max() < 1.25 * 4000 / 16  # about equal parts


def test_an_interrupted_shard_resumes_and_leaves_other_shards_alone(src, tmp_path):
    dst = tmp_path / "dst"
    prepare(src, dst, workers=1, progress=False, shard=(1, 2))
    done = sorted((dst / rel).with_suffix(".frames") for rel in manifest(dst, 1, 2)["videos"])
    stamps = {p: p.stat().st_mtime_ns for p in done}
    # what a killed run leaves: a file never written, a manifest cut short, a temporary; and another shard's
    # temporary, being written on another machine at this moment
    done[0].unlink()
    path = dst / MANIFEST_DIR / "shard-1-of-2.json"
    path.write_text(path.read_text()[:100])
    own_temp = done[1].parent / f".{done[1].name}.99999.tmp"
    other_temp = dst / "train" / "c1" / ".v1.frames.88888.tmp"
    for temp in (own_temp, other_temp):
        temp.write_bytes(b"half")
    report = prepare(src, dst, workers=1, progress=False, shard=(1, 2))
    assert (report["prepared_now"], report["already_prepared"], report["shard"]) == (1, 4, "1/2")
    assert not own_temp.exists() and other_temp.exists()
    assert all(p.stat().st_mtime_ns == stamps[p] for p in done[1:])
    assert manifest(dst, 1, 2)["complete"] and manifest(dst, 1, 2)["done"] == 5


def test_the_merge_refuses_missing_unfinished_or_changed_shards(src, tmp_path, capsys):
    dst = tmp_path / "dst"
    assert main(["--merge", str(dst)]) == 1  # no shard at all
    prepare(src, dst, workers=1, progress=False, shard=(1, 3))
    prepare(src, dst, workers=1, progress=False, shard=(3, 3))
    assert main(["--merge", str(dst)]) == 1
    prepare(src, dst, workers=1, progress=False, shard=(2, 3))
    second = dst / MANIFEST_DIR / "shard-2-of-3.json"
    finished = json.loads(second.read_text())
    unfinished = {**finished, "complete": False, "todo": 1}
    second.write_text(json.dumps(unfinished))
    assert main(["--merge", str(dst)]) == 1
    second.write_text(json.dumps(finished))
    victim = (dst / next(iter(finished["videos"]))).with_suffix(".frames")
    victim.write_bytes(victim.read_bytes()[:-10])
    assert main(["--merge", str(dst)]) == 1
    # another N in the same DST: refused before any work
    assert main([str(src), str(dst), "--shard", "1/2", "--no-progress"]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 5 and all(e.startswith("python -m dataset_loader.prepare: error: ") for e in errors)
    assert "no shard manifests" in errors.pop(0)
    assert "shard(s) 2 of 3 missing" in errors[0] and "shard 2/3 is not finished (1 of" in errors[1]
    assert "missing or changed" in errors[2] and "shard 2/3" in errors[2]
    assert "already holds shards of 3" in errors[3] and not (dst / MANIFEST_DIR / "shard-1-of-2.json").exists()
    assert not (dst / REPORT_NAME).exists()
    prepare(src, dst, workers=1, progress=False, shard=(2, 3))  # the damaged file is prepared anew
    assert merge_shards(dst)[1]["prepared_files"] == 8


@pytest.mark.parametrize("value", ["0/4", "5/4", "x", "3", "1/0", "-1/4"])
def test_bad_shard_values_are_one_line_refusals_before_any_work(src, tmp_path, capsys, value):
    assert main([str(src), str(tmp_path / "dst"), f"--shard={value}"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("python -m dataset_loader.prepare: error: --shard") and not (tmp_path / "dst").exists()


def test_the_estimate_alone_writes_nothing_and_reads_the_settings(src, tmp_path, capsys):
    assert sample_of(list(range(10))) == [0, 3, 6, 9] and sample_of([1, 2]) == [1, 2]
    assert main([str(src), "--estimate-only", "--workers", "1"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith("estimated ") and "for 8 videos" in line and "JPEG quality 90, every frame" in line
    every, half = (estimate_storage(src, fps=fps, workers=1) for fps in (0, 15))
    assert every["sample_videos"] == 4 and every["videos"] == 8
    assert every["seconds"] == pytest.approx(sum(20 + 3 * i for i in range(8)) / 30)
    assert 0.4 < half["bytes"] / every["bytes"] < 0.6 and "about 15 fps" in format_estimate(half)
    assert estimate_storage(src, shard=(2, 2), workers=1)["videos"] == 3
    assert format_estimate(estimate_storage(src, shard=(2, 8), workers=1)).startswith("no videos to prepare")
    assert not list(tmp_path.iterdir())


def test_frame_step_keeps_a_rate_near_the_asked_one():
    cases = {(30, 15): 2, (FPS_2997, 15): 2, (25, 15): 2, (20, 15): 1, (10, 15): 1, (60, 15): 4, (30, 0): 1,
             (30, 7.5): 4, (FPS_2997, 7.5): 3, (30, 10): 3}
    assert {case: frame_step(float(case[0]), case[1]) for case in cases} == cases


def test_frames_kept_at_15_fps_give_pairs_with_the_paper_gaps(tmp_path, capsys):
    """Every other frame of 30 and 29.97 fps videos: the kept rate is in the header, so gaps are still drawn in time
    (4-48 frames at 30 fps = 2-24 kept frames), and each prepared frame is the source frame it says."""
    src = tmp_path / "src"
    for name, fps in (("a.mp4", 30), ("b.mp4", FPS_2997)):
        make_indexed_video(src / "train" / "c" / name, 150, fps, keyframe_interval=15)
    dst = tmp_path / "dst"
    prepare(src, dst, workers=1, progress=False, fps=15)
    for name, fps in (("a", 30), ("b", FPS_2997)):
        with FramesReader(dst / "train" / "c" / f"{name}.frames") as reader:
            assert reader.num_frames == 75 and reader.fps == fps / 2
            assert [read_barcode(f) for f in reader.read(list(range(75)))] == list(range(0, 150, 2))
    assert RandomTemporalSubsample().gap_range(15) == (2, 24)
    data = KineticsFramePairs(dst, img_size=48, augment=False, repeated_sampling=4, output="uint8")
    gaps = set()
    for epoch in range(40):
        for index in range(len(data)):
            info = data.describe(index, epoch=epoch)
            for (i, j), seconds, f1, f2 in zip(info["indices"], info["gap_seconds"], info["f1"], info["f2"]):
                assert MIN_GAP / REFERENCE_FPS - 1e-9 <= seconds <= MAX_GAP / REFERENCE_FPS + 1e-9
                assert [read_barcode(f.float() / 255) for f in (f1, f2)] == [2 * i, 2 * j]  # source frames
                gaps.add(j - i)
    assert min(gaps) == 2 and max(gaps) >= 22
    with pytest.raises(ValueError, match="--short-side 256 --quality 90 --fps 15"):  # one copy, one setting
        prepare(src, dst, progress=False)
    assert main([str(src), str(tmp_path / "low"), "--fps", "5"]) == 1
    assert "--fps must be 0 (every frame) or at least 7.5" in capsys.readouterr().err


def test_the_estimate_is_near_the_real_size_of_real_footage(tmp_path):
    """Four of the sample's clips measured, the eleven estimated: within a factor of 1.5 of what they take."""
    src = tmp_path / "src"
    shutil.copytree(Path(__file__).resolve().parents[1] / "dataset" / "sample", src)
    estimates = []
    report = prepare(src, tmp_path / "dst", short_side=128, workers=2, progress=False, on_estimate=estimates.append)
    (estimate,) = estimates
    assert report["estimate"] == estimate and estimate["videos"] == 11 == report["videos"]
    assert 1 / 1.5 < estimate["bytes"] / report["bytes_after"] < 1.5
