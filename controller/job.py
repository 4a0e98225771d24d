"""The controller's model of one job: members, generations, plans, recoveries.

Sits between the gRPC service (which validates input and calls in here) and the
store (the only place state is written, by this controller alone while it leads).
Every membership change goes through `_replan`, which coalesces changes that
arrive within a few tens of milliseconds (two failures in one step become one
generation), asks the pure planner for a layout, writes it with compare-and-set
and pushes it to every agent's stream.

Failure sources handled here: a worker's exit or watchdog kill (reported by its
agent), an agent's stream closing (process gone), an agent's lease expiring
(node cut off). Joins are workers reported ready; they are planned at once and
adopted by the running workers at their next step boundary.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Iterable

from elastiq.checkpoint import catalog
from elastiq.checkpoint.checkfree import CheckFreeError, SwapGroups
from elastiq.config import JobConfig
from elastiq.controller.checkfree_plan import CheckFreeDirective, plan_checkfree, swap_groups_of
from elastiq.controller.job_state import ControllerConfig, NodeState, PendingRecovery, WorkerState
from elastiq.controller.metrics import ControllerMetrics
from elastiq.controller.planner import (
    HybridLayout,
    PlanError,
    Profile,
    WorkerRef,
    make_hybrid_plan,
    measured_profile,
)
from elastiq.controller.store import Store
from elastiq.controller.wire import layout_to_plan, plan_to_layout
from elastiq.proto import elastiq_pb2 as pb

log = logging.getLogger(__name__)

# what an agent reports of a worker it already runs, as the controller records it
_MEMBER_STATE = {
    pb.WORKER_PHASE_READY: "ready",
    pb.WORKER_PHASE_RUNNING: "running",
    pb.WORKER_PHASE_FINISHED: "finished",
}
_IN_PLAN = (pb.WORKER_PHASE_RUNNING, pb.WORKER_PHASE_FINISHED)

__all__ = ["ControllerConfig", "JobController", "NodeState", "PendingRecovery", "WorkerState"]


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
        self.nodes: dict[str, NodeState] = {}
        self.layout: HybridLayout | None = None
        # the last layout every member finished joining: plans take state from it
        self.completed: HybridLayout | None = None
        self._joined: dict[int, set[str]] = {}
        # per-unit costs start as parameter counts (a proxy for FLOPs) until measured
        numel = tuple(job.unit_numel())
        self.profile = Profile(unit_costs=tuple(float(n) for n in numel), unit_numel=numel)
        # measured seconds per micro-batch by unit (moving average over reports)
        self.unit_costs: dict[int, float] = {}
        self.plan: pb.Plan | None = None
        self._plan_revision = 0
        self.phase = "Pending"
        self.events: collections.deque[pb.Event] = collections.deque(maxlen=config.events_kept)
        self.recoveries: list[pb.Recovery] = []
        # layer units ever rebuilt by CheckFree (trained at a scaled learning rate)
        self.lr_scaled_units: set[int] = set()
        # CheckFree+ swap groups, fixed by the first plan's layout for the job's life
        self.swap: SwapGroups | None = None
        self._pending: PendingRecovery | None = None
        self._replan_task: asyncio.Task[None] | None = None
        self._replan_reasons: list[str] = []
        self._start_task: asyncio.Task[None] | None = None
        self._chaos_times: dict[str, float] = {}
        self._lease_watch: asyncio.Task[None] | None = None
        self.failure_message = ""
        self.failures = 0
        self.first_loss = 0.0
        self.takeover = False
        self.done = asyncio.Event()

    # lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Load a previous leader's plan (takeover) and start watching node leases."""
        revision = await self.store.put(self.prefix + "config", self.job.to_json().encode())
        kv = await self.store.get(self.prefix + "plan")
        if kv is not None:
            plan = pb.Plan.FromString(kv.value)
            self.layout = plan_to_layout(plan)
            self.lr_scaled_units.update(plan.lr_scaled_units)
            if self.job.checkfree_plus:
                self.swap = SwapGroups(
                    blocks=self.job.model.n_layers, first=plan.swap_first, last=plan.swap_last
                )
            self.completed = self.layout
            self.plan = plan
            self._plan_revision = kv.mod_revision
            self.phase = "Recovering"
            self.takeover = True
            self._event("takeover", f"took over at generation {plan.generation}")
            asyncio.get_running_loop().call_later(
                self.config.takeover_grace_s, lambda: self._request_replan("controller takeover")
            )
        self._lease_watch = asyncio.get_running_loop().create_task(
            self._watch_node_leases(revision + 1)
        )

    async def stop(self) -> None:
        for task in (self._lease_watch, self._replan_task, self._start_task):
            if task is not None:
                task.cancel()

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
        existing = self.nodes.get(req.node_id)
        if existing is not None:
            # a re-registration (stream broke, agent restarted): its old workers are gone
            await self._lose_node(req.node_id, "re-registered")
        lease = await self.store.grant_lease(self.config.lease_ttl_s)
        node = NodeState(req.node_id, req.slots, req.address, lease)
        for w in req.workers:
            node.workers[w.worker_id] = WorkerState(
                WorkerRef(req.node_id, w.slot, w.worker_id),
                pid=w.pid,
                state=_MEMBER_STATE.get(w.phase, "ready"),
                joined_generation=w.generation if w.phase in _IN_PLAN else 0,
            )
        self.nodes[req.node_id] = node
        await self.store.put(
            f"{self.prefix}nodes/{req.node_id}",
            pb.NodeRecord(address=req.address, slots=req.slots).SerializeToString(),
            lease=lease,
        )
        self.metrics.nodes.set(len(self.nodes))
        self._event("node_registered", f"{req.node_id} with {req.slots} slot(s)")
        if node.workers:
            self._on_membership_grew(f"{req.node_id} rejoined")
        return pb.RegisterResponse(
            lease_id=lease,
            lease_ttl_s=self.config.lease_ttl_s,
            heartbeat_interval_s=self.config.heartbeat_interval_s,
            config_json=self.job.to_json(),
            generation=self.generation,
            job=self.job.job,
        )

    async def heartbeat(self, req: pb.HeartbeatRequest) -> pb.HeartbeatResponse:
        node = self.nodes.get(req.node_id)
        if node is None or node.lease != req.lease_id:
            return pb.HeartbeatResponse(generation=self.generation, known=False)
        if not await self.store.refresh_lease(node.lease):
            await self._lose_node(req.node_id, "lease expired")
            return pb.HeartbeatResponse(generation=self.generation, known=False)
        for p in req.progress:
            worker = node.workers.get(p.worker_id)
            if worker is not None:
                worker.progress = p
                for unit, cost in p.unit_costs.items():
                    old = self.unit_costs.get(unit)
                    self.unit_costs[unit] = cost if old is None else 0.8 * old + 0.2 * cost
        self._update_progress_metrics()
        return pb.HeartbeatResponse(generation=self.generation, known=True)

    def open_stream(self, node_id: str) -> asyncio.Queue[pb.Directive]:
        node = self.nodes[node_id]
        node.streams += 1
        if self.plan is not None:
            node.queue.put_nowait(pb.Directive(plan=self.plan))
        if self.phase in ("Succeeded", "Failed"):
            node.queue.put_nowait(pb.Directive(shutdown=self.phase))
        return node.queue

    async def close_stream(self, node_id: str, queue: asyncio.Queue[pb.Directive]) -> None:
        node = self.nodes.get(node_id)
        if node is None or node.queue is not queue:
            return
        node.streams -= 1
        if node.streams <= 0 and self.phase not in ("Succeeded", "Failed"):
            await self._lose_node(node_id, "agent stream closed")

    async def _watch_node_leases(self, start_revision: int) -> None:
        """Lease expiry deletes a node's key: watch from our first write, missing none."""
        nodes_prefix = f"{self.prefix}nodes/"
        try:
            async for event in self.store.watch_prefix(nodes_prefix, start_revision):
                if event.kind == "delete":
                    node_id = event.key[len(nodes_prefix) :]
                    if node_id in self.nodes:
                        await self._lose_node(node_id, "lease expired")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("node lease watch ended")

    async def _lose_node(self, node_id: str, cause: str) -> None:
        node = self.nodes.pop(node_id, None)
        if node is None:
            return
        await self.store.revoke_lease(node.lease)
        self.metrics.nodes.set(len(self.nodes))
        lost = [w for w in node.workers.values() if self._in_plan(w.ref.worker_id)]
        self._event("node_lost", f"{node_id}: {cause}")
        if lost:
            self._on_failure(
                [w.ref.worker_id for w in lost],
                f"node {node_id} lost ({cause})",
                self._failure_time(node.workers.values()),
            )

    # events -----------------------------------------------------------------------------
    def _in_plan(self, worker_id: str) -> bool:
        return self.layout is not None and worker_id in self.layout.worker_ids()

    def _failure_time(self, workers: Iterable[WorkerState]) -> float:
        """When the failure happened: the chaos injection time if chaos caused it."""
        times = [
            self._chaos_times[w.ref.worker_id]
            for w in workers
            if w.ref.worker_id in self._chaos_times
        ]
        return min(times) if times else time.time()

    async def report(self, node_id: str, req: pb.EventReport) -> pb.EventAck:
        node = self.nodes[node_id]
        kind = pb.EventKind.Name(req.kind)
        worker = node.workers.get(req.worker_id)
        if req.kind == pb.WORKER_READY:
            node.workers[req.worker_id] = WorkerState(
                WorkerRef(node_id, req.slot, req.worker_id), pid=req.pid
            )
            self._event("worker_ready", f"{req.worker_id} (pid {req.pid})")
            self._on_membership_grew(f"{req.worker_id} joined")
            return pb.EventAck(accepted=True)
        if req.kind == pb.CHAOS_INJECTED:
            self._chaos_times[req.worker_id] = req.wall_time
            self._event("chaos", f"{req.detail} on {req.worker_id or node_id}")
            return pb.EventAck(accepted=True)
        if req.kind in (pb.WORKER_EXITED, pb.WORKER_HUNG, pb.WORKER_FAILED):
            # membership facts are never stale: a gone worker is gone in any generation
            known = node.workers.pop(req.worker_id, None) is not None
            self._event(kind.lower(), f"{req.worker_id}: {req.detail}")
            if known and self._in_plan(req.worker_id) and self.phase not in ("Succeeded", "Failed"):
                when = self._chaos_times.get(req.worker_id, req.wall_time or time.time())
                self._on_failure([req.worker_id], f"{req.worker_id} {req.detail}", when)
            return pb.EventAck(accepted=True)
        if req.generation < self.generation:
            self.metrics.rejected.labels("stale_generation").inc()
            log.info(
                "ignoring %s from %s: generation %d is older than the current %d",
                kind,
                req.worker_id,
                req.generation,
                self.generation,
            )
            return pb.EventAck(
                accepted=False,
                reason=f"stale generation {req.generation} < current {self.generation}",
            )
        if worker is None:
            return pb.EventAck(accepted=False, reason=f"unknown worker {req.worker_id}")
        if req.kind in (pb.JOINED, pb.RESUMED):
            self._on_joined(worker, req)
        elif req.kind == pb.FINISHED:
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
        """A worker joined the generation (timings) or finished its first step in it."""
        worker.state = "running"
        if req.kind == pb.JOINED:
            worker.joined_generation = max(worker.joined_generation, req.generation)
            self._joined.setdefault(req.generation, set()).add(worker.ref.worker_id)
        if req.kind == pb.RESUMED and req.step == 1 and not self.first_loss:
            self.first_loss = req.loss
        pending = self._pending
        if pending is None or req.generation != pending.generation:
            return
        entry = pending.joins.setdefault(worker.ref.worker_id, {})
        if req.kind == pb.JOINED:
            entry.update(
                join_start=req.join.join_start,
                comm_rebuild_s=req.join.comm_rebuild_s,
                migrate_s=req.join.migrate_s,
            )
            pending.committed_after = int(req.step)
            reached = int(req.join.reached_step)
            pending.last_committed_before = max(pending.last_committed_before, reached)
        else:
            entry["first_step_end"] = req.wall_time
        if self.layout is None:
            return
        members = self.layout.worker_ids()
        if all("first_step_end" in pending.joins.get(w, {}) for w in members):
            self._finish_recovery(pending)

    def _finish_recovery(self, pending: PendingRecovery) -> None:
        joins = list(pending.joins.values())
        resumed = max(j["first_step_end"] for j in joins)
        join_start = min(j.get("join_start", pending.plan_time) for j in joins)
        comm = max(j.get("comm_rebuild_s", 0.0) for j in joins)
        migrate = max(j.get("migrate_s", 0.0) for j in joins)
        phases = {
            "detect": max(0.0, pending.detect_time - pending.failure_time),
            "plan": max(0.0, pending.plan_time - pending.detect_time),
            "deliver": max(0.0, join_start - pending.plan_time),
            "comm_rebuild": comm,
            "migrate": migrate,
        }
        phases["resume"] = max(0.0, resumed - pending.failure_time - sum(phases.values()))
        lost = max(0, pending.last_committed_before - pending.committed_after)
        record = pb.Recovery(
            generation=pending.generation,
            cause=pending.cause,
            failure_time=pending.failure_time,
            resumed_time=resumed,
            lost_steps=lost,
        )
        record.phases.update(phases)
        self.recoveries.append(record)
        for name, value in phases.items():
            self.metrics.recovery_seconds.labels(name).observe(value)
        self.metrics.recovery_seconds.labels("total").observe(resumed - pending.failure_time)
        self._pending = None
        if self.phase == "Recovering":
            self.phase = "Running"
        self._event(
            "recovered",
            f"generation {pending.generation} resumed {resumed - pending.failure_time:.3f}s after "
            f"the failure ({pending.cause}); lost steps {lost}",
        )

    def _check_finished(self) -> None:
        if self.layout is None:
            return
        members = [self._worker(w) for w in self.layout.worker_ids()]
        if all(m is not None and m.state == "finished" for m in members):
            self.phase = "Succeeded"
            self._event("finished", f"all {len(members)} workers reached step {self.job.steps}")
            self._broadcast(pb.Directive(shutdown="Succeeded"))
            self.done.set()

    def _worker(self, worker_id: str) -> WorkerState | None:
        for node in self.nodes.values():
            if worker_id in node.workers:
                return node.workers[worker_id]
        return None

    async def _fill_lost_state(
        self,
        layout: HybridLayout,
        source: HybridLayout | None,
        holders: set[str] | None,
        generation: int,
    ) -> tuple[HybridLayout, int, CheckFreeDirective | None] | None:
        """Where state nobody holds comes from, best first: the newest committed
        checkpoint (if fresh enough), then CheckFree; None after failing the job."""
        resuming = layout.state_source == "init" and self.job.resume
        if layout.state_source != "lost" and not resuming:
            return layout, 0, None
        found = await self._newest_checkpoint()
        if resuming and found is None:
            self._fail(
                f"--resume: no committed checkpoint under {self.job.checkpoint_url!r}; "
                "start without --resume, or point checkpoint_url at a job's checkpoints"
            )
            return None
        reached = self._reached_step()
        bound = self.job.checkpoint_max_staleness
        if not resuming and found is not None and bound and reached - found > bound:
            self._event(
                "checkpoint_stale",
                f"checkpoint of step {found} is {reached - found} steps behind (bound {bound})",
            )
            found = None
        if found is not None:
            # every rank loads its share of the checkpoint: no moves, nothing lost
            restored = dataclasses.replace(layout, state_source="checkpoint", moves=(), lost=())
            return restored, found, None
        pieces = sorted({(g.what, g.lo, g.hi) for g in layout.lost})
        shown = ", ".join(f"{what} [{lo}, {hi})" for what, lo, hi in pieces[:6])
        why = ""
        if self.job.checkfree and source is not None:
            try:
                directive = plan_checkfree(
                    layout, source, self.job.unit_numel(), holders, self.swap
                )
            except CheckFreeError as exc:
                why = f"; CheckFree cannot rebuild it: {exc}"
            else:
                self.metrics.checkfree.inc()
                self._event(
                    "checkfree",
                    f"generation {generation}: layer units [{directive.lo}, {directive.hi}) "
                    f"exist nowhere; rebuilt from {directive.sources} "
                    f"({'CheckFree+' if directive.copies else 'CheckFree'}: the model is now "
                    "an approximation)",
                )
                return dataclasses.replace(layout, state_source="checkfree", lost=()), 0, directive
        where = (
            f"no committed checkpoint (fresh enough) under {self.job.checkpoint_url!r}"
            if self.job.checkpoint_url
            else "no checkpoint is configured"
        )
        self._fail(
            f"generation {generation}: no live worker or buddy snapshot holds {shown}"
            f"{' ...' if len(pieces) > 6 else ''} of the model's state (lost with "
            f"{', '.join(layout.dropped) or 'the previous generation'}); {where}{why}, "
            "so the state is lost"
        )
        return None

    def _reached_step(self) -> int:
        """The highest step any worker reported (what a restore would roll back from)."""
        steps = [
            w.progress.step for n in self.nodes.values() for w in n.workers.values() if w.progress
        ]
        return max(steps, default=0)

    async def _newest_checkpoint(self) -> int | None:
        """Step of the newest committed checkpoint, if the job has any."""
        if not self.job.checkpoint_url:
            return None
        try:
            steps = await asyncio.to_thread(catalog.committed, self.job.checkpoint_url)
        except OSError as exc:
            log.error("cannot list checkpoints under %s: %s", self.job.checkpoint_url, exc)
            return None
        return steps[-1] if steps else None

    def _last_committed(self) -> int:
        if self.layout is None:
            return 0
        steps = [
            w.progress.step
            for w in (self._worker(i) for i in self.layout.worker_ids())
            if w is not None and w.progress is not None
        ]
        return min(steps) if steps else 0

    def _on_failure(self, worker_ids: list[str], cause: str, failure_time: float) -> None:
        self.failures += len(worker_ids)
        self.metrics.failures.labels("node" if cause.startswith("node") else "worker").inc(
            len(worker_ids)
        )
        if self.phase in ("Running", "Recovering"):
            if self._pending is None:
                self._pending = PendingRecovery(
                    cause=cause,
                    failure_time=failure_time,
                    detect_time=time.time(),
                    last_committed_before=self._last_committed(),
                )
            self.phase = "Recovering"
        self._request_replan(cause)

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
        if self.phase in ("Running", "Recovering"):
            self._request_replan(reason)

    async def _start_after_settle(self) -> None:
        await asyncio.sleep(self.config.settle_s)
        self._request_replan("start")

    # planning ---------------------------------------------------------------------------
    def _request_replan(self, reason: str) -> None:
        self._replan_reasons.append(reason)
        if self._replan_task is None or self._replan_task.done():
            self._replan_task = asyncio.get_running_loop().create_task(self._replan_soon())

    async def _replan_soon(self) -> None:
        await asyncio.sleep(self.config.coalesce_s)
        reasons, self._replan_reasons = self._replan_reasons, []
        try:
            await self._replan("; ".join(dict.fromkeys(reasons)))
        except Exception:
            log.exception("replanning failed")
            raise

    def _source_layout(self) -> HybridLayout | None:
        """The newest layout every member finished joining. A later one that was
        interrupted (a failure during a reconfiguration) is not a source: its members
        may hold the older layout's state, or half of the newer one."""
        if self.layout is None:
            return None
        joined = self._joined.get(self.layout.generation, set())
        if set(self.layout.worker_ids()) <= joined:
            self.completed = self.layout
        return self.completed

    def _holders(self, source: HybridLayout | None) -> set[str]:
        """Workers holding `source`'s state: they reported joining that generation and
        have not started joining another since (workers check this themselves too)."""
        if source is None:
            return set()
        return {
            w.ref.worker_id
            for n in self.nodes.values()
            for w in n.workers.values()
            if w.joined_generation == source.generation
        }

    def live_members(self) -> list[WorkerRef]:
        return sorted(w.ref for n in self.nodes.values() for w in n.workers.values())

    async def _replan(self, reason: str) -> None:
        if self.phase in ("Succeeded", "Failed"):
            return
        members = self.live_members()
        generation = self.generation + 1
        source = self._source_layout()
        holders = self._holders(source)
        if source is None and self.layout is not None and self.config.max_workers:
            # no generation completed yet, so the planner starts afresh: a spare that
            # became ready late must not displace a member of the plan in flight
            current = set(self.layout.worker_ids())
            members = sorted(members, key=lambda m: (m.worker_id not in current, m))
            members = sorted(members[: self.config.max_workers])
        self.profile = measured_profile(self.job.unit_numel(), self.unit_costs)
        try:
            layout = make_hybrid_plan(
                members,
                self.profile,
                source,
                generation,
                stages=self.job.pipeline_stages,
                zero=self.job.zero,
                reason=reason,
                holders=holders,
                snapshots=self.job.buddy_snapshots,
                max_workers=self.config.max_workers,
            )
        except PlanError as exc:
            self._fail(f"cannot plan generation {generation}: {exc}")
            return
        if self.job.checkfree_plus and self.swap is None:
            try:
                self.swap = swap_groups_of(layout, self.job.model.n_layers)
            except CheckFreeError as exc:
                self._fail(f"--checkfree-plus with this layout: {exc}")
                return
        filled = await self._fill_lost_state(layout, source, holders, generation)
        if filled is None:
            return
        layout, checkpoint_step, checkfree = filled
        if (
            self.layout is not None
            and layout.worker_ids() == self.layout.worker_ids()
            and (not self.takeover)
        ):
            return  # nothing changed (e.g. a duplicate report)
        plan = layout_to_plan(
            layout,
            self.job.job,
            self.rendezvous,
            time.time(),
            holders,
            source.generation if source is not None else 0,
            checkpoint_step,
        )
        for st in plan.stages:
            rebuilt = (
                checkfree is not None and st.unit_lo < checkfree.hi and checkfree.lo < st.unit_hi
            )
            st.source = "checkfree" if rebuilt else layout.state_source
            if checkfree is not None and not rebuilt:
                st.source = "live_replica"
        if checkfree is not None:
            plan.checkfree_lo, plan.checkfree_hi = checkfree.lo, checkfree.hi
            plan.checkfree_prev_rank = checkfree.prev_rank
            plan.checkfree_next_rank = checkfree.next_rank
            for unit, src_unit, src_rank in checkfree.copies:
                plan.checkfree_copies.add(unit=unit, src_unit=src_unit, src_rank=src_rank)
            # rebuilt blocks train faster; a copied edge unit is its own last weights
            edges = {0, len(self.job.unit_numel()) - 1} if checkfree.copies else set()
            self.lr_scaled_units.update(set(range(checkfree.lo, checkfree.hi)) - edges)
        plan.lr_scaled_units.extend(sorted(self.lr_scaled_units))
        plan.lr_scale = self.job.checkfree_lr_scale
        if self.swap is not None:
            plan.swap_first, plan.swap_last = self.swap.first, self.swap.last
        ok = await self.store.compare_and_set(
            self.prefix + "plan", plan.SerializeToString(), self._plan_revision
        )
        if not ok:
            self._fail("another controller wrote the plan: this one is no longer the leader")
            return
        kv = await self.store.get(self.prefix + "plan")
        self._plan_revision = kv.mod_revision if kv is not None else 0
        self.layout, self.plan = layout, plan
        self.takeover = False
        # shown as "joining" until they report it (which workers count as holders is
        # decided by joined_generation, see _holders)
        for worker_id in layout.worker_ids():
            member = self._worker(worker_id)
            if member is not None and member.state in ("running", "finished"):
                member.state = "joining"
        if self.phase == "Pending":
            self.phase = "Running"
        if self._pending is not None:
            # a first plan for this recovery, or a newer one superseding an interrupted
            # reconfiguration: the recovery ends when this generation resumes, and is
            # still measured from the first failure
            self._pending.generation = generation
            self._pending.plan_time = time.time()
            self._pending.joins = {}
        elif reason != "start":
            # a join or takeover: measured like a recovery, nobody failed
            self._pending = PendingRecovery(
                cause=reason,
                failure_time=time.time(),
                detect_time=time.time(),
                last_committed_before=self._last_committed(),
                plan_time=time.time(),
                generation=generation,
            )
        self.metrics.generation.set(generation)
        self.metrics.members.set(layout.world_size)
        self._event(
            "plan",
            f"generation {generation}: {layout.world_size} workers ({reason})"
            + (f"; dropped {', '.join(layout.dropped)}" if layout.dropped else ""),
        )
        self._broadcast(pb.Directive(plan=plan))

    def _fail(self, message: str) -> None:
        self.phase = "Failed"
        self.failure_message = message
        self._event("failed", message)
        log.error("%s", message)
        self._broadcast(pb.Directive(shutdown="Failed"))
        self.done.set()

    def _broadcast(self, directive: pb.Directive) -> None:
        for node in self.nodes.values():
            node.queue.put_nowait(directive)

    # admin and status -------------------------------------------------------------------
    def resolve_rank(self, rank: int) -> WorkerRef | None:
        if self.layout is None or not 0 <= rank < self.layout.world_size:
            return None
        return self.layout.workers[rank]

    def inject_chaos(
        self,
        action: pb.ChaosAction,
        *,
        rank: int = -1,
        node_id: str = "",
        at_step: int = 0,
        at_generation: int = 0,
    ) -> str:
        """Send a fault to the agent that owns its target; returns what was done.
        Raises ValueError, changing nothing, if the node or rank does not exist."""
        command = pb.ChaosCommand(
            action=action,
            at_step=at_step,
            at_generation=at_generation,
            id=f"chaos-{time.time_ns()}",
        )
        if action == pb.KILL_NODE:
            if node_id not in self.nodes:
                raise ValueError(f"unknown node id {node_id!r}; known: {sorted(self.nodes)}")
            self.send_chaos(node_id, command)
            return f"killing node {node_id}"
        target = self.resolve_rank(rank)
        if target is None:
            world = self.layout.world_size if self.layout else 0
            raise ValueError(
                f"rank {rank} is out of range: the current plan has {world} rank(s)"
                + ("" if world else " (no plan yet)")
            )
        command.worker_id, command.rank = target.worker_id, rank
        self.send_chaos(target.node_id, command)
        name = pb.ChaosAction.Name(action).lower().replace("_", " ")
        return f"{name}: rank {rank} ({target.worker_id})"

    def send_chaos(self, node_id: str, command: pb.ChaosCommand) -> None:
        self.nodes[node_id].queue.put_nowait(pb.Directive(chaos=command))
        self._event("chaos_requested", f"{pb.ChaosAction.Name(command.action)} on {node_id}")

    def _update_progress_metrics(self) -> None:
        progress = [
            w.progress for n in self.nodes.values() for w in n.workers.values() if w.progress
        ]
        if not progress:
            return
        newest = max(progress, key=lambda p: (p.step, p.wall_time))
        self.metrics.step.set(newest.step)
        self.metrics.loss.set(newest.loss)
        self.metrics.tokens_per_second.set(newest.tokens_per_s)
        self.metrics.step_seconds.set(newest.step_time_s)
        self.metrics.checkpoint_blocking.set(sum(p.checkpoint_held_s for p in progress))
        self.metrics.checkpoint_step.set(max(p.checkpoint_committed_step for p in progress))

    def status(self) -> pb.StatusResponse:
        resp = pb.StatusResponse(
            job=self.job.job,
            phase=self.phase,
            generation=self.generation,
            failures=self.failures,
            leader=self.identity,
            total_steps=self.job.steps,
            first_loss=self.first_loss,
        )
        if self.plan is not None:
            resp.plan.CopyFrom(self.plan)
        ranks = {w.worker_id: r for r, w in enumerate(self.layout.workers)} if self.layout else {}
        best: pb.WorkerProgress | None = None
        for node in sorted(self.nodes.values(), key=lambda n: n.node_id):
            for w in sorted(node.workers.values(), key=lambda w: w.ref):
                p = w.progress
                resp.members.add(
                    worker_id=w.ref.worker_id,
                    node_id=node.node_id,
                    rank=ranks.get(w.ref.worker_id, -1),
                    step=p.step if p else 0,
                    loss=p.loss if p else 0.0,
                    state=w.state,
                    pid=w.pid,
                )
                if p is not None and (
                    best is None or (p.step, p.wall_time) > (best.step, best.wall_time)
                ):
                    best = p
        if best is not None:
            resp.step, resp.loss, resp.tokens_per_s = best.step, best.loss, best.tokens_per_s
        resp.events.extend(self.events)
        resp.recoveries.extend(self.recoveries)
        if self.failure_message:
            resp.events.append(
                pb.Event(wall_time=time.time(), kind="failed", message=self.failure_message)
            )
        return resp
