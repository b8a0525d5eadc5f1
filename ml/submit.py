"""`python -m ml.submit`: SiamMAE pre-training as a SLURM job through submitit (the code lives in
`ml/training/launch.py`). The recipe options are those of `python -m ml.train`; the job's own options follow.

    python -m ml.submit --preset paper_vit_s16_400 --data /data/k400 --output runs/s16 --nodes 1 --gpus-per-node 8 \\
        --partition gpu --timeout 4320
    python -m ml.submit --preset quick --output outputs/quick --executor local --tasks-per-node 2   # this machine

The job's name is the run's prefix and its logs go to <output>/submitit/<prefix>/ (%j: the job id). Every start
resumes from the run folder; pre-emption and time-out requeue the job (submitit's checkpoint-and-requeue). The
options and the recipe are checked here, before anything is submitted: a bad one is one line and exit 2.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from ml.eval import evaluation_hook
from ml.training import cli
from ml.training.launch import EXECUTORS, TrainingJob, make_executor
from ml.training.run import Run

JOB_OPTIONS = {  # flag: (type, default, help)
    "--executor": (str, "slurm", f"where the job runs: {' or '.join(EXECUTORS)} (submitit's local executor: this "
                                 "machine, for a check)"),
    "--nodes": (int, 1, "machines"),
    "--gpus-per-node": (int, 8, "GPUs per machine; one training process (task) each"),
    "--tasks-per-node": (int, None, "processes per machine (default: --gpus-per-node; the local executor: 1)"),
    "--cpus-per-task": (int, 10, "CPU cores per process (its data-loader workers)"),
    "--mem-gb": (int, None, "memory per machine in GB (default: the partition's)"),
    "--timeout": (int, 4320, "minutes per job before SLURM stops it (the job then requeues and resumes)"),
    "--partition": (str, None, "SLURM partition"),
    "--account": (str, None, "SLURM account"),
    "--qos": (str, None, "SLURM quality of service"),
}


def job_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ml.submit", add_help=False)
    for flag, (kind, default, text) in JOB_OPTIONS.items():
        p.add_argument(flag, type=kind, default=default, help=text)
    p.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="another sbatch option, by submitit's name for it (e.g. constraint=volta32gb, exclude=node7, "
                        "comment=...)")
    p.add_argument("--wait", action="store_true", help="wait for the job to end and exit with its outcome")
    return p


def check_partition(partition: str | None) -> None:
    """A partition SLURM does not have is refused here, not after the job sits in a queue (where sinfo exists)."""
    if partition is None or shutil.which("sinfo") is None:
        return
    known = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True).stdout.split()
    if known and partition not in known:
        raise ValueError(f"--partition {partition}: not a partition of this cluster ({', '.join(sorted(known))})")


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """argparse's errors as ValueError: one line (no usage block), exit 2, like any other bad value."""
    def error(message: str) -> None:
        raise ValueError(message)
    parser.error = error  # type: ignore[method-assign]
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    jobs = one_line_errors(job_parser())
    train_parser = one_line_errors(cli.build_parser())
    train_parser.prog = jobs.prog
    if "-h" in argv or "--help" in argv:
        jobs.print_help()
        train_parser.print_help()
        return 0
    try:
        job, train_argv = jobs.parse_known_args(argv)
        config = cli.config_from_args(train_parser.parse_args(train_argv))
        options = dict(item.split("=", 1) if "=" in item else (item, "") for item in job.slurm)
        if any(not key for key in options):
            raise ValueError(f"--slurm expects KEY=VALUE, got {job.slurm}")
        run = Run.of(config)
        run.check_writable()
        evaluation_hook(config)  # --eval-davis checked now, not when the job starts
        check_partition(job.partition)
        tasks = job.tasks_per_node or (1 if job.executor == "local" else job.gpus_per_node)
        config.accum_steps(job.nodes * tasks)  # total_batch_size must split over the job's processes
        executor = make_executor(Path(config.output_dir) / "submitit" / config.prefix, job.executor, nodes=job.nodes,
                                 gpus_per_node=job.gpus_per_node, tasks_per_node=tasks, timeout_min=job.timeout,
                                 cpus_per_task=job.cpus_per_task, mem_gb=job.mem_gb, name=config.prefix,
                                 partition=job.partition, account=job.account, qos=job.qos, slurm_options=options)
        submitted = executor.submit(TrainingJob(train_argv, evaluation_hook))
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"{jobs.prog}: error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"submitted job {submitted.job_id} ({job.executor}, {job.nodes} node(s) x {tasks} task(s)) for run "
          f"{config.prefix}: logs in {executor.folder}, checkpoints in {run.checkpoint_dir}")
    if not job.wait:
        return 0
    try:
        submitted.results()  # one result per task
    except Exception as err:  # the job's own failure, reported by submitit with the task's log
        print(f"{jobs.prog}: job {submitted.job_id} failed: {str(err).splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"job {submitted.job_id} done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
