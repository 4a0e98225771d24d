"""Conversions between the planner's pure `HybridLayout` and the wire `Plan` message."""

from __future__ import annotations

from collections.abc import Collection

from elastiq.controller.planner import HybridLayout, StageLayout, WorkerRef
from elastiq.proto import elastiq_pb2 as pb


def layout_to_plan(
    layout: HybridLayout,
    job: str,
    rendezvous: str,
    created_unix: float,
    holders: Collection[str] = (),
    source_generation: int = 0,
    checkpoint_step: int = 0,
) -> pb.Plan:
    """`holders`: workers whose state was valid going into this generation;
    `source_generation`: the layout the moves take state from; `checkpoint_step`:
    the committed checkpoint every rank loads (state_source "checkpoint")."""
    plan = pb.Plan(
        job=job,
        generation=layout.generation,
        rendezvous=rendezvous,
        world_size=layout.world_size,
        abort_in_flight=layout.abort_in_flight,
        reason=layout.reason,
        created_unix=created_unix,
        state_source=layout.state_source,
        zero=layout.zero,
        source_generation=source_generation,
        checkpoint_step=checkpoint_step,
    )
    plan.buddy.extend(layout.buddy)
    for rank, w in enumerate(layout.workers):
        plan.assignments.add(
            rank=rank,
            worker_id=w.worker_id,
            node_id=w.node_id,
            slot=w.slot,
            holder=w.worker_id in holders,
        )
    for st in layout.stages:
        plan.stages.add(unit_lo=st.units[0], unit_hi=st.units[1], ranks=st.ranks)
    for m in layout.moves:
        plan.moves.add(
            what=m.what, src_rank=m.src_rank, dst_rank=m.dst_rank, lo=m.lo, hi=m.hi, via=m.via
        )
    return plan


def plan_to_layout(plan: pb.Plan) -> HybridLayout:
    """Rebuild a layout (without its moves) from a stored plan; ValueError if malformed."""
    ranks = sorted(plan.assignments, key=lambda a: a.rank)
    if [a.rank for a in ranks] != list(range(len(ranks))) or len(ranks) != plan.world_size:
        raise ValueError(
            f"plan {plan.generation} is malformed: ranks {[a.rank for a in ranks]} "
            f"do not cover 0..{plan.world_size - 1}"
        )
    if plan.generation <= 0:
        raise ValueError(f"plan generation {plan.generation} must be positive")
    staged = sorted(r for st in plan.stages for r in st.ranks)
    if staged != list(range(plan.world_size)):
        raise ValueError(f"plan {plan.generation} is malformed: stages do not cover every rank")
    if len(plan.buddy) != plan.world_size:
        raise ValueError(f"plan {plan.generation} is malformed: {len(plan.buddy)} buddies")
    return HybridLayout(
        generation=plan.generation,
        workers=tuple(WorkerRef(a.node_id, a.slot, a.worker_id) for a in ranks),
        stages=tuple(
            StageLayout(units=(st.unit_lo, st.unit_hi), ranks=tuple(st.ranks)) for st in plan.stages
        ),
        zero=plan.zero,
        buddy=tuple(plan.buddy),
        moves=(),
        lost=(),
        abort_in_flight=plan.abort_in_flight,
        reason=plan.reason,
        state_source=plan.state_source,
    )
