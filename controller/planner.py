"""The planner: members in, the next generation's layout out. A pure function.

No I/O, no clocks: tested in microseconds. For data parallelism it decides:
- the rank order: survivors keep their relative order (least movement of state,
  stable logs), newcomers follow in (node, slot) order;
- who holds state (`holder`): members of the previous generation that are still
  here; at the first generation every member starts from the seeded init;
- where missing state comes from (`transfers`): each newcomer from a live holder,
  spread round-robin (`partition.assign_donors`, which workers recompute from
  what they actually hold);
- whether collectives in flight must be abandoned (`abort_in_flight`: a member of
  the previous generation is gone, so a collective may never complete), or the
  change can wait for the next step boundary (joins, takeovers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from elastiq.partition import assign_donors


@dataclass(frozen=True, slots=True, order=True)
class WorkerRef:
    node_id: str
    slot: int
    worker_id: str


@dataclass(frozen=True, slots=True)
class RankAssignment:
    rank: int
    worker: WorkerRef
    holder: bool


@dataclass(frozen=True, slots=True)
class Layout:
    """One generation's plan, before it is put on the wire."""

    generation: int
    ranks: tuple[RankAssignment, ...]
    transfers: tuple[tuple[int, int], ...]
    abort_in_flight: bool
    state_source: str
    reason: str
    dropped: tuple[str, ...] = field(default=())

    @property
    def world_size(self) -> int:
        return len(self.ranks)

    def worker_ids(self) -> list[str]:
        return [a.worker.worker_id for a in self.ranks]


class PlanError(ValueError):
    """The members cannot form a valid plan (empty, duplicated ids, bad generation)."""


def make_plan(
    members: Sequence[WorkerRef],
    previous: Layout | None,
    generation: int,
    reason: str,
) -> Layout:
    """The layout of `generation` for `members`, moving as little state as possible."""
    if not members:
        raise PlanError("no live workers to plan for")
    ids = [m.worker_id for m in members]
    if len(set(ids)) != len(ids):
        raise PlanError(f"duplicate worker ids in members: {sorted(ids)}")
    if previous is not None and generation <= previous.generation:
        raise PlanError(
            f"generation {generation} is not newer than the previous plan's {previous.generation}"
        )
    if generation <= 0:
        raise PlanError(f"generation must be positive, got {generation}")
    by_id = {m.worker_id: m for m in members}
    if previous is None:
        order = sorted(members)
        holders = set(ids)
        dropped: tuple[str, ...] = ()
    else:
        survivors = [w for w in previous.worker_ids() if w in by_id]
        newcomers = sorted(m for m in members if m.worker_id not in set(survivors))
        order = [by_id[w] for w in survivors] + newcomers
        # survivors hold the state, unless the previous generation had nobody to give
        # it to them (it was itself waiting for a source)
        holders = set(survivors) if previous.state_source != "lost" else set()
        dropped = tuple(w for w in previous.worker_ids() if w not in by_id)
    ranks = tuple(
        RankAssignment(rank=r, worker=w, holder=w.worker_id in holders) for r, w in enumerate(order)
    )
    transfers = tuple(assign_donors([a.holder for a in ranks]))
    if previous is None:
        source = "init"
    elif any(a.holder for a in ranks):
        source = "live_replica"
    else:
        source = "lost"
    return Layout(
        generation=generation,
        ranks=ranks,
        transfers=transfers,
        abort_in_flight=bool(dropped),
        state_source=source,
        reason=reason,
        dropped=dropped,
    )
