"""`python -m dataset_loader.prepare`: a prepared copy that reads like its source, skips broken files, resumes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dataset_loader import BadVideoWarning, KineticsFramePairs
from dataset_loader.frames_file import FramesReader, write_frames
from dataset_loader.prepare import REPORT_NAME, PrepareBusyError, is_prepared, main, prepare
from dataset_loader.synthetic_videos import barcode_frame, encode_video, make_indexed_video, read_barcode
from dataset_loader.video import VideoError, VideoReader
from tests.conftest import REPO, SAMPLE_DIR


def _tree(root: Path, videos: dict[str, int]) -> Path:
    """A Kinetics-style tree of index-bar videos: {"train/class/name.mp4": frames}."""
    for rel, frames in videos.items():
        make_indexed_video(root / rel, frames, keyframe_interval=10)
    return root


def test_the_sample_prepared_reads_like_its_source(tmp_path, capsys):
    dst = tmp_path / "prepared"
    assert main([str(SAMPLE_DIR), str(dst), "--workers", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "MB before" in printed and "MB after" in printed and "0 unreadable" in printed
    assert printed.startswith("estimated ") and "for 11 videos" in printed  # said before the work
    for split in ("train", "val"):
        source = KineticsFramePairs(SAMPLE_DIR, split=split, img_size=64, augment=False, seed=3)
        copy = KineticsFramePairs(dst, split=split, img_size=64, augment=False, seed=3)
        assert len(copy) == len(source) and copy.labels == source.labels
        assert [p.relative_to(dst).with_suffix("") for p in copy.videos] == \
               [p.relative_to(SAMPLE_DIR).with_suffix("") for p in source.videos]
        for i in range(len(source)):
            a, b = source.describe(i, epoch=2), copy.describe(i, epoch=2)
            assert (b["indices"], b["num_frames"], b["fps"]) == (a["indices"], a["num_frames"], a["fps"])
            # the same frames, up to JPEG's loss (quality 90)
            assert float((a["f1"] - b["f1"]).abs().mean()) < 0.05 and float((a["f2"] - b["f2"]).abs().mean()) < 0.05
    report = json.loads((dst / REPORT_NAME).read_text())
    assert report["unreadable"] == [] and report["bytes_after"] > report["bytes_before"] > 0


def test_frames_stay_exact_in_every_container(tmp_path):
    """Index-bar videos whose timestamps cannot be trusted (AVI with B-frames, MPEG streams with offsets): the
    prepared frame i is the source's frame i, through the dataset at several epochs."""
    src = tmp_path / "src"
    kinds = {"a.mp4": ("libx264", None), "b.avi": ("mpeg4", None), "c.avi": ("libx264", None),
             "d.ts": ("libx264", "mpegts"), "e.mpg": ("mpeg2video", "mpeg"), "f.mkv": ("libx264", None)}
    for name, (codec, fmt) in kinds.items():
        encode_video(src / "train" / "bars" / name, (barcode_frame(i, 64, 48) for i in range(90)), fps=30,
                     keyframe_interval=15, codec=codec, container_format=fmt, bframes=2 if codec != "libx264" else 3)
    report = prepare(src, tmp_path / "dst", workers=2, progress=False)
    assert report["unreadable"] == [] and report["prepared_now"] == len(kinds)
    for path in (tmp_path / "dst" / "train" / "bars").iterdir():
        with FramesReader(path) as reader:
            assert reader.num_frames == 90
            assert [read_barcode(f) for f in reader.read(list(range(90)))] == list(range(90)), path.name
    data = KineticsFramePairs(tmp_path / "dst", img_size=48, augment=False, repeated_sampling=3, output="uint8")
    for epoch in range(3):
        for index in range(len(data)):
            info = data.describe(index, epoch=epoch)
            for (i, j), f1, f2 in zip(info["indices"], info["f1"], info["f2"]):
                assert [read_barcode(f.float() / 255) for f in (f1, f2)] == [i, j]


def test_broken_sources_are_skipped_and_reported(tmp_path):
    src = _tree(tmp_path / "src", {"train/a/good1.mp4": 40, "train/b/good2.mp4": 30})
    good = src / "train" / "a" / "good1.mp4"
    (src / "train" / "a" / "garbage.mp4").write_bytes(b"not a video at all\n" * 50)
    (src / "train" / "b" / "empty.mp4").write_bytes(b"")
    make_indexed_video(src / "train" / "b" / "one_frame.mp4", 1)
    (src / "train" / "b" / "half.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    report = prepare(src, tmp_path / "dst", workers=2, progress=False)
    skipped = {Path(item["path"]).name: item["reason"] for item in report["unreadable"]}
    assert set(skipped) >= {"garbage.mp4", "empty.mp4", "one_frame.mp4"} and all(skipped.values())
    assert json.loads((tmp_path / "dst" / REPORT_NAME).read_text())["unreadable"] == report["unreadable"]
    for name in skipped:  # nothing written for a skipped source
        assert not list((tmp_path / "dst").rglob(Path(name).stem + ".frames"))
    # a truncated source keeps the frames that decode, when it has a pair's worth
    if "half.mp4" not in skipped:
        with FramesReader(tmp_path / "dst" / "train" / "b" / "half.frames") as reader:
            frames = reader.read(list(range(reader.num_frames)))
            assert [read_barcode(f) for f in frames] == list(range(reader.num_frames)) and reader.num_frames >= 2
    data = KineticsFramePairs(tmp_path / "dst", img_size=32)
    assert len(data) == 6 - len(skipped) and data.check_readable() == 0


def test_an_interrupted_run_continues_without_redoing_or_keeping_half_files(tmp_path):
    src = _tree(tmp_path / "src", {f"train/c{i % 2}/v{i}.mp4": 30 + i for i in range(6)})
    dst = tmp_path / "dst"
    prepare(src, dst, workers=1, progress=False)
    done = sorted(dst.rglob("*.frames"))
    assert len(done) == 6 and all(is_prepared(p) for p in done)
    stamps = {p: p.stat().st_mtime_ns for p in done}
    # what a killed run leaves: a deleted file, a file cut short (not by us: we rename whole files), a temporary
    done[0].unlink()
    done[1].write_bytes(done[1].read_bytes()[:-100])
    temp = done[2].parent / f".{done[2].name}.99999.tmp"
    temp.write_bytes(b"half")
    with pytest.raises(VideoError, match="truncated"):
        FramesReader(done[1])
    report = prepare(src, dst, workers=1, progress=False)
    assert (report["prepared_now"], report["already_prepared"]) == (2, 4)
    assert not temp.exists() and all(is_prepared(p) for p in done)
    assert all(done[i].stat().st_mtime_ns == stamps[done[i]] for i in range(2, 6))
    with pytest.raises(ValueError, match="--short-side 256 --quality 90"):  # one copy, one setting
        prepare(src, dst, quality=80, progress=False)


def test_kill_9_leaves_only_whole_files_and_the_rerun_finishes(tmp_path):
    src = tmp_path / "src"
    frames = [np.random.default_rng(i).integers(0, 256, (240, 320, 3), dtype=np.uint8) for i in range(4)]
    first = encode_video(src / "train" / "c" / "v0.mp4", (frames[(k // 10) % 4] for k in range(120)),
                         keyframe_interval=30)  # noise: slow enough to prepare that the kill lands mid-run
    for i in range(1, 8):
        shutil.copyfile(first, first.with_name(f"v{i}.mp4"))
    dst = tmp_path / "dst"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "dataset_loader.prepare", str(src), str(dst), "--workers", "1",
                             "--no-progress", "--short-side", "0", "--quality", "95"], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(dst.rglob("*.frames")):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = list(dst.rglob("*.frames"))
    assert 0 < len(finished) < 8, "the kill should land mid-run"
    assert all(is_prepared(p) for p in finished)
    for _ in range(200):  # the killed run's worker process may take a moment to go, and holds the lock till then
        try:
            report = prepare(src, dst, short_side=0, quality=95, workers=1, progress=False)
            break
        except PrepareBusyError:
            time.sleep(0.05)
    assert report["already_prepared"] == len(finished) and report["prepared_now"] == 8 - len(finished)
    assert not [p for p in dst.rglob("*") if p.name.endswith(".tmp")]


def test_lists_and_csvs_point_at_the_prepared_files(tmp_path):
    src = _tree(tmp_path / "src", {"videos/x.mp4": 30, "videos/y.mp4": 30})
    (src / "train.csv").write_text("label,youtube_id,time_start,time_end,split\ncat,x,0,10,train\ndog,y,0,10,train\n")
    (src / "train.txt").write_text("videos/x.mp4 0\nvideos/y.mp4 1\n")
    prepare(src, tmp_path / "dst", workers=1, progress=False)
    assert (tmp_path / "dst" / "train.txt").read_text() == "videos/x.frames 0\nvideos/y.frames 1\n"
    data = KineticsFramePairs(tmp_path / "dst" / "train.txt", img_size=32)
    assert [p.name for p in data.videos] == ["x.frames", "y.frames"]


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    src = _tree(tmp_path / "src", {"train/a/v.mp4": 20})
    assert main([str(tmp_path / "missing"), str(tmp_path / "d")]) == 1
    assert main([str(src), str(src / "inside")]) == 1
    assert main([str(src), str(tmp_path / "d"), "--quality", "0"]) == 1
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), str(tmp_path / "d")]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 4 and all(line.startswith("python -m dataset_loader.prepare: error:") for line in errors)
    assert not (src / "inside").exists() and not (tmp_path / "d").exists()


def test_frames_file_round_trip_and_refusals(tmp_path):
    frames = [barcode_frame(i, 64, 48) for i in range(5)]
    path = tmp_path / "v.frames"
    with open(path, "wb") as f:
        assert write_frames(f, frames, fps=25) == 5
    with FramesReader(path) as reader:
        assert (reader.num_frames, reader.fps, reader.width, reader.height) == (5, 25, 64, 48)
        assert [read_barcode(f) for f in reader.read([4, 0, 4])] == [4, 0, 4]
        with pytest.raises(VideoError):
            reader.read([5])
    with pytest.raises(ValueError, match="first was"):
        with open(tmp_path / "w.frames", "wb") as f:
            write_frames(f, [frames[0], np.zeros((10, 10, 3), np.uint8)], fps=25)
    (tmp_path / "bad.frames").write_bytes(b"SIAMFRM1" + b"\0" * 40)
    with pytest.raises(VideoError):
        FramesReader(tmp_path / "bad.frames")
    damaged = bytearray(path.read_bytes())
    damaged[40:50] = b"\xff" * 10  # inside frame 0's JPEG header
    (tmp_path / "damaged.frames").write_bytes(bytes(damaged))
    with FramesReader(tmp_path / "damaged.frames") as reader, pytest.raises(VideoError, match="frame 0"):
        reader.read([0])


def flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x5A
    path.write_bytes(bytes(data))


def test_a_flipped_byte_anywhere_is_found_and_a_damaged_file_is_skipped_listed_and_prepared_anew(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    for i in range(3):
        make_indexed_video(src / "train" / "c" / f"v{i}.mp4", 40, 30, 10)
    assert main([str(src), str(dst), "--workers", "1", "--no-progress"]) == 0
    target = dst / "train" / "c" / "v1.frames"
    intact = target.read_bytes()
    with FramesReader(target) as reader:
        middles = [(int(a) + int(b)) // 2 for a, b in zip(reader.offsets[:-1], reader.offsets[1:])]
    flip_byte(target, middles[7])  # inside frame 7's JPEG data
    with FramesReader(target) as reader:
        assert [read_barcode(f) for f in reader.read([6, 8])] == [6, 8]
        with pytest.raises(VideoError, match="frame 7 is damaged"):
            reader.read([7])
    for at in middles:  # every frame damaged: whatever pair the dataset draws, the file is skipped and counted
        flip_byte(target, at)
    data = KineticsFramePairs(dst, img_size=32, augment=False)
    with pytest.warns(BadVideoWarning, match="v1.frames"):
        for i in range(len(data)):
            data[i]
    assert data.num_bad_files == 1
    capsys.readouterr()
    assert main(["--verify", str(dst), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "3 prepared files" in out and "1 damaged" in out and str(target) in out
    assert main([str(src), str(dst), "--workers", "1", "--no-progress"]) == 0  # prepared anew
    assert "1 prepared now, 2 already prepared" in capsys.readouterr().out
    assert target.read_bytes() == intact and main(["--verify", str(dst), "--no-progress"]) == 0
    flip_byte(target, 12)  # the frame rate's numerator in the header
    with pytest.raises(VideoError, match="damaged header"):
        FramesReader(target)
    target.write_bytes(intact)
    flip_byte(target, len(intact) - 30)  # the index
    with pytest.raises(VideoError, match="damaged frame index"):
        FramesReader(target)
    version_1 = bytearray(intact)
    version_1[8:12] = (1).to_bytes(4, "little")
    target.write_bytes(bytes(version_1))
    with pytest.raises(VideoError, match="version 1, without checksums: run `python -m dataset_loader.prepare"):
        FramesReader(target)


def test_a_second_prepare_into_the_same_folder_is_refused(tmp_path, capsys):
    src = _tree(tmp_path / "src", {"train/a/v.mp4": 20})
    dst = tmp_path / "dst"
    dst.mkdir()
    code = ("import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
            "f.write('4242'); f.flush(); print('locked', flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(dst / ".prepare.lock")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main([str(src), str(dst), "--no-progress"]) == 1
        assert "another prepare (pid 4242)" in capsys.readouterr().err
        assert not list(dst.rglob("*.frames"))
    finally:
        holder.kill()
        holder.wait()
    assert main([str(src), str(dst), "--no-progress"]) == 0


def test_the_video_reader_and_the_prepared_copy_agree_on_real_footage(tmp_path):
    video = sorted(SAMPLE_DIR.glob("*/*/*.mp4"))[0]
    shutil.copyfile(video, tmp_path / "v.mp4")
    (tmp_path / "src").mkdir()
    shutil.move(tmp_path / "v.mp4", tmp_path / "src" / "v.mp4")
    prepare(tmp_path / "src", tmp_path / "dst", short_side=0, workers=1, progress=False)
    with VideoReader(tmp_path / "src" / "v.mp4") as source, FramesReader(tmp_path / "dst" / "v.frames") as copy:
        assert (copy.num_frames, copy.fps) == (source.num_frames, source.fps)
        picks = [0, copy.num_frames // 3, copy.num_frames - 1]
        for a, b in zip(source.read(picks), copy.read(picks)):
            psnr = 10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b) ** 2))
            assert a.shape == b.shape and psnr > 35
