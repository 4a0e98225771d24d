"""The agent's end of the link to its pod's worker host (sidecar mode on Kubernetes).

Where it sits: with `--worker-socket PATH` the agent runs as a native sidecar and does
not start workers itself; the training container's `elastiq worker-host`
(agent/worker_host.py) connects to PATH and starts them as its own children. To start
one, the agent makes the worker's two pipes as usual (agent/workers.py) and hands the
worker's ends over in a `StartWorker` message (SCM_RIGHTS), so from then on the agent
and the worker speak the same pipe channel as in local mode. What the host sends back
(pid, exit code) feeds a `RemoteProcess`, which the agent's supervisor polls, signals
and waits on exactly like a `subprocess.Popen`.

One host at a time: a restarted training container reconnects, and the agent starts
its slots on it as newcomers. When the host goes away every worker it ran counts as
killed (its workers die with it: PR_SET_PDEATHSIG).

The socket is SOCK_SEQPACKET (one message per packet, file descriptors attached to
their message), mode 0600 in a directory only this pod mounts. A packet that does not
parse, or names a worker the agent did not start, drops the host.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable

from google.protobuf.message import DecodeError

from elastiq.proto import elastiq_pb2 as pb

log = logging.getLogger(__name__)

MAX_PACKET = 64 << 10
#: the host forks a Python; far longer means it is wedged
START_TIMEOUT_S = 10.0
#: the code a worker reads as when its host vanished (as if SIGKILLed)
LOST_WITH_HOST = -9


class RemoteProcess:
    """A worker running in the host's container, with `subprocess.Popen`'s interface."""

    def __init__(self, link: HostLink, worker_id: str) -> None:
        self._link = link
        self.worker_id = worker_id
        self.pid = 0
        """The worker's pid in the training container (0 until the host says)."""
        self.returncode: int | None = None
        self._exited = threading.Event()
        self.started = threading.Event()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(f"worker {self.worker_id}", timeout or 0.0)
        return self.returncode if self.returncode is not None else LOST_WITH_HOST

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            self._link.signal(self.worker_id, sig)

    def exited(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self._exited.set()
            self.started.set()


class HostLink:
    """Listens on the socket, holds the connected host, relays starts and signals."""

    def __init__(self, path: str, on_exit: Callable[[], None] | None = None) -> None:
        """`on_exit` is called (from the link's thread) when the host reports a
        worker's exit, so the agent can look at once rather than on its next tick."""
        self.path = path
        self._on_exit = on_exit
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if os.path.exists(path):
            os.unlink(path)  # a socket left by this container's previous run
        old_umask = os.umask(0o177)
        try:
            self._server.bind(path)
        finally:
            os.umask(old_umask)
        self._server.listen(1)
        self._lock = threading.Lock()
        self._host: socket.socket | None = None
        self._processes: dict[str, RemoteProcess] = {}
        self.connections = 0
        """Hosts accepted so far (a new one means the training container restarted)."""
        self._closed = False
        threading.Thread(target=self._accept_loop, name="host-accept", daemon=True).start()

    @property
    def connected(self) -> bool:
        return self._host is not None

    def wait_connected(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.connected

    def launch(self, worker_id: str, slot: int, read_fd: int, write_fd: int) -> RemoteProcess:
        """Hand the worker's pipe ends to the host and wait (briefly: a fork) for its
        pid; a host that is gone or does not answer reads as the worker's exit."""
        proc = RemoteProcess(self, worker_id)
        message = pb.ToHost(start=pb.StartWorker(worker_id=worker_id, slot=slot))
        with self._lock:
            self._processes[worker_id] = proc
            host = self._host
        if host is None or not self._send(host, message, (read_fd, write_fd)):
            proc.exited(LOST_WITH_HOST)
        elif not proc.started.wait(START_TIMEOUT_S) and proc.returncode is None:
            log.warning("the worker host did not start %s in %.0fs", worker_id, START_TIMEOUT_S)
            proc.exited(LOST_WITH_HOST)
        return proc

    def signal(self, worker_id: str, sig: int) -> None:
        host = self._host
        if host is not None:
            self._send(host, pb.ToHost(signal=pb.SignalWorker(worker_id=worker_id, signal=sig)))

    def finish(self, code: int) -> None:
        """Tell the host to stop its workers and exit with `code`; stop listening."""
        host = self._host
        if host is not None:
            self._send(host, pb.ToHost(exit=code))
        self.close()

    def close(self) -> None:
        self._closed = True
        for s in (self._server, self._host):
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    # --------------------------------------------------------------------------------
    def _send(self, host: socket.socket, message: pb.ToHost, fds: tuple[int, ...] = ()) -> bool:
        try:
            socket.send_fds(host, [message.SerializeToString()], list(fds))
            return True
        except OSError as exc:
            log.warning("the worker host is gone (%s)", exc)
            return False

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        """One host, until it goes; its workers are then lost."""
        hello = self._receive(conn)
        if hello is None or hello.WhichOneof("kind") != "hello":
            log.warning("dropping a worker host that did not say hello first")
            conn.close()
            return
        with self._lock:
            self._host = conn
            self.connections += 1
        log.info("worker host connected (pid %d in the training container)", hello.hello)
        try:
            while True:
                message = self._receive(conn)
                if message is None or not self._handle(message):
                    break
        finally:
            with self._lock:
                self._host = None
                lost = [p for p in self._processes.values() if p.returncode is None]
                self._processes = {}
            conn.close()
            if not self._closed:
                log.warning("worker host left; %d worker(s) gone with it", len(lost))
            for proc in lost:
                proc.exited(LOST_WITH_HOST)

    def _receive(self, conn: socket.socket) -> pb.FromHost | None:
        try:
            data, fds, _, _ = socket.recv_fds(conn, MAX_PACKET, 1)
        except OSError:
            return None
        for fd in fds:  # the host never sends descriptors
            os.close(fd)
        if not data:
            return None
        try:
            return pb.FromHost.FromString(data)
        except DecodeError:
            log.warning("dropping a worker host that sent a malformed message")
            return None

    def _handle(self, message: pb.FromHost) -> bool:
        kind = message.WhichOneof("kind")
        if kind == "started":
            proc = self._processes.get(message.started.worker_id)
            if proc is None or not 0 < message.started.pid < 1 << 22:
                log.warning("worker host reported an unknown start; dropping it")
                return False
            proc.pid = message.started.pid
            proc.started.set()
        elif kind == "exited":
            proc = self._processes.get(message.exited.worker_id)
            if proc is None:
                log.warning("worker host reported an unknown exit; dropping it")
                return False
            proc.exited(message.exited.code)
            if self._on_exit is not None:
                self._on_exit()
        else:
            log.warning("worker host sent %s out of turn; dropping it", kind)
            return False
        return True
