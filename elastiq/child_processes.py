"""Ending the child processes a command started (agents, controllers): each gets until a
shared deadline to exit on its own, then SIGKILL, so no run leaves a process behind
and none waits longer than the deadline in all."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterable


def reap(procs: Iterable[subprocess.Popen[bytes]], within_s: float = 15.0) -> None:
    """Wait for every process until `within_s` from now in all; kill what is left."""
    deadline = time.monotonic() + within_s
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
