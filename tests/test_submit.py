"""`python -m ml.submit` through submitit's local executor: two training processes as one job, pre-empted in the
middle of an epoch, requeued by submitit, resumed from the run folder, with the losses of a run never stopped; and
bad options refused before anything is submitted."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from ml.submit import main as submit
from ml.training.launch import TrainingJob, make_executor, rendezvous_port
from tests.conftest import SAMPLE_DIR

RECIPE = ["--preset", "quick", "--data", str(SAMPLE_DIR), "--device", "cpu", "--epochs", "2", "--batch-size", "2",
          "--no-progress"]  # 2 processes x 2 iterations of 2 pairs per epoch


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (the job's tasks under submitit's local controller)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if parent == pid:
                found.append(int(entry))
    return found


def local_job(out: Path) -> object:
    executor = make_executor(out / "submitit", "local", tasks_per_node=2, timeout_min=10)
    return executor.submit(TrainingJob([*RECIPE, "--output", str(out)]))


def wait_for_line(log: Path, prefix: str, job: object, timeout: float = 120) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines() if log.is_file() else []
        if any(line.startswith(prefix) for line in lines):
            return lines
        assert not job.done(), f"the job ended before {log} had a line {prefix!r}"
        time.sleep(0.01)
    raise TimeoutError(f"no line {prefix!r} in {log} after {timeout} s")


def test_a_job_preempted_mid_epoch_requeues_and_ends_with_the_losses_of_an_uninterrupted_run(tmp_path: Path) -> None:
    plain = local_job(tmp_path / "plain")  # the run never stopped, alongside (its processes overlap the other's)
    interrupted = local_job(tmp_path / "interrupted")
    log = tmp_path / "interrupted" / "losses" / "quick.txt"
    seen = wait_for_line(log, "2 ", interrupted)  # the first iteration of epoch 2 is logged, the second is not
    tasks = children(interrupted._process.pid)
    assert len(tasks) == 2
    for task in tasks:  # what SLURM does on pre-emption: the signal to every task of the job
        os.kill(task, signal.SIGUSR2)
    assert interrupted.results() == [0, 0]
    out = interrupted.stdout()
    assert "Requeued job" in out and "resuming quick from" in out and "epoch 1 done" in out
    assert sum(line.startswith("2 ") for line in seen) == 1  # it was stopped inside epoch 2

    assert plain.results() == [0, 0] and "Requeued" not in plain.stdout()
    for name in ("losses", "test_losses"):
        ours = (tmp_path / "interrupted" / name / "quick.txt").read_text()
        assert ours == (tmp_path / "plain" / name / "quick.txt").read_text(), name
    assert len(log.read_text().splitlines()) == 1 + 2 * 2


@pytest.mark.parametrize("argv, message", [
    (["--executor", "local", "--nodes", "2"], "--nodes must be 1"),
    (["--executor", "cloud"], "--executor must be one of"),
    (["--timeout", "0"], "--timeout must be >= 1"),
    (["--slurm", "no_such_sbatch_option=1"], "not an sbatch option"),
    (["--nodez", "2"], "unrecognized arguments: --nodez 2"),
    (["--eval-every", "1", "--eval-davis", "/nonexistent/davis"], "no such folder"),
    (["--epochs", "0"], "epochs must be >= 1"),
    (["--executor", "local", "--tasks-per-node", "2", "--total-batch-size", "6"], "is not a multiple of batch_size"),
])
def test_bad_options_are_refused_before_anything_is_submitted(tmp_path: Path, capsys, argv: list[str],
                                                              message: str) -> None:
    code = submit([*RECIPE, "--output", str(tmp_path / "run"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_every_task_of_a_job_agrees_on_the_rendezvous_port() -> None:
    ports = {rendezvous_port(job) for job in ("4242", "4242")}
    assert len(ports) == 1 and 20000 <= ports.pop() < 40000
    assert rendezvous_port("4242") != rendezvous_port("4243")
