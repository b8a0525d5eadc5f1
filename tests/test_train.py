"""Training: schedule, parameter groups, the checkpoint format, exact resume, the run folder's guarantees.

The end-to-end tests train the real `siammae_tiny` model on the real loader over dataset/sample
(the `quick` preset: 64x64 crops, 4 pairs per batch; an epoch reads 4 of the 8 videos, 2 iterations).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import math
import os
import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

from mae.pretrained import CheckpointError
from ml import files as files_module
from ml.files import DiskFullError
from ml.training.build import build_model, make_test_loader, make_train_loader
from ml.training.checkpoint import load_checkpoint, prepare_model, save_checkpoint
from ml.training.cli import main
from ml.training.config import TrainConfig
from ml.training.engine import evaluate_loss, resolve_precision, train_one_epoch
from ml.training.optim import make_optimizer, make_scheduler, warmup_cosine_lr
from ml.training.options import parse_field_value
from ml.training.presets import PRESETS, get_preset
from ml.training.pretrain import DivergedError, train
from ml.training.rng import capture_rng_state, restore_rng_state
from ml.training.run import Run
from ml.utils import train as seed_train
from tests.conftest import SAMPLE_DIR, log_rows

CPU = torch.device("cpu")


def quick_config(tmp_path, **overrides) -> TrainConfig:
    return get_preset("quick", data=str(SAMPLE_DIR), output_dir=str(tmp_path), device="cpu", **overrides)


def file_digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def folder_state(run: Run) -> dict[str, str]:
    """Digest of every file of a run (checkpoints and logs)."""
    files = sorted(run.checkpoint_dir.glob("*.pth")) + [run.losses, run.test_losses]
    return {p.name: file_digest(p) for p in files if p.is_file()}


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


def test_a_full_disk_mid_write_says_so_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch) -> None:
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
                raise OSError(errno.ENOSPC, "No space left on device")
            return self._f.write(data)

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    monkeypatch.setattr(files_module, "open", lambda *a, **k: FullDisk(open(*a, **k)), raising=False)
    with pytest.raises(DiskFullError, match=r"disk full while writing .*checkpoint-last.pth: .* keeps its previous"):
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


# ---------------------------------------------------------------- end to end on dataset/sample
def test_resumed_run_reproduces_every_loss_exactly(tmp_path) -> None:
    straight = quick_config(tmp_path / "straight", epochs=3, num_epochs_per_save=2)
    train(straight, progress=False)
    interrupted = quick_config(tmp_path / "resumed", epochs=3, num_epochs_per_save=2)
    train(interrupted, stop_after_epoch=1, progress=False)
    run = Run.of(interrupted)
    assert sorted(p.name for p in run.checkpoint_dir.glob("*.pth")) == ["checkpoint-last.pth"]
    # the process dies during epoch 2: lines of it reach the log, a last one cut short
    with open(run.losses, "a") as log:
        log.write("2 2 0.001 1.5\n2 3 0.0")
    torch.manual_seed(123)  # another initialisation: everything comes from the checkpoint
    # resumed with normalised float batches instead of 8-bit ones normalised by the engine: the same numbers
    assert interrupted.uint8_batches
    train(dataclasses.replace(interrupted, uint8_batches=False), resume="auto", progress=False)

    for log in ("losses/quick.txt", "test_losses/quick.txt"):
        a = (tmp_path / "straight" / log).read_text()
        b = (tmp_path / "resumed" / log).read_text()
        assert a == b, log  # every loss, bit for bit, and no line twice
    rows = log_rows(tmp_path / "straight" / "losses" / "quick.txt")
    assert [int(r[1]) for r in rows] == list(range(6)) and [int(r[0]) for r in rows] == [1, 1, 2, 2, 3, 3]
    assert len(log_rows(tmp_path / "straight" / "test_losses" / "quick.txt")) == 3

    # learning rate per iteration against the formula: warm-up of 1 epoch = 2 steps, then cosine to 0
    lrs = [r[2] for r in rows]
    peak = straight.lr
    assert lrs[0] == pytest.approx(peak / 2) and lrs[1] == pytest.approx(peak)
    assert lrs[2:] == pytest.approx([peak * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in (1, 2, 3, 4)])

    a = load_checkpoint(Run.of(straight).last_checkpoint)
    b = load_checkpoint(run.last_checkpoint)
    assert a["epoch"] == b["epoch"] == 3 and a["step"] == b["step"] == 6
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert {"model", "model_args", "config", "optimizer", "scaler", "rng", "log_lines", "payload_crc32"} <= set(b)
    assert "arch" not in b and "model_kwargs" not in b  # the model's configuration is stored once: model_args
    assert b["config"]["lr"] == peak and b["log_lines"] == {"train": 6, "test": 3}
    assert sorted(p.name for p in run.checkpoint_dir.glob("*.pth")) == ["checkpoint-2.pth", "checkpoint-3.pth",
                                                                         "checkpoint-last.pth"]
    model = prepare_model(run.checkpoint(3))  # the evaluation's loader reads what training wrote
    assert model.img_size == 64 and all(torch.equal(v, b["model"][k]) for k, v in model.state_dict().items())


def test_print_every_thins_the_printed_lines_not_the_logs(tmp_path, capsys) -> None:
    cfg = quick_config(tmp_path, epochs=5, print_every=3)
    train(cfg, stop_after_epoch=4, progress=False)
    train(cfg, resume="auto", progress=False)
    printed = [line.split(":")[0] for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert printed == ["epoch 1/5", "epoch 3/5", "epoch 4/5", "epoch 5/5"]  # first, every 3rd, last of each call
    assert [r[0] for r in log_rows(tmp_path / "test_losses" / "quick.txt")] == [1, 2, 3, 4, 5]


def test_nan_loss_stops_with_the_step_and_keeps_the_checkpoint(tmp_path) -> None:
    cfg = quick_config(tmp_path, epochs=3)
    model = train(cfg, stop_after_epoch=1, progress=False)
    run = Run.of(cfg)
    before = folder_state(run)
    calls = {"n": 0}

    def poison(module, inputs, output):  # failure injection: the 2nd training forward of epoch 2 gives NaN
        if module.training:
            calls["n"] += 1
            if calls["n"] == 2:
                return output * float("nan")
        return output

    model.decoder.register_forward_hook(poison)
    with pytest.raises(DivergedError, match=r"loss is nan at epoch 2, iteration 1 .*newest checkpoint with a finite "
                                            r"state is .*checkpoint-last.pth \(epoch 1\)"):
        train(cfg, model=model, resume="auto", progress=False)
    assert folder_state(run) == before  # not a byte of the run folder changed
    assert not run.checkpoint(2).exists()


def test_a_diverged_state_is_never_saved(tmp_path) -> None:
    """Resumed at a learning rate of 1e6 from a good checkpoint: the held-out loss (or the training loss) turns
    non-finite, and the diverged state is not written; the message names the newest finite checkpoint."""
    cfg = quick_config(tmp_path, epochs=4, num_epochs_per_save=1)
    train(cfg, stop_after_epoch=1, progress=False)
    run = Run.of(cfg)
    before = folder_state(run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "resuming with other settings: lr"
        with pytest.raises(DivergedError, match=r"newest checkpoint with a finite state is .*checkpoint-(1|last).pth "
                                                r"\(epoch 1\): resume from it with a lower learning rate"):
            train(cfg.replace(lr=1e6, min_lr=0.0), resume=run.last_checkpoint, progress=False)
    assert folder_state(run) == before
    fresh = quick_config(tmp_path / "fresh", epochs=2)
    with pytest.raises(DivergedError, match="no checkpoint of this run with a finite state yet"):
        train(fresh.replace(lr=1e6), progress=False)
    assert Run.of(fresh).latest_checkpoint() is None


def test_rewinding_keeps_the_old_history_until_the_first_new_save(tmp_path) -> None:
    cfg = quick_config(tmp_path, epochs=4, num_epochs_per_save=1)
    model = train(cfg, progress=False)
    run = Run.of(cfg)
    finished = folder_state(run)
    old_train, old_test = run.losses.read_text(), run.test_losses.read_text()
    # a rewind to epoch 2 that fails before its first save (here: a NaN in its first iteration)
    model.decoder.register_forward_hook(lambda m, i, o: o * float("nan") if m.training else o)
    with pytest.raises(DivergedError):
        train(cfg, model=model, resume=run.checkpoint(2), progress=False)
    assert folder_state(run) == finished  # every log line and every later checkpoint is still there

    # the same rewind, completed: the later history is moved aside, the logs continue epoch 2's
    train(cfg, resume=run.checkpoint(2), stop_after_epoch=3, progress=False)
    moved = sorted(run.checkpoint_dir.glob("superseded-*"))
    assert len(moved) == 1
    assert sorted(p.name for p in moved[0].iterdir()) == ["checkpoint-3.pth", "checkpoint-4.pth",
                                                          "checkpoint-last.pth", "losses-quick.txt",
                                                          "test_losses-quick.txt"]
    assert (moved[0] / "losses-quick.txt").read_text().startswith(old_train)
    assert file_digest(moved[0] / "checkpoint-4.pth") == finished["checkpoint-4.pth"]
    rows = log_rows(run.losses)
    assert [int(r[1]) for r in rows] == list(range(6))  # epochs 1-2 kept, epoch 3 written again
    assert old_train.splitlines()[:5] == run.losses.read_text().splitlines()[:5]
    assert old_test.splitlines()[:3] == run.test_losses.read_text().splitlines()[:3]
    assert load_checkpoint(run.latest_checkpoint())["epoch"] == 3
    train(cfg, resume="auto", progress=False)  # and the rewound run goes on to the end
    assert [int(r[1]) for r in log_rows(run.losses)] == list(range(8))


def test_loss_falls_on_the_sample_videos(tmp_path) -> None:
    cfg = quick_config(tmp_path, epochs=6, warmup_epochs=1, lr=2e-3, test_split="train", num_epochs_per_save=100)
    torch.manual_seed(0)
    model = build_model(cfg)
    held_out = make_test_loader(cfg)  # fixed pairs and masks: comparable before and after
    before = evaluate_loss(model, held_out, CPU)
    assert evaluate_loss(model, held_out, CPU) == before  # fixed indeed
    train(cfg, model=model, test_loader=None, progress=False)
    after = evaluate_loss(model, held_out, CPU)
    losses = [r[3] for r in log_rows(tmp_path / "losses" / "quick.txt")]
    assert len(losses) == 12
    assert after < 0.85 * before, (before, after)  # about 1.30 -> 0.97 (no change at lr 1e-6)
    assert np.mean(losses[-6:]) < 0.9 * np.mean(losses[:4]), losses


def test_train_with_the_notebook_signature_alone(tmp_path) -> None:
    """The seed's `train(model, data_loader, epochs, prefix, num_epochs_per_save, device)`: the paper's recipe."""
    cfg = quick_config(tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seed_train(model, make_train_loader(cfg), 1, "bare", 1, output_dir=tmp_path, progress=False)  # device: cuda
    assert any("no CUDA GPU" in str(w.message) for w in caught) != torch.cuda.is_available()
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "bare" / "checkpoint-1.pth")
    stored = TrainConfig.from_dict(ckpt["config"])
    assert (stored.batch_size, stored.repeated_sampling, stored.img_size) == (4, 2, 64)
    assert stored.arch == "siammae_tiny" and ckpt["model_args"]["img_size"] == 64
    assert stored.lr == pytest.approx(1.5e-4 * 4 / 256) and stored.weight_decay == 0.05
    assert len(log_rows(tmp_path / "losses" / "bare.txt")) == 2
    with pytest.raises(ValueError, match="batch_size: the data loader gives 4 pairs per batch"):
        train(cfg.replace(batch_size=8), model=model, train_loader=make_train_loader(cfg), progress=False)


# ---------------------------------------------------------------- command line
def run_main(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main([*argv, "--no-progress"])
    except SystemExit as err:
        code = err.code
    return code, capsys.readouterr().err


def test_cli_help_and_bad_input(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--preset", "--data", "--epochs", "--output", "--resume", "--batch-size", "--dist-timeout",
                   "--save-every", "--weight-decay", "frame pairs per process per iteration"):
        assert option in help_text, option

    out = tmp_path / "out"
    quick = ["--preset", "quick", "--data", str(SAMPLE_DIR), "--output", str(out), "--epochs", "1", "--device", "cpu"]
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o500)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    cases = [
        (["--preset", "nope"], "invalid choice: 'nope'", 2),
        ([*quick, "--data", str(tmp_path / "missing")], "data: ", 1),
        ([*quick, "--batch-size", "20"], "an epoch reads 4 (the 8 videos", 1),
        ([*quick, "--set", "warmup_epochs=5"], "warmup_epochs must be in [0, epochs=1]", 2),
        ([*quick, "--set", "img_size='abc'"], "img_size must be an integer, got \"'abc'\"", 2),
        ([*quick, "--set", "epochs=1.5"], "epochs must be an integer", 2),
        ([*quick, "--lr", "inf"], "lr must be a finite number or None", 2),
        ([*quick, "--blr", "inf"], "blr must be a finite number", 2),
        ([*quick, "--weight-decay", "inf"], "weight_decay must be a finite number", 2),
        ([*quick, "--stop-after-epoch", "0"], "--stop-after-epoch must be >= 1", 2),
        ([*quick, "--device", "tpu"], "device 'tpu'", 2),
        ([*quick, "--output", str(a_file)], "is a file, not a folder", 1),
    ]
    if not torch.cuda.is_available():
        cases.append(([*quick, "--device", "cuda"], "device cuda was asked for", 1))
    if hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() != 0:  # root writes anywhere
        cases.append(([*quick, "--output", str(read_only / "x")], "not writable", 1))
    for argv, pattern, code in cases:
        result, err = run_main(argv, capsys)
        assert result == code, (argv, err)
        assert pattern in err, (argv, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err  # a message, not a traceback
    assert not out.exists()  # refused before any work

    assert run_main(quick, capsys)[0] == 0
    assert len(log_rows(out / "losses" / "quick.txt")) == 2
    code, err = run_main(quick, capsys)
    assert code == 1 and "already holds this run's checkpoints" in err
    code, err = run_main([*quick, "--lr", "0.01"], capsys)
    assert code == 1 and "lr: 0.001 -> 0.01" in err
    code, err = run_main([*quick, "--lr", "0.01", "--resume", "auto"], capsys)
    assert code == 1 and "different run" in err
    digest = file_digest(out / "checkpoints" / "quick" / "checkpoint-last.pth")
    assert run_main([*quick, "--resume", "auto"], capsys)[0] == 0
    assert file_digest(out / "checkpoints" / "quick" / "checkpoint-last.pth") == digest  # done already


def test_a_data_folder_without_a_readable_video_is_refused_before_any_file(tmp_path, capsys) -> None:
    data = tmp_path / "broken" / "train" / "some_class"
    data.mkdir(parents=True)
    for i, content in enumerate((b"", b"not a video at all", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)):
        (data / f"clip{i}.mp4").write_bytes(content)
    out = tmp_path / "out"
    code, err = run_main(["--preset", "quick", "--data", str(tmp_path / "broken"), "--output", str(out),
                          "--batch-size", "2", "--set", "test_split=None", "--device", "cpu"], capsys)
    assert code == 1, err
    assert "none of the 3 videos of split 'train'" in err and "clip0.mp4" in err and "clip1.mp4" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_no_due_numbered_checkpoint_is_lost_whatever_write_a_death_interrupts(tmp_path, monkeypatch) -> None:
    """The process dies at each file operation of a due epoch's save in turn (checkpoint-<N>.pth and
    checkpoint-last.pth); every time, resuming ends with checkpoint-<N>.pth present and the run complete."""

    class Died(BaseException):
        """The process ends here (nothing after this write happens)."""

    real = {"save": torch.save, "replace": os.replace, "link": os.link}
    for k in range(1, 8):
        cfg = quick_config(tmp_path / f"death{k}", epochs=2, num_epochs_per_save=2)  # epoch 2: numbered and last
        run = Run.of(cfg)
        train(cfg, stop_after_epoch=1, progress=False)
        events = []

        def dying(name, events=events, k=k):
            def call(*args, **kwargs):
                events.append(name)
                if len(events) == k:
                    raise Died(name)
                return real[name](*args, **kwargs)
            return call

        monkeypatch.setattr(torch, "save", dying("save"))
        monkeypatch.setattr(os, "replace", dying("replace"))
        monkeypatch.setattr(os, "link", dying("link"))
        try:
            train(cfg, resume="auto", progress=False)
            finished = True
        except Died:
            finished = False
        monkeypatch.undo()
        train(cfg, resume="auto", progress=False)
        assert run.checkpoint(2).is_file(), (k, events)
        assert load_checkpoint(run.latest_checkpoint())["epoch"] == 2
        assert [int(r[1]) for r in log_rows(run.losses)] == [0, 1, 2, 3], (k, events)
        if finished:  # k is past the last file operation of the save
            break
    assert k >= 4
