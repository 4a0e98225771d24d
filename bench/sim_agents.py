"""Simulated node agents that speak the real protocol, many per process (issue 15).

Where it sits: bench support, never the product. Each `SimNode` registers with the
agent token, opens its WatchPlan stream, heartbeats with its workers' progress, reports
WORKER_READY and JOINED like a real agent, and "trains" by advancing a step counter
every `step_time_s`. The controller, store, planner, gRPC and wire format it talks to
are the product's own, unchanged. `lose()` ends a node the way a dead one ends: its
stream and heartbeats stop at once, with no goodbye.

Each node records when each generation's plan reached it (`plan_seen`), which is what
"failure to plan delivered to every survivor" is measured from.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from elastiq import rpc
from elastiq.config import JobConfig
from elastiq.proto import elastiq_pb2 as pb


@dataclass(slots=True)
class SimNode:
    address: str
    token: str
    node_id: str
    slots: int = 4
    step_time_s: float = 0.5
    model: pb.ModelShape = field(
        default_factory=lambda: pb.ModelShape(unit_numel=JobConfig().unit_numel())
    )
    plan_seen: dict[int, float] = field(default_factory=dict)
    """generation -> time.monotonic() when its plan arrived here."""
    generation: int = 0
    step: int = 0
    _client: rpc.ControllerClient | None = None
    _secret: str = ""
    _lease: int = 0
    _interval: float = 0.5
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _ranks: dict[str, int] = field(default_factory=dict)

    @property
    def worker_ids(self) -> list[str]:
        return [f"{self.node_id}.w{k}" for k in range(self.slots)]

    async def start(self) -> None:
        self._client = rpc.ControllerClient(self.address, timeout_s=30.0)
        request = pb.RegisterRequest(
            token=self.token, node_id=self.node_id, slots=self.slots, address="sim"
        )
        deadline = time.monotonic() + 60
        while True:  # a controller that has not won its lease yet answers UNAVAILABLE
            try:
                reply = await self._client.call("Register", request)
                break
            except rpc.RpcRetryable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        self._secret, self._lease = reply.node_secret, reply.lease_id
        self._interval = reply.heartbeat_interval_s
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._watch()),
            loop.create_task(self._beat()),
            loop.create_task(self._train()),
        ]
        for k, worker_id in enumerate(self.worker_ids):
            await self._report(pb.WORKER_READY, worker_id, k, model=self.model)

    async def _report(
        self, kind: pb.EventKind, worker_id: str, slot: int, **fields: object
    ) -> None:
        if self._client is None:
            return
        request = pb.EventReport(
            node_secret=self._secret,
            node_id=self.node_id,
            kind=kind,
            worker_id=worker_id,
            slot=slot,
            pid=1000 + slot,
            wall_time=time.time(),
            **fields,  # type: ignore[arg-type]
        )
        with contextlib.suppress(rpc.RpcRetryable, rpc.RpcRejected):
            await self._client.call("ReportEvent", request)

    async def _watch(self) -> None:
        if self._client is None:
            return
        request = pb.WatchPlanRequest(node_secret=self._secret, node_id=self.node_id)
        with contextlib.suppress(rpc.RpcRetryable, rpc.RpcRejected):
            async for directive in self._client.stream("WatchPlan", request):
                if directive.WhichOneof("kind") != "plan":
                    continue
                plan = directive.plan
                self.plan_seen.setdefault(plan.generation, time.monotonic())
                mine = {a.worker_id: a.rank for a in plan.assignments if a.node_id == self.node_id}
                self._ranks = mine
                self.generation = plan.generation
                for k, worker_id in enumerate(self.worker_ids):
                    if worker_id in mine:
                        await self._report(
                            pb.JOINED, worker_id, k, generation=plan.generation, step=self.step
                        )

    async def _beat(self) -> None:
        while self._client is not None:
            request = pb.HeartbeatRequest(
                node_secret=self._secret, node_id=self.node_id, lease_id=self._lease
            )
            for worker_id, rank in self._ranks.items():
                request.progress.add(
                    worker_id=worker_id,
                    rank=rank,
                    generation=self.generation,
                    step=self.step,
                    loss=2.0,
                    step_time_s=self.step_time_s,
                    wall_time=time.time(),
                    phase=pb.WORKER_PHASE_RUNNING,
                )
            with contextlib.suppress(rpc.RpcRetryable, rpc.RpcRejected):
                await self._client.call("Heartbeat", request)
            await asyncio.sleep(self._interval)

    async def _train(self) -> None:
        while True:
            await asyncio.sleep(self.step_time_s)
            if self._ranks:
                self.step += 1

    async def lose(self) -> None:
        """Die: no more heartbeats, the stream drops, nothing is said."""
        for task in self._tasks:
            task.cancel()
        client, self._client = self._client, None
        if client is not None:
            await client.close()
