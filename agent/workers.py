"""Worker processes as the agent sees them: spawn, message pump, signals.

Each worker is a process `python -m elastiq.agent.runtime.worker` with two inherited
pipes carrying typed messages (see channel.py). A reader thread per worker hands its
messages to the agent's event loop. Who starts the process is a `Launcher`: the agent
itself (`start_local`, a child that dies with its agent through PR_SET_PDEATHSIG, so
losing the agent loses its workers, as losing a node would), or, on Kubernetes, the
worker host in the pod's training container (agent/host_link.py), handed the same
pipe ends. Either way the agent holds a `ProcessHandle` with Popen's interface.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from elastiq.agent.channel import Channel
from elastiq.proto import elastiq_pb2 as pb

log = logging.getLogger(__name__)


class ProcessHandle(Protocol):
    """What the agent needs of a worker process (subprocess.Popen has it)."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...


#: starts `python -m elastiq.agent.runtime.worker` on the worker's ends of its pipes
#: (worker_id, slot, read_fd, write_fd); the caller closes its copies of those ends
Launcher = Callable[[str, int, int, int], ProcessHandle]


def start_local(worker_id: str, slot: int, read_fd: int, write_fd: int) -> ProcessHandle:
    """The agent's own child process (local runs, and agents outside Kubernetes)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "elastiq.agent.runtime.worker",
            "--read-fd",
            str(read_fd),
            "--write-fd",
            str(write_fd),
        ],
        pass_fds=(read_fd, write_fd),
        stdin=subprocess.DEVNULL,
    )


@dataclass(slots=True)
class WorkerProcess:
    worker_id: str
    slot: int
    proc: ProcessHandle
    channel: Channel[pb.FromWorker, pb.ToWorker]
    phase: pb.WorkerPhase = pb.WORKER_PHASE_STARTING
    started: float = field(default_factory=time.monotonic)
    last_alive: float = field(default_factory=time.monotonic)
    last_progress: float = field(default_factory=time.monotonic)
    step: int = 0
    loss: float = 0.0
    tokens_per_s: float = 0.0
    step_time_s: float = 0.0
    step_wall: float = 0.0
    generation: int = 0
    rank: int = -1
    planned: bool = False
    unit_costs: dict[int, float] = field(default_factory=dict)
    checkpoint_held_s: float = 0.0
    checkpoint_committed_step: int = 0
    checkpoints_skipped: int = 0
    stopped: bool = False  # SIGSTOPped by chaos
    heard: bool = False
    """It has sent a message (before that, only contact_timeout_s bounds its start)."""
    start_failed: bool = False
    """It reported that it cannot start (its model or data): never restarted."""
    stopped_since: float = 0.0
    """time.monotonic() since when it has been seen stopped (SIGSTOP) before its first
    word; 0: not stopped."""
    exit_reported: bool = False
    chaos_killed: tuple[float, int] | None = None
    """Chaos SIGKILLed it (wall time, step): reported together with its exit."""

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    @property
    def gone(self) -> bool:
        return self.phase == pb.WORKER_PHASE_GONE

    def send(self, message: pb.ToWorker) -> bool:
        return self.channel.send(message)

    def signal(self, sig: int) -> None:
        try:
            self.proc.send_signal(sig)
        except ProcessLookupError:
            pass


def spawn_worker(
    worker_id: str,
    node_id: str,
    slot: int,
    config_json: str,
    log_level: str,
    loop: asyncio.AbstractEventLoop,
    on_message: Callable[[WorkerProcess, pb.FromWorker | None], None],
    launch: Launcher = start_local,
) -> WorkerProcess:
    """Start one worker and its reader thread; the config is its first message."""
    to_worker_r, to_worker_w = os.pipe()
    to_agent_r, to_agent_w = os.pipe()
    try:
        proc = launch(worker_id, slot, to_worker_r, to_agent_w)
    finally:
        os.close(to_worker_r)
        os.close(to_agent_w)
    worker = WorkerProcess(worker_id, slot, proc, Channel(to_agent_r, to_worker_w, pb.FromWorker))
    worker.send(
        pb.ToWorker(
            config=pb.WorkerConfig(
                config_json=config_json, worker_id=worker_id, node_id=node_id, log_level=log_level
            )
        )
    )

    def pump() -> None:
        while True:
            message = worker.channel.recv()
            loop.call_soon_threadsafe(on_message, worker, message)
            if message is None:
                return

    threading.Thread(target=pump, name=f"pump-{worker_id}", daemon=True).start()
    log.info("started worker %s (pid %d)", worker_id, proc.pid)
    return worker


def stop_workers(workers: list[WorkerProcess], grace_s: float) -> None:
    """Ask workers to leave, then kill whatever is still running after `grace_s`."""
    for w in workers:
        if w.proc.poll() is None:
            if w.stopped:
                w.signal(signal.SIGCONT)
            w.send(pb.ToWorker(shutdown=True))
    deadline = time.monotonic() + grace_s
    for w in workers:
        left = max(0.0, deadline - time.monotonic())
        try:
            w.proc.wait(left)
        except subprocess.TimeoutExpired:
            log.warning("worker %s did not exit in %.1fs; killing it", w.worker_id, grace_s)
            w.signal(signal.SIGKILL)
            w.proc.wait(5)
        w.channel.close()
