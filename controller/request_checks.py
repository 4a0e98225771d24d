"""Field-by-field checks of every request the controller accepts: pure, no I/O.

Where it sits: controller/service.py calls these after authenticating and before it
calls anything that changes state (controller/job.py, the store), so a refused
request changes nothing. Each check raises `Refusal(code, message)`: the gRPC status
(a `grpc.StatusCode` name) and a message that says which field was wrong and what is
allowed. The limits are those of a real job (a step is never past the job's last,
a worker id names its own node, an enum value is one the proto defines) and of a
controller that must not be grown without bound by one peer (ids, addresses and
free text have maximum lengths).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from elastiq.proto import elastiq_pb2 as pb
from elastiq.rpc import MAX_REPORTS_PER_SLOT

#: node ids: hostnames, pod names: no '/', no ':', nothing to escape in a store key
NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
#: a worker id is its node's id, a dot, and a name of its own (the agent uses w<slot>)
_WORKER_SUFFIX = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
#: host, host:port or [v6]:port
_ADDRESS = re.compile(r"^[A-Za-z0-9._:\[\]-]{0,255}$")
MAX_SLOTS = 1024
#: far above any model this runtime splits into units, far below what breaks planning
MAX_UNITS = 100_000
MAX_UNIT_NUMEL = 1 << 40
MAX_DETAIL = 4096
#: seconds: a unit's forward+backward, a step, a checkpoint hold: a day is not a cost
MAX_SECONDS = 86_400.0

_WORKER_PHASES = frozenset(pb.WorkerPhase.values())
_EVENT_KINDS = frozenset(pb.EventKind.values()) - {pb.EVENT_UNSPECIFIED}
_CHAOS_ACTIONS = frozenset(pb.ChaosAction.values()) - {pb.CHAOS_UNSPECIFIED}


class Refusal(Exception):
    """A request that is refused; nothing was changed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _bad(message: str) -> Refusal:
    return Refusal("INVALID_ARGUMENT", message[:1000])


@dataclass(frozen=True, slots=True)
class JobLimits:
    """What the controller knows that bounds a report: the job's last step, its
    current generation, the number of layer units (0: not known yet)."""

    total_steps: int
    generation: int
    units: int = 0


def check_node_id(node_id: str) -> None:
    if not NODE_ID.match(node_id):
        raise _bad(
            f"node id {node_id!r} must be 1-63 characters of [A-Za-z0-9._-], starting with a "
            "letter or digit"
        )


def check_worker_id(worker_id: str, node_id: str) -> None:
    prefix, _, suffix = worker_id.rpartition(".")
    if prefix != node_id or not _WORKER_SUFFIX.match(suffix):
        raise _bad(
            f"worker id {worker_id!r} must be '{node_id}.<name>': a node reports its own "
            "workers only"
        )


def _number(value: float, name: str, hi: float = math.inf, lo: float = 0.0) -> None:
    if not (math.isfinite(value) and lo <= value <= hi):
        raise _bad(f"{name}={value!r} must be a finite number in [{lo}, {hi}]")


def _step(value: int, name: str, limits: JobLimits) -> None:
    if not 0 <= value <= limits.total_steps:
        raise _bad(f"{name}={value} is outside the job's steps 0..{limits.total_steps}")


def _generation(value: int, limits: JobLimits) -> None:
    if not 0 <= value <= limits.generation:
        raise _bad(f"generation={value} is outside 0..{limits.generation} (the current generation)")


def model_problem(model: pb.ModelShape) -> str:
    """Why a reported model shape cannot be planned with; empty if it can."""
    sizes = list(model.unit_numel)
    if not sizes:
        return "reports no model shape (ModelShape.unit_numel is empty)"
    if len(sizes) > MAX_UNITS:
        return f"reports {len(sizes)} layer units; at most {MAX_UNITS} are supported"
    bad = [n for n in sizes if not 0 < n <= MAX_UNIT_NUMEL]
    if bad:
        return f"reports layer units of {bad[:3]} parameters; each must be in 1..{MAX_UNIT_NUMEL}"
    return ""


def check_register(req: pb.RegisterRequest) -> None:
    check_node_id(req.node_id)
    if not 1 <= req.slots <= MAX_SLOTS:
        raise _bad(f"slots={req.slots} must be in 1..{MAX_SLOTS}")
    if not _ADDRESS.match(req.address):
        raise _bad(
            f"address {req.address[:80]!r} must be a host or host:port of at most 255 "
            "characters of [A-Za-z0-9._:[]-]"
        )
    if len(req.node_secret) > 128:
        raise _bad("node_secret is longer than any secret the controller issues")
    if req.model.unit_numel:
        problem = model_problem(req.model)
        if problem:
            raise _bad(f"{req.node_id}: {problem}")
    if len(req.workers) > req.slots:
        raise _bad(f"{len(req.workers)} workers reported on {req.slots} slot(s)")
    _unique((w.worker_id for w in req.workers), "worker id")
    _unique((w.slot for w in req.workers), "slot")
    for w in req.workers:
        check_worker_id(w.worker_id, req.node_id)
        if not 0 <= w.slot < req.slots:
            raise _bad(f"worker {w.worker_id!r}: slot {w.slot} is outside 0..{req.slots - 1}")
        if w.pid <= 0:
            raise _bad(f"worker {w.worker_id!r}: pid {w.pid} must be positive")
        if w.phase not in _WORKER_PHASES:
            raise _bad(f"worker {w.worker_id!r}: unknown phase {w.phase}")
        if w.generation < 0 or w.step < 0:
            raise _bad(f"worker {w.worker_id!r}: negative generation or step")


def _unique(values: Iterable[object], what: str) -> None:
    seen: set[object] = set()
    for v in values:
        if v in seen:
            raise _bad(f"{what} {v!r} is reported twice")
        seen.add(v)


def check_heartbeat(req: pb.HeartbeatRequest, slots: int, limits: JobLimits) -> None:
    if len(req.progress) > slots:
        raise _bad(f"{len(req.progress)} progress reports for {slots} slot(s)")
    _unique((p.worker_id for p in req.progress), "worker id")
    for p in req.progress:
        check_worker_id(p.worker_id, req.node_id)
        _step(p.step, f"{p.worker_id}: step", limits)
        _step(p.checkpoint_committed_step, f"{p.worker_id}: checkpoint_committed_step", limits)
        _step(p.checkpoints_skipped, f"{p.worker_id}: checkpoints_skipped", limits)
        _generation(p.generation, limits)
        if p.phase not in _WORKER_PHASES:
            raise _bad(f"{p.worker_id}: unknown phase {p.phase}")
        if p.rank < -1:
            raise _bad(f"{p.worker_id}: rank {p.rank} must be -1 (none) or a rank")
        _number(p.loss, f"{p.worker_id}: loss", lo=-math.inf)
        _number(p.tokens_per_s, f"{p.worker_id}: tokens_per_s")
        _number(p.step_time_s, f"{p.worker_id}: step_time_s", MAX_SECONDS)
        _number(p.checkpoint_held_s, f"{p.worker_id}: checkpoint_held_s")
        _number(p.wall_time, f"{p.worker_id}: wall_time")
        if len(p.unit_costs) > MAX_UNITS:
            raise _bad(f"{p.worker_id}: {len(p.unit_costs)} unit costs")
        for unit, cost in p.unit_costs.items():
            if not 0 <= unit < (limits.units or MAX_UNITS):
                raise _bad(f"{p.worker_id}: unit {unit} does not exist")
            _number(cost, f"{p.worker_id}: cost of unit {unit}", MAX_SECONDS)


def check_event_batch(batch: pb.EventBatch, slots: int, limits: JobLimits) -> None:
    """Every report of the batch, before any is handled."""
    if not batch.reports:
        raise _bad("an event batch with no reports")
    if len(batch.reports) > MAX_REPORTS_PER_SLOT * slots:
        raise _bad(
            f"{len(batch.reports)} reports in one batch for {slots} slot(s); at most "
            f"{MAX_REPORTS_PER_SLOT} per slot"
        )
    for report in batch.reports:
        if report.node_id != batch.node_id or report.node_secret != batch.node_secret:
            raise _bad("a report in the batch names another node or secret")
        check_event(report, slots, limits)


def check_event(req: pb.EventReport, slots: int, limits: JobLimits) -> None:
    if req.kind not in _EVENT_KINDS:
        raise _bad(f"event kind {req.kind} is not one of {sorted(_EVENT_KINDS)}")
    if req.kind != pb.CHAOS_INJECTED or req.worker_id:
        check_worker_id(req.worker_id, req.node_id)
    if len(req.detail) > MAX_DETAIL:
        raise _bad(f"detail is {len(req.detail)} characters; at most {MAX_DETAIL}")
    _generation(req.generation, limits)
    _step(req.step, "step", limits)
    if req.rank < -1:
        raise _bad(f"rank {req.rank} must be -1 (none) or a rank")
    _number(req.loss, "loss", lo=-math.inf)
    _number(req.wall_time, "wall_time")
    for name in ("join_start", "comm_rebuild_s", "migrate_s"):
        _number(getattr(req.join, name), f"join.{name}")
    _step(req.join.reached_step, "join.reached_step", limits)
    if req.kind == pb.WORKER_READY:
        if not 0 <= req.slot < slots:
            raise _bad(f"{req.worker_id}: slot {req.slot} is outside 0..{slots - 1}")
        if req.pid <= 0:
            raise _bad(f"{req.worker_id}: pid {req.pid} must be positive")
        problem = model_problem(req.model)
        if problem:
            raise _bad(f"{req.worker_id}: {problem}")
    if req.kind == pb.FINISHED and req.step != limits.total_steps:
        raise Refusal(
            "FAILED_PRECONDITION",
            f"{req.worker_id}: FINISHED at step {req.step}, but the job ends at step "
            f"{limits.total_steps}",
        )


def check_admin(req: pb.AdminRequest) -> None:
    if req.action not in _CHAOS_ACTIONS:
        raise _bad(f"admin action {req.action} is not one of {sorted(_CHAOS_ACTIONS)}")
    if req.at_step < 0 or req.at_generation < 0 or req.rank < 0:
        raise _bad("at_step, at_generation and rank must be >= 0")
    if req.action == pb.KILL_NODE:
        check_node_id(req.node_id)
