"""Training as a submitit job (`python -m ml.submit`): SLURM on a cluster, or submitit's local executor here.

    executor = make_executor(folder, "slurm", nodes=2, gpus_per_node=8, timeout_min=4320, partition="learnfair")
    job = executor.submit(TrainingJob(["--preset", "paper_vit_s16_400", "--data", "/data/k400"]))

Each task of the job is one training process: its rank, local rank and world size come from the job's environment
(submitit's JobEnvironment), the rendezvous is the first node on a port drawn from the job id, and the process then
runs the `ml.train` command line, which joins the group as under torchrun. Every start of the job resumes from its run
folder (`--resume auto`: a fresh folder starts fresh). On pre-emption or time-out SLURM signals the job, submitit asks
`TrainingJob.checkpoint` for the job to requeue, and the requeued job continues from `checkpoint-last.pth`, as
exactly as any resume (the epoch under way is trained again; its loss lines are replaced).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from typing import Any

import submitit

from ml.training import cli

EXECUTORS = ("slurm", "local")
PREEMPTION_SIGNAL_DELAY_S = 120  # SLURM sends the signal this long before the time limit: time to exit cleanly
MAX_REQUEUES = 30  # time-outs a run may requeue after (pre-emptions do not count)
# sbatch options `--slurm KEY=VALUE` may set: submitit's own names for them, less those the launcher sets itself
SLURM_PASS_THROUGH = frozenset(submitit.SlurmExecutor._valid_parameters()) - {  # submitit's list of them
    "nodes", "ntasks_per_node", "gpus_per_node", "cpus_per_task", "job_name", "time", "signal_delay_s",
    "partition", "account", "qos", "mem"}


class TrainingJob:
    """The callable a job runs (pickled by submitit): the `ml.train` command line `argv` in this task's process."""

    def __init__(self, argv: list[str], evaluation_hook: Callable[..., Any] | None = None) -> None:
        self.argv = list(argv)
        if "--resume" not in self.argv:
            self.argv += ["--resume", "auto"]  # a start, a requeue and a restarted node all continue the run
        self.evaluation_hook = evaluation_hook

    def __call__(self) -> int:
        set_distributed_environment(submitit.JobEnvironment())
        code = cli.main(self.argv, evaluation_hook=self.evaluation_hook)
        if code != 0:  # the job fails (its log has the one-line reason) instead of returning quietly
            raise RuntimeError(f"python -m ml.train exited with code {code}; see this task's log")
        return code

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """What submitit requeues on pre-emption or time-out: the same job, resuming from the run folder's latest
        checkpoint (an explicit --resume PATH of the first start becomes `auto`: the run has moved on since)."""
        argv = list(self.argv)
        where = argv.index("--resume")
        argv[where + 1] = "auto"
        return submitit.helpers.DelayedSubmission(TrainingJob(argv, self.evaluation_hook))


def rendezvous_port(job_id: str) -> int:
    """A port in 20000-39999 drawn from the job id: every task of a job agrees on it without talking."""
    return 20000 + zlib.crc32(str(job_id).encode()) % 20000


def set_distributed_environment(env: Any) -> None:
    """torchrun's variables from submitit's JobEnvironment, so that `init_distributed` joins the group."""
    os.environ.update(RANK=str(env.global_rank), LOCAL_RANK=str(env.local_rank), WORLD_SIZE=str(env.num_tasks),
                      MASTER_ADDR=env.hostnames[0] if env.num_nodes > 1 else "127.0.0.1",
                      MASTER_PORT=str(rendezvous_port(env.job_id)))


def make_executor(folder: str | os.PathLike, executor: str, *, nodes: int = 1, gpus_per_node: int = 8,
                  tasks_per_node: int | None = None, timeout_min: int = 4320, cpus_per_task: int = 10,
                  mem_gb: int | None = None, name: str = "siammae", partition: str | None = None,
                  account: str | None = None, qos: str | None = None,
                  slurm_options: dict[str, str] | None = None) -> submitit.Executor:
    """A submitit executor for the job: `slurm` (one task per GPU), or `local` (tasks_per_node processes here).

    `slurm_options`: further sbatch options by submitit's names for them (e.g. {"constraint": "volta32gb"}).
    ValueError (one line) for a bad value, before anything is submitted.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    for flag, value in (("--nodes", nodes), ("--timeout", timeout_min), ("--cpus-per-task", cpus_per_task)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if gpus_per_node < 0 or (tasks_per_node is not None and tasks_per_node < 1):
        raise ValueError(f"--gpus-per-node must be >= 0 and --tasks-per-node >= 1, got {gpus_per_node}, "
                         f"{tasks_per_node}")
    if executor == "local" and nodes != 1:
        raise ValueError("the local executor runs on this machine: --nodes must be 1")
    tasks = tasks_per_node or max(1, gpus_per_node)
    unknown = sorted(set(slurm_options or {}) - SLURM_PASS_THROUGH)
    if executor == "slurm" and unknown:
        raise ValueError(f"--slurm {unknown[0]}: not an sbatch option of submitit's (one of "
                         f"{', '.join(sorted(SLURM_PASS_THROUGH))})")
    try:
        if executor == "local":  # its own class: the local pre-emption delay is not an AutoExecutor parameter
            ex = submitit.LocalExecutor(folder=folder, max_num_timeout=MAX_REQUEUES)
            ex.update_parameters(timeout_min=timeout_min, tasks_per_node=tasks, nodes=1,
                                 signal_delay_s=min(PREEMPTION_SIGNAL_DELAY_S, max(1, timeout_min * 6)))
            return ex
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=MAX_REQUEUES)
        named = {k: v for k, v in (("partition", partition), ("account", account), ("qos", qos)) if v}
        ex.update_parameters(timeout_min=timeout_min, name=name, tasks_per_node=tasks, nodes=nodes,
                             cpus_per_task=cpus_per_task, gpus_per_node=gpus_per_node,
                             slurm_signal_delay_s=PREEMPTION_SIGNAL_DELAY_S, **({"mem_gb": mem_gb} if mem_gb else {}),
                             **{f"slurm_{k}": v for k, v in {**named, **(slurm_options or {})}.items()})
    except (RuntimeError, ValueError, TypeError, NameError) as err:  # no SLURM here; a value submitit refuses
        raise ValueError(f"{executor} executor: {str(err).splitlines()[0]}") from None
    return ex
