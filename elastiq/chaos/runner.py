"""`elastiq chaos run`: a job on real processes, a timed schedule of faults, a verdict.

Where it sits: the CLI (and bench/soak.py) call `run_scenario`; it starts the
cluster (elastiq/chaos/cluster.py), waits for the first plan, injects the next fault
every `fault_every_s` (elastiq/chaos/faults.py), watches the job through `Status`,
and after `duration_s` lets the job finish. The verdict (`ChaosSummary`):

- a fault is *survived* when, within `recovery_timeout_s`, the job trains past the
  step it had reached when the fault came (and has not failed);
- steps lost and MTTR come from the controllers' recovery records, collected as they
  appear (a new leader starts a new list), each attributed to the fault before it;
- a committed checkpoint is *lost* when a step once seen committed is gone while no
  newer one exists, or when the newest one fails verification without having been
  corrupted on purpose.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from elastiq.chaos.cluster import ChaosCluster
from elastiq.chaos.faults import FaultInjector, Injected
from elastiq.chaos.scenario import Scenario
from elastiq.checkpoint import catalog
from elastiq.checkpoint.manifest import step_dir
from elastiq.proto import elastiq_pb2 as pb

log = logging.getLogger(__name__)
_POLL_S = 0.5


@dataclass(slots=True)
class ChaosSummary:
    phase: str = "?"
    steps: int = 0
    final_loss: float = 0.0
    wall_s: float = 0.0
    faults_injected: int = 0
    faults_survived: int = 0
    steps_lost: int = 0
    committed_checkpoints_lost: int = 0
    checkpoints_committed: int = 0
    recoveries: int = 0
    rejoins: int = 0
    """Generations that only took in restarted workers or replacement nodes."""
    mttr_s: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per fault kind: p50 and max seconds from failure to the job training again."""
    faults: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(slots=True)
class _Watch:
    fault: Injected
    survived: bool = False


class ChaosRun:
    def __init__(self, scenario: Scenario, work_dir: str, out: TextIO) -> None:
        self.scenario, self.out = scenario, out
        self.cluster = ChaosCluster(scenario, work_dir)
        self.injector = FaultInjector(self.cluster, scenario.seed)
        self.watches: list[_Watch] = []
        self.recoveries: dict[tuple[int, float], pb.Recovery] = {}
        self.plan_reasons: dict[int, str] = {}
        """Why each generation was planned, from the controllers' plan events."""
        self.committed_seen: set[int] = set()
        self.last: pb.StatusResponse | None = None
        self.leader = 0

    def _say(self, line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", file=self.out, flush=True)

    def _poll(self) -> pb.StatusResponse | None:
        answer = self.cluster.status()
        if answer is None:
            return None
        self.leader, status = answer
        self.last = status
        for r in status.recoveries:
            self.recoveries.setdefault((r.generation, round(r.failure_time, 3)), r)
        for e in status.events:
            if e.kind == "plan" and "(" in e.message:
                self.plan_reasons[e.generation] = e.message.split("(", 1)[1].rstrip(")")
        limit = self.scenario.recovery_timeout_s
        for w in self.watches:
            in_time = time.time() - w.fault.wall_time <= limit
            if not w.survived and in_time and status.step > w.fault.step:
                w.survived = status.phase != pb.JOB_FAILED
        url = self.scenario.job_config().checkpoint_url
        if url:
            self.committed_seen.update(catalog.committed(url))
        return status

    def _progress(self, status: pb.StatusResponse, started: float) -> None:
        total = max(1, status.total_steps)
        done = int(30 * min(status.step, total) / total)
        self._say(
            f"[{'#' * done}{'.' * (30 - done)}] step {status.step}/{total} "
            f"loss {status.loss:.3f} gen {status.generation} "
            f"{pb.JobPhase.Name(status.phase).removeprefix('JOB_').lower()} "
            f"faults {len(self.watches)} ({time.monotonic() - started:.0f}s)"
        )

    def run(self) -> ChaosSummary:
        s = self.scenario
        started = time.monotonic()
        try:
            if s.store == "etcd":
                self.cluster.start_etcd()
            for i in range(s.controllers):
                self.cluster.start_controller(i)
            for _ in range(s.workers // s.workers_per_node):
                self.cluster.start_agent()
            self._say(f"chaos: {s.workers} workers, {s.controllers} controller(s), {s.store}")
            first = self._wait(lambda st: st.generation >= 1 and st.step >= 1, 300, "first step")
            self._say(f"first plan: {first.plan.world_size} workers; faults begin")
            self._faults(started)
            end = self._wait(
                lambda st: st.phase in (pb.JOB_SUCCEEDED, pb.JOB_FAILED),
                s.finish_timeout_s,
                "the job to finish",
            )
            return self._summary(end, time.monotonic() - started)
        finally:
            self.injector.close()
            self.cluster.close()

    def _wait(self, done: Any, timeout: float, what: str) -> pb.StatusResponse:
        deadline = time.monotonic() + timeout
        shown = 0.0
        while time.monotonic() < deadline:
            status = self._poll()
            if status is not None:
                if done(status):
                    return status
                if time.monotonic() - shown > 10:
                    self._progress(status, deadline - timeout)
                    shown = time.monotonic()
            time.sleep(_POLL_S)
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}: {self.last}")

    def _faults(self, started: float) -> None:
        s = self.scenario
        begin = time.monotonic()
        next_at = begin + s.first_fault_s
        shown = 0.0
        i = 0
        while time.monotonic() - begin < s.duration_s:
            status = self._poll()
            if status is not None and status.phase in (pb.JOB_SUCCEEDED, pb.JOB_FAILED):
                self._say(f"the job ended early: {pb.JobPhase.Name(status.phase)}")
                return
            if status is not None and time.monotonic() >= next_at:
                kind = s.faults[i % len(s.faults)]
                i += 1
                try:
                    fault = self.injector.inject(kind, status, self.leader)
                    self.watches.append(_Watch(fault))
                    self._say(f"fault {len(self.watches)}: {kind}: {fault.detail}")
                except Exception as exc:  # a fault that could not be injected now
                    self._say(f"could not inject {kind}: {exc!r}")
                next_at = time.monotonic() + s.fault_every_s
            if status is not None and time.monotonic() - shown > 10:
                self._progress(status, started)
                shown = time.monotonic()
            time.sleep(_POLL_S)

    def _summary(self, end: pb.StatusResponse, wall_s: float) -> ChaosSummary:
        s = self.scenario
        summary = ChaosSummary(
            phase=pb.JobPhase.Name(end.phase),
            steps=end.step,
            final_loss=end.loss,
            wall_s=round(wall_s, 1),
            faults_injected=len(self.watches),
            recoveries=len(self.recoveries),
        )
        for w in self.watches:
            summary.faults.append(
                {
                    "kind": w.fault.kind,
                    "at_step": w.fault.step,
                    "survived": w.survived,
                    "detail": w.fault.detail,
                }
            )
        summary.faults_survived = sum(w.survived for w in self.watches)
        if end.phase != pb.JOB_SUCCEEDED:
            summary.faults_survived = min(summary.faults_survived, len(self.watches) - 1)
        by_kind: dict[str, list[float]] = {}
        for r in sorted(self.recoveries.values(), key=lambda r: r.failure_time):
            summary.steps_lost += r.lost_steps
            if self._only_joins(r.generation):
                summary.rejoins += 1  # a restarted worker or a replacement node: no failure
                continue
            kind = self._fault_before(r.failure_time)
            by_kind.setdefault(kind, []).append(r.resumed_time - r.failure_time)
        summary.mttr_s = {
            k: {"p50": round(statistics.median(v), 3), "max": round(max(v), 3), "n": len(v)}
            for k, v in sorted(by_kind.items())
        }
        url = s.job_config().checkpoint_url
        if url:
            final = catalog.committed(url)
            summary.checkpoints_committed = len(self.committed_seen)
            newest = final[-1] if final else -1
            lost = {step for step in self.committed_seen if step > newest}
            if newest >= 0 and newest not in self.injector.corrupted:
                from elastiq.checkpoint.convert import verify

                if verify(f"{url}/{step_dir(newest)}").problems:
                    lost.add(newest)
            summary.committed_checkpoints_lost = len(lost)
        return summary

    def _only_joins(self, generation: int) -> bool:
        reasons = self.plan_reasons.get(generation, "").split("; ")
        return all(r.endswith(" joined") for r in reasons)

    def _fault_before(self, when: float) -> str:
        kinds = [w.fault.kind for w in self.watches if w.fault.wall_time <= when + 1.0]
        return kinds[-1] if kinds else "none"


def run_scenario(scenario: Scenario, work_dir: str, out: TextIO = sys.stdout) -> ChaosSummary:
    """Run a scenario to its end; the summary, also printed as one JSON line."""
    summary = ChaosRun(scenario, work_dir, out).run()
    print(summary.to_json(), file=out, flush=True)
    return summary
