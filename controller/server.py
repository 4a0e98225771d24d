"""The controller process: store, leader election, rendezvous host, gRPC, metrics.

Several controllers may run against one etcd; the one holding the leader lease
serves the job, the others answer UNAVAILABLE and wait to take over within one
lease TTL. The rendezvous store every generation's process groups meet in is a
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
    store: str = "embedded"
    """Store URL (see controller.store.open_store)."""

    def __post_init__(self) -> None:
        self.advertise_host = self.advertise_host or self.host
        if not 0 <= self.port <= 65535 or not -1 <= self.metrics_port <= 65535:
            raise ValueError(
                f"ports out of range: port={self.port} metrics_port={self.metrics_port}"
            )


def _rendezvous_store(host: str) -> tuple[object, int]:
    import datetime

    import torch.distributed as dist

    store = dist.TCPStore(
        host,
        0,
        is_master=True,
        wait_for_workers=False,
        timeout=datetime.timedelta(seconds=60),
    )
    return store, int(store.port)


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
        self._leader_lease = 0
        self._lost_lease = False
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, wait_for_leadership: bool = True) -> None:
        self.store = open_store(self.server_config.store)
        server, self.port = rpc.new_server(
            self.service, self.server_config.host, self.server_config.port
        )
        self._server = server
        await server.start()
        if self.server_config.metrics_port >= 0:
            self.metrics_port = self.metrics.serve(
                self.server_config.metrics_port, self.server_config.host
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
        key = f"/elastiq/{self.job_config.job}/leader"
        address = f"{self.server_config.advertise_host}:{self.port}"
        while True:
            lease = await self.store.grant_lease(self.control.lease_ttl_s)
            if await self.store.compare_and_set(key, address.encode(), 0, lease=lease):
                self._leader_lease = lease
                self._lost_lease = False
                break
            await self.store.revoke_lease(lease)
            current = await self.store.get(key)
            self.service.leader_address = current.value.decode() if current else ""
            await asyncio.sleep(self.control.lease_ttl_s / 3)
        # keep the lease from the moment it is won: what follows (the first import of
        # torch for the rendezvous store) can take longer than a TTL on a loaded machine,
        # and it runs in a thread so the event loop keeps refreshing
        self._tasks.append(asyncio.get_running_loop().create_task(self._keep_leadership()))
        self._rdzv, rdzv_port = await asyncio.get_running_loop().run_in_executor(
            None, _rendezvous_store, self.server_config.host
        )
        job = JobController(
            self.store,
            self.job_config,
            self.control,
            f"{self.server_config.advertise_host}:{rdzv_port}",
            self.metrics,
            self.identity,
        )
        await job.start()
        if self._lost_lease:
            await job.stop()
            raise RuntimeError("lost the leader lease while taking over; not serving the job")
        self.job = job
        self.service.job = job
        log.info("controller %s leads job %s", self.identity, self.job_config.job)

    async def _keep_leadership(self) -> None:
        if self.store is None:
            return
        while True:
            await asyncio.sleep(self.control.lease_ttl_s / 3)
            if not await self.store.refresh_lease(self._leader_lease):
                log.error("lost the leader lease; stepping down and competing again")
                self._lost_lease = True
                self.service.job = None
                if self.job is not None:
                    await self.job.stop()
                    self.job = None
                # a lease lost to a stall (not to another controller) would otherwise
                # leave a single-controller job without a leader for good
                self._tasks.append(asyncio.get_running_loop().create_task(self._become_leader()))
                return

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.job is not None:
            await self.job.stop()
        if self._server is not None:
            await self._server.stop(grace=0.5)  # type: ignore[attr-defined]
        if self.store is not None:
            if self._leader_lease:
                try:
                    await self.store.revoke_lease(self._leader_lease)
                except Exception:  # store already gone; the lease expires on its own
                    log.debug("could not revoke the leader lease", exc_info=True)
            await self.store.close()
