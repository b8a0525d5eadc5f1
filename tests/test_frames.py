"""Which frames: exact frames from every container, gaps in time, and the crop and flip shared by a pair."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dataset_loader import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    KineticsFramePairs,
    PairedTransform,
    RandomTemporalSubsample,
    VideoReader,
    denormalize,
)
from dataset_loader.synthetic_videos import make_indexed_video, read_barcode
from dataset_loader.transforms import normalize
from dataset_loader.video import VideoTooShortError
from tests.conftest import FPS_2997

# ---------------------------------------------------------------- decoding


@pytest.mark.parametrize("fps,keyframe_interval,start_frame,ext", [
    (30, 1, 0, "mp4"), (30, 7, 0, "mp4"), (30, 30, 0, "mp4"), (30, 500, 0, "mp4"), (30, 30, 7, "mp4"),
    (25, 1, 0, "mp4"), (25, 10, 0, "mp4"), (25, 25, 13, "mp4"), (25, 500, 0, "mp4"),
    (FPS_2997, 15, 0, "mp4"), (FPS_2997, 30, 5, "mp4"), (30, 12, 7, "mkv"), (FPS_2997, 30, 3, "mkv"),
])
def test_reader_returns_exactly_the_chosen_frames(video_factory, fps, keyframe_interval, start_frame, ext):
    path = video_factory(120, fps, keyframe_interval, start_frame, ext)
    rng = np.random.default_rng(keyframe_interval)
    index_sets = [[0], [119], [0, 119], [118, 3, 3], [59, 60, 61]]
    index_sets += [rng.integers(0, 120, size=int(rng.integers(1, 5))).tolist() for _ in range(8)]
    for indices in index_sets:
        with VideoReader(path) as video:
            assert video.num_frames == 120
            assert abs(float(video.fps) - float(fps)) < 1e-3
            frames = video.read(indices)
        assert [read_barcode(f) for f in frames] == indices, (path.name, indices)
    with VideoReader(path, threads=2) as video:  # several threads: plain decoding, no skipping
        assert [read_barcode(f) for f in video.read(index_sets[-1])] == index_sets[-1]


@pytest.mark.parametrize("keyframe_interval", [1, 10, 500])
def test_fast_decoding_needs_no_fallback_on_constant_rate_streams(video_factory, keyframe_interval):
    """Skipping non-reference frames and jumping between keyframes must give the frames on the first try."""
    path = video_factory(120, 30, keyframe_interval)
    for wanted in ([5, 90], [0, 1, 2, 119], [33, 34, 80, 81], [60]):
        with VideoReader(path) as video:
            frames = video._decode(wanted, fast=True)
            assert frames is not None and [read_barcode(frames[i]) for i in wanted] == wanted


def test_missing_timestamps_get_the_next_frame_shown(tmp_path):
    """A variable-rate stream with no frame at times 10 and 20-22: those indices get the next frame shown."""
    shown = [t for t in range(40) if t != 10 and not 20 <= t <= 22]
    path = make_indexed_video(tmp_path / "gaps.mp4", len(shown), 30, keyframe_interval=8, timestamps=shown)
    for indices, expected in [([9, 10, 11], [9, 11, 11]), ([21], [23]), ([5, 20, 30], [5, 23, 30]), ([39], [39])]:
        with VideoReader(path) as video:
            assert [read_barcode(f) for f in video.read(indices)] == expected


def test_frames_in_order_number_frames_as_read_does(video_factory, tmp_path):
    """The one-pass decode that `prepare` uses hands out the frames `read` gives, to the stream's real end."""
    from dataset_loader.synthetic_videos import barcode_frame, encode_video

    shown = [t for t in range(40) if t != 10 and not 20 <= t <= 22]
    videos = [video_factory(120, FPS_2997, 30, 5), video_factory(120, 25, 25, 13, "mp4"),
              video_factory(120, 30, 12, 7, "mkv"),
              make_indexed_video(tmp_path / "gaps.mp4", len(shown), 30, keyframe_interval=8, timestamps=shown)]
    for name, (codec, fmt, bframes) in CONTAINERS.items():
        videos.append(encode_video(tmp_path / name, (barcode_frame(i, 64, 48) for i in range(90)), fps=30,
                                   keyframe_interval=15, codec=codec, container_format=fmt, bframes=bframes))
    for path in videos:
        with VideoReader(path) as video:
            ordered = list(video.frames_in_order())
            assert [i for i, _ in ordered] == list(range(len(ordered)))
            expected = video.read(list(range(len(ordered))))
        with VideoReader(path) as video, pytest.raises(VideoTooShortError):
            video.read([len(ordered)])  # nothing left out at the end
        assert all(np.array_equal(a, b) for (_, a), b in zip(ordered, expected)), path.name
        assert len(ordered) == (40 if path.name == "gaps.mp4" else 120 if path.parent.name != tmp_path.name else 90)


def test_reader_bad_index_and_short_stream(video_factory):
    with VideoReader(video_factory(30)) as video:
        with pytest.raises(ValueError, match=">= 0"):
            video.read([-1, 3])
    with VideoReader(video_factory(30)) as video:
        with pytest.raises(Exception, match="before frame 30"):
            video.read([2, 30])


# ---------------------------------------------------------------- pair sampling


@pytest.mark.parametrize("fps", [30, 25, FPS_2997, 60, 12])
def test_gaps_stay_in_bounds_in_time_and_cover_them(fps):
    sampler = RandomTemporalSubsample(min_gap=4, max_gap=48, reference_fps=30, repeated_sampling=3)
    rng = np.random.default_rng(1)
    num_frames = 200
    pairs = [p for _ in range(3000) for p in sampler(num_frames, float(fps), rng)]
    gaps = np.array([b - a for a, b in pairs])
    firsts = np.array([a for a, _ in pairs])
    seconds = gaps / float(fps)
    assert seconds.min() >= 4 / 30 - 1e-9 and seconds.max() <= 48 / 30 + 1e-9
    lo, hi = sampler.gap_range(float(fps))
    assert (lo - 1) / float(fps) < 4 / 30 and (hi + 1) / float(fps) > 48 / 30  # the range is the widest in bounds
    counts = np.bincount(gaps, minlength=hi + 1)[lo:]
    assert (counts > 0).all() and counts.min() > 0.6 * counts.mean()  # every gap drawn, about equally often
    assert firsts.min() == 0 and (firsts + gaps).max() == num_frames - 1
    assert all(0 <= a < b < num_frames for a, b in pairs)


def test_gap_range_at_common_rates():
    sampler = RandomTemporalSubsample()
    assert sampler.gap_range(30) == (4, 48)
    assert sampler.gap_range(25) == (4, 40)  # 0.16-1.6 s
    assert sampler.gap_range(60) == (8, 96)


def test_short_videos_get_the_largest_gap_they_hold():
    sampler = RandomTemporalSubsample(repeated_sampling=4)
    rng = np.random.default_rng(0)
    assert set(sampler(3, 30.0, rng)) == {(0, 2)}
    assert set(sampler(2, 30.0, rng)) == {(0, 1)}
    pairs = [p for _ in range(200) for p in sampler(20, 30.0, rng)]
    assert {b - a for a, b in pairs} == set(range(4, 20))
    with pytest.raises(ValueError, match="at least 2 frames"):
        sampler(1, 30.0, rng)
    with pytest.raises(ValueError, match="min_gap"):
        RandomTemporalSubsample(min_gap=10, max_gap=5)


# ---------------------------------------------------------------- augmentation


def test_crop_params_follow_scale_and_ratio():
    transform = PairedTransform(img_size=32, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3))
    rng = np.random.default_rng(0)
    params = [transform.sample_params(256, 340, rng) for _ in range(500)]
    areas = np.array([p.width * p.height / (256 * 340) for p in params])
    ratios = np.array([p.width / p.height for p in params])
    assert areas.min() > 0.49 and areas.max() <= 1.0 and areas.max() - areas.min() > 0.3
    assert ratios.min() > 0.74 and ratios.max() < 1.34
    assert all(0 <= p.top and p.top + p.height <= 256 and 0 <= p.left and p.left + p.width <= 340 for p in params)
    flips = np.mean([p.flip for p in params])
    assert 0.4 < flips < 0.6


def test_flip_mirrors_the_crop():
    transform = PairedTransform(img_size=24)
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    params = transform.sample_params(48, 64, np.random.default_rng(3))
    flipped = type(params)(params.top, params.left, params.height, params.width, not params.flip)
    assert torch.equal(transform.apply([image], params), transform.apply([image], flipped).flip(-1))
    assert transform.apply([image], params).dtype == torch.uint8


def test_a_group_is_cropped_as_each_frame_alone():
    """The frames of a pair are resized in one call: the same pixels as one frame at a time."""
    transform = PairedTransform(img_size=24)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    for seed in range(5):
        params = transform.sample_params(48, 64, np.random.default_rng(seed))
        together = transform.apply(frames, params)
        assert together.shape == (3, 3, 24, 24)
        for i, frame in enumerate(frames):
            assert torch.equal(together[i], transform.apply([frame], params)[0])


def test_no_augment_is_resize_short_side_then_centre_crop():
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    out = PairedTransform(img_size=24, augment=False)([image], np.random.default_rng(0))
    reference = np.asarray(Image.fromarray(image).resize((32, 24), Image.Resampling.BILINEAR))[:, 4:28]
    expected = normalize(torch.from_numpy(reference.copy()).permute(2, 0, 1)[None])  # PIL antialiased bilinear
    assert out.shape == (1, 3, 24, 24)
    assert (denormalize(out) - denormalize(expected)).abs().mean() < 0.03


def test_normalisation_uses_imagenet_statistics():
    gray = torch.full((1, 3, 8, 8), 128, dtype=torch.uint8)
    out = normalize(gray)
    expected = (128 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(out[0, :, 3, 3], expected)
    torch.testing.assert_close(denormalize(out), torch.full((1, 3, 8, 8), 128 / 255))


def test_both_frames_of_a_pair_get_the_same_crop_and_flip(pattern_video):
    data = KineticsFramePairs([pattern_video], img_size=32, repeated_sampling=4)
    outputs = []
    for epoch in range(6):
        f1, f2 = data[(0, epoch)]
        assert torch.equal(f1, f2)  # identical frames in, identical pairs out
        outputs += list(f1)
    distinct = {tuple(o.flatten()[::97].tolist()) for o in outputs}
    assert len(distinct) == len(outputs)  # while crops differ from pair to pair


# ---------------------------------------------------------------- every container
CONTAINERS = {  # file: (codec, container format, B-frames)
    "h264.mp4": ("libx264", None, 3), "h264.mkv": ("libx264", None, 3), "vp9.webm": ("libvpx-vp9", None, 0),
    "mpeg4.avi": ("mpeg4", None, 2), "h264.avi": ("libx264", None, 3), "h264.ts": ("libx264", "mpegts", 3),
    "mpeg2.mpg": ("mpeg2video", "mpeg", 2), "flv1.flv": ("flv", None, 0),
}


@pytest.mark.parametrize("name", sorted(CONTAINERS))
def test_exact_frames_in_every_container(tmp_path, name):
    """Index-bar videos in each container, read through the public dataset interface at several epochs: every
    frame shown is the frame reported (AVI's timestamps come from the decode order, MPEG streams start at an
    offset: they are read by decode order)."""
    codec, fmt, bframes = CONTAINERS[name]
    from dataset_loader.synthetic_videos import barcode_frame as bar
    from dataset_loader.synthetic_videos import encode_video

    path = encode_video(tmp_path / name, (bar(i, 64, 48) for i in range(120)), fps=30, keyframe_interval=15,
                        codec=codec, container_format=fmt, bframes=bframes)
    data = KineticsFramePairs([path], img_size=48, augment=False, repeated_sampling=3, seed=1)
    for epoch in range(4):
        info = data.describe(0, epoch=epoch)
        for (i, j), f1, f2 in zip(info["indices"], info["f1"], info["f2"]):
            shown = [read_barcode(denormalize(f)) for f in (f1, f2)]
            assert shown == [i, j], (name, epoch, (i, j), shown)
