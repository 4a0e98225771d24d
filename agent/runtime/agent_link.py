"""The worker's end of the channel to its node agent: typed messages in and out.

Where it sits: the worker (agent/runtime/worker.py) owns one `AgentLink`. A listener
thread turns each `pb.ToWorker` into state the training loop polls: plans are parsed
once, on arrival, into a `PlanView` (or `Unnamed` when the plan leaves this worker out)
and offered to the `PlanBox`; chaos arms a kill. An alive thread sends liveness. The
`send_*` methods are the worker's whole vocabulary towards the agent
(proto/elastiq.proto, "FromWorker").
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from elastiq.agent.channel import Channel
from elastiq.agent.plan_layout import PlanLayout
from elastiq.agent.runtime.join import Joined
from elastiq.agent.runtime.plan_view import PlanView, RouteShape
from elastiq.proto import elastiq_pb2 as pb

log = logging.getLogger(__name__)

ALIVE_INTERVAL_S = 0.25

WorkerChannel = Channel[pb.ToWorker, pb.FromWorker]


@dataclass(frozen=True, slots=True)
class Unnamed:
    """A plan that does not name this worker (it is a spare, or it was dropped)."""

    layout: PlanLayout

    @property
    def generation(self) -> int:
        return self.layout.generation


Offer = PlanView | Unnamed


class PlanBox:
    """The newest plan the agent has relayed, parsed; thread-safe."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._offer: Offer | None = None
        self._abort_above = 0
        self.shutdown = False
        self.error = ""
        """Why the worker must stop (a malformed plan), empty otherwise."""

    def offer(self, offer: Offer) -> None:
        with self._cond:
            if self._offer is None or offer.generation > self._offer.generation:
                self._offer = offer
                if offer.layout.abort_in_flight:
                    self._abort_above = max(self._abort_above, offer.generation)
                self._cond.notify_all()

    def stop(self, error: str = "") -> None:
        with self._cond:
            self.shutdown = True
            self.error = self.error or error
            self._cond.notify_all()

    def newest_generation(self) -> int:
        with self._cond:
            return self._offer.generation if self._offer is not None else 0

    def aborts(self, generation: int) -> bool:
        """True when a plan newer than `generation` drops one of its members."""
        return self._abort_above > generation

    def wait_newer(self, generation: int, timeout_s: float) -> Offer | None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self.shutdown:
                if self._offer is not None and self._offer.generation > generation:
                    return self._offer
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.5))
        return None


class StartingPulse:
    """Alive messages while the worker builds its model and opens its data, before
    its AgentLink runs. The agent's watchdog then treats a worker that stops
    answering while it starts (stopped, stuck in a driver call) like a running one,
    instead of waiting for its readiness for ever (issue 17)."""

    def __init__(self, channel: WorkerChannel) -> None:
        self._channel = channel
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._pulse, name="alive-starting", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _pulse(self) -> None:
        while not self._stop.is_set():
            if not self._channel.send(pb.FromWorker(alive=pb.WorkerAlive(wall_time=time.time()))):
                return
            self._stop.wait(ALIVE_INTERVAL_S)


class AgentLink:
    """Plans and chaos from the agent; steps, joins and problems to it."""

    def __init__(
        self,
        channel: WorkerChannel,
        worker_id: str,
        unit_numel: Sequence[int],
        routes: RouteShape,
    ) -> None:
        self.channel = channel
        self.worker_id = worker_id
        self.plans = PlanBox()
        self.die_after_update_of = 0
        """Chaos kill-before-snapshot: the step after whose update to die (0: unarmed)."""
        self._unit_numel = list(unit_numel)
        self._routes = routes

    def start(self) -> None:
        threading.Thread(target=self._listen, name="agent-listener", daemon=True).start()
        threading.Thread(target=self._alive, name="alive", daemon=True).start()

    def _listen(self) -> None:
        while True:
            message = self.channel.recv()
            kind = message.WhichOneof("kind") if message is not None else None
            if message is None or kind == "shutdown":
                self.plans.stop()
                return
            if kind == "plan":
                try:
                    layout = PlanLayout.parse(message.plan)
                    if list(layout.unit_numel) != self._unit_numel:
                        raise ValueError(
                            f"its layer units hold {list(layout.unit_numel)} parameters, this "
                            f"worker's model {self._unit_numel}: the job's workers must all "
                            "build the same model"
                        )
                except ValueError as exc:
                    log.error("refusing plan %d: %s", message.plan.generation, exc)
                    self.plans.stop(f"plan {message.plan.generation} refused: {exc}")
                    return
                view = PlanView.of(layout, self.worker_id, self._routes)
                self.plans.offer(view if view is not None else Unnamed(layout))
            elif kind == "chaos":
                self.die_after_update_of = message.chaos.die_after_update_of

    def _alive(self) -> None:
        while not self.plans.shutdown:
            if not self.channel.send(pb.FromWorker(alive=pb.WorkerAlive(wall_time=time.time()))):
                return
            time.sleep(ALIVE_INTERVAL_S)

    def send_ready(self) -> None:
        """Built and waiting for a plan; tells the controller the model's shape, which
        it plans with (it never imports the model)."""
        model = pb.ModelShape(unit_numel=self._unit_numel)
        self.channel.send(pb.FromWorker(ready=pb.WorkerReady(pid=os.getpid(), model=model)))

    def send_step(self, step: pb.StepDone) -> None:
        self.channel.send(pb.FromWorker(step=step))

    def send_joined(self, view: PlanView, joined: Joined) -> None:
        t = joined.timings
        self.channel.send(
            pb.FromWorker(
                joined=pb.JoinDone(
                    generation=view.generation,
                    rank=view.rank,
                    committed_step=joined.committed,
                    timings=pb.JoinTimings(
                        join_start=t.join_start,
                        comm_rebuild_s=t.comm_rebuild_s,
                        migrate_s=t.migrate_s,
                        reached_step=t.reached_step,
                    ),
                    moved_bytes=joined.moved_bytes,
                    rolled_back=joined.rolled_back,
                )
            )
        )

    def send_interrupted(self, generation: int, rank: int, step: int, detail: str) -> None:
        problem = pb.WorkerProblem(generation=generation, rank=rank, step=step, detail=detail)
        self.channel.send(pb.FromWorker(interrupted=problem))

    def send_state_lost(self, generation: int, rank: int, step: int, detail: str) -> None:
        problem = pb.WorkerProblem(generation=generation, rank=rank, step=step, detail=detail)
        self.channel.send(pb.FromWorker(state_lost=problem))

    def send_chaos_fired(self, step: int) -> None:
        fired = pb.ChaosFired(step=step, wall_time=time.time())
        self.channel.send(pb.FromWorker(chaos_fired=fired))

    def send_finished(self, step: int, generation: int) -> None:
        done = pb.WorkerFinished(step=step, generation=generation, wall_time=time.time())
        self.channel.send(pb.FromWorker(finished=done))
