"""Proposing the next generation: from live members to the plan the agents will get.

Where it sits: the job controller's replan (controller/job.py) decides *when* a new
generation is needed and carries out the answer (writes the plan with compare-and-set,
pushes it, starts the recovery clock). This module decides *what* it is:

1. the members (with spares, a late spare never displaces a member of a plan that no
   generation completed yet);
2. the layout, from the pure planner (controller/planner.py) over the measured
   per-unit costs;
3. CheckFree+'s swap groups, fixed by the first layout for the job's life;
4. the source of any state no survivor holds (controller/lost_state.py: checkpoint,
   CheckFree, or the job fails);
5. the wire plan (controller/wire.py).

It keeps what the job learns over time: per-unit costs from heartbeats, the swap
groups, and the units CheckFree ever rebuilt (trained at a scaled learning rate).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from elastiq.checkpoint import catalog
from elastiq.checkpoint.checkfree import CheckFreeError, SwapGroups
from elastiq.config import JobConfig
from elastiq.controller import lost_state
from elastiq.controller.checkfree_plan import swap_groups_of
from elastiq.controller.job_state import ControllerConfig
from elastiq.controller.metrics import ControllerMetrics
from elastiq.controller.planner import (
    HybridLayout,
    PlanError,
    WorkerRef,
    make_hybrid_plan,
    measured_profile,
)
from elastiq.controller.wire import Takeover, layout_to_plan
from elastiq.proto import elastiq_pb2 as pb

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Proposed:
    layout: HybridLayout
    plan: pb.Plan
    notes: tuple[lost_state.Note, ...] = ()


@dataclass(frozen=True, slots=True)
class Unchanged:
    """The same members as the current plan (a duplicate report): nothing to push."""

    notes: tuple[lost_state.Note, ...] = ()


@dataclass(frozen=True, slots=True)
class Refused:
    """No generation can be planned: the job fails with `message`."""

    message: str
    notes: tuple[lost_state.Note, ...] = ()


Proposal = Proposed | Unchanged | Refused


class CompletedGenerations:
    """Which generation's layout is the source of state for the next one: the newest
    that every member finished joining. A later one that was interrupted (a failure
    during a reconfiguration) is not: its members may hold the older layout's state,
    or half of the newer one."""

    def __init__(self) -> None:
        self._joined: dict[int, set[str]] = {}
        self.completed: HybridLayout | None = None

    def joined(self, generation: int, worker_id: str) -> None:
        if self.completed is not None and generation < self.completed.generation:
            return  # a late report of a generation already superseded
        self._joined.setdefault(generation, set()).add(worker_id)

    def complete(self, layout: HybridLayout) -> bool:
        """Every member of `layout` reported joining it. Asked on every JOINED report
        while newcomers wait, so the member set is built only once enough have
        reported (per report it made a join of 100 nodes O(n^2) in the job's size)."""
        joined = self._joined.get(layout.generation, set())
        if len(joined) < layout.world_size:
            return False
        return set(layout.worker_ids()) <= joined

    def source(self, current: HybridLayout | None) -> HybridLayout | None:
        if current is None:
            return None
        if self.complete(current):
            self.completed = current
            for older in [g for g in self._joined if g < current.generation]:
                del self._joined[older]  # one set of ids per generation, kept no longer
        return self.completed


def covered_by_joined(layout: HybridLayout, joined: Collection[str]) -> bool:
    """Whether the members that joined `layout` hold all of its state on their own:
    with replicated optimizer state (zero 0), one joined replica per stage. Then an
    interrupted generation (a member never joined) can be the source of the next one,
    instead of the completed one before it, whose holders may all have moved on."""
    if layout.zero != 0 or not joined:
        return False
    ids = [w.worker_id for w in layout.workers]
    return all(any(ids[r] in joined for r in stage.ranks) for stage in layout.stages)


class GenerationPlanner:
    def __init__(
        self,
        job: JobConfig,
        config: ControllerConfig,
        rendezvous: str,
        metrics: ControllerMetrics,
    ) -> None:
        self.job = job
        self.config = config
        self.rendezvous = rendezvous
        self.metrics = metrics
        self.unit_costs: dict[int, float] = {}
        """Measured seconds per micro-batch by unit (moving average over reports)."""
        self.lr_scaled_units: set[int] = set()
        """Layer units ever rebuilt by CheckFree (trained at a scaled learning rate)."""
        self.swap: SwapGroups | None = None
        """CheckFree+ swap groups, fixed by the first plan's layout for the job's life."""
        self.unit_numel: tuple[int, ...] | None = None
        """The model's layer unit sizes, as the first ready worker reported them."""

    def take_over(self, taken: Takeover) -> None:
        self.lr_scaled_units.update(taken.lr_scaled_units)
        self.swap = taken.swap
        self.unit_numel = taken.unit_numel or self.unit_numel

    @property
    def units(self) -> int:
        """Layer units of the model (0: no worker reported it yet)."""
        return len(self.unit_numel) if self.unit_numel is not None else 0

    def learn_model(self, unit_numel: Sequence[int]) -> str:
        """A worker built a model with these layer unit sizes. The first one sets the
        job's model; a different one is refused (returns why, empty if accepted):
        workers that built another model (other code, other arguments) cannot train
        with the others."""
        shape = tuple(unit_numel)
        if self.unit_numel is None:
            if len(shape) < self.job.pipeline_stages:
                return (
                    f"its model has {len(shape)} layer units, fewer than "
                    f"pipeline_stages={self.job.pipeline_stages}: lower pipeline_stages, or "
                    "split the model into more units"
                )
            self.unit_numel = shape
            return ""
        if shape != self.unit_numel:
            return (
                f"its model has layer units of {list(shape)} parameters, the job's has "
                f"{list(self.unit_numel)}: every worker must build the same model (same code "
                "and arguments)"
            )
        return ""

    def observe_unit_costs(self, costs: dict[int, float]) -> None:
        for unit, cost in costs.items():
            if not (0 <= unit < (self.units or unit + 1) and 0 <= cost < math.inf):
                continue  # the service refuses these; the planner never sees one anyway
            old = self.unit_costs.get(unit)
            self.unit_costs[unit] = cost if old is None else 0.8 * old + 0.2 * cost

    def cost_profile(self) -> tuple[float, ...]:
        """The unit costs the next plan would balance with; () before any measurement."""
        if self.unit_numel is None or not self.unit_costs:
            return ()
        return measured_profile(self.unit_numel, self.unit_costs).unit_costs

    async def propose(
        self,
        *,
        generation: int,
        reason: str,
        members: list[WorkerRef],
        current: HybridLayout | None,
        source: HybridLayout | None,
        holders: set[str],
        reached_step: int,
        takeover: bool,
    ) -> Proposal:
        """`current`: the newest plan's layout; `source`: the newest layout every member
        finished joining; `holders`: workers holding the source's state;
        `reached_step`: the highest step any worker reported."""
        unit_numel = self.unit_numel
        if unit_numel is None:
            return Unchanged()  # no worker has said what it trains yet
        if source is None and current is not None and self.config.max_workers:
            # no generation completed yet, so the planner starts afresh: a spare that
            # became ready late must not displace a member of the plan in flight
            kept = set(current.worker_ids())
            members = sorted(members, key=lambda m: (m.worker_id not in kept, m))
            members = sorted(members[: self.config.max_workers])
        profile = measured_profile(unit_numel, self.unit_costs)
        try:
            layout = make_hybrid_plan(
                members,
                profile,
                source,
                generation,
                stages=self.job.pipeline_stages,
                zero=self.job.zero,
                reason=reason,
                holders=holders,
                snapshots=self.job.buddy_snapshots,
                max_workers=self.config.max_workers,
                micro_batches=self.job.micro_batches,
            )
        except PlanError as exc:
            return Refused(f"cannot plan generation {generation}: {exc}")
        if self.job.checkfree_plus and self.swap is None:
            try:
                self.swap = swap_groups_of(layout, self.job.model.n_layers)
            except CheckFreeError as exc:
                return Refused(f"--checkfree-plus with this layout: {exc}")
        decision = await self._source_of_lost_state(
            layout, source, holders, reached_step, unit_numel
        )
        if isinstance(decision, lost_state.StateIsLost):
            return Refused(decision.message, decision.notes)
        layout = decision.layout
        if decision.checkfree is not None:
            self.metrics.checkfree.inc()
            units = len(unit_numel)
            self.lr_scaled_units |= lost_state.lr_scaled_after(decision.checkfree, units)
        if current is not None and layout.worker_ids() == current.worker_ids() and not takeover:
            return Unchanged(decision.notes)
        plan = layout_to_plan(
            layout,
            unit_numel,
            self.job.job,
            self.rendezvous,
            time.time(),
            holders,
            source.generation if source is not None else 0,
            decision.checkpoint_step,
            checkfree=decision.checkfree,
            lr_scaled_units=self.lr_scaled_units,
            lr_scale=self.job.checkfree_lr_scale,
            swap=self.swap,
        )
        return Proposed(layout, plan, decision.notes)

    async def _source_of_lost_state(
        self,
        layout: HybridLayout,
        source: HybridLayout | None,
        holders: Collection[str],
        reached_step: int,
        unit_numel: Sequence[int],
    ) -> lost_state.Decision:
        """The checkpoints are listed only when something is missing."""
        if not lost_state.needs_a_source(layout, self.job):
            return lost_state.UseLayout(layout)
        return lost_state.decide(
            layout,
            source,
            holders,
            job=self.job,
            unit_numel=unit_numel,
            newest_checkpoint=await self._newest_checkpoint(),
            reached_step=reached_step,
            swap=self.swap,
        )

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
