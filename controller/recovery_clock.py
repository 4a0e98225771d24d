"""The recovery clock: how long a membership change took, phase by phase, and how many
committed steps it cost.

Where it sits: the job controller (controller/job.py) tells it about a failure, the
plan that answers it, and each member's join and first step in that plan's
generation; it answers with the finished `pb.Recovery` record once every member has
stepped. Pure bookkeeping over wall-clock times the parts reported: no I/O.

Phases, from the failure (the chaos injection time when chaos caused it): detect (until
the controller learned of it), plan, deliver (until the first member began joining),
comm_rebuild and migrate (the slowest member's), resume (the rest, until the last
member finished its first step). Lost steps: the highest step any member had applied
before minus the step the generation committed to.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from elastiq.proto import elastiq_pb2 as pb


@dataclass(slots=True)
class PendingRecovery:
    cause: str
    failure_time: float
    detect_time: float
    last_committed_before: int
    plan_time: float = 0.0
    generation: int = 0
    joins: dict[str, pb.JoinTimings] = field(default_factory=dict)
    first_steps: dict[str, float] = field(default_factory=dict)
    committed_after: int = -1


class RecoveryClock:
    """At most one recovery in progress; a second failure extends it."""

    def __init__(self) -> None:
        self.pending: PendingRecovery | None = None
        self._chaos_times: dict[str, float] = {}

    def chaos_injected(self, worker_id: str, wall_time: float) -> None:
        """Chaos hit `worker_id` at `wall_time`: its failure is timed from then."""
        self._chaos_times[worker_id] = wall_time

    def failure_time(self, worker_ids: Iterable[str], reported: float) -> float:
        """When the failure of these workers happened: the chaos injection time if
        chaos caused it, else when it was reported."""
        times = [self._chaos_times[w] for w in worker_ids if w in self._chaos_times]
        return min(times) if times else reported

    def failure(self, cause: str, failure_time: float, last_committed: int) -> None:
        """A member was lost; a recovery already running keeps its start."""
        if self.pending is None:
            self.pending = PendingRecovery(
                cause=cause,
                failure_time=failure_time,
                detect_time=time.time(),
                last_committed_before=last_committed,
            )

    def called_off(self) -> None:
        """The lost members came back before any plan: there was nothing to recover."""
        self.pending = None

    def planned(self, generation: int, reason: str, last_committed: int) -> None:
        """A plan was pushed. It answers the recovery in progress (a newer one
        supersedes an interrupted reconfiguration, still timed from the first
        failure), or, for a join or takeover, starts one in which nobody failed."""
        now = time.time()
        if self.pending is not None:
            self.pending.generation = generation
            self.pending.plan_time = now
            self.pending.joins = {}
            self.pending.first_steps = {}
        elif reason != "start":
            self.pending = PendingRecovery(
                cause=reason,
                failure_time=now,
                detect_time=now,
                last_committed_before=last_committed,
                plan_time=now,
                generation=generation,
            )

    def _current(self, generation: int) -> PendingRecovery | None:
        pending = self.pending
        return pending if pending is not None and pending.generation == generation else None

    def joined(
        self, worker_id: str, generation: int, committed: int, timings: pb.JoinTimings
    ) -> None:
        pending = self._current(generation)
        if pending is None:
            return
        pending.joins[worker_id] = timings
        pending.committed_after = committed
        pending.last_committed_before = max(pending.last_committed_before, timings.reached_step)

    def resumed(
        self, worker_id: str, generation: int, wall_time: float, members: Collection[str]
    ) -> pb.Recovery | None:
        """A member finished its first step; the record once every member has."""
        pending = self._current(generation)
        if pending is None:
            return None
        pending.first_steps[worker_id] = wall_time
        # the full check only once enough have reported: per report it was O(n), so
        # O(n^2) a generation (10,000 workers: 10^8 look-ups)
        if len(pending.first_steps) < len(members):
            return None
        if not all(w in pending.first_steps for w in members):
            return None
        self.pending = None
        return _record(pending)


def _record(pending: PendingRecovery) -> pb.Recovery:
    joins = list(pending.joins.values())
    resumed = max(pending.first_steps.values())
    join_start = min((j.join_start for j in joins), default=pending.plan_time)
    phases = {
        "detect": max(0.0, pending.detect_time - pending.failure_time),
        "plan": max(0.0, pending.plan_time - pending.detect_time),
        "deliver": max(0.0, join_start - pending.plan_time),
        "comm_rebuild": max((j.comm_rebuild_s for j in joins), default=0.0),
        "migrate": max((j.migrate_s for j in joins), default=0.0),
    }
    phases["resume"] = max(0.0, resumed - pending.failure_time - sum(phases.values()))
    record = pb.Recovery(
        generation=pending.generation,
        cause=pending.cause,
        failure_time=pending.failure_time,
        resumed_time=resumed,
        lost_steps=max(0, pending.last_committed_before - pending.committed_after),
    )
    record.phases.update(phases)
    return record
