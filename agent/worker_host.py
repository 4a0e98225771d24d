"""`elastiq worker-host`: runs a pod's workers in the training container, for its agent.

Where it sits: on Kubernetes the agent is a sidecar container and the user's image runs
this (the training container's default command). It connects to the agent's Unix socket
(agent/host_link.py), says hello, and then only obeys: start a worker on the two pipe
ends the agent hands over, signal one of its own workers (SIGKILL, SIGSTOP, SIGCONT,
SIGTERM, nothing else), or stop everything and exit with the code given (0 when the
job succeeded, which completes the pod). It reports each worker's pid and exit code.

It holds no credential and runs no training itself: the workers are
`python -m elastiq.agent.runtime.worker` children, which die with it
(PR_SET_PDEATHSIG). If the agent goes away (its container restarted) the workers are
stopped, since the controller counts them lost with their agent, and the host waits
for the restarted agent to start new ones as newcomers.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import threading
import time
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from elastiq.agent.workers import ProcessHandle, start_local
from elastiq.child_processes import reap
from elastiq.proto import elastiq_pb2 as pb

log = logging.getLogger(__name__)

MAX_PACKET = 64 << 10
ALLOWED_SIGNALS = frozenset({signal.SIGKILL, signal.SIGSTOP, signal.SIGCONT, signal.SIGTERM})
_WORKER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(kw_only=True, slots=True)
class WorkerHostConfig:
    """Where the agent is and how long to wait for it."""

    socket_path: str = ""
    """The agent's Unix socket (the pod's shared emptyDir)."""
    connect_timeout_s: float = 300.0
    """Give up (exit 1) when no agent answers for this long, at start or after losing it."""
    stop_grace_s: float = 10.0
    """On exit, how long workers get to leave before they are killed."""

    def __post_init__(self) -> None:
        if not self.socket_path:
            raise ValueError(
                "worker-host needs the agent's socket (--socket or ELASTIQ_AGENT_SOCKET)"
            )
        if self.connect_timeout_s <= 0 or self.stop_grace_s < 0:
            raise ValueError("connect_timeout_s must be positive and stop_grace_s >= 0")


class WorkerHost:
    def __init__(self, config: WorkerHostConfig) -> None:
        self.config = config
        self._children: dict[str, ProcessHandle] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()

    def run(self) -> int:
        """Serve agents until one says exit; returns that code (1 if none came back)."""
        while True:
            conn = self._connect()
            if conn is None:
                log.error(
                    "no agent at %s for %.0fs; giving up",
                    self.config.socket_path,
                    self.config.connect_timeout_s,
                )
                self._stop_all(0.0)
                return 1
            code = self._serve(conn)
            if code is not None:
                self._stop_all(self.config.stop_grace_s)
                return code
            log.warning("the agent went away; stopping this pod's workers and waiting for it")
            self._stop_all(0.0)

    def _connect(self) -> socket.socket | None:
        deadline = time.monotonic() + self.config.connect_timeout_s
        while time.monotonic() < deadline:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                conn.connect(self.config.socket_path)
                conn.sendmsg([pb.FromHost(hello=os.getpid()).SerializeToString()])
                return conn
            except OSError:
                conn.close()
                time.sleep(0.1)
        return None

    def _serve(self, conn: socket.socket) -> int | None:
        """Obey one agent; the exit code it asked for, or None when it vanished."""
        try:
            while True:
                try:
                    data, fds, _, _ = socket.recv_fds(conn, MAX_PACKET, 2)
                except OSError:
                    return None
                if not data:
                    for fd in fds:
                        os.close(fd)
                    return None
                try:
                    message = pb.ToHost.FromString(data)
                except DecodeError:
                    message = pb.ToHost()
                kind = message.WhichOneof("kind")
                if kind == "start":
                    self._start(conn, message.start, fds)
                    continue
                for fd in fds:
                    os.close(fd)
                if kind == "signal":
                    self._signal(message.signal)
                elif kind == "exit":
                    return int(message.exit)
                else:
                    log.warning("ignoring a message the agent should not send")
        finally:
            conn.close()

    def _start(self, conn: socket.socket, order: pb.StartWorker, fds: list[int]) -> None:
        if (
            len(fds) != 2
            or not _WORKER_ID.match(order.worker_id)
            or order.worker_id in self._children
        ):
            log.warning("refusing a malformed start order for %r", order.worker_id[:64])
            for fd in fds:
                os.close(fd)
            return
        read_fd, write_fd = fds
        try:
            proc = start_local(order.worker_id, order.slot, read_fd, write_fd)
        finally:
            os.close(read_fd)
            os.close(write_fd)
        with self._lock:
            self._children[order.worker_id] = proc
        log.info("started worker %s (pid %d)", order.worker_id, proc.pid)
        self._reply(
            conn, pb.FromHost(started=pb.WorkerStarted(worker_id=order.worker_id, pid=proc.pid))
        )

        def report_exit() -> None:
            code = proc.wait()
            with self._lock:
                self._children.pop(order.worker_id, None)
            self._reply(
                conn, pb.FromHost(exited=pb.WorkerExited(worker_id=order.worker_id, code=code))
            )

        threading.Thread(target=report_exit, name=f"reap-{order.worker_id}", daemon=True).start()

    def _signal(self, order: pb.SignalWorker) -> None:
        proc = self._children.get(order.worker_id)
        if proc is None or order.signal not in ALLOWED_SIGNALS:
            log.warning("refusing signal %d to %r", order.signal, order.worker_id[:64])
            return
        try:
            proc.send_signal(order.signal)
        except ProcessLookupError:
            pass

    def _reply(self, conn: socket.socket, message: pb.FromHost) -> None:
        with self._send_lock:
            try:
                conn.sendmsg([message.SerializeToString()])
            except OSError:
                pass  # the agent is gone; run() notices on its next receive

    def _stop_all(self, grace_s: float) -> None:
        with self._lock:
            children = list(self._children.values())
        for proc in children:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM if grace_s else signal.SIGKILL)
        reap(children, within_s=grace_s)
