"""A real cluster on loopback for end-to-end tests: `elastiq controller` and
`elastiq agent` subprocesses, status over gRPC, and cleanup of every process.

Nothing is mocked: the controller is the CLI process on a real store, agents are
real processes that start real worker processes; faults are real signals.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from elastiq import envvars, rpc
from elastiq.proto import elastiq_pb2 as pb

#: the test cluster's credentials: in the processes' environment, never in argv
AGENT_TOKEN = "test-agent-token-0123456789"
OPERATOR_TOKEN = "test-operator-token-0123456789"


class Cluster:
    def __init__(
        self, workdir: str, store: str = "embedded", job: dict[str, Any] | None = None
    ) -> None:
        self.workdir = workdir
        self.store = store
        self.job = {
            "steps": 80,
            "global-batch": 16,
            "micro-batch": 2,
            "seq-len": 32,
            "dim": 32,
            "layers": 2,
            "heads": 2,
            **(job or {}),
        }
        self.controller: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.hosts: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[Any] = []

    def _log(self, name: str) -> Any:
        fh = open(os.path.join(self.workdir, f"{name}.log"), "ab")  # noqa: SIM115
        self._logs.append(fh)
        return fh

    def start_controller(
        self,
        min_workers: int,
        port: int = 0,
        settle: float = 0.0,
        lease_ttl: float = 3.0,
        takeover_grace: float = 5.0,
        start_timeout: float = 120.0,
    ) -> None:
        port_file = os.path.join(self.workdir, "controller.port")
        if os.path.exists(port_file):
            os.remove(port_file)
        args = [
            sys.executable,
            "-m",
            "elastiq.cli",
            "--log-level",
            "INFO",
            "controller",
            "--store",
            self.store,
            "--port",
            str(port),
            "--port-file",
            port_file,
            "--min-workers",
            str(min_workers),
            "--settle",
            str(settle),
            "--lease-ttl",
            str(lease_ttl),
            "--takeover-grace",
            str(takeover_grace),
            "--start-timeout",
            str(start_timeout),
        ]
        for key, value in self.job.items():
            if value is True:
                args.append(f"--{key}")
            elif value is not False:
                args += [f"--{key}", str(value)]
        self.controller = subprocess.Popen(
            args,
            stdout=self._log("controller"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env(),
        )
        deadline = time.monotonic() + 60
        while not os.path.exists(port_file):
            if self.controller.poll() is not None:
                raise RuntimeError(f"controller exited with {self.controller.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError("controller did not start")
            time.sleep(0.05)
        with open(port_file, encoding="utf-8") as fh:
            self.port = int(fh.read())

    @staticmethod
    def env(agent_token: str = AGENT_TOKEN) -> dict[str, str]:
        return {
            **os.environ,
            envvars.AGENT_TOKEN: agent_token,
            envvars.OPERATOR_TOKEN: OPERATOR_TOKEN,
        }

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start_agent(
        self,
        node_id: str,
        slots: int = 1,
        liveness_timeout: float = 3.0,
        token: str = AGENT_TOKEN,
        worker_socket: str = "",
        max_restarts: int = 0,
        contact_timeout: float = 60.0,
    ) -> subprocess.Popen[bytes]:
        sidecar = ["--worker-socket", worker_socket] if worker_socket else []
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "elastiq.cli",
                "--log-level",
                "INFO",
                "agent",
                "--controller",
                self.address,
                "--node-id",
                node_id,
                "--slots",
                str(slots),
                "--liveness-timeout",
                str(liveness_timeout),
                "--max-restarts",
                str(max_restarts),
                "--contact-timeout",
                str(contact_timeout),
                *sidecar,
            ],
            stdout=self._log(node_id),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env(token),
        )
        self.agents[node_id] = proc
        return proc

    def start_worker_host(self, name: str, socket_path: str) -> subprocess.Popen[bytes]:
        """`elastiq worker-host` for a sidecar agent: what a pod's training container runs.
        Its environment holds no token (the training container gets none)."""
        env = {k: v for k, v in os.environ.items() if k not in envvars.ALL}
        proc = subprocess.Popen(
            [sys.executable, "-m", "elastiq.cli", "--log-level", "INFO", "worker-host"],
            stdout=self._log(name),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**env, envvars.AGENT_SOCKET: socket_path},
        )
        self.hosts[name] = proc
        return proc

    def call(self, method: str, request: Any) -> Any:
        client = rpc.SyncControllerClient(self.address, timeout_s=5)
        try:
            return client.call(method, request)
        finally:
            client.close()

    def status(self) -> pb.StatusResponse:
        return self.call("Status", pb.StatusRequest(token=OPERATOR_TOKEN))

    def wait_for(
        self, what: str, predicate: Callable[[pb.StatusResponse], bool], timeout: float = 120.0
    ) -> pb.StatusResponse:
        deadline = time.monotonic() + timeout
        last: pb.StatusResponse | None = None
        while time.monotonic() < deadline:
            try:
                last = self.status()
                if predicate(last):
                    return last
            except (rpc.RpcRetryable, rpc.RpcRejected):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"timed out waiting for {what}; last status:\n{last}")

    def kill_controller(self) -> None:
        if self.controller is not None and self.controller.poll() is None:
            self.controller.send_signal(signal.SIGKILL)
            self.controller.wait(10)

    def close(self) -> None:
        everything = [*self.hosts.values(), *self.agents.values(), self.controller]
        for proc in everything:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in everything:
            if proc is None:
                continue
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for fh in self._logs:
            fh.close()


def planned(status: pb.StatusResponse) -> dict[str, int]:
    """worker id -> pid of the members of the current plan."""
    ranks = {a.worker_id for a in status.plan.assignments}
    return {m.worker_id: m.pid for m in status.members if m.worker_id in ranks}


JOB: dict[str, object] = {"steps": 40, "zero": 1}
"""What `run` trains unless told otherwise (on top of `Cluster`'s defaults)."""


Victims = int | list[int] | Callable[[pb.StatusResponse], list[int]] | None


def run(
    workdir: str,
    job: dict[str, object],
    kill_rank: Victims,
    workers: int = 4,
    action: pb.ChaosAction = pb.KILL_WORKER,
) -> tuple[pb.StatusResponse, dict[str, int]]:
    """Run `workers` workers; kill `kill_rank` (one rank, several, or those a function
    picks from the first plan) when it reports step 15 (`action` KILL_WORKER), or
    right after its update of step 15, before its snapshot leaves
    (KILL_BEFORE_SNAPSHOT)."""
    cluster = Cluster(workdir, job={**JOB, **job})
    try:
        cluster.start_controller(min_workers=workers)
        for i in range(workers):
            cluster.start_agent(f"node{i}")
        first = cluster.wait_for("the first plan", lambda s: s.generation >= 1 and s.step >= 1, 90)
        if callable(kill_rank):
            victims = kill_rank(first)
        else:
            victims = [kill_rank] if isinstance(kill_rank, int) else (kill_rank or [])
        for victim in victims:
            cluster.call(
                "Admin",
                pb.AdminRequest(token=OPERATOR_TOKEN, action=action, rank=victim, at_step=15),
            )
        end = cluster.wait_for(
            "the job to finish", lambda s: s.phase in (pb.JOB_SUCCEEDED, pb.JOB_FAILED), 180
        )
        return end, planned(first)
    finally:
        cluster.close()


@dataclass(frozen=True, slots=True)
class Reference:
    """A finished run without failure: its final parameters (a torch.save file) and
    its checkpoint root (a checkpoint every 10 steps)."""

    params: str
    checkpoints: str


ReferenceRuns = Callable[..., Reference]
"""The `failure_free` fixture: (job, workers=4) -> Reference."""


def run_reference(workdir: str, job: dict[str, object], workers: int) -> Reference:
    """Run `job` on `workers` workers without failure; see `Reference`."""
    params, root = os.path.join(workdir, "clean.pt"), os.path.join(workdir, "ckpt")
    extra = {"final-params": params, "checkpoint-url": root, "checkpoint-every": 10}
    end, _ = run(workdir, {**job, **extra}, None, workers)
    if end.phase != pb.JOB_SUCCEEDED:
        raise RuntimeError(f"the failure-free reference run of {job} did not succeed: {end}")
    return Reference(params, root)


def step_losses(step_log: str) -> dict[int, float]:
    """Each step's loss from a run's step log (the same on every rank; a recomputed
    step's last value)."""
    losses: dict[int, float] = {}
    for name in sorted(os.listdir(step_log)):
        with open(os.path.join(step_log, name), encoding="utf-8") as fh:
            for line in fh:
                entry = json.loads(line)
                losses[entry["step"]] = entry["loss"]
    return losses
