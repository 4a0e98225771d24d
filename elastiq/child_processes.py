"""Ending the child processes a command started (agents, controllers): each gets until a
shared deadline to exit on its own, then SIGKILL, so no run leaves a process behind
and none waits longer than the deadline in all."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterable
from typing import Protocol


class Waitable(Protocol):
    """A process as subprocess.Popen offers it (and the agent's remote workers)."""

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...


def reap(procs: Iterable[Waitable], within_s: float = 15.0) -> None:
    """Wait for every process until `within_s` from now in all; kill what is left."""
    deadline = time.monotonic() + within_s
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(5)
