"""Conversions between the planner's pure `Layout` and the wire `Plan` message."""

from __future__ import annotations

from elastiq.controller.planner import Layout, RankAssignment, WorkerRef
from elastiq.proto import elastiq_pb2 as pb


def layout_to_plan(layout: Layout, job: str, rendezvous: str, created_unix: float) -> pb.Plan:
    plan = pb.Plan(
        job=job,
        generation=layout.generation,
        rendezvous=rendezvous,
        world_size=layout.world_size,
        abort_in_flight=layout.abort_in_flight,
        reason=layout.reason,
        created_unix=created_unix,
        state_source=layout.state_source,
    )
    for a in layout.ranks:
        plan.assignments.add(
            rank=a.rank,
            worker_id=a.worker.worker_id,
            node_id=a.worker.node_id,
            slot=a.worker.slot,
            holder=a.holder,
        )
    for src, dst in layout.transfers:
        plan.transfers.add(src_rank=src, dst_rank=dst, what="full_state")
    return plan


def plan_to_layout(plan: pb.Plan) -> Layout:
    """Rebuild a layout from a stored plan; raises ValueError if it is malformed."""
    ranks = sorted(plan.assignments, key=lambda a: a.rank)
    if [a.rank for a in ranks] != list(range(len(ranks))) or len(ranks) != plan.world_size:
        raise ValueError(
            f"plan {plan.generation} is malformed: ranks {[a.rank for a in ranks]} "
            f"do not cover 0..{plan.world_size - 1}"
        )
    if plan.generation <= 0:
        raise ValueError(f"plan generation {plan.generation} must be positive")
    return Layout(
        generation=plan.generation,
        ranks=tuple(
            RankAssignment(a.rank, WorkerRef(a.node_id, a.slot, a.worker_id), a.holder)
            for a in ranks
        ),
        transfers=tuple((t.src_rank, t.dst_rank) for t in plan.transfers),
        abort_in_flight=plan.abort_in_flight,
        state_source=plan.state_source,
        reason=plan.reason,
    )
