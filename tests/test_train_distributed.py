"""Two-process training on CPU (gloo): DistributedDataParallel keeps the ranks in step and only rank 0 writes.

Both tests use the real `siammae_tiny` model and the real loader over dataset/sample. Every process
records, with a Python audit hook, each file it opens for writing, renames or creates under the
run's output folder, so "only rank 0 writes" is observed rather than assumed.
"""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from ml.training.checkpoint import load_checkpoint
from tests.conftest import REPO, SAMPLE_DIR, free_port, log_rows

WORLD = 2
TIMEOUT_S = 240

def _record_writes(out_dir: str, report: list[str]) -> None:
    """Append to `report` every file opened for writing, renamed, removed or created under `out_dir`."""
    import os
    import sys

    out_dir = os.path.realpath(out_dir)

    def inside(path) -> bool:
        try:
            return os.path.realpath(os.fsdecode(path)).startswith(out_dir + os.sep)
        except (TypeError, ValueError):
            return False  # a file descriptor

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writing and inside(path):
                report.append(f"open {os.fsdecode(path)}")
        elif event in ("os.rename", "os.remove", "os.mkdir", "os.truncate", "os.link", "os.symlink"):
            if any(isinstance(a, (str, bytes, os.PathLike)) and inside(a) for a in args[:2]):
                report.append(f"{event} {args[0]}")

    sys.addaudithook(hook)




def _spawned_rank(rank: int, port: int, out_dir: str, report_dir: str) -> None:
    """One process of the run, with the variables torchrun would set."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    writes: list[str] = []
    _record_writes(out_dir, writes)
    from ml.training.build import build_model
    from ml.training.distributed import cleanup_distributed, init_distributed
    from ml.training.presets import get_preset
    from ml.training.pretrain import train

    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.distributed) == (rank, WORLD, True)
    cfg = get_preset("quick", data=str(SAMPLE_DIR), output_dir=out_dir, epochs=2, lr=None, blr=0.01, device="cpu")
    torch.manual_seed(100 + rank)  # different initial weights: DistributedDataParallel must start all from rank 0's
    model = build_model(cfg)
    train(cfg, model=model, progress=False)
    cleanup_distributed()
    torch.save({"writes": writes, "model": model.state_dict()}, Path(report_dir) / f"rank{rank}.pth")


def test_two_process_gloo_run_keeps_ranks_in_step_and_only_rank0_writes(tmp_path) -> None:
    out, reports = tmp_path / "out", tmp_path / "reports"
    reports.mkdir()
    context = mp.spawn(_spawned_rank, args=(free_port(), str(out), str(reports)), nprocs=WORLD, join=False)
    start = time.monotonic()
    while not context.join(timeout=5):
        if time.monotonic() - start > TIMEOUT_S:
            for p in context.processes:
                p.kill()
            raise AssertionError(f"the two-process run did not finish in {TIMEOUT_S} s")

    rank0 = torch.load(reports / "rank0.pth", weights_only=True)
    rank1 = torch.load(reports / "rank1.pth", weights_only=True)
    assert rank1["writes"] == []
    assert any("checkpoint-last.pth" in w for w in rank0["writes"]) and any("quick.txt" in w for w in rank0["writes"])

    ckpt = load_checkpoint(out / "checkpoints" / "quick" / "checkpoint-last.pth")
    for name, value in ckpt["model"].items():  # one model: the gradients were averaged over the ranks
        assert torch.equal(rank0["model"][name], value) and torch.equal(rank1["model"][name], value), name
    assert ckpt["world_size"] == WORLD and ckpt["epoch"] == 2
    assert ckpt["config"]["lr"] == 0.01 * (4 * WORLD) / 256  # blr x effective batch (4 pairs x 2 ranks) / 256
    assert len(ckpt["rng"]) == WORLD and not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])

    # an epoch reads 8 // 2 = 4 videos, two per rank -> one batch of 2 videos (4 pairs) per rank and epoch
    rows = log_rows(out / "losses" / "quick.txt")
    assert [(int(r[0]), int(r[1])) for r in rows] == [(1, 0), (2, 1)]
    assert len(log_rows(out / "test_losses" / "quick.txt")) == 2


def test_torchrun_command_line(tmp_path) -> None:
    """`torchrun --nproc_per_node=2 -m ml.train ...`, as the README has it, on CPU."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun comes with torch"
    site = tmp_path / "site"
    site.mkdir()
    out = tmp_path / "out"
    # every worker with a rank other than 0 logs its writes under the output folder to a file of its own
    (site / "sitecustomize.py").write_text(
        "import os\n" + inspect.getsource(_record_writes) + f"""
if os.environ.get("RANK", "0") != "0":
    import atexit
    _writes = []
    _record_writes({str(out)!r}, _writes)
    atexit.register(lambda: open({str(tmp_path)!r} + "/writes-rank" + os.environ["RANK"] + ".txt", "w").write(
        "\\n".join(_writes) + "\\n"))
"""
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "OMP_NUM_THREADS": "1"}
    cmd = [torchrun, "--nproc_per_node=2", "--master_port", str(free_port()), "-m", "ml.train", "--preset", "quick",
           "--data", str(SAMPLE_DIR), "--epochs", "1", "--output", str(out), "--no-progress"]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "writes-rank1.txt").read_text().strip() == ""
    assert [(int(r[0]), int(r[1])) for r in log_rows(out / "losses" / "quick.txt")] == [(1, 0)]
    ckpt = load_checkpoint(out / "checkpoints" / "quick" / "checkpoint-1.pth")
    assert ckpt["world_size"] == 2 and ckpt["config"]["batch_size"] == 4
    assert "2 process(es)" in result.stdout and result.stdout.count("epoch 1/1") == 1  # rank 0 alone prints


def _stalled_rank(rank: int, port: int, report_dir: str) -> None:
    """Rank 0 waits at a barrier that rank 1 never reaches (rank 1 hangs, as a stopped rank would)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from ml.training.distributed import barrier, init_distributed
    from ml.training.options import parse_field_value

    init_distributed("cpu", timeout_minutes=parse_field_value("dist_timeout_minutes", "0.05"))  # 3 s
    if rank == 1:
        time.sleep(60)
        return
    start = time.monotonic()
    try:
        barrier()
        outcome = "passed"
    except Exception as err:  # the collective's timeout
        outcome = f"{type(err).__name__}: {err}"
    Path(report_dir, "rank0.txt").write_text(f"{time.monotonic() - start:.1f}\n{outcome}")


def test_dist_timeout_bounds_the_wait_for_a_stopped_rank(tmp_path) -> None:
    context = mp.spawn(_stalled_rank, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=False)
    try:
        start = time.monotonic()
        while not (tmp_path / "rank0.txt").is_file():
            assert time.monotonic() - start < 50, "rank 0 was still waiting after 50 s"
            time.sleep(0.2)
    finally:
        for p in context.processes:
            p.kill()
    waited, outcome = (tmp_path / "rank0.txt").read_text().split("\n", 1)
    assert outcome != "passed" and 2.0 <= float(waited) < 30, (waited, outcome)
