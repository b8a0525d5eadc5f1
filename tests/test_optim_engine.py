"""The parts of training: schedule and learning rate, config value types, weight-decay groups, one epoch's loop,
the checkpoint file."""

from __future__ import annotations

import errno
import math
import os
import random

import numpy as np
import pytest
import torch
import torch.nn as nn

from mae.pretrained import CheckpointError
from ml import files as files_module
from ml.files import DiskFullError
from ml.training.build import build_model
from ml.training.checkpoint import load_checkpoint, save_checkpoint
from ml.training.config import TrainConfig
from ml.training.engine import resolve_precision, train_one_epoch
from ml.training.optim import make_optimizer, make_scheduler, warmup_cosine_lr
from ml.training.options import parse_field_value
from ml.training.presets import PRESETS, get_preset
from ml.training.rng import capture_rng_state, restore_rng_state

CPU = torch.device("cpu")


# ---------------------------------------------------------------- schedule and learning rate
def test_schedule_warmup_then_half_cosine() -> None:
    peak, floor, total, warm = 1e-3, 1e-5, 100, 10
    opt = torch.optim.AdamW(nn.Linear(2, 2).parameters(), lr=1.0)
    sched = make_scheduler(opt, peak, total_steps=total, warmup_steps=warm, min_lr=floor)
    lrs = []
    for step in range(total):
        lrs.append(opt.param_groups[0]["lr"])  # set before the step
        assert lrs[-1] == pytest.approx(warmup_cosine_lr(step, peak, total, warm, floor), rel=1e-12)
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(peak / warm) and lrs[0] < peak  # the first step is not at the peak
    assert lrs[warm - 1] == pytest.approx(peak)  # end of warm-up
    assert lrs[-1] == pytest.approx(floor)  # last step
    mid = warm + (total - warm) // 2 - 1  # half-way down the cosine
    assert lrs[mid] == pytest.approx((peak + floor) / 2)
    assert all(a < b for a, b in zip(lrs[:warm - 1], lrs[1:warm]))
    assert all(a >= b for a, b in zip(lrs[warm - 1:-1], lrs[warm:]))
    # a schedule rebuilt at step 37 (a resume) gives step 37's rate, and the same rates on
    resumed = torch.optim.AdamW(nn.Linear(2, 2).parameters(), lr=1.0)
    sched2 = make_scheduler(resumed, peak, total_steps=total, warmup_steps=warm, min_lr=floor, start_step=37)
    for step in range(37, 40):
        assert resumed.param_groups[0]["lr"] == lrs[step]
        resumed.step()
        sched2.step()


def test_lr_scales_with_effective_batch() -> None:
    paper = get_preset("paper_vit_s16_400")
    assert (paper.epochs, paper.warmup_epochs, paper.mask_ratio, paper.repeated_sampling) == (400, 40, 0.95, 2)
    assert (paper.min_gap, paper.max_gap, paper.img_size, paper.betas, paper.weight_decay) == (4, 48, 224,
                                                                                              (0.9, 0.95), 0.05)
    assert get_preset("paper_vit_s16_2000").epochs == 2000
    for world, accum in ((1, 8), (2, 4), (8, 1)):  # 2048 pairs per step on any number of GPUs
        assert paper.accum_steps(world) == accum
        assert paper.effective_batch_size(world) == 2048
        assert paper.peak_lr(world) == pytest.approx(1.5e-4 * 2048 / 256)
    with pytest.raises(ValueError, match="not a multiple"):
        paper.accum_steps(3)
    plain = TrainConfig(batch_size=64, accum_iter=2, blr=1e-4)
    assert plain.peak_lr(4) == pytest.approx(1e-4 * 64 * 4 * 2 / 256)
    assert plain.replace(lr=3e-3).peak_lr(4) == 3e-3  # an explicit rate wins
    with pytest.raises(ValueError, match="multiple of repeated_sampling"):
        TrainConfig(batch_size=5, repeated_sampling=2)
    with pytest.raises(ValueError, match="unknown training preset 'nope'"):
        get_preset("nope")
    assert TrainConfig.from_dict(paper.to_dict()) == paper
    assert set(PRESETS) >= {"paper_vit_s16_400", "paper_vit_s16_2000", "cpu_demo", "quick"}


def test_config_values_are_checked_as_their_field_types() -> None:
    assert parse_field_value("img_size", "96") == 96
    assert parse_field_value("test_split", "None") is None
    assert parse_field_value("crop_scale", "0.4,1") == (0.4, 1.0)
    assert parse_field_value("model_kwargs", "{'decoder_type': 'cross'}") == {"decoder_type": "cross"}
    assert parse_field_value("prefix", "'run 1'") == "run 1"
    for name, text, message in (("img_size", "'abc'", "img_size must be an integer"),
                                ("epochs", "1.5", "epochs must be an integer"),
                                ("lr", "inf", "lr must be a finite number or None"),
                                ("blr", "nan", "blr must be a finite number"),
                                ("model_kwargs", "[1]", "model_kwargs must be a Python dict"),
                                ("img_sise", "3", "unknown TrainConfig field")):
        with pytest.raises(ValueError, match=message):
            parse_field_value(name, text)
    # the dataclass itself refuses what the parser would: wrong types and non-finite numbers
    for changes, message in (({"epochs": 1.5}, "epochs must be an integer"),
                             ({"weight_decay": float("inf")}, "weight_decay must be a finite number"),
                             ({"lr": float("nan")}, "lr must be a finite number or None"),
                             ({"device": "tpu"}, "device 'tpu'"),
                             ({"img_size": True}, "img_size must be an integer")):
        with pytest.raises(ValueError, match=message):
            get_preset("quick", **changes)


# ---------------------------------------------------------------- weight decay
class TokenNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, 4))
        self.mask_token = nn.Parameter(torch.randn(1, 1, 4))
        self.pos_embed = nn.Parameter(torch.randn(1, 3, 4))  # learnable here, to test the name rule
        self.frozen_pos_embed = nn.Parameter(torch.randn(1, 3, 4), requires_grad=False)
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.conv = nn.Conv2d(3, 4, 2)

    def no_weight_decay(self) -> set[str]:
        return {"*pos_embed", "*cls_token", "*mask_token"}


def decay_groups(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, list[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {("decay" if g["weight_decay"] else "no_decay"): sorted(names[id(p)] for p in g["params"])
            for g in opt.param_groups}


def test_no_weight_decay_on_biases_norms_embeddings_tokens() -> None:
    net = TokenNet()
    lr, wd = 0.1, 0.5
    opt = make_optimizer(net, lr=lr, weight_decay=wd)
    groups = decay_groups(net, opt)
    assert groups["decay"] == ["conv.weight", "proj.weight"]
    assert groups["no_decay"] == ["cls_token", "conv.bias", "mask_token", "norm.bias", "norm.weight", "pos_embed",
                                  "proj.bias"]
    # what AdamW does with zero gradients: only the decayed weights shrink, by exactly (1 - lr * wd)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in net.named_parameters():
        expected = before[n] * (1 - lr * wd) if n in ("conv.weight", "proj.weight") else before[n]
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="positive finite"):
        make_optimizer(net, lr=float("inf"))


def test_siammae_groups_exclude_every_bias_norm_and_token() -> None:
    model = build_model(get_preset("quick"))
    opt = make_optimizer(model, 1e-3)
    groups = decay_groups(model, opt)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert "pos_embed" in name and name not in groups["decay"] + groups["no_decay"]
        elif p.ndim == 1 or name.endswith(("cls_token", "mask_token")):
            assert name in groups["no_decay"], name
        else:
            assert name in groups["decay"], name
    assert "decoder.mask_token" in groups["no_decay"]


# ---------------------------------------------------------------- the loop of one epoch
class PairRegressor(nn.Module):
    """A deterministic model with SiamMAE's call signature (no random masks), for the loop's arithmetic."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, f1, f2):
        pred = self.lin(f1.mean((2, 3)))
        return ((pred - f2.mean((2, 3))) ** 2).mean(), pred, None


def regression_batches(n: int, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(n * size, 3, 2, 2, generator=g), torch.randn(n * size, 3, 2, 2, generator=g)
    return [(f1[i * size:(i + 1) * size], f2[i * size:(i + 1) * size]) for i in range(n)]


def test_gradient_accumulation_equals_the_large_batch_and_clipping_bounds_the_step() -> None:
    torch.manual_seed(0)
    accumulated, large = PairRegressor(), PairRegressor()
    large.load_state_dict(accumulated.state_dict())
    runs = []
    for model, batches, accum in ((accumulated, regression_batches(4, 2), 2), (large, regression_batches(2, 4), 1)):
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        sched = make_scheduler(opt, 0.1, total_steps=2, warmup_steps=1)
        losses = train_one_epoch(batches, opt, sched, CPU, model, accum_iter=accum, progress=False)
        runs.append((losses, sched.last_epoch))
    assert len(runs[0][0]) == 4 and len(runs[1][0]) == 2
    assert runs[0][1] == runs[1][1] == 2  # one schedule step per optimiser step, not per iteration
    for a, b in zip(accumulated.parameters(), large.parameters()):  # 2 batches of 2 accumulated = 1 batch of 4
        torch.testing.assert_close(a, b)

    clipped = PairRegressor()
    before = [p.detach().clone() for p in clipped.parameters()]
    opt = torch.optim.SGD(clipped.parameters(), lr=1.0)
    train_one_epoch(regression_batches(1, 8), opt, None, CPU, clipped, clip_grad=1e-3, progress=False)
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(clipped.parameters(), before)])
    assert moved.norm() == pytest.approx(1e-3, rel=1e-4)  # SGD lr 1: the step is the clipped gradient


def test_precision_choice_and_bf16_autocast_on_cpu() -> None:
    assert resolve_precision("auto", CPU) == "fp32"
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", CPU)
    model = PairRegressor()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = train_one_epoch(regression_batches(3, 4), opt, None, CPU, model, precision="bf16", progress=False)
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)


# ---------------------------------------------------------------- checkpoint files
def small_state(value: float = 0.0) -> dict:
    return {"model": {"w": torch.arange(6.0) + value}, "epoch": 3, "config": {"lr": 1e-3, "betas": (0.9, 0.95)}}


@pytest.mark.parametrize("code,words", [
    (errno.ENOSPC, "disk full"), (errno.EDQUOT, "disk quota exceeded"),
    (errno.EFBIG, r"file too large for the file-size limit \(ulimit -f\) or the filesystem"),
])
def test_a_full_disk_mid_write_says_so_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, code, words) -> None:
    path = tmp_path / "run" / "checkpoint-last.pth"
    save_checkpoint(small_state(), path)
    good_bytes = path.read_bytes()

    class FullDisk:
        """A file on a disk that fills up after half a checkpoint: then every write fails with ENOSPC."""

        def __init__(self, f) -> None:
            self._f, self.written = f, 0

        def write(self, data) -> int:
            self.written += len(data)
            if self.written > len(good_bytes) // 2:
                raise OSError(code, os.strerror(code))
            return self._f.write(data)

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    monkeypatch.setattr(files_module, "open", lambda *a, **k: FullDisk(open(*a, **k)), raising=False)
    with pytest.raises(DiskFullError, match=rf"{words} while writing .*checkpoint-last.pth: .* keeps its previous"):
        save_checkpoint(small_state(1.0), path)
    monkeypatch.undo()
    assert path.read_bytes() == good_bytes
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint-last.pth"]  # no temporary file left
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.arange(6.0))


def test_a_flipped_byte_or_non_finite_weights_are_refused_at_load(tmp_path) -> None:
    path = tmp_path / "c.pth"
    save_checkpoint({"model": {"w": torch.arange(1000.0)}, "epoch": 1}, path)
    data = bytearray(path.read_bytes())
    offset = data.find(np.arange(1000.0, dtype=np.float32)[500:502].tobytes())
    assert offset > 0
    data[offset] ^= 0x01  # one bit of the tensor payload
    path.write_bytes(bytes(data))
    assert torch.load(path, weights_only=True)["epoch"] == 1  # torch itself reads it without noticing
    with pytest.raises(CheckpointError, match="corrupt: its tensor data does not match the checksum"):
        load_checkpoint(path)
    save_checkpoint({"model": {"w": torch.tensor([1.0, float("nan")])}, "epoch": 1}, path)
    with pytest.raises(CheckpointError, match="non-finite weights"):
        load_checkpoint(path)
    torch.save({"model": {"w": torch.zeros(2)}, "arch": "siammae_tiny"}, path)  # the format before version 2
    with pytest.raises(CheckpointError, match="not a training checkpoint of this project"):
        load_checkpoint(path)
    truncated = tmp_path / "t.pth"
    save_checkpoint(small_state(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="could not read"):
        load_checkpoint(truncated)


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path) -> None:
    generator = torch.Generator().manual_seed(5)
    loader = torch.utils.data.DataLoader(list(range(8)), batch_size=2, shuffle=True, generator=generator)
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    save_checkpoint({"rng": capture_rng_state(loader), "model": {}}, tmp_path / "c.pth")

    def draw():
        return (torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.standard_normal(),
                [random.random() for _ in range(3)], random.gauss(0, 1), [b.tolist() for b in loader])

    first = draw()
    restore_rng_state(load_checkpoint(tmp_path / "c.pth")["rng"], loader)
    assert draw() == first
