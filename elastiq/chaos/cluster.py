"""The processes of a chaos run: etcd, controllers, node agents; started, killed with
real signals, and replaced the way Kubernetes would replace a pod.

Where it sits: elastiq/chaos/runner.py owns one `ChaosCluster`; the fault injectors
(elastiq/chaos/faults.py) act on it. Everything is a real process of the product
(`elastiq controller`, `elastiq agent`, Debian's `etcd`), on loopback ports the
kernel picks. Credentials are made for the run and passed in the children's
environment, never in argv.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import IO, Any

from elastiq import envvars, rpc
from elastiq.chaos.scenario import Scenario
from elastiq.child_processes import reap
from elastiq.proto import elastiq_pb2 as pb
from elastiq.secret_files import new_token


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ChaosCluster:
    def __init__(self, scenario: Scenario, work_dir: str) -> None:
        self.scenario = scenario
        self.work_dir = work_dir
        os.makedirs(work_dir, exist_ok=True)
        self.env = {
            **os.environ,
            envvars.AGENT_TOKEN: new_token(),
            envvars.OPERATOR_TOKEN: new_token(),
        }
        self.operator_token = self.env[envvars.OPERATOR_TOKEN]
        self.etcd: subprocess.Popen[bytes] | None = None
        self.etcd_ports = (_free_port(), _free_port())
        self.controller_ports = [_free_port() for _ in range(scenario.controllers)]
        self.controllers: dict[int, subprocess.Popen[bytes]] = {}
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.next_node = 0
        self._logs: list[IO[bytes]] = []
        self._clients = {
            p: rpc.SyncControllerClient(f"127.0.0.1:{p}") for p in self.controller_ports
        }

    # processes ----------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log_file = open(os.path.join(self.work_dir, f"{name}.log"), "ab")  # noqa: SIM115
        self._logs.append(log_file)
        return subprocess.Popen(
            args, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env
        )

    @property
    def store_url(self) -> str:
        if self.scenario.store == "embedded":
            return "embedded"
        return f"etcd://127.0.0.1:{self.etcd_ports[0]}"

    def start_etcd(self) -> None:
        binary = shutil.which("etcd")
        if binary is None:
            raise RuntimeError("etcd is not installed (Debian: apt-get install etcd-server)")
        client, peer = (f"http://127.0.0.1:{p}" for p in self.etcd_ports)
        self.etcd = self._spawn(
            "etcd",
            [
                binary,
                *("--name", "chaos", "--data-dir", os.path.join(self.work_dir, "etcd")),
                *("--listen-client-urls", client, "--advertise-client-urls", client),
                *("--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer),
                *("--initial-cluster", f"chaos={peer}"),
            ],
        )
        self._wait_port(self.etcd_ports[0], self.etcd, "etcd")

    def kill_etcd(self) -> None:
        if self.etcd is not None and self.etcd.poll() is None:
            self.etcd.send_signal(signal.SIGKILL)
            self.etcd.wait(10)

    def start_controller(self, index: int) -> None:
        port = self.controller_ports[index]
        job_file = os.path.join(self.work_dir, "job.json")
        with open(job_file, "w", encoding="utf-8") as fh:
            fh.write(self.scenario.job_config().to_json())
        self.controllers[index] = self._spawn(
            f"controller{index}",
            [
                *(sys.executable, "-m", "elastiq.cli", "--log-level", "INFO", "controller"),
                *("--store", self.store_url, "--job-config", job_file, "--port", str(port)),
                *("--min-workers", str(self.scenario.workers), "--settle", "1"),
                *("--lease-ttl", str(self.scenario.lease_ttl_s), "--takeover-grace", "5"),
            ],
        )

    def start_agent(self) -> str:
        node = f"node{self.next_node}"
        self.next_node += 1
        addresses = ",".join(f"127.0.0.1:{p}" for p in self.controller_ports)
        self.agents[node] = self._spawn(
            node,
            [
                *(sys.executable, "-m", "elastiq.cli", "--log-level", "INFO", "agent"),
                *("--controller", addresses, "--node-id", node),
                *("--slots", str(self.scenario.workers_per_node)),
                *("--max-restarts", str(self.scenario.max_restarts)),
                *("--liveness-timeout", "5", "--progress-timeout", "120"),
            ],
        )
        return node

    @staticmethod
    def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with code {proc.returncode}")
            time.sleep(0.05)
        raise RuntimeError(f"{what} did not listen on port {port} within 30 s")

    # the job --------------------------------------------------------------------------
    def status(self) -> tuple[int, pb.StatusResponse] | None:
        """(index of the controller that answered, its status), from the leader."""
        for index, port in enumerate(self.controller_ports):
            try:
                return index, self._clients[port].call(
                    "Status", pb.StatusRequest(token=self.operator_token)
                )
            except (rpc.RpcRetryable, rpc.RpcRejected):
                continue
        return None

    def admin(self, index: int, **fields: Any) -> str:
        client = self._clients[self.controller_ports[index]]
        reply = client.call("Admin", pb.AdminRequest(token=self.operator_token, **fields))
        return str(reply.detail)

    def close(self) -> None:
        procs = [*self.agents.values(), *self.controllers.values()]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        reap(procs)
        self.kill_etcd()
        for client in self._clients.values():
            client.close()
        for fh in self._logs:
            fh.close()
