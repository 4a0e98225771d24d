"""The job's node agents: their liveness, their leases in the store, their workers,
their plan streams.

Where it sits: the job controller (controller/job.py) admits an agent here when it
registers, notes each heartbeat, and drops it when it is lost; what a loss means for
training (a failure, a new generation) stays in the job controller.

Liveness is decided here, in memory, from heartbeats (`watch_silence`): a node silent
for `lease_ttl_s` is lost (longer in a large job, whose agents are told to heartbeat
less often: `heartbeat_interval`). The store only keeps who the nodes are across a
change of leader: a node's key (/elastiq/<job>/nodes/<node_id>, a `pb.NodeRecord`)
lives on a store lease of twice its silence limit, refreshed once per silence limit
whatever the heartbeat rate, so the store sees one small request per node per lease
period (the reason Kubernetes moved node heartbeats to a Lease object). The key
still disappears by itself when the controller is gone too; `watch_leases` reports
that deletion.

Also answers the questions the planner and the recovery clock ask of the workers:
who is alive, who holds a generation's state, which steps they reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Collection

from elastiq import rpc
from elastiq.controller.job_state import ControllerConfig, NodeState, WorkerState
from elastiq.controller.metrics import ControllerMetrics
from elastiq.controller.planner import WorkerRef
from elastiq.controller.request_checks import Refusal
from elastiq.controller.store import Store, StoreUnavailable
from elastiq.proto import elastiq_pb2 as pb

log = logging.getLogger(__name__)

# what an agent reports of a worker it already runs, as the controller records it
_MEMBER_STATE = {
    pb.WORKER_PHASE_READY: "ready",
    pb.WORKER_PHASE_RUNNING: "running",
    pb.WORKER_PHASE_FINISHED: "finished",
}
_IN_PLAN = (pb.WORKER_PHASE_RUNNING, pb.WORKER_PHASE_FINISHED)
#: seconds between attempts to watch again while the store is away
_REWATCH_S = 0.5
#: a node's store lease lasts this many lease TTLs: refreshed once per TTL, it has a
#: whole TTL of slack, and it outlives the in-memory verdict, which comes first
STORE_LEASE_TTLS = 2.0


def _worker_state(node_id: str, w: pb.WorkerInfo) -> WorkerState:
    """A worker an agent says it runs (at registration), as the controller records it."""
    return WorkerState(
        WorkerRef(node_id, w.slot, w.worker_id),
        pid=w.pid,
        state=_MEMBER_STATE.get(w.phase, "ready"),
        joined_generation=w.generation if w.phase in _IN_PLAN else 0,
    )


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class NodeRegistry:
    def __init__(
        self, store: Store, prefix: str, config: ControllerConfig, metrics: ControllerMetrics
    ) -> None:
        self.store = store
        self.prefix = f"{prefix}nodes/"
        self.config = config
        self.metrics = metrics
        self.nodes: dict[str, NodeState] = {}
        self._outage_since = 0.0

    async def secret_for(self, req: pb.RegisterRequest) -> str:
        """The secret the node will hold: the one it presents if its id is held by a
        live node (in memory, or in the store under an earlier leader), else a new one.
        Refusal ALREADY_EXISTS for a live id without its secret: one client cannot
        evict another's node; an agent that lost its secret waits out the lease."""
        held = self.nodes.get(req.node_id)
        if held is not None:
            digest = _digest(held.secret)
        else:
            kv = await self.store.get(self.prefix + req.node_id)
            digest = pb.NodeRecord.FromString(kv.value).secret_sha256 if kv is not None else b""
        if not digest:
            return secrets.token_urlsafe(32)
        if req.node_secret and hmac.compare_digest(_digest(req.node_secret), digest):
            return req.node_secret
        raise Refusal(
            "ALREADY_EXISTS",
            f"node id {req.node_id!r} is held by a live agent; register with its secret, or "
            f"again after its lease ({self.config.lease_ttl_s:g}s) expires",
        )

    def heartbeat_interval(self) -> float:
        """The interval to tell agents: the configured one, doubled as often as needed
        to keep all heartbeats within `max_heartbeat_rate`, at most the maximum. Powers
        of two, so a node's silence limit (and store lease) changes a few times over
        a job's growth, not with every node that joins."""
        c = self.config
        interval = c.heartbeat_interval_s
        if c.max_heartbeat_rate:
            while len(self.nodes) / interval > c.max_heartbeat_rate:
                if interval * 2 > c.max_heartbeat_interval_s:
                    return c.max_heartbeat_interval_s
                interval *= 2
        return interval

    def silence_limit(self, node: NodeState) -> float:
        """How long `node` may be silent before it is lost: lease_ttl_s, scaled as its
        heartbeat interval is."""
        c = self.config
        return c.lease_ttl_s * max(1.0, node.heartbeat_interval_s / c.heartbeat_interval_s)

    def tell_interval(self, node: NodeState) -> float:
        """The interval `node` is told now (a heartbeat's or registration's answer)."""
        node.heartbeat_interval_s = self.heartbeat_interval()
        return node.heartbeat_interval_s

    async def _lease_record(self, node: NodeState) -> None:
        """A new store lease for `node` (twice its silence limit) and its record on it."""
        ttl = STORE_LEASE_TTLS * self.silence_limit(node)
        lease = await self.store.grant_lease(ttl)
        record = pb.NodeRecord(
            address=node.address, slots=node.slots, secret_sha256=_digest(node.secret)
        )
        try:
            await self.store.put(
                self.prefix + node.node_id, record.SerializeToString(), lease=lease
            )
        except Exception:
            with contextlib.suppress(Exception):  # the lease expires on its own anyway
                await self.store.revoke_lease(lease)
            raise
        node.lease, node.lease_ttl_s, node.lease_refreshed = lease, ttl, time.monotonic()

    async def admit(self, req: pb.RegisterRequest, secret: str) -> NodeState:
        """A new lease and record for the agent, with the workers it says it runs. The
        store is written first: if it refuses, nothing is kept in memory either."""
        node = NodeState(req.node_id, req.slots, req.address, 0, secret, time.monotonic())
        self.tell_interval(node)
        await self._lease_record(node)
        for w in req.workers:
            node.workers[w.worker_id] = _worker_state(req.node_id, w)
        self.nodes[req.node_id] = node
        self.metrics.nodes.set(len(self.nodes))
        return node

    @staticmethod
    def reconnect(node: NodeState, req: pb.RegisterRequest) -> tuple[list[WorkerState], int]:
        """A live node registered again with its secret (its stream or heartbeats broke,
        it did not die): its lease and the workers it still runs, the same processes,
        are kept. Returns the workers it no longer runs (removed here) and how many it
        runs that were not known before (added)."""
        node.last_seen = time.monotonic()
        listed = {w.worker_id: w for w in req.workers}
        gone = [
            w
            for worker_id, w in node.workers.items()
            if worker_id not in listed
            or listed[worker_id].pid != w.pid
            or listed[worker_id].slot != w.ref.slot
        ]
        for w in gone:
            del node.workers[w.ref.worker_id]
        added = 0
        for worker_id, info in listed.items():
            if worker_id not in node.workers:
                node.workers[worker_id] = _worker_state(node.node_id, info)
                added += 1
        return gone, added

    async def refresh(self, node: NodeState) -> None:
        """A heartbeat: the node is alive now. Its store lease is refreshed once per
        silence limit (half the lease's TTL), not per heartbeat: at 1,000 simulated
        workers a keepalive on every heartbeat was 500 etcd streams a second; a lease
        too short for a longer interval the node was told is let again. One the
        store let expire (an outage, a stall) is let again; while the store is away,
        the node stays alive in memory and the store is told when it is back."""
        now = node.last_seen = time.monotonic()
        outgrown = STORE_LEASE_TTLS * self.silence_limit(node) > node.lease_ttl_s
        due = now - node.lease_refreshed >= node.lease_ttl_s / STORE_LEASE_TTLS
        if not (outgrown or due or self._outage_since):
            return
        try:
            if outgrown:
                await self._lease_record(node)
            elif await self.store.refresh_lease(node.lease):
                node.lease_refreshed = now
            else:
                await self.relet(node)
            if self._outage_since:
                log.info("store back after %.1fs", time.monotonic() - self._outage_since)
                self._outage_since = 0.0
        except StoreUnavailable as exc:
            if not self._outage_since:
                self._outage_since = time.monotonic()
                log.warning("store unavailable (%r): nodes are kept alive by heartbeats", exc)

    def recently_seen(self, node: NodeState) -> bool:
        """Heard within its silence limit: alive, whatever its lease in the store (the
        verdict is `watch_silence`'s; the store only forgot it, e.g. in an outage)."""
        return time.monotonic() - node.last_seen <= self.silence_limit(node)

    async def watch_silence(self, on_silent: Callable[[str], Awaitable[None]]) -> None:
        """Report every node silent for longer than its silence limit, checking twice
        per (configured) heartbeat interval. A check that comes late means this
        controller was stalled (a starved or paused process) and could not hear
        anyone: the nodes get two intervals more to be heard before any is judged, so
        a stall of the controller is not taken for the death of every node."""
        tick = self.config.heartbeat_interval_s / 2
        expected = time.monotonic() + tick
        judge_from = 0.0
        while True:
            await asyncio.sleep(max(0.0, expected - time.monotonic()))
            now = time.monotonic()
            if now - expected > 2 * tick:
                judge_from = now + 2 * self.heartbeat_interval()
                log.warning(
                    "the controller was stalled %.2fs; judging no node before it has heard "
                    "them again",
                    now - expected,
                )
            expected = now + tick
            if now < judge_from:
                continue
            silent = [
                n.node_id for n in self.nodes.values() if now - n.last_seen > self.silence_limit(n)
            ]
            for node_id in silent:
                if node_id in self.nodes:  # a loss handled meanwhile may have dropped it
                    await on_silent(node_id)

    async def relet(self, node: NodeState) -> None:
        """A new lease and record for a live node whose lease the store let expire."""
        await self._lease_record(node)
        log.info("node %s is alive; its expired lease was let again", node.node_id)

    async def drop(self, node_id: str) -> NodeState | None:
        """Forget the node and revoke its lease; the node it was, if known."""
        node = self.nodes.pop(node_id, None)
        if node is None:
            return None
        await self.store.revoke_lease(node.lease)
        self.metrics.nodes.set(len(self.nodes))
        return node

    async def watch_leases(
        self, start_revision: int, on_expired: Callable[[str], Awaitable[None]]
    ) -> None:
        """Lease expiry deletes a node's key: watch from our first write, missing none.
        When the watch breaks (the store went away), read the nodes' keys again once
        it is back, report every node whose key vanished meanwhile, and watch again
        from that read's revision: an outage of any length loses no expiry."""
        revision = start_revision
        broken_since = 0.0
        while True:
            try:
                if broken_since:
                    keys, at = await self.store.read_prefix(self.prefix)
                    present = {kv.key[len(self.prefix) :] for kv in keys}
                    log.info(
                        "node lease watch restored after %.1fs (store revision %d)",
                        time.monotonic() - broken_since,
                        at,
                    )
                    broken_since, revision = 0.0, at + 1
                    for node_id in [n for n in self.nodes if n not in present]:
                        await on_expired(node_id)
                async for event in self.store.watch_prefix(self.prefix, revision):
                    revision = event.revision + 1
                    if event.kind == "delete":
                        node_id = event.key[len(self.prefix) :]
                        if node_id in self.nodes:
                            await on_expired(node_id)
                raise StoreUnavailable("the watch ended")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not broken_since:
                    broken_since = time.monotonic()
                    log.warning("node lease watch broke (%r); will re-watch", exc)
                await asyncio.sleep(_REWATCH_S)

    def broadcast(self, directive: pb.Directive | rpc.Encoded) -> None:
        """The same directive to every node, encoded once."""
        encoded = directive if isinstance(directive, rpc.Encoded) else rpc.Encoded.of(directive)
        for node in self.nodes.values():
            node.queue.put_nowait(encoded)

    def workers(self) -> list[WorkerState]:
        return [w for n in self.nodes.values() for w in n.workers.values()]

    def worker(self, ref: WorkerRef) -> WorkerState | None:
        """The live worker `ref` names (found through its node, not by a scan)."""
        node = self.nodes.get(ref.node_id)
        return node.workers.get(ref.worker_id) if node is not None else None

    def live_members(self) -> list[WorkerRef]:
        return sorted(w.ref for w in self.workers())

    def progress(self) -> list[pb.WorkerProgress]:
        return [w.progress for w in self.workers() if w.progress is not None]

    def holders_of(self, generation: int) -> set[str]:
        """Workers holding `generation`'s state: they reported joining it and have not
        started joining another since (workers check this themselves too)."""
        return {w.ref.worker_id for w in self.workers() if w.joined_generation == generation}

    def highest_step(self) -> int:
        """The highest step any worker reported (what a restore would roll back from)."""
        return max((p.step for p in self.progress()), default=0)

    def lowest_step_of(self, refs: Collection[WorkerRef]) -> int:
        """The lowest step the given workers reported: the last committed one."""
        steps = [
            w.progress.step
            for w in (self.worker(r) for r in refs)
            if w is not None and w.progress is not None
        ]
        return min(steps) if steps else 0
