"""What a benchmark section records about where it ran: the machine, the versions, the commit, and the load."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import time

import av
import numpy
import timm
import torch

from bench import REPO


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    ram_gib = None
    try:
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
        ram_gib = kib / 2**20
    except (OSError, StopIteration):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "usable_cores": usable, "ram_gib": ram_gib,
            "os": f"{platform.system()} {platform.release()} {platform.machine()}",
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def versions() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "av": av.__version__,
            "timm": timm.__version__, "numpy": numpy.__version__}


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" with local changes" if dirty else "")


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class LoadMonitor:
    """Load average before and after, and how many cores other processes kept busy on average in between."""

    def __enter__(self) -> LoadMonitor:
        self.load_before = os.getloadavg()[0]
        self.busy0, self.own0, self.t0 = _busy_cpu_seconds(), _own_cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.load_after = os.getloadavg()[0]
        busy1 = _busy_cpu_seconds()
        self.other_cores = None
        if busy1 is not None and self.busy0 is not None and self.seconds > 0:
            others = (busy1 - self.busy0) - (_own_cpu_seconds() - self.own0)
            self.other_cores = max(0.0, others / self.seconds)

    def as_dict(self) -> dict:
        return {"seconds": self.seconds, "load_1min_before": self.load_before, "load_1min_after": self.load_after,
                "other_processes_cores": self.other_cores}


class KeepAffinityAndThreads:
    """Restores the CPU affinity and torch's thread count a benchmark may change (the data one pins to one core)."""

    def __enter__(self) -> KeepAffinityAndThreads:
        self.threads = torch.get_num_threads()
        self.affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        return self

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.threads)
        if self.affinity is not None:
            os.sched_setaffinity(0, self.affinity)
