"""Kinetics frame-pair datasets: items, layouts, bad files, loaders, reproducibility, the shipped sample."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from dataset_loader import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BadVideoWarning,
    KineticsFramePairs,
    VideoReader,
    denormalize,
    find_videos,
    make_pair_loader,
    set_loader_epoch,
)
from dataset_loader.loader import VideoSampler
from dataset_loader.synthetic_videos import make_indexed_video, read_barcode
from dataset_loader.transforms import normalize
from tests.conftest import FPS_2997, SAMPLE_DIR, barcodes

# ---------------------------------------------------------------- dataset items


@pytest.mark.parametrize("fps,keyframe_interval", [(30, 10), (25, 25), (FPS_2997, 1)])
def test_items_hold_the_described_frames(video_factory, fps, keyframe_interval):
    path = video_factory(120, fps, keyframe_interval)
    data = KineticsFramePairs([path], img_size=48, augment=False, repeated_sampling=2)
    for epoch in range(5):
        info = data.describe(0, epoch=epoch)
        f1, f2 = data[(0, epoch)]
        assert torch.equal(f1, info["f1"]) and torch.equal(f2, info["f2"])
        assert f1.shape == (2, 3, 48, 48)
        assert barcodes(f1) == [a for a, _ in info["indices"]]
        assert barcodes(f2) == [b for _, b in info["indices"]]
        for (a, b), gap, seconds in zip(info["indices"], info["gap_frames"], info["gap_seconds"]):
            assert gap == b - a and seconds == pytest.approx(gap / float(fps))
            assert 4 / 30 - 1e-9 <= seconds <= 48 / 30 + 1e-9


def test_8_bit_output_is_the_float_output_before_normalising(video_factory):
    path = video_factory(90, 30, 30)
    floats = KineticsFramePairs([path], img_size=32, repeated_sampling=2, seed=4)
    eight_bit = KineticsFramePairs([path], img_size=32, repeated_sampling=2, seed=4, output="uint8")
    for epoch in range(3):
        for a, b in zip(floats[(0, epoch)], eight_bit[(0, epoch)]):
            assert b.dtype == torch.uint8 and a.dtype == torch.float32
            assert torch.equal(normalize(b), a)
    with pytest.raises(ValueError, match="output must be"):
        KineticsFramePairs([path], output="half")


def test_describe_single_pair_and_fixed_pairs(video_factory):
    path = video_factory(120, 30, 30)
    free = KineticsFramePairs([path], img_size=48, augment=False)
    fixed = KineticsFramePairs([path], img_size=48, augment=False, fixed_pairs=True)
    info = free.describe(0)
    assert {"video", "indices", "gap_frames", "gap_seconds", "f1", "f2"} <= info.keys()
    assert info["video"] == str(path) and info["f1"].shape == (3, 48, 48)
    a, b = info["indices"]
    assert info["gap_frames"] == b - a and barcodes(torch.stack([info["f1"], info["f2"]])) == [a, b]
    assert len({free.describe(0, epoch=e)["indices"] for e in range(8)}) > 1
    assert len({fixed.describe(0, epoch=e)["indices"] for e in range(8)}) == 1
    fixed.set_epoch(5)
    assert torch.equal(fixed[0][0], fixed[(0, 2)][0])


def test_header_overcounting_the_frames_is_corrected(video_factory, tmp_path):
    """A Matroska file cut off after frame 59 keeps its header duration: pairs come from the frames that decode."""
    whole = video_factory(150, 30, 10, 0, "mkv")
    with av.open(str(whole)) as container:  # cut where the packet of keyframe 60 starts
        position = next(p.pos for p in container.demux(video=0) if p.is_keyframe and p.pts == 2000)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[:position])
    with VideoReader(cut) as video:
        assert video.num_frames == 150
    data = KineticsFramePairs([cut], img_size=48, augment=False, repeated_sampling=4)
    for epoch in range(4):
        info = data.describe(0, epoch=epoch)
        indices = [i for pair in info["indices"] for i in pair]
        assert max(indices) < 60 and info["num_frames"] == 60
        assert barcodes(info["f1"]) + barcodes(info["f2"]) == indices[0::2] + indices[1::2]
    assert data.num_bad_files == 0


# ---------------------------------------------------------------- layouts


@pytest.fixture()
def clip(video_factory) -> Path:
    return video_factory(60, 30, 30)


def _place(clip: Path, *paths: Path) -> None:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(clip, p)


def test_layout_kinetics_tree(clip, tmp_path):
    _place(clip, tmp_path / "train/abseiling/a.mp4", tmp_path / "train/air drumming/b.mp4",
           tmp_path / "val/abseiling/c.mp4")
    (tmp_path / "train/abseiling/notes.txt").write_text("not a video")
    train = find_videos(tmp_path, "train")
    assert [p.name for p in train.paths] == ["a.mp4", "b.mp4"]
    assert train.labels == ["abseiling", "air drumming"] and "Kinetics tree" in train.layout
    assert [p.name for p in find_videos(tmp_path, "val").paths] == ["c.mp4"]
    assert [p.name for p in find_videos(tmp_path / "train").paths] == ["a.mp4", "b.mp4"]  # a split's folder
    (tmp_path / "annotations").mkdir()  # an annotation file that matches none of the videos: the tree counts
    (tmp_path / "annotations/validate.csv").write_text("label,youtube_id,time_start,time_end,split\nx,zz,1,2,val\n")
    assert [p.name for p in find_videos(tmp_path, "val").paths] == ["c.mp4"]
    (tmp_path / "train.txt").write_text("train/abseiling/a.mp4 5\n")  # one that matches selects
    selected = find_videos(tmp_path, "train")
    assert [p.name for p in selected.paths] == ["a.mp4"] and selected.labels == [5]


def test_layout_official_annotation_csv(clip, tmp_path):
    _place(clip, tmp_path / "train/abc_000010_000020.mp4", tmp_path / "videos/xyz-1_000000_000010.mp4")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations/train.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "abseiling,abc,10,20,train\n"
        '"air drumming",xyz-1,0,10,train\n'
        "archery,gone,5,15,train\n")
    with pytest.warns(UserWarning, match="1 of 3 videos"):
        data = KineticsFramePairs(tmp_path, split="train", img_size=32)
    assert [p.name for p in data.videos] == ["abc_000010_000020.mp4", "xyz-1_000000_000010.mp4"]
    assert data.labels == ["abseiling", "air drumming"] and data.num_missing == 1
    assert data[0][0].shape == (3, 32, 32)
    direct = find_videos(tmp_path / "annotations/train.csv")
    assert [p.name for p in direct.paths] == [p.name for p in data.videos]


def test_layout_annotation_csv_with_several_splits(clip, tmp_path):
    _place(clip, tmp_path / "clips/a_000001_000011.mp4", tmp_path / "clips/b_000002_000012.mp4")
    (tmp_path / "kinetics_val.csv").write_text(
        "label,youtube_id,time_start,time_end,split\nx,a,1,11,train\ny,b,2,12,val\n")
    found = find_videos(tmp_path, "val")
    assert [p.name for p in found.paths] == ["b_000002_000012.mp4"] and found.labels == ["y"]


def test_layout_pytorchvideo_list_file(clip, tmp_path):
    _place(clip, tmp_path / "videos/a/1.mp4", tmp_path / "videos/b/2.mp4")
    (tmp_path / "train.csv").write_text("videos/a/1.mp4 0\nvideos/b/2.mp4 7\n")
    found = find_videos(tmp_path, "train")
    assert [p.name for p in found.paths] == ["1.mp4", "2.mp4"] and found.labels == [0, 7]
    assert all(p.is_file() for p in found.paths) and "path label" in found.layout


def test_layout_plain_lists(clip, tmp_path):
    _place(clip, tmp_path / "x/one.mp4", tmp_path / "y/two words.mp4")
    listing = tmp_path / "videos.txt"
    listing.write_text(f"x/one.mp4\n{tmp_path / 'y/two words.mp4'}\n\n")
    from_file = find_videos(listing)
    assert [p.name for p in from_file.paths] == ["one.mp4", "two words.mp4"] and from_file.labels == [None, None]
    from_list = find_videos([str(tmp_path / "x/one.mp4"), tmp_path / "y/two words.mp4"])
    assert [p.name for p in from_list.paths] == ["one.mp4", "two words.mp4"]


def test_clear_errors_list_the_layouts(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        KineticsFramePairs(tmp_path / "nowhere")
    assert "Kinetics tree" in str(err.value) and "annotation CSV" in str(err.value)
    with pytest.raises(ValueError, match="no videos for split 'train'") as err:
        KineticsFramePairs(tmp_path)
    assert "Layouts understood" in str(err.value)
    (tmp_path / "train/cls").mkdir(parents=True)
    (tmp_path / "train/cls/readme.txt").write_text("no videos here")
    with pytest.raises(ValueError, match="Layouts understood"):
        KineticsFramePairs(tmp_path)
    listing = tmp_path / "list.txt"
    listing.write_text("missing/a.mp4 1\nmissing/b.mp4 2\n")
    with pytest.raises(ValueError, match="2 listed videos are missing"):
        KineticsFramePairs(listing)


# ---------------------------------------------------------------- bad files


@pytest.fixture()
def dataset_with_bad_files(video_factory, tmp_path) -> tuple[list[Path], set[str]]:
    good = [video_factory(90, 30, 30), video_factory(90, 25, 10), video_factory(60, 30, 1)]
    folder = tmp_path / "mixed"
    folder.mkdir()
    paths = []
    for i, src in enumerate(good):
        paths.append(folder / f"good{i}.mp4")
        shutil.copyfile(src, paths[-1])
    bad = {
        "corrupt.mp4": np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "empty.mp4": b"",
        "truncated.mp4": good[0].read_bytes()[: good[0].stat().st_size // 2],
        "text.mp4": b"this is not a video\n" * 10,
    }
    for name, content in bad.items():
        (folder / name).write_bytes(content)
    make_indexed_video(folder / "one_frame.mp4", 1)  # a valid video with too few frames for a pair
    unreadable = folder / "unreadable.mp4"
    shutil.copyfile(good[0], unreadable)
    unreadable.chmod(0)
    bad_names = set(bad) | {"one_frame.mp4"}
    if not _is_root():
        bad_names.add("unreadable.mp4")
    paths += [folder / n for n in ("corrupt.mp4", "empty.mp4", "truncated.mp4", "text.mp4", "one_frame.mp4",
                                   "unreadable.mp4")]
    return paths, bad_names


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def test_bad_files_are_skipped_counted_and_replaced(dataset_with_bad_files):
    paths, bad_names = dataset_with_bad_files
    data = KineticsFramePairs(paths, img_size=48, augment=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [data[i] for i in range(len(data))]
    messages = [str(w.message) for w in caught if issubclass(w.category, BadVideoWarning)]
    assert sorted(Path(m.split("unreadable video ")[1].split(":")[0]).name for m in messages) == sorted(bad_names)
    assert data.num_bad_files == len(bad_names)
    assert {Path(p).name for p in data.bad_files} == bad_names
    for f1, f2 in items:  # every item is a real pair from a good video
        assert f1.shape == f2.shape == (3, 48, 48) and torch.isfinite(f1).all()
        assert 4 <= read_barcode(denormalize(f2)) - read_barcode(denormalize(f1)) <= 48
    again = KineticsFramePairs(paths, img_size=48, augment=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadVideoWarning)
        for i, (f1, _) in enumerate(items):  # replacements are deterministic
            assert torch.equal(again[i][0], f1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for i in range(len(again)):
                again[(i, 1)]
    assert not [w for w in caught if issubclass(w.category, BadVideoWarning)]  # one warning a file, not an epoch


def test_loader_with_workers_survives_bad_files_for_a_full_epoch(dataset_with_bad_files):
    paths, bad_names = dataset_with_bad_files
    data = KineticsFramePairs(paths, img_size=32, repeated_sampling=2)
    loader = make_pair_loader(data, batch_size=3, num_workers=2, seed=0, drop_last=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadVideoWarning)
        batches = list(loader)
    assert [f1.shape[0] for f1, _ in batches] == [6, 6, 6]  # 9 items, R=2 pairs each
    assert all(torch.isfinite(f1).all() and torch.isfinite(f2).all() for f1, f2 in batches)
    assert data.num_bad_files == len(bad_names)  # the workers' counts reach the main process
    assert {Path(p).name for p in data.bad_files} == bad_names


def test_all_bad_is_a_clear_error(tmp_path):
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / name).write_bytes(b"junk")
    data = KineticsFramePairs([tmp_path / "a.mp4", tmp_path / "b.mp4"], max_attempts=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadVideoWarning)
        with pytest.raises(RuntimeError, match="2 of 2 videos are unreadable"):
            data[0]


# ---------------------------------------------------------------- loaders and reproducibility


@pytest.fixture()
def small_dataset(video_factory) -> KineticsFramePairs:
    paths = [video_factory(90, 30, 30), video_factory(90, 25, 10), video_factory(60, 30, 1),
             video_factory(120, 30, 7), video_factory(120, FPS_2997, 15), video_factory(90, 25, 25)]
    return KineticsFramePairs(paths, img_size=32, repeated_sampling=2, seed=3)


def _epoch(loader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    set_loader_epoch(loader, epoch)
    return list(loader)


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x1, y1) and torch.equal(x2, y2) for (x1, x2), (y1, y2) in zip(a, b))


def test_same_seed_same_batches_across_loaders_and_worker_counts(small_dataset):
    one = make_pair_loader(small_dataset, batch_size=2, num_workers=2, seed=5)
    two = make_pair_loader(small_dataset, batch_size=2, num_workers=2, seed=5)
    serial = make_pair_loader(small_dataset, batch_size=2, num_workers=0, seed=5)
    first = _epoch(one, 0)
    assert len(first) == 3 and first[0][0].shape == (4, 3, 32, 32)  # (B*R, 3, H, W)
    assert _same(first, _epoch(two, 0))
    assert _same(first, _epoch(serial, 0))
    other_seed = make_pair_loader(small_dataset, batch_size=2, num_workers=0, seed=6)
    assert not _same(first, _epoch(other_seed, 0))


def test_epochs_differ_and_resuming_reproduces_them(small_dataset):
    """Unshuffled, so that only the items' own randomness can make epochs differ."""
    loader = make_pair_loader(small_dataset, batch_size=3, num_workers=2, shuffle=False, persistent_workers=True)
    epoch0, epoch1, epoch0_again = _epoch(loader, 0), _epoch(loader, 1), _epoch(loader, 0)
    assert not any(torch.equal(a[0], b[0]) for a, b in zip(epoch0, epoch1))
    assert _same(epoch0, epoch0_again)  # persistent workers follow the epoch
    resumed = make_pair_loader(small_dataset, batch_size=3, num_workers=0, shuffle=False)
    assert _same(epoch1, _epoch(resumed, 1))
    shuffled = make_pair_loader(small_dataset, batch_size=3, num_workers=0, seed=1)
    order = [[i for i, _ in batch] for batch in torch.utils.data.BatchSampler(shuffled.sampler, 3, True)]
    set_loader_epoch(shuffled, 1)
    assert order != [[i for i, _ in batch] for batch in torch.utils.data.BatchSampler(shuffled.sampler, 3, True)]


def test_batches_pair_frames_with_their_partner(video_factory):
    """Flattening keeps f1[k] and f2[k] from the same pair: their barcodes differ by an allowed gap."""
    paths = [video_factory(120, 30, 7), video_factory(90, 25, 10), video_factory(120, FPS_2997, 15)]
    data = KineticsFramePairs(paths, img_size=48, augment=False, repeated_sampling=3)
    f1, f2 = next(iter(make_pair_loader(data, batch_size=3, num_workers=0)))
    assert f1.shape == (9, 3, 48, 48)
    gaps = np.array(barcodes(f2)) - np.array(barcodes(f1))
    assert ((gaps >= 4) & (gaps <= 48)).all()


def test_loader_options_and_distributed_sampler(small_dataset, tmp_path):
    loader = make_pair_loader(small_dataset, batch_size=2)
    assert isinstance(loader.sampler, VideoSampler) and loader.pin_memory == torch.cuda.is_available()
    assert make_pair_loader(small_dataset, batch_size=2, num_workers=2).persistent_workers
    with pytest.raises(ValueError, match="init_process_group"):
        make_pair_loader(small_dataset, batch_size=2, distributed=True)
    with pytest.raises(ValueError, match="batch_size"):
        make_pair_loader(small_dataset, batch_size=0)
    subset = torch.utils.data.Subset(small_dataset, [4, 1, 2])  # a plain dataset gets plain indices
    f1, f2 = next(iter(make_pair_loader(subset, batch_size=3, shuffle=False)))
    assert torch.equal(f1[:2], small_dataset[4][0]) and f2.shape == (6, 3, 32, 32)
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        loader = make_pair_loader(small_dataset, batch_size=2, seed=4)
        assert (loader.sampler.rank, loader.sampler.world) == (0, 1)  # sharded over the group (of one)
        set_loader_epoch(loader, 3)
        assert loader.sampler.epoch == 3 and small_dataset.epoch == 3
        assert sorted(i for i, _ in loader.sampler) == list(range(len(small_dataset)))
        assert {e for _, e in loader.sampler} == {3}
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- the shipped sample


def test_loader_over_the_shipped_sample():
    data = KineticsFramePairs(SAMPLE_DIR, split="train", repeated_sampling=2, img_size=112)
    from dataset_loader.make_sample import SAMPLE_CLIPS

    assert len(data) == sum(clip[1] == "train" for clip in SAMPLE_CLIPS) and "Kinetics tree" in data.layout
    f1, f2 = next(iter(make_pair_loader(data, batch_size=2, num_workers=0)))
    assert f1.shape == f2.shape == (4, 3, 112, 112)
    lo = (0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    hi = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    for f in (f1, f2):
        assert torch.isfinite(f).all()
        per_channel = f.transpose(0, 1).flatten(1)
        assert (per_channel.min(1).values >= lo - 1e-5).all() and (per_channel.max(1).values <= hi + 1e-5).all()
        assert per_channel.std(1).min() > 0.1  # real pictures, not constant frames
    assert not torch.equal(f1, f2)
    val = KineticsFramePairs(SAMPLE_DIR, split="val", augment=False, img_size=64)
    info = val.describe(1)
    assert Path(info["video"]).parent.name in {clip[2] for clip in SAMPLE_CLIPS if clip[1] == "val"}
    assert 4 / 30 - 1e-9 <= info["gap_seconds"] <= 48 / 30 + 1e-9
    assert data.num_bad_files == 0 and val.num_bad_files == 0
