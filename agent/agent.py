"""The node agent: one per node, owns that node's workers.

It registers with the controller (trying each address it was given, so it
follows a takeover), heartbeats on its lease, relays plans from its stream to the
workers they name (telling a dropped worker to leave), and watches its workers:
an exit is reported at once; a worker silent for `liveness_timeout_s` (SIGSTOP,
a wedged interpreter) or without a step for `progress_timeout_s` is killed,
turning a hang into a crash the job recovers from. Chaos commands arrive on the
same stream and are executed here, at the step they name.

If the controller goes away the workers keep training; the agent re-registers
with the workers it still has and the new leader takes them in.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from elastiq import logs, rpc
from elastiq.agent.host_link import HostLink
from elastiq.agent.plan_layout import PlanLayout, apply_plan_delta
from elastiq.agent.workers import (
    Launcher,
    WorkerProcess,
    spawn_worker,
    start_local,
    stop_workers,
)
from elastiq.child_processes import is_stopped
from elastiq.proto import elastiq_pb2 as pb

log = logging.getLogger(__name__)
#: how often the supervisor looks at its workers (exits, silence, restarts due)
SUPERVISE_PERIOD_S = 0.02
#: after a worker's channel closes, when the supervisor looks again for its exit
#: status (the process is reaped moments after its pipes close)
_EXIT_RECHECK_S = (0.002, 0.006)
#: tries of one batch of reports the controller did not answer, 0.25 s, 0.5 s apart
REPORT_ATTEMPTS = 3
_CHAOS_ACTIONS = frozenset(pb.ChaosAction.values()) - {pb.CHAOS_UNSPECIFIED}


@dataclass(kw_only=True, slots=True)
class AgentConfig:
    """How an agent finds its controller and watches its workers."""

    controllers: list[str] = field(default_factory=list)
    """Controller addresses (host:port), tried in turn."""
    token: str = ""
    """The agent token Register needs (read from a file or the environment)."""
    node_id: str = ""
    """This node's id; default hostname-pid."""
    slots: int = 1
    """Workers to run on this node."""
    liveness_timeout_s: float = 5.0
    """Kill a worker that has sent nothing (not even `alive`) for this long."""
    progress_timeout_s: float = 300.0
    """Kill a planned worker that has committed no step for this long."""
    contact_timeout_s: float = 60.0
    """Kill a worker that has sent nothing at all this long after it was started
    (Python and torch take seconds to import on a loaded node; a process stopped or
    stuck before its first message is caught here, and once it has spoken
    liveness_timeout_s applies, while it starts as while it runs)."""
    start_retries: int = 3
    """Times a slot's worker that dies before its first plan is started again,
    whatever max_restarts says: nothing was computed, so nothing is lost (back-off
    1 s doubling; a worker that reported it cannot start is never retried)."""
    log_level: str = "INFO"
    """Log level for the agent and its workers."""
    max_restarts: int = 0
    """Times a slot's worker is started again after it exits or is killed (torchrun's
    --max-restarts; 0: never). Each restart is a new process that joins as a newcomer,
    after a back-off of 1 s doubling to 30 s."""
    tls_ca: str = ""
    """PEM CA that signed the controller's certificate (empty: plaintext gRPC)."""
    tls_cert: str = ""
    """PEM client certificate, for a controller that requires mutual TLS."""
    tls_key: str = ""
    """PEM private key of tls_cert."""
    worker_socket: str = ""
    """Sidecar mode (Kubernetes): listen on this Unix socket for the training
    container's `elastiq worker-host` and start workers through it; empty: start them
    as this agent's own children."""
    host_timeout_s: float = 300.0
    """Sidecar mode: give up when no worker host has connected for this long."""
    exit_with_parent: bool = False
    """Be killed (SIGKILL, with this agent's workers after it) when the process that
    started this agent exits, however it ends: `elastiq run` starts its agents so,
    as nothing else would ever stop them. A node's own agent leaves this off."""

    def __post_init__(self) -> None:
        if not self.controllers:
            raise ValueError("at least one controller address is needed (--controller host:port)")
        for address in self.controllers:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"controller address {address!r} is not host:port")
        if not 1 <= self.slots <= 1024:
            raise ValueError(f"slots={self.slots} must be in 1..1024")
        if not 0 <= self.max_restarts <= 10_000:
            raise ValueError(f"max_restarts={self.max_restarts} must be in 0..10000")
        if not 0 <= self.start_retries <= 100:
            raise ValueError(f"start_retries={self.start_retries} must be in 0..100")
        if min(self.liveness_timeout_s, self.progress_timeout_s, self.contact_timeout_s) <= 0:
            raise ValueError("watchdog timeouts must be positive")
        if self.host_timeout_s <= 0:
            raise ValueError(f"host_timeout_s={self.host_timeout_s} must be positive")
        if not self.node_id:
            self.node_id = f"{socket.gethostname()}-{os.getpid()}"


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.workers: dict[str, WorkerProcess] = {}
        self.plan: pb.Plan | None = None
        self.layout: PlanLayout | None = None
        self.model = pb.ModelShape()
        """What this node's workers built: re-registrations tell a new leader."""
        self.config_json = ""
        self.lease = 0
        self.tls = rpc.TlsFiles(ca=config.tls_ca, cert=config.tls_cert, key=config.tls_key)
        self.node_secret = ""
        """Issued by Register: this node's credential for every later call."""
        self._restarts: dict[int, int] = {}
        """Restarts so far of workers that had been planned, by slot (max_restarts)."""
        self._start_retries: dict[int, int] = {}
        """Restarts so far of workers that died before their first plan, by slot."""
        self._respawn_at: dict[int, float] = {}
        """Slots whose worker is due to start again, and when (time.monotonic())."""
        self.heartbeat_s = 0.5
        self.lease_ttl_s = 3.0
        """How long the controller waits for this node's heartbeats (Register says)."""
        self.client: rpc.ControllerClient | None = None
        self.outbox: asyncio.Queue[pb.EventReport] = asyncio.Queue()
        self.chaos: list[pb.ChaosCommand] = []
        self.shutdown: pb.JobPhase | None = None
        self.done = asyncio.Event()
        self._wake = asyncio.Event()
        """Set when a worker is exiting (its channel closed, chaos killed it, its host
        reported it): the supervisor looks at once rather than on its next tick."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self.host: HostLink | None = None
        """Sidecar mode: the pod's worker host, which runs the workers."""
        self._host_connections = 0
        logs.context.node = config.node_id

    # controller session --------------------------------------------------------------
    async def _register(self) -> None:
        attempt = 0
        while self.shutdown is None:
            address = self.config.controllers[attempt % len(self.config.controllers)]
            client = rpc.ControllerClient(address, tls=self.tls)
            request = pb.RegisterRequest(
                token=self.config.token,
                node_id=self.config.node_id,
                slots=self.config.slots,
                address=socket.gethostname(),
                model=self.model,
                node_secret=self.node_secret,
            )
            for w in self.workers.values():
                if not w.gone:
                    request.workers.add(
                        worker_id=w.worker_id,
                        slot=w.slot,
                        pid=w.pid,
                        phase=w.phase,
                        generation=w.generation,
                        step=w.step,
                    )
            try:
                reply = await client.call("Register", request)
            except rpc.RpcRetryable as exc:
                await client.close()
                attempt += 1
                log.info("controller %s unavailable (%s); retrying", address, exc)
                await asyncio.sleep(min(1.0, 0.1 * attempt))
                continue
            except rpc.RpcRejected as exc:
                await client.close()
                if exc.code != "ALREADY_EXISTS":
                    raise
                # our id is still held (this agent restarted): its lease runs out soon
                attempt += 1
                log.warning("%s; waiting for the old lease to expire", exc.details)
                await asyncio.sleep(1.0)
                continue
            if self.client is not None:
                await self.client.close()
            self.client = client
            self.lease = reply.lease_id
            self.node_secret = reply.node_secret
            logs.context.job = reply.job or logs.context.job
            self.heartbeat_s = reply.heartbeat_interval_s
            self.lease_ttl_s = reply.lease_ttl_s or self.lease_ttl_s
            self.config_json = reply.config_json
            log.info(
                "registered with %s as %s (lease %d)", address, self.config.node_id, self.lease
            )
            return

    async def _session(self) -> None:
        """Stream and heartbeat until either breaks; the caller re-registers."""
        if self.client is None:
            return
        stream = asyncio.ensure_future(self._stream(self.client))
        beat = asyncio.ensure_future(self._heartbeat(self.client))
        done, pending = await asyncio.wait({stream, beat}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in done:
            exc = task.exception()
            if exc is not None and not isinstance(exc, rpc.RpcRetryable | rpc.RpcRejected):
                raise exc

    async def _stream(self, client: rpc.ControllerClient) -> None:
        request = pb.WatchPlanRequest(node_secret=self.node_secret, node_id=self.config.node_id)
        last: pb.Plan | None = None  # this stream's previous plan: what a delta is from
        async for directive in client.stream("WatchPlan", request):
            kind = directive.WhichOneof("kind")
            if kind == "plan":
                last = directive.plan
                self._relay_plan(last)
            elif kind == "plan_delta":
                try:
                    if last is None:
                        raise ValueError("a plan delta came first on the stream")
                    last = apply_plan_delta(last, directive.plan_delta)
                except ValueError as exc:
                    log.error("cannot read the plan stream (%s); registering again", exc)
                    return
                self._relay_plan(last)
            elif kind == "chaos":
                if directive.chaos.action in _CHAOS_ACTIONS:
                    self.chaos.append(directive.chaos)
                else:
                    log.warning("ignoring chaos of unknown action %d", directive.chaos.action)
            elif kind == "shutdown":
                self.shutdown = directive.shutdown
                log.info("the job is over: %s", pb.JobPhase.Name(directive.shutdown))
                return

    async def _heartbeat(self, client: rpc.ControllerClient) -> None:
        answered = time.monotonic()
        while self.shutdown is None:
            request = pb.HeartbeatRequest(
                node_secret=self.node_secret, node_id=self.config.node_id, lease_id=self.lease
            )
            for w in self.workers.values():
                if w.phase in (pb.WORKER_PHASE_RUNNING, pb.WORKER_PHASE_FINISHED):
                    request.progress.add(
                        worker_id=w.worker_id,
                        rank=w.rank,
                        generation=w.generation,
                        step=w.step,
                        # the controller refuses a non-finite number: a diverged loss is
                        # in the worker's log, not in the job's status
                        loss=w.loss if math.isfinite(w.loss) else 0.0,
                        tokens_per_s=w.tokens_per_s,
                        step_time_s=w.step_time_s,
                        wall_time=w.step_wall,
                        phase=w.phase,
                        unit_costs=w.unit_costs,
                        checkpoint_held_s=w.checkpoint_held_s,
                        checkpoint_committed_step=w.checkpoint_committed_step,
                        checkpoints_skipped=w.checkpoints_skipped,
                    )
            try:
                reply = await client.call("Heartbeat", request)
            except rpc.RpcRetryable as exc:
                # one unanswered heartbeat is a busy controller, not a lost one: keep
                # trying for half the time the controller waits before it takes this
                # node for lost, then connect again (a reconnect keeps the workers)
                silent = time.monotonic() - answered
                if silent >= self.lease_ttl_s / 2:
                    raise
                log.info("heartbeat not answered (%s); %.1fs without an answer", exc, silent)
                await asyncio.sleep(self.heartbeat_s)
                continue
            answered = time.monotonic()
            if not reply.known:
                log.warning("the controller does not know this node any more; re-registering")
                return
            if reply.heartbeat_interval_s > 0:
                self.heartbeat_s = reply.heartbeat_interval_s
            await asyncio.sleep(self.heartbeat_s)

    async def _sender(self) -> None:
        """Sends what the workers reported, everything queued meanwhile in one call
        (a call costs the controller the same whatever it carries)."""
        while True:
            reports = [await self.outbox.get()]
            while (
                not self.outbox.empty()
                and len(reports) < rpc.MAX_REPORTS_PER_SLOT * self.config.slots
            ):
                reports.append(self.outbox.get_nowait())
            if self.client is None:
                continue
            batch = pb.EventBatch(
                node_secret=self.node_secret, node_id=self.config.node_id, reports=reports
            )
            kinds = ", ".join(pb.EventKind.Name(r.kind) for r in reports)
            for attempt in range(REPORT_ATTEMPTS):
                if self.client is None:
                    break
                try:
                    reply = await self.client.call("ReportEvents", batch)
                except rpc.RpcRetryable as exc:
                    # a busy controller (bench/scale.py: CANCELLED under load at 10,000
                    # workers) or a lost answer: the controller takes a report twice
                    # without harm, and a lost WORKER_READY left a worker unplanned
                    if attempt + 1 == REPORT_ATTEMPTS:
                        log.warning("could not report %s: %s", kinds, exc)
                    else:
                        await asyncio.sleep(0.25 * 2**attempt)
                    continue
                except rpc.RpcRejected as exc:
                    log.warning("could not report %s: %s", kinds, exc)
                    break
                for report, ack in zip(reports, reply.acks, strict=False):
                    if not ack.accepted:
                        log.info(
                            "controller ignored %s: %s", pb.EventKind.Name(report.kind), ack.reason
                        )
                        if report.kind == pb.WORKER_READY:
                            self._refused(report.worker_id, ack.reason)
                break

    def _refused(self, worker_id: str, reason: str) -> None:
        """The controller will never plan this worker (it built another model than
        the job's): stop it now rather than let it wait idle_timeout_s for a plan,
        and never start it again (the next would build the same model)."""
        w = self.workers.get(worker_id)
        if w is None or w.gone:
            return
        log.error("worker %s refused by the controller (%s); stopping it", worker_id, reason)
        w.start_failed = True
        w.send(pb.ToWorker(shutdown=True))

    def report(
        self,
        kind: pb.EventKind,
        worker: WorkerProcess | None,
        detail: str = "",
        **fields: Any,
    ) -> None:
        fields.setdefault("wall_time", time.time())
        fields.setdefault("generation", self.plan.generation if self.plan else 0)
        report = pb.EventReport(kind=kind, detail=detail, **fields)
        if worker is not None:
            report.worker_id, report.rank, report.slot, report.pid = (
                worker.worker_id,
                worker.rank,
                worker.slot,
                worker.pid,
            )
        self.outbox.put_nowait(report)

    # workers -----------------------------------------------------------------------------
    def _relay_plan(self, plan: pb.Plan) -> None:
        if self.plan is not None and plan.generation <= self.plan.generation:
            return
        try:
            layout = PlanLayout.parse(plan)
        except ValueError as exc:
            log.error("not relaying plan %d: %s", plan.generation, exc)
            return
        self.plan, self.layout = plan, layout
        logs.context.generation = plan.generation
        for w in self.workers.values():
            if w.gone:
                continue
            rank = layout.rank_of(w.worker_id)
            if rank is not None:
                w.rank = rank
                self._relay_plan_to(w, plan)
            elif w.planned:
                log.info(
                    "generation %d drops %s; telling it to leave", plan.generation, w.worker_id
                )
                w.send(pb.ToWorker(shutdown=True))
        # a fault timed to this reconfiguration acts now, while the members are joining
        self._run_due_chaos()

    def _on_worker_message(self, worker: WorkerProcess, message: pb.FromWorker | None) -> None:
        if message is None:
            self._look_again()
            return
        kind = message.WhichOneof("kind")
        now = time.monotonic()
        worker.last_alive = now
        worker.heard = True
        if kind == "ready":
            worker.phase = pb.WORKER_PHASE_READY
            worker.last_progress = now
            self.model.CopyFrom(message.ready.model)
            self.report(pb.WORKER_READY, worker, "ready", model=message.ready.model)
            if (
                self.plan is not None
                and self.layout is not None
                and (self.layout.rank_of(worker.worker_id) is not None)
            ):
                self._relay_plan_to(worker, self.plan)
        elif kind == "step":
            self._on_step(worker, message.step, now)
        elif kind == "joined":
            worker.last_progress = now
            worker.generation = message.joined.generation
            self.report(
                pb.JOINED,
                worker,
                "joined",
                step=message.joined.committed_step,
                generation=worker.generation,
                join=message.joined.timings,
            )
        elif kind == "interrupted":
            worker.last_progress = now
            problem = message.interrupted
            self.report(
                pb.COLLECTIVE_ERROR, worker, problem.detail[:500], generation=problem.generation
            )
        elif kind == "start_failed":
            worker.start_failed = True
            self.report(pb.START_FAILED, worker, message.start_failed.detail[:2000])
        elif kind == "state_lost":
            worker.last_progress = now
            self.report(pb.WORKER_FAILED, worker, message.state_lost.detail[:500])
        elif kind == "chaos_fired":
            fired = message.chaos_fired
            what = "kill-before-snapshot"
            log.warning("chaos: %s on %s at step %d", what, worker.worker_id, fired.step)
            self.report(pb.CHAOS_INJECTED, worker, what, wall_time=fired.wall_time, step=fired.step)
        elif kind == "finished":
            worker.phase = pb.WORKER_PHASE_FINISHED
            worker.step = message.finished.step
            self.report(
                pb.FINISHED,
                worker,
                "finished",
                step=worker.step,
                loss=worker.loss,
                generation=message.finished.generation,
            )

    def _on_step(self, worker: WorkerProcess, step: pb.StepDone, now: float) -> None:
        worker.phase = pb.WORKER_PHASE_RUNNING
        worker.last_progress = now
        worker.step, worker.loss = step.step, step.loss
        worker.tokens_per_s = step.tokens_per_s
        worker.step_time_s = step.step_time_s
        worker.step_wall, worker.generation = step.wall_time, step.generation
        worker.checkpoint_held_s = step.checkpoint_held_s
        worker.checkpoint_committed_step = step.checkpoint_committed_step
        worker.checkpoints_skipped = step.checkpoints_skipped
        if step.unit_costs:
            worker.unit_costs = dict(step.unit_costs)
        if step.first_in_generation:
            self.report(
                pb.RESUMED,
                worker,
                "first_step",
                step=worker.step,
                loss=worker.loss,
                generation=worker.generation,
                wall_time=worker.step_wall,
            )

    def _relay_plan_to(self, worker: WorkerProcess, plan: pb.Plan) -> None:
        worker.planned = True
        worker.send(pb.ToWorker(plan=plan))

    def _look_again(self) -> None:
        """A worker is exiting: its pipe closed, chaos killed it, or its host said so.
        A dying process's files close before it can be reaped, so the supervisor
        looks now and twice more in the next few milliseconds: the exit is reported
        within about 5 ms of the death instead of up to a 20 ms tick later (the
        detect phase of a recovery)."""
        self._wake.set()
        loop = asyncio.get_running_loop()
        for delay in _EXIT_RECHECK_S:
            loop.call_later(delay, self._wake.set)

    async def _tick(self) -> None:
        """The supervisor's pause: its period, or less when a worker's channel closed."""
        try:
            await asyncio.wait_for(self._wake.wait(), SUPERVISE_PERIOD_S)
        except TimeoutError:
            pass
        self._wake.clear()

    async def _supervise(self) -> None:
        while not self.done.is_set():
            now = time.monotonic()
            for w in list(self.workers.values()):
                if w.gone:
                    continue
                code = w.proc.poll()
                if code is not None:
                    w.phase = pb.WORKER_PHASE_GONE
                    if w.chaos_killed is not None:
                        (when, step), w.chaos_killed = w.chaos_killed, None
                        self.report(pb.CHAOS_INJECTED, w, "kill-worker", wall_time=when, step=step)
                    # a worker its host never started (pid 0) was never known to anyone
                    if self.shutdown is None and not w.exit_reported and w.pid > 0:
                        w.exit_reported = True
                        self.report(pb.WORKER_EXITED, w, f"exited with code {code}")
                    if self.shutdown is None:
                        self._plan_restart(w, code, now)
                    continue
                silent = now - w.last_alive
                if not w.heard:
                    # before its first word only a stopped process is known to be hung
                    # at once; a slow import is not
                    w.stopped_since = (w.stopped_since or now) if is_stopped(w.pid) else 0.0
                    if w.stopped_since and now - w.stopped_since > self.config.liveness_timeout_s:
                        self._kill_hung(
                            w, f"stopped for {now - w.stopped_since:.1f}s before its first word"
                        )
                    elif now - w.started > self.config.contact_timeout_s:
                        self._kill_hung(
                            w, f"said nothing in the {now - w.started:.0f}s since it was started"
                        )
                elif silent > self.config.liveness_timeout_s:
                    self._kill_hung(w, f"sent nothing for {silent:.1f}s (hung or stopped)")
                elif (
                    w.planned
                    and w.phase == pb.WORKER_PHASE_RUNNING
                    and now - w.last_progress > self.config.progress_timeout_s
                ):
                    self._kill_hung(w, f"no step for {now - w.last_progress:.1f}s")
            self._run_due_chaos()
            if self.host is not None and not self._host_ready():
                await asyncio.sleep(0.05)
                continue
            for slot, due in list(self._respawn_at.items()):
                if now >= due and self.shutdown is None:
                    del self._respawn_at[slot]
                    self._start_worker(slot)
            await self._tick()

    def _host_ready(self) -> bool:
        """Sidecar mode: True while a worker host is connected. A host that connects
        anew (the training container restarted, or this agent did) gets every slot that
        has no live worker, started at once as newcomers."""
        host = self.host
        if host is None or not host.connected:
            return False
        if host.connections != self._host_connections:
            self._host_connections = host.connections
            busy = {w.slot for w in self.workers.values() if w.proc.poll() is None}
            for slot in range(self.config.slots):
                if slot not in busy and self.shutdown is None:
                    self._respawn_at.pop(slot, None)
                    self._start_worker(slot)
        return True

    def _plan_restart(self, w: WorkerProcess, code: int, now: float) -> None:
        """Start `w`'s slot again after a back-off, if its budget allows: start_retries
        for a worker that died before its first plan (nothing lost), max_restarts for
        one that had trained. Each restart is reported (WORKER_RESTARTING)."""
        slot = w.slot
        if slot in self._respawn_at or w.start_failed:
            return
        if any(o.slot == slot and not o.gone for o in self.workers.values()):
            return
        early = not w.planned
        counts = self._start_retries if early else self._restarts
        budget = self.config.start_retries if early else self.config.max_restarts
        done = counts.get(slot, 0)
        if done >= budget:
            if early and budget:
                self.report(
                    pb.WORKER_RESTARTING,
                    w,
                    f"not restarted: died before its first plan {done + 1} times "
                    f"(start_retries={budget})",
                )
            return
        counts[slot] = done + 1
        delay = min(30.0, 2.0**done)
        self._respawn_at[slot] = now + delay
        when = "before its first plan" if early else "after training"
        why = f"exit code {code}" if code >= 0 else f"signal {-code}"
        detail = (
            f"starting slot {slot} again in {delay:.0f}s (restart {done + 1} of {budget}): "
            f"it died {when} ({why})"
        )
        log.warning("worker %s: %s", w.worker_id, detail)
        self.report(pb.WORKER_RESTARTING, w, detail)

    def _start_worker(self, slot: int) -> None:
        n = self._restarts.get(slot, 0) + self._start_retries.get(slot, 0)
        worker_id = f"{self.config.node_id}.w{slot}" + (f"-r{n}" if n else "")
        if self._loop is None:
            return
        self.workers[worker_id] = spawn_worker(
            worker_id,
            self.config.node_id,
            slot,
            self.config_json,
            self.config.log_level,
            self._loop,
            self._on_worker_message,
            self._launcher(),
        )

    def _launcher(self) -> Launcher:
        return self.host.launch if self.host is not None else start_local

    def _kill_hung(self, w: WorkerProcess, why: str) -> None:
        log.warning("watchdog: worker %s %s; killing it", w.worker_id, why)
        w.signal(signal.SIGKILL)
        w.exit_reported = True
        self.report(pb.WORKER_HUNG, w, f"killed by the watchdog: {why}")

    def _run_due_chaos(self) -> None:
        for command in list(self.chaos):
            if command.action == pb.KILL_NODE:
                due = all(w.step >= command.at_step for w in self.workers.values() if w.planned)
            else:
                target = self.workers.get(command.worker_id)
                if target is None or target.gone:
                    self.chaos.remove(command)
                    continue
                # the worker times kill-before-snapshot itself: arm it at once
                due = command.action == pb.KILL_BEFORE_SNAPSHOT or target.step >= command.at_step
            if command.at_generation:
                due = self.plan is not None and self.plan.generation >= command.at_generation
            if not due:
                continue
            self.chaos.remove(command)
            self._inject(command)

    def _inject(self, command: pb.ChaosCommand) -> None:
        now = time.time()
        if command.action == pb.KILL_NODE:
            log.warning("chaos: killing node %s (agent and its workers)", self.config.node_id)
            for w in self.workers.values():
                w.signal(signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
            return
        target = self.workers[command.worker_id]
        if command.action == pb.KILL_BEFORE_SNAPSHOT:
            step = max(command.at_step, target.step + 1)
            target.send(pb.ToWorker(chaos=pb.ArmChaos(die_after_update_of=step)))
            log.warning(
                "chaos: %s will kill itself after its update of step %d, before its snapshot",
                target.worker_id,
                step,
            )
            return  # reported when the worker fires it
        if command.action == pb.KILL_WORKER:
            target.signal(signal.SIGKILL)
            log.warning("chaos: kill-worker on %s at step %d", target.worker_id, target.step)
            # reported with its exit, in one call: sent now, the report held the exit
            # back by a whole round trip to the controller (detect measured 45-90 ms)
            target.chaos_killed = (now, target.step)
            self._look_again()
            return
        if command.action == pb.HANG_WORKER:
            target.signal(signal.SIGSTOP)
            target.stopped = True
            what = "hang (SIGSTOP)"
        else:  # filtered on receipt; never a default that stops a process
            return
        log.warning("chaos: %s on %s at step %d", what, target.worker_id, target.step)
        self.report(pb.CHAOS_INJECTED, target, what, wall_time=now, step=target.step)

    # main ------------------------------------------------------------------------------
    async def run(self) -> int:
        """Run until the controller ends the job; returns 0 if it succeeded."""
        self._loop = asyncio.get_running_loop()
        sender = asyncio.ensure_future(self._sender())
        supervisor: asyncio.Future[None] | None = None
        if self.config.worker_socket:
            loop = self._loop

            def exited() -> None:
                loop.call_soon_threadsafe(self._look_again)

            self.host = HostLink(self.config.worker_socket, on_exit=exited)
        try:
            await self._register()
            if self.host is not None:
                await self._wait_for_host()
            else:
                for slot in range(self.config.slots):
                    self._start_worker(slot)
            supervisor = asyncio.ensure_future(self._supervise())
            while self.shutdown is None:
                await self._session()
                if self.shutdown is None:
                    await asyncio.sleep(0.1)
                    await self._register()
        finally:
            self.done.set()
            if supervisor is not None:
                supervisor.cancel()
            await asyncio.get_running_loop().run_in_executor(
                None, stop_workers, list(self.workers.values()), 10.0
            )
            await asyncio.sleep(0.1)
            sender.cancel()
            if self.client is not None:
                await self.client.close()
            if self.host is not None:
                # the training container exits with the job's outcome: 0 completes the pod
                self.host.finish(0 if self.shutdown == pb.JOB_SUCCEEDED else 1)
        return 0 if self.shutdown == pb.JOB_SUCCEEDED else 1

    async def _wait_for_host(self) -> None:
        host = self.host
        if host is None:
            return
        log.info("waiting for the worker host on %s", host.path)
        connected = await asyncio.get_running_loop().run_in_executor(
            None, host.wait_connected, self.config.host_timeout_s
        )
        if not connected:
            raise RuntimeError(
                f"no worker host connected to {host.path} in {self.config.host_timeout_s:.0f}s: "
                "is the training container running `elastiq worker-host`?"
            )
        self._host_ready()
