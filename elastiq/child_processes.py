"""Ending the child processes a command started (agents, controllers): each gets until a
shared deadline to exit on its own, then SIGKILL, so no run leaves a process behind
and none waits longer than the deadline in all. Also what Linux's /proc says of a
process: its children, and whether it is stopped; and a child's own request to die
with its parent, for children nothing else would ever stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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


def die_with_parent() -> bool:
    """Ask Linux to SIGKILL this process when the thread that started it exits
    (PR_SET_PDEATHSIG: the starting thread, so start such children from a thread
    that lives as long as they should). False when the parent is already gone, and
    the caller should exit; True otherwise, also where nothing can be asked (not
    Linux)."""
    if not sys.platform.startswith("linux"):
        return True
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    return os.getppid() == parent  # else the parent died before prctl took effect


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first, then the
    parent pid); None where it cannot be read (gone, another PID namespace, not
    Linux). The name may hold spaces and parentheses: the fields follow the last ")"."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def child_pids(pid: int) -> list[int]:
    """Processes whose parent is `pid` (a node agent's workers), from /proc; empty
    where /proc cannot say."""
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None and len(fields) > 1 and int(fields[1]) == pid:
                found.append(int(entry))
    return sorted(found)


def is_stopped(pid: int) -> bool:
    """Whether process `pid` is stopped (SIGSTOP, a debugger); False where /proc
    cannot say (another PID namespace, as a sidecar's workers are, or another OS), so
    callers fall back to silence alone."""
    fields = _stat_fields(pid)
    return fields is not None and bool(fields) and fields[0] in ("T", "t")
