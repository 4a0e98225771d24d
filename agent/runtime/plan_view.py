"""This rank's place in a generation's plan: the view the worker reads.

Where it sits: the worker's agent link (agent/runtime/agent_link.py) turns every plan
that names this worker into a `PlanView`: the typed `PlanLayout` (agent/plan_layout.py)
plus this rank's stage, replica, pipeline neighbours and routes, buddy and wards, and
ZeRO intervals, computed once. The join, the pipeline, buddies, edge copies and the
gradient hand-over read it; nothing else in the worker reads the protobuf.
"""

from __future__ import annotations

from dataclasses import dataclass

from elastiq.agent.plan_layout import PlanLayout
from elastiq.agent.runtime.pipeline import StageView, stage_routes
from elastiq.agent.runtime.schedule import Hop
from elastiq.checkpoint import checkfree
from elastiq.partition import even_split


@dataclass(frozen=True, slots=True)
class RouteShape:
    """What the routes of CheckFree+'s swapped micro-batches depend on besides the plan."""

    blocks: int
    """Transformer blocks (the units between the embedding and the head)."""
    micro_batches: int
    checkfree_plus: bool


@dataclass(frozen=True, slots=True)
class PlanView:
    """This rank's place in a generation's plan."""

    layout: PlanLayout
    rank: int
    pipeline: StageView
    """Stage, replica, every stage's ranks and each micro-batch's route."""
    intervals: tuple[tuple[int, int], ...] | None
    """ZeRO: each replica's interval of this stage's flat buffer (None: ZeRO-0)."""

    @property
    def generation(self) -> int:
        return self.layout.generation

    @property
    def world_size(self) -> int:
        return self.layout.world_size

    @property
    def stage(self) -> int:
        return self.pipeline.stage

    @property
    def replica(self) -> int:
        return self.pipeline.replica

    @property
    def degree(self) -> int:
        """Replicas of this rank's stage."""
        return self.pipeline.degree(self.pipeline.stage)

    @property
    def units(self) -> tuple[int, int]:
        return self.layout.stages[self.stage].units

    @property
    def buddy(self) -> int:
        return self.layout.buddy[self.rank]

    @property
    def wards(self) -> tuple[int, ...]:
        """Ranks whose snapshots this rank keeps."""
        return tuple(
            r for r, b in enumerate(self.layout.buddy) if b == self.rank and r != self.rank
        )

    @property
    def interval(self) -> tuple[int, int] | None:
        """This rank's ZeRO interval of its stage's flat buffer (None: ZeRO-0)."""
        return self.intervals[self.replica] if self.intervals is not None else None

    @classmethod
    def of(cls, layout: PlanLayout, worker_id: str, shape: RouteShape) -> PlanView | None:
        """The view of `worker_id`, None when the plan does not name it."""
        rank = layout.rank_of(worker_id)
        if rank is None:
            return None
        unit_numel = layout.unit_numel
        stage_ranks = tuple(st.ranks for st in layout.stages)
        stage = layout.stage_of[rank]
        lo, hi = layout.stages[stage].units
        total = sum(unit_numel[lo:hi])
        degree = len(stage_ranks[stage])
        intervals = (
            tuple(even_split(total, degree, j) for j in range(degree)) if layout.zero else None
        )
        routes: tuple[tuple[Hop, ...], ...] = ()
        if shape.checkfree_plus and (layout.swap_first or layout.swap_last):
            groups = checkfree.SwapGroups(
                blocks=shape.blocks, first=layout.swap_first, last=layout.swap_last
            )
            orders = [
                checkfree.unit_order(len(unit_numel), mb, groups)
                for mb in range(shape.micro_batches)
            ]
            routes = stage_routes([st.units for st in layout.stages], orders)
        pipeline = StageView(stage, stage_ranks[stage].index(rank), stage_ranks, routes)
        return cls(layout=layout, rank=rank, pipeline=pipeline, intervals=intervals)
