"""Training: schedule, parameter groups, the checkpoint format, exact resume, the run folder's guarantees.

The end-to-end tests train the real `siammae_tiny` model on the real loader over dataset/sample
(the `quick` preset: 64x64 crops, 4 pairs per batch; an epoch reads 4 of the 8 videos, 2 iterations).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import shutil
import warnings

import numpy as np
import pytest
import torch

from mae.pretrained import CheckpointError
from ml.training.build import build_model, make_test_loader, make_train_loader
from ml.training.checkpoint import load_checkpoint, prepare_model
from ml.training.cli import main
from ml.training.config import TrainConfig
from ml.training.engine import evaluate_loss
from ml.training.presets import get_preset
from ml.training.pretrain import DivergedError, train
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


def test_a_damaged_newest_checkpoint_is_skipped_for_the_newest_good_one(tmp_path) -> None:
    """checkpoint-last.pth is a hard link of checkpoint-2.pth: one damaged block spoils both names. Resuming and
    loading the run fall back to checkpoint-1.pth, say so, and the resumed run ends as an undisturbed one."""
    config = quick_config(tmp_path, num_epochs_per_save=1)
    train(config, test_loader=None, progress=False)
    run = Run.of(config)
    undisturbed = run.losses.read_bytes()
    damaged = run.checkpoint(2)
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"checkpoint-1.pth passes its checks"):
        train(config, test_loader=None, progress=False, resume=damaged)
    with pytest.warns(UserWarning, match=r"skipped checkpoint\(s\) .*checkpoint-last.pth.*using .*checkpoint-1.pth"):
        model = prepare_model(run.checkpoint_dir)
    assert torch.equal(model.state_dict()["encoder.cls_token"], load_checkpoint(run.checkpoint(1))["model"][
        "encoder.cls_token"])
    with pytest.warns(UserWarning, match=r"skipped checkpoint\(s\) .*checkpoint-2.pth.*using .*checkpoint-1.pth"):
        train(config, test_loader=None, progress=False, resume="auto")
    assert run.losses.read_bytes() == undisturbed
    assert load_checkpoint(run.last_checkpoint)["epoch"] == 2


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


@pytest.mark.parametrize("where", ["losses/quick.txt", "test_losses/quick.txt", "checkpoints/quick/checkpoint-last.pth",
                                   "checkpoints/quick/.lock"])
def test_a_folder_where_the_run_writes_a_file_is_refused_before_any_work(tmp_path, capsys, where) -> None:
    (tmp_path / where).mkdir(parents=True)
    code, err = run_main(["--preset", "quick", "--data", str(SAMPLE_DIR), "--output", str(tmp_path), "--device",
                          "cpu"], capsys)
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"{tmp_path / where} is a folder where the run writes a file" in err
    assert not list((tmp_path / "checkpoints").rglob("*.pth*")) or where.endswith(".pth")  # no epoch was run
    assert not (tmp_path / "losses" / "quick.txt").is_file()


def copy_of_sample(dst, train_videos: int | None = None):
    """dataset/sample copied to `dst`: all of it, or its held-out split and the first `train_videos` training videos."""
    shutil.copytree(SAMPLE_DIR, dst, ignore=shutil.ignore_patterns("*.md", "*.txt"))
    if train_videos is not None:
        for video in sorted((dst / "train").glob("*/*.mp4"))[train_videos:]:
            video.unlink()
    return dst


def test_resuming_on_other_videos_is_refused_unless_asked_or_the_same_files_moved(tmp_path, capsys) -> None:
    def run(out, data, *extra):
        return run_main(["--preset", "quick", "--output", str(out), "--device", "cpu", "--data", str(data), *extra],
                        capsys)

    fewer = copy_of_sample(tmp_path / "fewer", train_videos=4)  # 4 of the 8 videos: 1 iteration per epoch, not 2
    assert run(tmp_path / "a", SAMPLE_DIR, "--stop-after-epoch", "1")[0] == 0
    code, err = run(tmp_path / "a", fewer, "--resume", "auto")
    assert code == 1 and len(err.strip().splitlines()) == 1 and f"data: {str(SAMPLE_DIR)!r} -> {str(fewer)!r}" in err
    assert "--allow-new-data" in err
    with pytest.warns(UserWarning, match=rf"other training videos, as asked .*{SAMPLE_DIR} -> {fewer}"):
        assert run(tmp_path / "a", fewer, "--resume", "auto", "--allow-new-data")[0] == 0
    steps = [int(row[1]) for row in log_rows(Run(tmp_path / "a", "quick").losses)]
    assert steps == [0, 1, 2]  # the global iteration: epoch 2 has 1 iteration now, numbered after epoch 1's two
    # the same files under another path: no flag needed, a warning names both, the run ends as if never moved
    moved = copy_of_sample(tmp_path / "moved")
    assert run(tmp_path / "b", SAMPLE_DIR, "--stop-after-epoch", "1")[0] == 0
    with pytest.warns(UserWarning, match=rf"training videos moved: {SAMPLE_DIR} -> {moved} \(the same files\)"):
        assert run(tmp_path / "b", moved, "--resume", "auto")[0] == 0
    assert run(tmp_path / "c", SAMPLE_DIR)[0] == 0
    assert Run(tmp_path / "b", "quick").losses.read_bytes() == Run(tmp_path / "c", "quick").losses.read_bytes()


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
