"""Conversions between the planner's pure `HybridLayout` and the wire `Plan` message.

The controller's only writer of plans: `layout_to_plan` assembles every field a worker
reads (assignments, stages and where each stage's state comes from, moves, the
checkpoint or CheckFree source, learning-rate scaling, CheckFree+ swap groups);
`takeover_of` reads back what a new leader needs from a stored plan.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from elastiq.checkpoint.checkfree import SwapGroups
from elastiq.config import JobConfig
from elastiq.controller.checkfree_plan import CheckFreeDirective
from elastiq.controller.planner import HybridLayout, StageLayout, WorkerRef
from elastiq.proto import elastiq_pb2 as pb


def layout_to_plan(
    layout: HybridLayout,
    unit_numel: Collection[int],
    job: str,
    rendezvous: str,
    created_unix: float,
    holders: Collection[str] = (),
    source_generation: int = 0,
    checkpoint_step: int = 0,
    *,
    checkfree: CheckFreeDirective | None = None,
    lr_scaled_units: Collection[int] = (),
    lr_scale: float = 1.0,
    swap: SwapGroups | None = None,
) -> pb.Plan:
    """`holders`: workers whose state was valid going into this generation;
    `source_generation`: the layout the moves take state from; `checkpoint_step`:
    the committed checkpoint every rank loads (state_source "checkpoint");
    `checkfree`: the units rebuilt and from where (state_source "checkfree");
    `lr_scaled_units`: units ever rebuilt, trained at `lr_scale` x the learning rate;
    `swap`: CheckFree+'s swap groups, fixed for the job's life."""
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
    plan.unit_numel.extend(unit_numel)
    for rank, w in enumerate(layout.workers):
        plan.assignments.add(
            rank=rank,
            worker_id=w.worker_id,
            node_id=w.node_id,
            slot=w.slot,
            holder=w.worker_id in holders,
        )
    for st in layout.stages:
        lo, hi = st.units
        rebuilt = checkfree is not None and lo < checkfree.hi and checkfree.lo < hi
        if checkfree is None:
            source = layout.state_source
        else:
            source = "checkfree" if rebuilt else "live_replica"
        plan.stages.add(unit_lo=lo, unit_hi=hi, ranks=st.ranks, source=source)
    for m in layout.moves:
        plan.moves.add(
            what=m.what, src_rank=m.src_rank, dst_rank=m.dst_rank, lo=m.lo, hi=m.hi, via=m.via
        )
    if checkfree is not None:
        plan.checkfree_lo, plan.checkfree_hi = checkfree.lo, checkfree.hi
        plan.checkfree_prev_rank = checkfree.prev_rank
        plan.checkfree_next_rank = checkfree.next_rank
        for unit, src_unit, src_rank in checkfree.copies:
            plan.checkfree_copies.add(unit=unit, src_unit=src_unit, src_rank=src_rank)
    plan.lr_scaled_units.extend(sorted(lr_scaled_units))
    plan.lr_scale = lr_scale
    if swap is not None:
        plan.swap_first, plan.swap_last = swap.first, swap.last
    return plan


@dataclass(frozen=True, slots=True)
class Takeover:
    """What a new leader takes over from the stored plan."""

    layout: HybridLayout
    lr_scaled_units: frozenset[int]
    swap: SwapGroups | None
    unit_numel: tuple[int, ...]


def takeover_of(plan: pb.Plan, job: JobConfig) -> Takeover:
    """ValueError if the stored plan is malformed."""
    swap = None
    if job.checkfree_plus:
        swap = SwapGroups(blocks=job.model.n_layers, first=plan.swap_first, last=plan.swap_last)
    return Takeover(
        plan_to_layout(plan), frozenset(plan.lr_scaled_units), swap, tuple(plan.unit_numel)
    )


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


def plan_delta(base: pb.Plan, plan: pb.Plan) -> pb.PlanDelta:
    """`plan` as its changes from `base` (agent/plan_layout.py `apply_plan_delta`
    inverts it): each stretch of consecutive ranks whose workers were consecutive
    ranks of `base`, with one holder flag, becomes one run; the rest is sent whole.
    After one node of 10,000 workers is lost, two runs stand for 9,996 assignments."""
    base_rank = {a.worker_id: (a.rank, a.node_id, a.slot) for a in base.assignments}
    delta = pb.PlanDelta(base_generation=base.generation)
    delta.plan.CopyFrom(plan)
    del delta.plan.assignments[:]
    run: pb.AssignmentRun | None = None
    for a in sorted(plan.assignments, key=lambda a: a.rank):
        held = base_rank.get(a.worker_id)
        if held is None or held[1:] != (a.node_id, a.slot):
            delta.plan.assignments.append(a)
            run = None
        elif (
            run is not None
            and run.rank + run.count == a.rank
            and run.base_rank + run.count == held[0]
            and run.holder == a.holder
        ):
            run.count += 1
        else:
            run = delta.runs.add(rank=a.rank, base_rank=held[0], count=1, holder=a.holder)
    for stage in delta.plan.stages:
        delta.stage_ranks.append(progressions(stage.ranks))
        del stage.ranks[:]
    delta.buddy.CopyFrom(progressions(delta.plan.buddy))
    del delta.plan.buddy[:]
    return delta


def progressions(values: Sequence[int]) -> pb.Progressions:
    """`values` as runs of arithmetic progressions, each value repeated a number of
    times (agent/plan_layout.py `expand` inverts it): ranks 0..9,999 of a stage, or
    the buddies 4,4,4,4,8,8,8,8,... of a data-parallel job, are one run."""
    out = pb.Progressions()
    values = list(values)
    n, i = len(values), 0
    while i < n:
        repeat = 1
        while i + repeat < n and values[i + repeat] == values[i]:
            repeat += 1
        step = values[i + repeat] - values[i] if i + repeat < n else 1
        count, j = 1, i + repeat
        while (
            j + repeat <= n
            and values[j : j + repeat] == [values[i] + count * step] * repeat
            and (j + repeat == n or values[j + repeat] != values[j])
        ):
            count, j = count + 1, j + repeat
        out.start.append(values[i])
        out.step.append(step)
        out.count.append(count)
        out.repeat.append(repeat)
        i = j
    return out
