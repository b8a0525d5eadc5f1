"""Stopping a run cleanly on SIGINT / SIGTERM: the engine checks the request at every optimiser step."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ml.training.distributed import print_main


class TrainingStopped(KeyboardInterrupt):
    """Training stopped at a step boundary because a stop was asked for (SIGINT, SIGTERM)."""


class StopRequest:
    """Set by SIGINT / SIGTERM while a run is in progress; the engine stops at the next optimiser step."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def __call__(self) -> bool:
        return self.signal_name is not None


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Route SIGINT and SIGTERM to a StopRequest for the duration (main thread only; elsewhere nothing changes).

    A second signal while the first is pending stops at once (TrainingStopped, wherever the run is: the
    command line exits 143 or 130 with one line); files stay whole either way, since every write is atomic.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: Any) -> None:
        if request.signal_name is not None:
            raise TrainingStopped(f"second {signal.Signals(signum).name}: stopping at once")
        request.signal_name = signal.Signals(signum).name
        print_main(f"{request.signal_name} received: stopping after the current optimiser step (again: at once)")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
