"""The recipe as the paper counts it: effective epochs, decoder sizes, f1 masking, subsets, presets, compile,
TensorBoard."""

from __future__ import annotations

import math

import pytest
import torch

from dataset_loader.dataset import KineticsFramePairs
from dataset_loader.loader import VideoSampler, make_pair_loader, set_loader_epoch
from mae.pretrained import CheckpointError, resolve_pretrained
from ml.model import DECODER_SIZES, create_model, decoder_dims
from ml.training.build import build_model, make_train_loader, training_videos
from ml.training.checkpoint import load_checkpoint
from ml.training.presets import PRESETS, get_preset
from ml.training.pretrain import train
from ml.training.run import Run
from tests.conftest import SAMPLE_DIR, log_rows


# ---------------------------------------------------------------- effective epochs
def test_an_epoch_reads_one_part_of_the_videos_and_every_video_once_per_cycle() -> None:
    for parts, world in ((2, 1), (3, 1), (2, 2)):
        seen_per_cycle: dict[int, list[int]] = {}
        for epoch in range(3 * parts):
            epoch_videos = []
            for rank in range(world):
                sampler = VideoSampler(12, seed=7, parts=parts, rank=rank, world=world, with_epoch=False)
                sampler.set_epoch(epoch)
                mine = list(sampler)
                assert len(mine) == len(sampler) == 12 // parts // world
                epoch_videos += mine
            assert len(set(epoch_videos)) == len(epoch_videos) == 12 // parts  # no video twice in an epoch
            seen_per_cycle.setdefault(epoch // parts, []).extend(epoch_videos)
        for cycle, videos in seen_per_cycle.items():
            assert sorted(videos) == list(range(12)), (parts, world, cycle)  # each video once per cycle
        assert seen_per_cycle[0] != seen_per_cycle[1]  # a new order every cycle
    a, b = VideoSampler(12, seed=7, parts=2), VideoSampler(12, seed=7, parts=2)
    b.set_epoch(5)
    a.set_epoch(5)
    assert list(a) == list(b) and all(e == 5 for _, e in a)  # a function of (seed, epoch), the epoch travels along


def test_a_run_takes_videos_over_pairs_per_step_steps_per_epoch(tmp_path) -> None:
    """R = 2 over N videos, 4 pairs per step: an epoch is N pairs, so N / 4 steps (here 8 videos: 2 steps)."""
    videos = sorted(SAMPLE_DIR.glob("*/*/*.mp4"))
    listing = tmp_path / "eight.txt"
    listing.write_text("\n".join(str(videos[i % len(videos)]) for i in range(8)) + "\n")
    cfg = get_preset("quick", data=str(listing), output_dir=str(tmp_path / "out"), device="cpu", epochs=2,
                     test_split=None, batch_size=4)
    assert cfg.repeated_sampling == 2 and cfg.batch_size == 4
    assert cfg.steps_per_epoch(8) == 8 // 4 == len(make_train_loader(cfg))
    paper = get_preset("paper_vit_s16_400")
    assert paper.steps_per_epoch(240_000, world_size=8) == 240_000 // 2048 == 117  # Kinetics-400: 46,800 steps
    assert paper.steps_per_epoch(240_000, world_size=1) == 117  # the same on one GPU (accumulating 8)
    train(cfg, progress=False)
    rows = log_rows(tmp_path / "out" / "losses" / "quick.txt")
    assert [(int(r[0]), int(r[1])) for r in rows] == [(1, 0), (1, 1), (2, 2), (2, 3)]
    assert load_checkpoint(Run.of(cfg).last_checkpoint)["step"] == 4


def test_max_videos_draws_the_same_subset_whatever_the_seed() -> None:
    a = training_videos(get_preset("quick", data=str(SAMPLE_DIR), max_videos=3))
    b = training_videos(get_preset("quick", data=str(SAMPLE_DIR), max_videos=3, seed=9))
    assert a == b and len(a) == 3 and len(set(a)) == 3
    assert training_videos(get_preset("quick", data=str(SAMPLE_DIR))) == str(SAMPLE_DIR)
    data = KineticsFramePairs(a, repeated_sampling=2, img_size=32)
    assert len(data) == 3 and len(make_pair_loader(data, batch_size=1, parts=2)) == 1


# ---------------------------------------------------------------- decoder and masking variants
def test_named_and_custom_decoder_sizes() -> None:
    assert decoder_dims("preset") is None and decoder_dims("mae") == (512, 8, 16, 4.0)
    assert DECODER_SIZES["small"] == (256, 4, 8, 8.0)
    assert decoder_dims("384/6/12") == (384, 6, 12, 4.0) and decoder_dims("384/6/12/2") == (384, 6, 12, 2.0)
    for bad in ("huge", "384/6", "100/2/3", "64/2/4/0"):
        with pytest.raises(ValueError, match="decoder_size"):
            decoder_dims(bad)
    with pytest.raises(ValueError, match="decoder_size"):
        get_preset("paper_vit_s16_400", decoder_size="wide")
    small = build_model(get_preset("paper_vit_s16_400", decoder_size="small"))
    assert (small.decoder.embed.out_features, len(small.decoder.blocks),
            small.decoder.blocks[0].cross_attn.num_heads) == (256, 4, 8)
    assert small.decoder.blocks[0].mlp.fc1.out_features == 2048  # as CropMAE's decoder layers
    assert 6.5e6 < sum(p.numel() for p in small.decoder.parameters()) < 6.7e6  # CropMAE's SiamMAE decoder: 6.6 M
    tiny = build_model(get_preset("quick"))
    assert tiny.decoder.embed.out_features == 128  # "preset": the arch's own decoder
    cross = build_model(get_preset("quick", decoder_type="cross"))
    assert cross.decoder.decoder_type == "cross"


def test_f1_masking_feeds_only_f1s_visible_patches_and_changes_nothing_when_off() -> None:
    torch.manual_seed(0)
    model = create_model("siammae_tiny", img_size=64, mask_ratio=0.75, f1_mask_ratio=0.5)
    seen = []
    model.encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    f1, f2 = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    loss, pred, mask = model(f1, f2)
    assert seen == [1 + 8, 1 + 4]  # f1: 8 of 16 patches (+ cls); f2 at 0.75: 4 of 16
    assert torch.isfinite(loss) and pred.shape == (2, 16, 768)
    loss.backward()
    # with f1_mask_ratio 0 the model draws exactly the random numbers it drew before (one mask, f2's)
    whole = create_model("siammae_tiny", img_size=64, mask_ratio=0.75)
    torch.manual_seed(3)
    whole(f1, f2)
    after = torch.rand(1)
    torch.manual_seed(3)
    torch.rand(2, 16)  # the one draw: f2's noise
    assert torch.equal(torch.rand(1), after)
    with pytest.raises(ValueError, match="f1_mask_ratio"):
        get_preset("quick", f1_mask_ratio=1.0)


# ---------------------------------------------------------------- the seed's presets
def test_the_seeds_experiments_are_presets() -> None:
    for ratio in (0.50, 0.75, 0.95):
        cfg = get_preset(f"mae_vit_b16_mask{round(100 * ratio):03d}")
        assert (cfg.arch, cfg.pretrained, cfg.mask_ratio) == ("siammae_vit_base_patch16", "mae_pretrain_vit_base",
                                                              ratio)
        assert cfg.total_batch_size == 2048 and cfg.repeated_sampling == 2
    large = get_preset("mae_vit_l16_mask075")
    assert (large.arch, large.pretrained, large.mask_ratio) == ("siammae_vit_large_patch16",
                                                                "mae_pretrain_vit_large", 0.75)
    assert {"paper_vit_s16_400", "paper_vit_s16_2000", "cpu_demo", "quick"} <= set(PRESETS)


def test_a_pretrained_name_offline_says_where_to_put_the_file(tmp_path, monkeypatch) -> None:
    import urllib.error

    import torch.hub

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(CheckpointError, match=r"Are you offline\? .*place it at .*mae_pretrain_vit_base.pth"):
        resolve_pretrained("mae_pretrain_vit_base", tmp_path)
    (tmp_path / "mae_pretrain_vit_base.pth").write_bytes(b"x")  # once there, no download is tried
    assert resolve_pretrained("mae_pretrain_vit_base", tmp_path) == tmp_path / "mae_pretrain_vit_base.pth"
    with pytest.raises(CheckpointError, match="neither a file nor one of"):
        resolve_pretrained(tmp_path / "missing.pth")


# ---------------------------------------------------------------- compile and TensorBoard
def test_compiled_steps_follow_eager_ones(tmp_path) -> None:
    """A few training steps of a small model, compiled (torch.compile, inductor on the CPU) and eager: the same masks,
    losses within float tolerance."""
    small = {"depth": 1, "decoder_depth": 1}
    losses = {}
    for compiled in (False, True):
        cfg = get_preset("quick", data=str(SAMPLE_DIR), output_dir=str(tmp_path / str(compiled)), device="cpu",
                         epochs=3, compile=compiled, model_kwargs=small, test_split=None)
        train(cfg, progress=False)
        losses[compiled] = [r[3] for r in log_rows(Run.of(cfg).losses)]
    assert len(losses[True]) == 6  # 3 epochs of 2 steps
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_tensorboard_logs_losses_rate_and_reconstructions(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = get_preset("quick", data=str(SAMPLE_DIR), output_dir=str(tmp_path), device="cpu", epochs=2,
                     tensorboard=True, tensorboard_figure_every=1)
    train(cfg, progress=False)
    events = EventAccumulator(str(Run.of(cfg).tensorboard_dir), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/lr", "test/loss"} <= set(tags["scalars"]) and "reconstruction" in tags["images"]
    logged = [e.value for e in events.Scalars("train/loss")]
    assert logged == pytest.approx([r[3] for r in log_rows(Run.of(cfg).losses)])
    assert len(events.Images("reconstruction")) == 2 and math.isfinite(events.Scalars("test/loss")[-1].value)
    plain = get_preset("quick", data=str(SAMPLE_DIR), output_dir=str(tmp_path / "off"), device="cpu", epochs=1)
    train(plain, progress=False)
    assert not Run.of(plain).tensorboard_dir.exists()  # off by default


def test_train_loader_and_cost_model_count_the_same_steps() -> None:
    from bench.cost import Recipe

    quick = get_preset("quick", data=str(SAMPLE_DIR))
    loader = make_train_loader(quick)
    set_loader_epoch(loader, 3)
    from dataset_loader.make_sample import SAMPLE_CLIPS

    videos = sum(clip[1] == "train" for clip in SAMPLE_CLIPS)  # 8 videos, R 2: 4 read, 2 a step
    assert Recipe("x", "quick", videos=videos).steps_per_epoch == len(loader) == videos // 2 // 2
