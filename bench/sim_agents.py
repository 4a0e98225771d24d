"""Simulated node agents that speak the real protocol, many per process (issue 15).

Where it sits: bench support, never the product. Each `SimNode` registers with the
agent token, opens its WatchPlan stream, heartbeats at the interval the controller
tells it with its workers' progress, reports WORKER_READY, JOINED, RESUMED and
WORKER_EXITED like a real agent, and "trains" by advancing a step counter every `step_time_s`. The
controller, store, planner, gRPC and wire format it talks to are the product's own,
unchanged. `lose()` ends a node the way a dead one ends: its stream and heartbeats
stop at once, with no goodbye.

Where a real agent differs, to fit thousands in one process on two cores:
- a plan is stamped when its bytes arrive (`plan_seen`, what "plan delivered" is
  measured from) and only its generation is read from the wire; one node per process
  (`observer=True`) rebuilds and parses every plan (whole or delta) as an agent does,
  which proves the bytes are the plan.
  A real agent parses each plan on its own machine (0.7 ms at 10,000 workers);
- a node takes it that all of its live workers are in each plan (true in these
  scenarios: no spares, nothing refused) and reports their JOINED after a random
  0-1 s, as workers rebuilding their communicators report at different moments, and
  their RESUMED one simulated step later.

Stragglers: `stall_reading()` stops reading the plan stream (heartbeats go on);
`slow_s` delays every answer (each directive handled, each heartbeat and report).
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from dataclasses import dataclass, field

import grpc
import grpc.aio

from elastiq import rpc
from elastiq.agent.plan_layout import PlanLayout, apply_plan_delta
from elastiq.config import JobConfig
from elastiq.proto import elastiq_pb2 as pb

_WATCH_PLAN = "/elastiq.v1.Controller/WatchPlan"


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _field(buf: bytes, pos: int, end: int, wanted: int) -> tuple[int, int] | None:
    """(value, position) of field `wanted` of the message in buf[pos:end]: a varint's
    value, or a length-delimited field's length with the position of its bytes."""
    while pos < end:
        key, pos = _varint(buf, pos)
        number, kind = key >> 3, key & 7
        if kind == 0:
            value, pos = _varint(buf, pos)
            if number == wanted:
                return value, pos
        elif kind == 2:
            size, pos = _varint(buf, pos)
            if number == wanted:
                return size, pos
            pos += size
        elif kind == 1:
            pos += 8
        elif kind == 5:
            pos += 4
        else:
            raise ValueError(f"wire type {kind}")
    return None


def plan_generation(raw: bytes) -> int | None:
    """The generation of the plan in a Directive's wire bytes, whole (field 1) or a
    delta (field 4, its plan in field 2), without parsing the plan; None: not a plan."""
    for directive_field, path in ((1, ()), (4, (2,))):
        found = _field(raw, 0, len(raw), directive_field)
        if found is None:
            continue
        size, pos = found
        end = pos + size
        for inner in path:
            nested = _field(raw, pos, end, inner)
            if nested is None:
                return None
            size, pos = nested
            end = pos + size
        generation = _field(raw, pos, end, 2)
        return generation[0] if generation is not None else 0
    return None


def _slot(worker_id: str) -> int:
    """The slot of a simulated worker, from its id (node.wK)."""
    return int(worker_id.rsplit(".w", 1)[1])


@dataclass(slots=True)
class SimNode:
    address: str
    token: str
    node_id: str
    slots: int = 4
    step_time_s: float = 0.5
    observer: bool = False
    """Parse every plan in full (one node per process)."""
    slow_s: float = 0.0
    """Delay before each answer: a slow agent."""
    model: pb.ModelShape = field(
        default_factory=lambda: pb.ModelShape(unit_numel=JobConfig().unit_numel())
    )
    plan_seen: dict[int, float] = field(default_factory=dict)
    """generation -> time.monotonic() when its plan's bytes arrived here."""
    plan_bytes: int = 0
    """Size of the last plan directive received."""
    heartbeats: int = 0
    """Heartbeats answered by the controller."""
    generation: int = 0
    step: int = 0
    workers: list[str] = field(default_factory=list)
    _client: rpc.ControllerClient | None = None
    _secret: str = ""
    _lease: int = 0
    _interval: float = 0.5
    _silence_limit: float = 3.0
    failure: str = ""
    """Why this simulated node broke, if it did (a bug of the simulator)."""
    reports_failed: list[str] = field(default_factory=list)
    """Report calls the controller did not answer (JOINED and RESUMED are not retried:
    the next heartbeat's progress says the same, as it does for an agent)."""
    sessions_broken: list[str] = field(default_factory=list)
    """Why each of its sessions ended before it registered again (as an agent does)."""
    _last: pb.Plan | None = None
    _reading: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[object]] = field(default_factory=list)

    async def start(self) -> None:
        """Register, then live as an agent does: stream and heartbeat until either
        breaks, then register again (`_live`)."""
        self.workers = [f"{self.node_id}.w{k}" for k in range(self.slots)]
        self._reading.set()
        await self._register()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._live()), loop.create_task(self._train())]
        for task in self._tasks:
            task.add_done_callback(self._ended)
        await self._report(pb.WORKER_READY, self.workers, model=self.model)

    async def _register(self) -> None:
        """Register, retrying while the controller is unavailable (a standby, or busy);
        after the first time the node lists its workers, as an agent does when its
        stream or heartbeat broke, so the controller takes them back without a READY."""
        if self._client is None:
            self._client = rpc.ControllerClient(self.address, timeout_s=30.0)
        request = pb.RegisterRequest(
            token=self.token,
            node_id=self.node_id,
            slots=self.slots,
            address="sim",
            model=self.model,
            node_secret=self._secret,
        )
        if self._secret:
            for worker_id in self.workers:
                request.workers.add(
                    worker_id=worker_id,
                    slot=_slot(worker_id),
                    pid=1000 + _slot(worker_id),
                    phase=pb.WORKER_PHASE_RUNNING if self.generation else pb.WORKER_PHASE_READY,
                    generation=self.generation,
                    step=self.step,
                )
        deadline = time.monotonic() + 120
        while True:
            try:
                reply = await self._client.call("Register", request)
                break
            except rpc.RpcRetryable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        self._secret, self._lease = reply.node_secret, reply.lease_id
        self._interval = reply.heartbeat_interval_s
        self._silence_limit = reply.lease_ttl_s

    async def _live(self) -> None:
        """Stream and heartbeat until either ends, then register again: what
        agent/agent.py does (`_session`), so a stream the controller or gRPC dropped
        under load heals the way it heals in the product. Each time is counted."""
        while self._client is not None:
            watch = asyncio.ensure_future(self._watch())
            beat = asyncio.ensure_future(self._beat())
            try:
                done, _ = await asyncio.wait({watch, beat}, return_when=asyncio.FIRST_COMPLETED)
            finally:  # also when lose() cancels this
                watch.cancel()
                beat.cancel()
            for task in done:
                broke = task.exception()
                if broke is not None:
                    raise broke
            if self._client is None:  # lost meanwhile
                return
            self.sessions_broken.append(next(t.result() for t in done))
            # a stalled reader is a stuck agent: it does not come back on its own
            await self._reading.wait()
            await self._register()

    async def _report(self, kind: pb.EventKind, workers: list[str], **fields: object) -> None:
        """One call for the reports of several workers, as an agent batches them."""
        if self._client is None or not workers:
            return
        if self.slow_s:
            await asyncio.sleep(self.slow_s)
        batch = pb.EventBatch(node_secret=self._secret, node_id=self.node_id)
        for worker_id in workers:
            slot = _slot(worker_id)
            batch.reports.add(
                node_secret=self._secret,
                node_id=self.node_id,
                kind=kind,
                worker_id=worker_id,
                slot=slot,
                pid=1000 + slot,
                wall_time=time.time(),
                **fields,
            )
        # WORKER_READY is retried while the controller is busy: a worker whose readiness
        # is lost would never be planned and the run would wait for it
        for _ in range(5 if kind == pb.WORKER_READY else 1):
            client = self._client  # None once the node was lost meanwhile
            if client is None:
                return
            try:
                await client.call("ReportEvents", batch)
                return
            except rpc.RpcRejected:
                return
            except rpc.RpcRetryable as exc:
                self.reports_failed.append(f"{pb.EventKind.Name(kind)}: {exc}")
                await asyncio.sleep(0.5)

    async def _watch(self) -> str:
        """Read plans until the stream ends; returns why it ended."""
        if self._client is None:
            return "lost"
        channel = self._client._channel  # the node's own connection, as an agent has
        call = channel.unary_stream(
            _WATCH_PLAN,
            request_serializer=pb.WatchPlanRequest.SerializeToString,
            response_deserializer=bytes,
        )(pb.WatchPlanRequest(node_secret=self._secret, node_id=self.node_id))
        try:
            while True:
                raw = await call.read()
                if raw is grpc.aio.EOF:
                    return "plan stream ended"
                await self._reading.wait()  # a stalled reader: this and all later wait
                arrived = time.monotonic()
                generation = plan_generation(raw)
                if generation is None:
                    continue
                if self.slow_s:
                    await asyncio.sleep(self.slow_s)
                    arrived = time.monotonic()
                self.plan_seen.setdefault(generation, arrived)
                self.plan_bytes = len(raw)
                if self.observer:  # what a real agent does with every plan
                    directive = pb.Directive.FromString(raw)
                    if directive.WhichOneof("kind") == "plan_delta":
                        if self._last is None:
                            raise RuntimeError("a plan delta came first")
                        self._last = apply_plan_delta(self._last, directive.plan_delta)
                    else:
                        self._last = directive.plan
                    PlanLayout.parse(self._last)
                    if self._last.generation != generation:
                        raise RuntimeError(f"read generation {generation}, parsed another")
                self.generation = generation
                asyncio.get_running_loop().create_task(self._join(generation))
        except grpc.aio.AioRpcError as exc:
            return f"plan stream: {exc.code().name}"
        finally:
            call.cancel()

    async def _join(self, generation: int) -> None:
        """JOINED once the "communicators are rebuilt", RESUMED after the first step in
        the generation, as a real worker reports them."""
        await asyncio.sleep(random.uniform(0.0, 1.0))
        for kind in (pb.JOINED, pb.RESUMED):
            if self.generation != generation:
                return
            await self._report(kind, list(self.workers), generation=generation, step=self.step)
            await asyncio.sleep(self.step_time_s)

    async def _beat(self) -> str:
        """Heartbeat until the controller does not answer or does not know this node;
        returns why (an agent registers again then)."""
        answered = time.monotonic()
        while self._client is not None:
            request = pb.HeartbeatRequest(
                node_secret=self._secret, node_id=self.node_id, lease_id=self._lease
            )
            for worker_id in self.workers if self.generation else ():
                request.progress.add(
                    worker_id=worker_id,
                    rank=-1,
                    generation=self.generation,
                    step=self.step,
                    loss=2.0,
                    step_time_s=self.step_time_s,
                    wall_time=time.time(),
                    phase=pb.WORKER_PHASE_RUNNING,
                )
            if self.slow_s:
                await asyncio.sleep(self.slow_s)
            try:
                reply = await self._client.call("Heartbeat", request)
            except rpc.RpcRetryable as exc:
                # as agent/agent.py: retried for half the node's silence limit
                if time.monotonic() - answered >= self._silence_limit / 2:
                    return f"heartbeat: {exc}"
                await asyncio.sleep(self._interval)
                continue
            except rpc.RpcRejected as exc:
                return f"heartbeat: {exc}"
            answered = time.monotonic()
            self.heartbeats += 1
            if not reply.known:
                return "heartbeat: the controller does not know this node"
            if reply.heartbeat_interval_s > 0:
                self._interval = reply.heartbeat_interval_s
            await asyncio.sleep(self._interval)
        return "lost"

    async def _train(self) -> None:
        while True:
            await asyncio.sleep(self.step_time_s)
            if self.generation:
                self.step += 1

    def _ended(self, task: asyncio.Task[object]) -> None:
        """A simulated agent that breaks is a bug of the simulator: say so loudly."""
        if not task.cancelled() and task.exception() is not None:
            self.failure = repr(task.exception())
            note = f"simulated node failed: {self.node_id}: {self.failure}"
            print(note, file=sys.stderr, flush=True)

    def stall_reading(self) -> None:
        """Stop reading the plan stream; everything else goes on."""
        self._reading.clear()

    async def exit_worker(self) -> str:
        """One worker process dies; the agent reports it, as a real agent does."""
        worker_id = self.workers.pop()
        await self._report(pb.WORKER_EXITED, [worker_id], detail="killed")
        return worker_id

    async def lose(self) -> None:
        """Die: no more heartbeats, the stream drops, nothing is said."""
        for task in self._tasks:
            task.cancel()
        client, self._client = self._client, None
        if client is not None:
            await client.close()
