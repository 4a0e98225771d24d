"""The controller's model of one job: members, generations, plans, recoveries.

Sits between the gRPC service (which validates input and calls in here) and the
store (the only place state is written, by this controller alone while it leads).
Every membership change goes through `_replan` (when: controller/replan_scheduler.py,
which coalesces changes within a few tens of milliseconds and retries failures),
which asks controller/generation_plan.py for the next plan, writes it with
compare-and-set and pushes it to every agent's stream. Its parts: the agents and
their leases (node_registry.py), the recovery clock (recovery_clock.py), the source
of lost state (lost_state.py), chaos orders (chaos_admin.py), status (status_view.py).

Failures: a worker's exit or watchdog kill (reported by its agent), an agent's stream
closing, a node's lease expiring. Joins (workers reported ready) are planned at once
and adopted by the running workers at their next step boundary.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

from elastiq import logs, rpc
from elastiq.config import JobConfig
from elastiq.controller.chaos_admin import resolve_chaos
from elastiq.controller.generation_plan import (
    CompletedGenerations,
    GenerationPlanner,
    Refused,
    Unchanged,
    covered_by_joined,
)
from elastiq.controller.job_state import ControllerConfig, NodeState, WorkerState
from elastiq.controller.metrics import ControllerMetrics
from elastiq.controller.node_registry import NodeRegistry
from elastiq.controller.planner import HybridLayout, WorkerRef
from elastiq.controller.recovery_clock import RecoveryClock
from elastiq.controller.replan_scheduler import ReplanScheduler
from elastiq.controller.start_wait import NodeReadiness, StartWait
from elastiq.controller.status_view import build_status
from elastiq.controller.store import Store
from elastiq.controller.wire import plan_delta, takeover_of
from elastiq.proto import elastiq_pb2 as pb

log = logging.getLogger(__name__)

#: the job's progress gauges are recomputed at most this often
PROGRESS_METRICS_EVERY_S = 1.0

__all__ = ["ControllerConfig", "JobController", "NodeState", "WorkerState"]


class JobController:
    """Membership and plans of one job. All methods run on one asyncio loop."""

    def __init__(
        self,
        store: Store,
        job: JobConfig,
        config: ControllerConfig,
        rendezvous: str,
        metrics: ControllerMetrics | None = None,
        identity: str = "controller",
    ) -> None:
        self.store = store
        self.job = job
        self.config = config
        self.rendezvous = rendezvous
        self.metrics = metrics or ControllerMetrics()
        self.identity = identity
        self.prefix = f"/elastiq/{job.job}/"
        self.registry = NodeRegistry(store, self.prefix, config, self.metrics)
        self.nodes: dict[str, NodeState] = self.registry.nodes
        self.layout: HybridLayout | None = None
        # the last layout every member finished joining: plans take state from it
        self.generations = CompletedGenerations()
        self._growth_waiting: list[str] = []
        self._held_joins: dict[str, list[str]] = {}
        """Per node: readiness of workers waiting for the node's other slots."""
        self._completed = 0
        """The newest generation every member reported joining."""
        self._progress_observed = 0.0
        """When the progress gauges were last computed (time.monotonic())."""
        self._all_lost_since = 0.0
        """When the last live worker was lost (0: some are alive)."""
        """Newcomers' reasons, waiting for the generation being joined to complete."""
        self.planner = GenerationPlanner(job, config, rendezvous, self.metrics)
        self.plan: pb.Plan | None = None
        self.plan_revision = 0
        self.phase: pb.JobPhase = pb.JOB_PENDING
        self.events: collections.deque[pb.Event] = collections.deque(maxlen=config.events_kept)
        self.recoveries: list[pb.Recovery] = []
        self.recovery = RecoveryClock()
        self.replans = ReplanScheduler(
            self._replan, self._fail, self._event, coalesce_s=config.coalesce_s
        )
        self._start_task: asyncio.Task[None] | None = None
        self._start_watch: asyncio.Task[None] | None = None
        self.waiting_for = ""
        """Before the first generation: what the job waits for (controller/start_wait)."""
        self._lease_watch: asyncio.Task[None] | None = None
        self._silence_watch: asyncio.Task[None] | None = None
        self._plan_directive: rpc.Encoded | None = None
        """The current plan as sent, encoded once (every agent gets the same bytes)."""
        self._member_ids: frozenset[str] = frozenset()
        """The current layout's worker ids (membership checks are per event)."""
        self.failure_message = ""
        self.failures = 0
        self.first_loss = 0.0
        self.takeover = False
        self.done = asyncio.Event()
        logs.context.job = job.job

    # lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Load a previous leader's plan (takeover) and start watching node leases."""
        revision = await self.store.put(self.prefix + "config", self.job.to_json().encode())
        kv = await self.store.get(self.prefix + "plan")
        if kv is not None:
            plan = pb.Plan.FromString(kv.value)
            taken = takeover_of(plan, self.job)
            self._set_layout(taken.layout)
            self.planner.take_over(taken)
            self.generations.completed = self.layout
            logs.context.generation = plan.generation
            self._set_plan(plan)
            self.plan_revision = kv.mod_revision
            self.phase = pb.JOB_RECOVERING
            self.takeover = True
            self._event("takeover", f"took over at generation {plan.generation}")
            asyncio.get_running_loop().call_later(
                self.config.takeover_grace_s, lambda: self._request_replan("controller takeover")
            )
        loop = asyncio.get_running_loop()
        self._lease_watch = loop.create_task(
            self.registry.watch_leases(revision + 1, self._lease_expired)
        )
        self._silence_watch = loop.create_task(self.registry.watch_silence(self._went_silent))
        if self.layout is None:
            wait = StartWait(
                min_workers=self.config.min_workers,
                timeout_s=self.config.start_timeout_s,
                began=time.monotonic(),
            )
            self._tick_start(wait)  # the wait's first event, before any request is served
            self._start_watch = loop.create_task(self._watch_start(wait))

    async def stop(self) -> None:
        self.replans.stop()
        for task in (self._lease_watch, self._silence_watch, self._start_task, self._start_watch):
            if task is not None:
                task.cancel()

    @property
    def over(self) -> bool:
        return self.phase in (pb.JOB_SUCCEEDED, pb.JOB_FAILED)

    @property
    def generation(self) -> int:
        return self.plan.generation if self.plan is not None else 0

    def _event(self, kind: str, message: str) -> None:
        self.events.append(
            pb.Event(wall_time=time.time(), generation=self.generation, kind=kind, message=message)
        )
        log.info("event %s: %s", kind, message)

    # agents ---------------------------------------------------------------------------
    async def register(self, req: pb.RegisterRequest) -> pb.RegisterResponse:
        """Raises, changing nothing, Refusal if a live node holds the id and this is not
        it, ValueError if its workers built another model."""
        secret = await self.registry.secret_for(req)
        if req.model.unit_numel:
            refused = self.planner.learn_model(req.model.unit_numel)
            if refused:
                raise ValueError(f"{req.node_id}: {refused}")
        held = self.nodes.get(req.node_id)
        if held is not None and held.slots == req.slots:
            # the same agent again, alive (its stream or heartbeats broke): a reconnect,
            # not a loss. At 10,000 simulated workers, taking each for a node lost made
            # every call timed out under load a recovery, and the recoveries more load
            # (bench/scale.py), until the job lost its state
            node = held
            self._reconnected(node, req)
        else:
            if held is not None:
                await self._lose_node(req.node_id, "re-registered with other slots")
            node = await self.registry.admit(req, secret)
            self._event("node_registered", f"{req.node_id} with {req.slots} slot(s)")
            if node.workers:
                self._on_membership_grew(f"{req.node_id} rejoined")
        return pb.RegisterResponse(
            lease_id=node.lease,
            lease_ttl_s=self.registry.silence_limit(node),
            heartbeat_interval_s=node.heartbeat_interval_s,
            config_json=self.job.to_json(),
            generation=self.generation,
            job=self.job.job,
            node_secret=secret,
        )

    def _reconnected(self, node: NodeState, req: pb.RegisterRequest) -> None:
        """The workers the node still runs go on in the plan; one it no longer runs
        (or another process in its slot) is a failure, one it newly runs a newcomer."""
        gone, added = self.registry.reconnect(node, req)
        self._event(
            "node_reconnected",
            f"{node.node_id}: {len(node.workers) - added} worker(s) kept, "
            f"{len(gone)} gone, {added} new",
        )
        failed = [w.ref.worker_id for w in gone if self._in_plan(w.ref.worker_id)]
        if failed and not self.over:
            when = self.recovery.failure_time(failed, time.time())
            why = f"{', '.join(failed)} gone when {node.node_id} reconnected"
            self._on_failure(failed, why, when)
        if added:
            self._on_membership_grew(f"{node.node_id} reconnected")

    async def heartbeat(self, req: pb.HeartbeatRequest) -> pb.HeartbeatResponse:
        node = self.nodes.get(req.node_id)
        if node is None:
            return pb.HeartbeatResponse(generation=self.generation, known=False)
        await self.registry.refresh(node)
        self.metrics.heartbeats.inc()
        for p in req.progress:
            worker = node.workers.get(p.worker_id)
            if worker is not None:
                worker.progress = p
                self.planner.observe_unit_costs(dict(p.unit_costs))
                if p.generation == self.generation > worker.joined_generation:
                    # progress in the current generation means it was joined, even if
                    # the JOINED report itself was lost: newcomers waiting for this
                    # generation to complete are never stuck on one lost message
                    worker.joined_generation = p.generation
                    self._note_joined(p.generation, p.worker_id)
        now = time.monotonic()
        if now - self._progress_observed >= PROGRESS_METRICS_EVERY_S:
            # a pass over every worker: once a second, not once per heartbeat (at 1,000
            # simulated workers, bench/scale.py: steady-state controller CPU 0.82 -> 0.66
            # seconds per second)
            self._progress_observed = now
            self.metrics.observe_progress(self.registry.progress())
        return pb.HeartbeatResponse(
            generation=self.generation,
            known=True,
            heartbeat_interval_s=self.registry.tell_interval(node),
        )

    def open_stream(self, node_id: str) -> asyncio.Queue[pb.Directive | rpc.Encoded | None]:
        """The newest stream of a node gets its directives; an older one is ended."""
        node = self.nodes[node_id]
        node.queue.put_nowait(None)
        node.queue = asyncio.Queue()
        node.streams = 1
        if self._plan_directive is not None:
            node.queue.put_nowait(self._plan_directive)
        if self.over:
            node.queue.put_nowait(pb.Directive(shutdown=self.phase))
        return node.queue

    async def close_stream(
        self, node_id: str, queue: asyncio.Queue[pb.Directive | rpc.Encoded | None]
    ) -> None:
        node = self.nodes.get(node_id)
        if node is None or node.queue is not queue:
            return
        node.streams -= 1
        if node.streams <= 0 and not self.over:
            await self._lose_node(node_id, "agent stream closed")

    async def _went_silent(self, node_id: str) -> None:
        await self._lose_node(node_id, "heartbeats stopped")

    async def _lease_expired(self, node_id: str) -> None:
        node = self.nodes.get(node_id)
        if node is not None and self.registry.recently_seen(node):
            await self.registry.relet(node)  # the store forgot it (an outage); it lives
            return
        await self._lose_node(node_id, "lease expired")

    async def _lose_node(self, node_id: str, cause: str) -> None:
        node = await self.registry.drop(node_id)
        if node is None:
            return
        lost = [w for w in node.workers.values() if self._in_plan(w.ref.worker_id)]
        self._event("node_lost", f"{node_id}: {cause}")
        if lost:
            self._on_failure(
                [w.ref.worker_id for w in lost],
                f"node {node_id} lost ({cause})",
                self.recovery.failure_time(node.workers.keys(), time.time()),
            )

    # events -----------------------------------------------------------------------------
    def _in_plan(self, worker_id: str) -> bool:
        return worker_id in self._member_ids

    def _set_plan(self, plan: pb.Plan) -> rpc.Encoded:
        self.plan = plan
        self._plan_directive = rpc.Encoded.of(pb.Directive(plan=plan))
        return self._plan_directive

    def _set_layout(self, layout: HybridLayout) -> None:
        self.layout = layout
        self._member_ids = frozenset(layout.worker_ids())

    async def report(self, node_id: str, req: pb.EventReport) -> pb.EventAck:
        node = self.nodes[node_id]
        # any authenticated word from a node shows it alive: a heartbeat queued behind
        # a burst of reports must not make it look silent
        node.last_seen = time.monotonic()
        kind = pb.EventKind.Name(req.kind)
        worker = node.workers.get(req.worker_id)
        if req.kind == pb.WORKER_READY:
            refused = self.planner.learn_model(req.model.unit_numel)
            if refused:
                self._event("worker_refused", f"{req.worker_id}: {refused}")
                if self.planner.unit_numel is None:  # the job's own model cannot run
                    self._fail(f"{req.worker_id}: {refused}")
                return pb.EventAck(accepted=False, reason=refused)
            if worker is not None and worker.pid == req.pid and worker.ref.slot == req.slot:
                # the same process again: an agent retrying a report whose answer was
                # lost under load; starting it over would forget that it joined
                return pb.EventAck(accepted=True)
            node.workers[req.worker_id] = WorkerState(
                WorkerRef(node_id, req.slot, req.worker_id), pid=req.pid
            )
            self._event("worker_ready", f"{req.worker_id} (pid {req.pid})")
            self._on_worker_ready(node, f"{req.worker_id} joined")
            return pb.EventAck(accepted=True)
        if req.kind == pb.START_FAILED:
            self._event("start_failed", f"{req.worker_id}: {req.detail}")
            self._fail(f"{req.worker_id} could not start: {req.detail}")
            return pb.EventAck(accepted=True)
        if req.kind == pb.WORKER_RESTARTING:
            self._event("worker_restarting", f"{req.worker_id}: {req.detail}")
            return pb.EventAck(accepted=True)
        if req.kind == pb.CHAOS_INJECTED:
            self.recovery.chaos_injected(req.worker_id, req.wall_time)
            self._event("chaos", f"{req.detail} on {req.worker_id or node_id}")
            return pb.EventAck(accepted=True)
        if req.kind in (pb.WORKER_EXITED, pb.WORKER_HUNG, pb.WORKER_FAILED):
            # membership facts are never stale: a gone worker is gone in any generation
            known = node.workers.pop(req.worker_id, None) is not None
            self._event(kind.lower(), f"{req.worker_id}: {req.detail}")
            if known and self._in_plan(req.worker_id) and not self.over:
                when = self.recovery.failure_time([req.worker_id], req.wall_time or time.time())
                self._on_failure([req.worker_id], f"{req.worker_id} {req.detail}", when)
            return pb.EventAck(accepted=True)
        if req.generation < self.generation:
            self.metrics.rejected.labels("stale_generation").inc()
            stale = f"stale generation {req.generation} < current {self.generation}"
            log.info("ignoring %s from %s: %s", kind, req.worker_id, stale)
            return pb.EventAck(accepted=False, reason=stale)
        if worker is None:
            return pb.EventAck(accepted=False, reason=f"unknown worker {req.worker_id}")
        if req.kind in (pb.JOINED, pb.RESUMED):
            self._on_joined(worker, req)
        elif req.kind == pb.FINISHED:
            if not self._in_plan(req.worker_id) or req.generation != self.generation:
                return pb.EventAck(accepted=False, reason="not a member of the current plan")
            worker.state = "finished"
            if worker.progress is None:
                worker.progress = pb.WorkerProgress(worker_id=req.worker_id)
            worker.progress.step, worker.progress.loss = req.step, req.loss
            worker.progress.wall_time = req.wall_time
            self._check_finished()
        elif req.kind == pb.COLLECTIVE_ERROR:
            self._event("collective_error", f"{req.worker_id}: {req.detail}")
        return pb.EventAck(accepted=True)

    def _on_joined(self, worker: WorkerState, req: pb.EventReport) -> None:
        """A worker joined the generation, or finished its first step in it."""
        worker.state = "running"
        worker_id = worker.ref.worker_id
        if req.kind == pb.JOINED:
            worker.joined_generation = max(worker.joined_generation, req.generation)
            self.recovery.joined(worker_id, req.generation, req.step, req.join)
            self._note_joined(req.generation, worker_id)
            return
        if req.step == 1 and not self.first_loss:
            self.first_loss = req.loss
        if self.layout is None:
            return
        record = self.recovery.resumed(worker_id, req.generation, req.wall_time, self._member_ids)
        if record is not None:
            self._recovered(record)

    def _recovered(self, record: pb.Recovery) -> None:
        self.recoveries.append(record)
        self.metrics.observe_recovery(record)
        took = record.resumed_time - record.failure_time
        if self.phase == pb.JOB_RECOVERING:
            self.phase = pb.JOB_RUNNING
        self._event(
            "recovered",
            f"generation {record.generation} resumed {took:.3f}s after the change began "
            f"({record.cause}); lost steps {record.lost_steps}",
        )

    def _check_finished(self) -> None:
        if self.layout is None:
            return
        members = [self.registry.worker(ref) for ref in self.layout.workers]
        if all(m is not None and m.state == "finished" for m in members):
            self.phase = pb.JOB_SUCCEEDED
            self._event("finished", f"all {len(members)} workers reached step {self.job.steps}")
            self.registry.broadcast(pb.Directive(shutdown=pb.JOB_SUCCEEDED))
            self.done.set()

    def _last_committed(self) -> int:
        return self.registry.lowest_step_of(self.layout.workers) if self.layout else 0

    def _on_failure(self, worker_ids: list[str], cause: str, failure_time: float) -> None:
        self.failures += len(worker_ids)
        self.metrics.failures.labels("node" if cause.startswith("node") else "worker").inc(
            len(worker_ids)
        )
        if self.phase in (pb.JOB_RUNNING, pb.JOB_RECOVERING):
            self.recovery.failure(cause, failure_time, self._last_committed())
            self.phase = pb.JOB_RECOVERING
        self._request_replan(cause)

    def _on_worker_ready(self, node: NodeState, reason: str) -> None:
        """A worker is ready. On a node new to the running job whose other slots are
        still starting, it waits for them (up to settle_s) so that the node joins in
        one reconfiguration, not one per worker: a node of 8 would otherwise pause
        training 8 times. Training goes on meanwhile; any plan made in between (a
        failure) takes the ready ones in anyway."""
        held = self._held_joins.setdefault(node.node_id, [])
        held.append(reason)
        new_node = not any(w in self._member_ids for w in node.workers)
        if (
            self.layout is not None
            and not self.takeover
            and new_node
            and len(node.workers) < node.slots
            and self.config.settle_s > 0
        ):
            if len(held) == 1:
                self._event(
                    "waiting",
                    f"{node.node_id}: {len(node.workers)} of {node.slots} workers ready; "
                    f"they join together (waiting up to {self.config.settle_s:g}s)",
                )
                asyncio.get_running_loop().call_later(
                    self.config.settle_s, self._release_held_join, node.node_id
                )
            return
        self._release_held_join(node.node_id)

    def _release_held_join(self, node_id: str) -> None:
        held = self._held_joins.pop(node_id, [])
        if held:
            self._on_membership_grew("; ".join(held))

    def _on_membership_grew(self, reason: str) -> None:
        if self.takeover:
            # wait for every member of the old plan (or the grace period) before replanning
            present = {w.worker_id for w in self.live_members()}
            if self.layout is not None and set(self.layout.worker_ids()) <= present:
                self._request_replan("controller takeover")
            return
        if self.layout is None:
            ready = sum(len(n.workers) for n in self.nodes.values())
            if ready >= self.config.min_workers and self._start_task is None:
                self._start_task = asyncio.get_running_loop().create_task(
                    self._start_after_settle()
                )
            return
        if self.phase not in (pb.JOB_RUNNING, pb.JOB_RECOVERING):
            return
        if not self.generations.complete(self.layout):
            # A newcomer waits for the generation being joined to complete. Planning
            # past it now would name the older, completed generation as the source of
            # state while its members finish moving to the newer layout (two scale-ups
            # 0.2 s apart failed a job that way). A failure meanwhile plans at once and
            # takes the newcomer in with it.
            self._growth_waiting.append(reason)
            return
        self._request_replan(reason)

    def _wait_for_any(self, reason: str) -> bool:
        """Every worker is lost at once: wait two lease TTLs for their agents to come
        back before failing the job. A controller stalled past the lease TTL (a starved
        or paused process) expires every node together, and their agents register again
        within moments with their workers and state intact."""
        now = time.monotonic()
        window = 2 * self.config.lease_ttl_s
        if not self._all_lost_since:
            self._all_lost_since = now
            self._event(
                "all_lost", f"every worker is lost ({reason}); waiting {window:g}s for them"
            )
        if now - self._all_lost_since >= window:
            self._all_lost_since = 0.0
            return False
        asyncio.get_running_loop().call_later(0.25, self._request_replan, reason)
        return True

    def _maybe_back_to_running(self) -> None:
        """Every member of the current plan is back (their agents registered again
        after a stall): the generation goes on as it was, and nothing was recovered."""
        if self.phase != pb.JOB_RECOVERING or self.layout is None:
            return
        live = {w.worker_id for w in self.live_members()}
        pending = self.recovery.pending
        if set(self.layout.worker_ids()) <= live and (pending is None or not pending.generation):
            self.recovery.called_off()
            self.phase = pb.JOB_RUNNING
            self._event(
                "rejoined",
                f"every member of generation {self.generation} is back; it goes on unchanged",
            )

    def _note_joined(self, generation: int, worker_id: str) -> None:
        """A member joined `generation`; once every member has, the generation is
        complete (the gauge operators and bench/scale.py watch) and newcomers that
        waited for it are planned."""
        self.generations.joined(generation, worker_id)
        layout = self.layout
        if (
            layout is not None
            and generation == layout.generation > self._completed
            and self.generations.complete(layout)
        ):
            self._completed = generation
            self.metrics.completed_generation.set(generation)
            self._plan_ready_outsiders(layout)
        self._plan_waiting_growth()

    def _plan_ready_outsiders(self, layout: HybridLayout) -> None:
        """A generation completed: a ready worker outside it is planned now, whatever
        became of the request its readiness made (at 10,000 simulated workers a join
        of 100 nodes once left one node's workers ready and unplanned behind a complete
        generation). With spares the planner keeps its members and nothing changes."""
        if self.takeover or self.phase not in (pb.JOB_RUNNING, pb.JOB_RECOVERING):
            return
        outside = [w for w in self.registry.workers() if w.ref.worker_id not in self._member_ids]
        if outside and not self.config.max_workers:
            self._growth_waiting.append(f"{len(outside)} ready worker(s) not in the plan")

    def _plan_waiting_growth(self) -> None:
        """The current generation completed: newcomers that waited for it are planned."""
        layout = self.layout
        if self._growth_waiting and layout is not None and self.generations.complete(layout):
            reasons, self._growth_waiting = self._growth_waiting, []
            self._request_replan("; ".join(dict.fromkeys(reasons)))

    def _ready_workers(self) -> int:
        return sum(len(n.workers) for n in self.nodes.values())

    async def _start_after_settle(self) -> None:
        """min_workers are ready: wait up to settle_s for the rest of the registered
        nodes' workers, then plan the first generation. If a worker died meanwhile and
        fewer than the minimum are left, wait again (its agent restarts it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.settle_s
        while loop.time() < deadline and self._ready_workers() < sum(
            n.slots for n in self.nodes.values()
        ):
            await asyncio.sleep(0.1)
        if self._ready_workers() < self.config.min_workers:
            self._start_task = None
            return
        self._request_replan("start")

    async def _watch_start(self, wait: StartWait) -> None:
        """Until the first generation forms, tick `wait` once a second."""
        while True:
            await asyncio.sleep(1.0)
            if self.layout is not None or self.over or not self._tick_start(wait):
                break
        self.waiting_for = ""

    def _tick_start(self, wait: StartWait) -> bool:
        """Say what the job waits for (the status line; an event when the wait starts
        and every minute after), or fail it, saying the same, once start_timeout_s
        has passed (returns False then)."""
        now = time.monotonic()
        nodes = [
            NodeReadiness(n.node_id, n.slots, len(n.workers), now - n.registered)
            for n in self.nodes.values()
        ]
        tick = wait.tick(now, nodes)
        self.waiting_for = tick.line
        if tick.give_up:
            self._fail(tick.give_up)
            return False
        if tick.event:
            self._event("waiting", tick.line)
        return True

    # planning ---------------------------------------------------------------------------
    def _request_replan(self, reason: str) -> None:
        # a plan takes every live worker, so growth that waited is planned with it
        waiting, self._growth_waiting = self._growth_waiting, []
        self.replans.request("; ".join([reason, *waiting]))

    def _holders(self, source: HybridLayout | None) -> set[str]:
        return self.registry.holders_of(source.generation) if source is not None else set()

    def live_members(self) -> list[WorkerRef]:
        return self.registry.live_members()

    async def _replan(self, reason: str) -> None:
        """Plan the next generation (controller/generation_plan.py), write it with
        compare-and-set (a controller that lost the lead fails here, changing
        nothing), and push it to every agent."""
        if self.over:
            return
        if self.layout is None or self.live_members():
            self._all_lost_since = 0.0
        elif self._wait_for_any(reason):
            return
        generation = self.generation + 1
        source = self.generations.source(self.layout)
        holders = self._holders(source)
        current = self.layout
        if current is not None and source is not current:
            joined = self.registry.holders_of(current.generation)
            if covered_by_joined(current, joined):
                # an interrupted generation whose joined members hold everything: take
                # state from them (a member that never joined, e.g. a stalled agent,
                # may be the only one left holding the completed generation before it)
                source, holders = current, joined
        started = time.perf_counter()
        proposal = await self.planner.propose(
            generation=generation,
            reason=reason,
            members=self.live_members(),
            current=self.layout,
            source=source,
            holders=holders,
            reached_step=self.registry.highest_step(),
            takeover=self.takeover,
        )
        self.metrics.plan_seconds.observe(time.perf_counter() - started)
        for note in proposal.notes:
            self._event(note.kind, note.message)
        if isinstance(proposal, Refused):
            self._fail(proposal.message)
            return
        if isinstance(proposal, Unchanged):
            self._maybe_back_to_running()
            return
        layout, plan = proposal.layout, proposal.plan
        ok = await self.store.compare_and_set(
            self.prefix + "plan", plan.SerializeToString(), self.plan_revision
        )
        if not ok:
            self._fail("another controller wrote the plan: this one is no longer the leader")
            return
        kv = await self.store.get(self.prefix + "plan")
        self.plan_revision = kv.mod_revision if kv is not None else 0
        previous = self.plan
        self._set_layout(layout)
        whole = self._set_plan(plan)
        # every stream began with a whole plan and got each one since: a delta from
        # the previous plan is all it needs (a new stream gets `whole` when it opens)
        directive = (
            rpc.Encoded.of(pb.Directive(plan_delta=plan_delta(previous, plan)))
            if previous is not None
            else whole
        )
        self.metrics.plan_bytes.set(len(directive.wire))
        self.takeover = False
        # shown as "joining" until they report it (which workers count as holders is
        # decided by joined_generation, see _holders)
        for ref in layout.workers:
            member = self.registry.worker(ref)
            if member is not None and member.state in ("running", "finished"):
                member.state = "joining"
        if self.phase == pb.JOB_PENDING:
            self.phase = pb.JOB_RUNNING
        self.recovery.planned(generation, reason, self._last_committed())
        logs.context.generation = generation
        self.metrics.generation.set(generation)
        self.metrics.members.set(layout.world_size)
        self._event(
            "plan",
            f"generation {generation}: {layout.world_size} workers ({reason})"
            + (f"; dropped {', '.join(layout.dropped)}" if layout.dropped else ""),
        )
        self.registry.broadcast(directive)
        if self.config.join_timeout_s:
            asyncio.get_running_loop().call_later(
                self.config.join_timeout_s, self._check_joined, generation
            )

    def _check_joined(self, generation: int) -> None:
        """`join_timeout_s` after `generation` was sent: if it is still the newest and
        not complete, the nodes of its members that never reported joining it are
        lost, so that the others' generation completes and nobody waits on them."""
        layout = self.layout
        if self.over or layout is None or layout.generation != generation:
            return
        if self.generations.complete(layout):
            return
        joined = self.registry.holders_of(generation)
        late = sorted({w.node_id for w in layout.workers if w.worker_id not in joined})
        why = f"did not join generation {generation} within {self.config.join_timeout_s:g}s"
        for node_id in late:
            asyncio.get_running_loop().create_task(self._lose_node(node_id, why))

    def _fail(self, message: str) -> None:
        if self.over:
            return
        self.phase = pb.JOB_FAILED
        self.failure_message = message
        self._event("failed", message)
        log.error("%s", message)
        self.registry.broadcast(pb.Directive(shutdown=pb.JOB_FAILED))
        self.done.set()

    def inject_chaos(self, request: pb.AdminRequest) -> str:
        """Send a fault to the agent that owns its target; returns what was done.
        Raises ValueError, changing nothing, if the node or rank does not exist."""
        order = resolve_chaos(request, nodes=self.nodes.keys(), layout=self.layout)
        self.send_chaos(order.node_id, order.command)
        return order.description

    def send_chaos(self, node_id: str, command: pb.ChaosCommand) -> None:
        self.nodes[node_id].queue.put_nowait(pb.Directive(chaos=command))
        self._event("chaos_requested", f"{pb.ChaosAction.Name(command.action)} on {node_id}")

    def status(self) -> pb.StatusResponse:
        header = pb.StatusResponse(
            job=self.job.job,
            phase=self.phase,
            generation=self.generation,
            failures=self.failures,
            leader=self.identity,
            total_steps=self.job.steps,
            first_loss=self.first_loss,
            waiting_for=self.waiting_for if self.layout is None else "",
            unit_costs_s=self.planner.cost_profile(),
        )
        return build_status(
            header,
            self.plan,
            self.layout,
            self.nodes,
            self.events,
            self.recoveries,
            self.failure_message,
        )
