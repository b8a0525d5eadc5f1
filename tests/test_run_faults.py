"""The run folder under faults, with real processes: the lock, SIGTERM, and kill -9 at random moments and in saves.

Every test runs `python -m ml.train` on the `quick` preset in a subprocess, as a user or a job
scheduler would. Kills inside a save are placed by a `sitecustomize` module that the subprocess
loads (`SIAMMAE_KILL_AT`): it wraps `torch.save` or `os.replace` and sends SIGKILL to its own
process at the chosen call, so the process dies exactly there, half a file written.
"""

from __future__ import annotations

import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ml.training.checkpoint import load_checkpoint
from ml.training.run import Run
from tests.conftest import REPO, SAMPLE_DIR, wait_for

KILLER = '''
import os, signal
_plan = os.environ.get("SIAMMAE_KILL_AT", "")
if _plan:
    _kind, _n = _plan.split(":")
    _n, _calls = int(_n), [0]

    def _die():
        os.kill(os.getpid(), signal.SIGKILL)

    if _kind == "save":  # inside the n-th torch.save, after part of the file is written
        import torch
        _save = torch.save

        def _killing_save(obj, f, *args, **kwargs):
            _calls[0] += 1
            if _calls[0] == _n:
                f.write(b"PK" + b"\\0" * 4096)
                f.flush()
                _die()
            return _save(obj, f, *args, **kwargs)

        torch.save = _killing_save
    else:  # just before the n-th rename onto checkpoint-last.pth ("last") or onto a loss log ("log")
        _replace = os.replace
        _suffix = "checkpoint-last.pth" if _kind == "last" else ".txt"

        def _killing_replace(src, dst, *args, **kwargs):
            if str(dst).endswith(_suffix):
                _calls[0] += 1
                if _calls[0] == _n:
                    _die()
            return _replace(src, dst, *args, **kwargs)

        os.replace = _killing_replace
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("site")
    (folder / "sitecustomize.py").write_text(KILLER)
    return folder


def command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ml.train", "--preset", "quick", "--data", str(SAMPLE_DIR), "--output", str(out),
            "--device", "cpu", "--no-progress", *extra]


def environment(site: Path, kill_at: str = "") -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "OMP_NUM_THREADS": "1",
            "SIAMMAE_KILL_AT": kill_at}


def temp_files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob(".*.tmp"))


def test_a_second_start_on_a_live_run_is_refused_and_a_killed_run_leaves_no_stale_lock(tmp_path, site) -> None:
    out = tmp_path / "out"
    first = subprocess.Popen(command(out, "--epochs", "200"), cwd=REPO, env=environment(site),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run = Run(out, "quick")
        wait_for(lambda: run.losses.is_file() and len(run.losses.read_text().splitlines()) > 2)
        for extra in ((), ("--resume", "auto")):
            start = time.monotonic()
            second = subprocess.run(command(out, "--epochs", "200", *extra), cwd=REPO, env=environment(site),
                                    capture_output=True, text=True, timeout=60)
            assert second.returncode == 1, second.stderr
            assert f"is in use by process {first.pid}" in second.stderr, second.stderr
            assert "Traceback" not in second.stderr
            assert time.monotonic() - start < 30  # at once: no waiting for the lock
        first.kill()  # kill -9: the OS drops the lock with the process
        first.wait(timeout=30)
        third = subprocess.run(command(out, "--epochs", "2", "--resume", "auto"), cwd=REPO, env=environment(site),
                               capture_output=True, text=True, timeout=120)
        assert "in use by process" not in third.stderr
        assert third.returncode in (0, 1), third.stderr  # 1: the recipe differs (epochs) from the killed run's
    finally:
        if first.poll() is None:
            first.kill()


def test_sigterm_stops_at_a_step_boundary_with_a_valid_checkpoint_and_no_temporary_file(tmp_path, site) -> None:
    out = tmp_path / "out"
    run = Run(out, "quick")
    proc = subprocess.Popen(command(out, "--epochs", "200", "--save-every", "1"), cwd=REPO, env=environment(site),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: run.latest_checkpoint() is not None)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr
    assert "SIGTERM received: stopping after the current optimiser step" in stdout
    assert "stopped" in stderr and "resume" in stderr and "Traceback" not in stderr
    latest = run.latest_checkpoint()
    assert load_checkpoint(latest)["epoch"] >= 1  # whole and verified
    assert temp_files(out) == []


def test_kill_9_at_random_moments_and_inside_saves_loses_nothing(tmp_path, site) -> None:
    """A run killed again and again (at random moments, inside a checkpoint write, between checkpoint-<N> and
    checkpoint-last, inside the rewrite of a log), resumed with --resume auto each time, ends with every numbered
    checkpoint, no temporary file, and loss logs byte-identical to an undisturbed run."""
    recipe = ("--epochs", "12", "--save-every", "3")
    straight = tmp_path / "straight"
    done = subprocess.run(command(straight, *recipe), cwd=REPO, env=environment(site), capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr

    out = tmp_path / "killed"
    rng = random.Random(0)
    # save:N dies inside the N-th checkpoint write of that process, last:1 just before checkpoint-last.pth is
    # replaced (after checkpoint-<N>.pth was written), log:1 inside the rewrite of the logs that follows a crash
    # in a save; "time" at a random moment
    plan = ["save:1", "log:1", "time", "last:1", "save:2", "log:1", "time", "save:1"]
    killed = []
    for attempt in range(len(plan) + 3):
        kill_at = plan[attempt] if attempt < len(plan) else ""
        env = environment(site, "" if kill_at == "time" else kill_at)
        proc = subprocess.Popen(command(out, *recipe, "--resume", "auto"), cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if kill_at == "time":
            time.sleep(rng.uniform(2.0, 4.5))  # start-up takes about 3 s: anywhere from loading to saving
            proc.kill()
        _, stderr = proc.communicate(timeout=240)
        if proc.returncode == 0:
            assert attempt >= len(plan), f"finished before the plan's end ({killed})"
            break
        assert proc.returncode == -signal.SIGKILL, stderr  # died by our hand, not by an error
        killed.append(kill_at)
    else:
        raise AssertionError("the run never finished")
    assert killed == plan, killed

    run = Run(out, "quick")
    assert sorted(p.name for p in run.checkpoint_dir.glob("checkpoint-*.pth")) == [
        "checkpoint-12.pth", "checkpoint-3.pth", "checkpoint-6.pth", "checkpoint-9.pth", "checkpoint-last.pth"]
    assert temp_files(out) == []
    for log in ("losses/quick.txt", "test_losses/quick.txt"):
        assert (out / log).read_bytes() == (straight / log).read_bytes(), log
    for name in ("checkpoint-3.pth", "checkpoint-6.pth", "checkpoint-9.pth", "checkpoint-12.pth"):
        killed, calm = load_checkpoint(run.checkpoint_dir / name), load_checkpoint(straight / "checkpoints" /
                                                                                   "quick" / name)
        assert all((killed["model"][k] == calm["model"][k]).all() for k in calm["model"]), name


def test_a_second_sigterm_stops_at_once_with_one_line_and_exit_143(tmp_path, site) -> None:
    """The first SIGTERM asks for a stop at the step's end; a second one during that (slow) step stops at once."""
    out = tmp_path / "out"
    slow = ("--img-size", "224", "--batch-size", "8", "--epochs", "50")  # steps of a good fraction of a second
    proc = subprocess.Popen(command(out, *slow), cwd=REPO, env=environment(site), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: Run(out, "quick").latest_checkpoint() is not None, timeout=120)
        proc.send_signal(signal.SIGTERM)
        for line in proc.stdout:  # the handler has run: a second signal is now a second signal
            if "SIGTERM received" in line:
                break
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert "second SIGTERM" in stderr and "resume" in stderr
    assert load_checkpoint(Run(out, "quick").latest_checkpoint())["epoch"] >= 1
    assert temp_files(out) == []


def test_a_file_size_limit_below_a_checkpoint_is_refused_before_any_work(tmp_path, site) -> None:
    out = tmp_path / "out"
    limit = 2 << 20  # bytes: the logs would fit, a checkpoint of the tiny model (about 30 MB) does not

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(command(out, "--epochs", "2"), cwd=REPO, env=environment(site), capture_output=True,
                          text=True, timeout=120, preexec_fn=small_files)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"the file-size limit (ulimit -f) is {limit:,} bytes, below the" in done.stderr
    assert not list(out.rglob("*.pth")) and not list(out.rglob("*.txt"))  # refused before any work
