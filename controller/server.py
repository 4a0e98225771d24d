"""The controller process: store, leader election, rendezvous host, gRPC, metrics.

Several controllers may run against one etcd; the one holding the leader lease
serves the job, the others answer UNAVAILABLE and wait to take over within one
lease TTL (controller/leader_lease.py, which also rides out store outages). The
rendezvous store every generation's process groups meet in is a
torch TCPStore hosted here, because the controller survives the loss of any
worker or agent; a takeover starts a new one and the takeover plan names it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass

from elastiq import rpc
from elastiq.config import JobConfig
from elastiq.controller.job import ControllerConfig, JobController
from elastiq.controller.leader_lease import LeaderLease
from elastiq.controller.metrics import ControllerMetrics
from elastiq.controller.service import ControllerService, Credentials
from elastiq.controller.store import Store, open_store

log = logging.getLogger(__name__)


@dataclass(kw_only=True, slots=True)
class ServerConfig:
    """Where the controller listens and what it advertises."""

    host: str = "127.0.0.1"
    """Address to bind the gRPC server (and the rendezvous store) to."""
    port: int = 0
    """gRPC port; 0 picks a free one."""
    advertise_host: str = ""
    """Host workers use to reach the rendezvous store (empty: the bind host)."""
    metrics_port: int = -1
    """Prometheus port; -1 disables, 0 picks a free one."""
    metrics_host: str = "127.0.0.1"
    """Address /metrics binds to: loopback unless a scraper elsewhere needs it (it
    shows the job's members and progress, so it is not opened by default)."""
    store: str = "embedded"
    """Store URL (see controller.store.open_store)."""
    tls_cert: str = ""
    """PEM certificate for TLS on the gRPC port (with tls_key; empty: plaintext)."""
    tls_key: str = ""
    """PEM private key of tls_cert."""
    tls_client_ca: str = ""
    """PEM CA: require every caller to present a certificate it signed (mutual TLS)."""

    def __post_init__(self) -> None:
        self.advertise_host = self.advertise_host or self.host
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key (a TLS server)")
        rpc.TlsFiles(cert=self.tls_cert, key=self.tls_key)  # both or neither
        if not 0 <= self.port <= 65535 or not -1 <= self.metrics_port <= 65535:
            raise ValueError(
                f"ports out of range: port={self.port} metrics_port={self.metrics_port}"
            )


def _rendezvous_store(host: str) -> tuple[object, int]:
    """A TCPStore listening on `host` only: torch's own binds every interface, so the
    socket is made here and handed over (the store is unauthenticated; it must be
    reachable by the workers and nobody else the network allows)."""
    import datetime

    import torch.distributed as dist

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, 0))
    listener.listen(1024)
    port = int(listener.getsockname()[1])
    # the store owns the descriptor from here: a socket object that kept it would close
    # it again when collected, closing whatever the number has been reused for since
    fd = listener.detach()
    store = dist.TCPStore(
        host,
        port,
        is_master=True,
        wait_for_workers=False,
        timeout=datetime.timedelta(seconds=60),
        master_listen_fd=fd,
    )
    return store, port


class Controller:
    """A running controller; `await start()`, then `port`, `metrics_port`, `job`."""

    def __init__(
        self,
        job: JobConfig,
        control: ControllerConfig,
        server: ServerConfig,
        credentials: Credentials,
    ) -> None:
        self.job_config = job
        self.control = control
        self.server_config = server
        self.identity = f"{socket.gethostname()}-{os.getpid()}"
        self.metrics = ControllerMetrics()
        self.service = ControllerService(credentials)
        if credentials.insecure:
            log.warning(
                "controller started with --insecure: calls without credentials are accepted"
            )
        self.store: Store | None = None
        self.job: JobController | None = None
        self.port = 0
        self.metrics_port = 0
        self._server: object | None = None
        self._rdzv: object | None = None
        self._lead: LeaderLease | None = None
        self._rdzv_port = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, wait_for_leadership: bool = True) -> None:
        self.store = open_store(self.server_config.store)
        cfg = self.server_config
        tls = rpc.TlsFiles(ca=cfg.tls_client_ca, cert=cfg.tls_cert, key=cfg.tls_key)
        server, self.port = rpc.new_server(self.service, cfg.host, cfg.port, tls)
        self._server = server
        await server.start()
        if self.server_config.metrics_port >= 0:
            self.metrics_port = self.metrics.serve(
                self.server_config.metrics_port, self.server_config.metrics_host
            )
        log.info(
            "controller %s listening on %s:%d", self.identity, self.server_config.host, self.port
        )
        if wait_for_leadership:
            await self._become_leader()
        else:
            self._tasks.append(asyncio.get_running_loop().create_task(self._become_leader()))

    async def _become_leader(self) -> None:
        if self.store is None:
            raise RuntimeError("start() first")
        if self._rdzv is None:
            # before competing: the first import of torch can take seconds on a loaded
            # machine, and a standby must be ready to serve the moment it wins
            self._rdzv, self._rdzv_port = await asyncio.get_running_loop().run_in_executor(
                None, _rendezvous_store, self.server_config.host
            )
        self._lead = LeaderLease(
            self.store,
            f"/elastiq/{self.job_config.job}/leader",
            f"{self.server_config.advertise_host}:{self.port}",
            self.control.lease_ttl_s,
        )
        compete = asyncio.get_running_loop().create_task(self._lead.win())
        while not compete.done():  # tell callers who leads while this one waits
            self.service.leader_address = self._lead.current_leader
            await asyncio.wait({compete}, timeout=0.1)
        compete.result()
        job = JobController(
            self.store,
            self.job_config,
            self.control,
            f"{self.server_config.advertise_host}:{self._rdzv_port}",
            self.metrics,
            self.identity,
        )
        await job.start()
        self.job = job
        self.service.job = job
        self._tasks.append(asyncio.get_running_loop().create_task(self._keep_leadership(job)))
        log.info("controller %s leads job %s", self.identity, self.job_config.job)

    async def _keep_leadership(self, job: JobController) -> None:
        lead = self._lead
        if lead is None:
            return

        async def still_ours() -> bool:
            if self.store is None:
                return False
            plan = await self.store.get(job.prefix + "plan")
            return (plan.mod_revision if plan is not None else 0) == job.plan_revision

        await lead.keep(still_ours)
        self.service.job = None
        self.job = None
        await job.stop()
        # compete again: with no other controller this one leads again, from the store
        self._tasks.append(asyncio.get_running_loop().create_task(self._become_leader()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.job is not None:
            await self.job.stop()
        if self._server is not None:
            await self._server.stop(grace=0.5)  # type: ignore[attr-defined]
        if self.store is not None:
            if self._lead is not None:
                await self._lead.release()
            await self.store.close()
