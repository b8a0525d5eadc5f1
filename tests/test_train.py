"""Training: schedule, parameter groups, checkpoints, exact resume, NaN stop, loss falls, command line.

The end-to-end tests train the real `siammae_tiny` model on the real loader over dataset/sample
(the `quick` preset: 64x64 crops, 4 pairs per batch, 2 iterations per epoch).
"""

from __future__ import annotations

import hashlib
import math
import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

from mae.pretrained import CheckpointError
from ml.checkpoint import (
    capture_rng_state,
    find_latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from ml.config import PRESETS, TrainConfig, get_preset
from ml.optim import WarmupCosineSchedule, make_optimizer, param_groups_weight_decay
from ml.SiamMAE import prepare_model
from ml.train import (
    build_model,
    evaluate_loss,
    main,
    make_test_loader,
    make_train_loader,
    resolve_precision,
    train,
    train_one_epoch,
)
from tests.conftest import SAMPLE_DIR, log_rows

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model's ops are too small to gain from two threads, and on shared cores two spin-wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def quick_config(tmp_path, **overrides) -> TrainConfig:
    return get_preset("quick", data=str(SAMPLE_DIR), output_dir=str(tmp_path), **overrides)


def run(cfg: TrainConfig, seed: int = 0, **kwargs) -> nn.Module:
    """Build the config's model (init seeded by `seed`) and loader, and train it."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    train(model, make_train_loader(cfg), cfg.epochs, cfg.prefix, cfg.num_epochs_per_save, CPU, config=cfg,
          progress=False, **kwargs)
    return model


def file_digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- schedule and learning rate
def test_schedule_warmup_then_half_cosine() -> None:
    peak, floor, total, warm = 1e-3, 1e-5, 100, 10
    opt = torch.optim.AdamW(nn.Linear(2, 2).parameters(), lr=1.0)
    sched = WarmupCosineSchedule(opt, peak, total_steps=total, warmup_steps=warm, min_lr=floor)
    lrs = []
    for _ in range(total):
        lrs.append(sched.set_lr())
        assert opt.param_groups[0]["lr"] == lrs[-1]  # written into the optimiser before the step
        sched.step()
    assert lrs[0] == pytest.approx(peak / warm) and lrs[0] < peak  # the first step is not at the peak
    assert lrs[warm - 1] == pytest.approx(peak)  # end of warm-up
    assert lrs[-1] == pytest.approx(floor)  # last step
    mid = warm + (total - warm) // 2 - 1  # half-way down the cosine
    assert lrs[mid] == pytest.approx((peak + floor) / 2)
    assert all(a < b for a, b in zip(lrs[:warm - 1], lrs[1:warm]))
    assert all(a >= b for a, b in zip(lrs[warm - 1:-1], lrs[warm:]))

    resumed = WarmupCosineSchedule(opt, 0.5, total_steps=7)
    sched2 = WarmupCosineSchedule(opt, peak, total_steps=total, warmup_steps=warm, min_lr=floor)
    for _ in range(37):
        sched2.step()
    resumed.load_state_dict(sched2.state_dict())
    assert resumed.set_lr() == sched2.set_lr() == pytest.approx(lrs[37])


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


def test_no_weight_decay_on_biases_norms_embeddings_tokens() -> None:
    net = TokenNet()
    groups = {g["name"]: g for g in param_groups_weight_decay(net, 0.05)}
    names = {id(p): n for n, p in net.named_parameters()}
    assert sorted(names[id(p)] for p in groups["decay"]["params"]) == ["conv.weight", "proj.weight"]
    assert sorted(names[id(p)] for p in groups["no_decay"]["params"]) == [
        "cls_token", "conv.bias", "mask_token", "norm.bias", "norm.weight", "pos_embed", "proj.bias"]
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["decay"]["weight_decay"] == 0.05

    # what AdamW does with zero gradients: only the decayed weights shrink, by exactly (1 - lr * wd)
    lr, wd = 0.1, 0.5
    opt = make_optimizer(net, lr=lr, weight_decay=wd)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in net.named_parameters():
        expected = before[n] * (1 - lr * wd) if n in ("conv.weight", "proj.weight") else before[n]
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-7)


def test_siammae_groups_exclude_every_bias_norm_and_token() -> None:
    model = build_model(get_preset("quick"))
    groups = {g["name"]: {id(p) for p in g["params"]} for g in param_groups_weight_decay(model, 0.05)}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert "pos_embed" in name and id(p) not in groups["decay"] | groups["no_decay"]
        elif p.ndim == 1 or name.endswith(("cls_token", "mask_token")):
            assert id(p) in groups["no_decay"], name
        else:
            assert id(p) in groups["decay"], name
    assert any(n.endswith("decoder.mask_token") for n, _ in model.named_parameters())


# ---------------------------------------------------------------- the loop of one epoch
class PairRegressor(nn.Module):
    """A deterministic model with SiamMAE's call signature (no random masks), for the loop's arithmetic."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, f1, f2, mask_ratio=None):
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
        sched = WarmupCosineSchedule(opt, 0.1, total_steps=2, warmup_steps=1)
        losses = train_one_epoch(batches, opt, sched, CPU, model, accum_iter=accum, progress=False)
        runs.append((losses, sched.step_count))
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
def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch) -> None:
    path = tmp_path / "run" / "checkpoint-last.pth"
    good = {"model": {"w": torch.arange(6.0)}, "epoch": 3, "config": {"lr": 1e-3, "betas": (0.9, 0.95)}}
    save_checkpoint(good, path)
    good_bytes = path.read_bytes()
    real_save = torch.save

    def fail_midway(obj, f, *args, **kwargs):  # a full disk: half of the bytes reach the file, then an error
        real_save(obj, f, *args, **kwargs)
        f.seek(len(good_bytes) // 2)
        f.truncate()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", fail_midway)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint({"model": {"w": torch.zeros(6)}, "epoch": 4}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == good_bytes
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint-last.pth"]  # no temporary file left
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["epoch"] == 3 and torch.equal(ckpt["model"]["w"], torch.arange(6.0))

    # a truncated file (a crash of a writer that did not rename) is refused clearly, and passed over
    (path.parent / "checkpoint-2.pth").write_bytes(good_bytes)
    path.write_bytes(good_bytes[: len(good_bytes) // 2])
    with pytest.raises(CheckpointError, match="could not read"):
        load_checkpoint(path)
    assert find_latest_checkpoint(path.parent) == path.parent / "checkpoint-2.pth"


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path) -> None:
    generator = torch.Generator().manual_seed(5)
    loader = torch.utils.data.DataLoader(list(range(8)), batch_size=2, shuffle=True, generator=generator)
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    save_checkpoint({"rng": capture_rng_state(loader)}, tmp_path / "c.pth")

    def draw():
        return (torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.standard_normal(),
                [random.random() for _ in range(3)], random.gauss(0, 1), [b.tolist() for b in loader])

    first = draw()
    restore_rng_state(torch.load(tmp_path / "c.pth", weights_only=True)["rng"], loader)
    assert draw() == first


# ---------------------------------------------------------------- end to end on dataset/sample
def test_resumed_run_reproduces_every_loss_exactly(tmp_path) -> None:
    straight = quick_config(tmp_path / "straight", epochs=3, num_epochs_per_save=2)
    run(straight)
    interrupted = quick_config(tmp_path / "resumed", epochs=3, num_epochs_per_save=2)
    run(interrupted, stop_after_epoch=1)
    folder = tmp_path / "resumed" / "checkpoints" / "quick"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-last.pth"]
    # the process dies during epoch 2: lines of it reach the log, a last one cut short
    with open(tmp_path / "resumed" / "losses" / "quick.txt", "a") as log:
        log.write("2 2 0.001 1.5\n2 3 0.0")
    run(interrupted, seed=123, resume="auto")  # another initialisation: everything comes from the checkpoint

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

    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "quick" / "checkpoint-last.pth")
    b = torch.load(folder / "checkpoint-last.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3 and a["step"] == b["step"] == 6
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert {"model", "arch", "model_kwargs", "config", "optimizer", "scheduler", "scaler", "rng"} <= set(b)
    assert b["config"]["lr"] == peak and b["arch"] == "siammae_tiny"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-2.pth", "checkpoint-3.pth",
                                                        "checkpoint-last.pth"]
    model = prepare_model(folder / "checkpoint-3.pth")  # the evaluation's loader reads what training wrote
    assert model.img_size == 64 and all(torch.equal(v, b["model"][k]) for k, v in model.state_dict().items())


def test_nan_loss_stops_with_the_step_and_keeps_the_checkpoint(tmp_path) -> None:
    cfg = quick_config(tmp_path, epochs=3)
    model = run(cfg, stop_after_epoch=1)
    last = tmp_path / "checkpoints" / "quick" / "checkpoint-last.pth"
    digest = file_digest(last)
    calls = {"n": 0}

    def poison(module, inputs, output):  # failure injection: the 2nd training forward of epoch 2 gives NaN
        if module.training:
            calls["n"] += 1
            if calls["n"] == 2:
                return output * float("nan")
        return output

    model.decoder.register_forward_hook(poison)
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 2, iteration 1 .*checkpoint-last.pth"):
        train(model, make_train_loader(cfg), 3, "quick", 1, CPU, config=cfg, resume="auto", progress=False)
    assert file_digest(last) == digest
    assert torch.load(last, weights_only=True)["epoch"] == 1
    assert not (tmp_path / "checkpoints" / "quick" / "checkpoint-2.pth").exists()


def test_loss_falls_on_the_sample_videos(tmp_path) -> None:
    cfg = quick_config(tmp_path, epochs=6, warmup_epochs=1, lr=2e-3, test_split="train", num_epochs_per_save=100)
    torch.manual_seed(0)
    model = build_model(cfg)
    held_out = make_test_loader(cfg)  # fixed pairs and masks: comparable before and after
    before = evaluate_loss(model, held_out, CPU)
    assert evaluate_loss(model, held_out, CPU) == before  # fixed indeed
    train(model, make_train_loader(cfg), cfg.epochs, cfg.prefix, cfg.num_epochs_per_save, CPU, config=cfg,
          test_loader=None, progress=False)
    after = evaluate_loss(model, held_out, CPU)
    losses = [r[3] for r in log_rows(tmp_path / "losses" / "quick.txt")]
    assert len(losses) == 12
    assert after < 0.85 * before, (before, after)  # about 1.30 -> 0.97 (no change at lr 1e-6)
    assert np.mean(losses[-6:]) < 0.9 * np.mean(losses[:4]), losses


def test_train_with_the_notebook_signature_alone(tmp_path) -> None:
    """`train(model, data_loader, epochs, prefix, num_epochs_per_save, device)` without a config: the paper's recipe."""
    cfg = quick_config(tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(model, make_train_loader(cfg), 1, "bare", 1, output_dir=tmp_path, progress=False)  # device: cuda
    assert any("no CUDA GPU" in str(w.message) for w in caught) != torch.cuda.is_available()
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "bare" / "checkpoint-1.pth")
    stored = TrainConfig.from_dict(ckpt["config"])
    assert (stored.batch_size, stored.repeated_sampling, stored.img_size) == (4, 2, 64)  # read from loader, model
    assert stored.lr == pytest.approx(1.5e-4 * 4 / 256) and stored.weight_decay == 0.05
    assert ckpt["arch"] == "siammae_tiny" and ckpt["model_kwargs"]["img_size"] == 64
    assert len(log_rows(tmp_path / "losses" / "bare.txt")) == 2


# ---------------------------------------------------------------- command line
def test_cli_help_and_bad_input(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--preset", "--data", "--epochs", "--output", "--resume", "--batch-size"):
        assert option in help_text

    def fails(argv: list[str], pattern: str, code: int) -> None:
        try:
            result = main([*argv, "--no-progress"])
        except SystemExit as err:
            result = err.code
        assert result == code, argv
        assert pattern in capsys.readouterr().err, argv

    fails(["--preset", "nope"], "invalid choice: 'nope'", 2)
    fails(["--preset", "quick", "--data", str(tmp_path / "missing")], "does not exist", 2)
    quick = ["--preset", "quick", "--data", str(SAMPLE_DIR), "--output", str(tmp_path / "out"), "--epochs", "1"]
    fails([*quick, "--batch-size", "12"], "holds 5", 1)
    fails([*quick, "--set", "warmup_epochs=5"], "warmup_epochs must be in [0, epochs=1]", 2)
    assert not (tmp_path / "out").exists()  # refused before any work

    assert main([*quick, "--no-progress"]) == 0
    assert len(log_rows(tmp_path / "out" / "losses" / "quick.txt")) == 2
    fails(quick, "already holds this run's checkpoints", 1)
    fails([*quick, "--lr", "0.01"], "lr: 0.001 -> 0.01", 1)
    fails([*quick, "--lr", "0.01", "--resume", "auto"], "different run", 1)
    digest = file_digest(tmp_path / "out" / "checkpoints" / "quick" / "checkpoint-last.pth")
    assert main([*quick, "--resume", "auto", "--no-progress"]) == 0
    assert file_digest(tmp_path / "out" / "checkpoints" / "quick" / "checkpoint-last.pth") == digest  # done already
