"""The planner: members in, the next generation's layout out. A pure function.

No I/O, no clocks: tested in microseconds. It decides, for pipeline x data
parallelism (data parallelism alone is one stage):
- the rank order: survivors keep their relative order and their stage, newcomers
  follow in (node, slot) order and join the stage whose extra replica lowers the
  bottleneck most;
- which layer units each stage holds (`stages.balance_stages`: balanced by measured
  cost per replica, then fewest bytes moved);
- where every piece of state comes from (`reshard.plan_moves`: live holders first,
  then buddy snapshots; what nobody holds is reported lost);
- whether collectives in flight must be abandoned (`abort_in_flight`: a member of
  the previous generation is gone), or the change can wait for the next step
  boundary (joins, takeovers).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from elastiq.controller.reshard import (
    Holding,
    Lost,
    Move,
    holdings,
    lost_owner_buddies,
    plan_moves,
)
from elastiq.controller.stages import balance_stages, bottleneck, effective_degrees
from elastiq.partition import even_split, stage_buddies


@dataclass(frozen=True, slots=True, order=True)
class WorkerRef:
    node_id: str
    slot: int
    worker_id: str


class PlanError(ValueError):
    """The members cannot form a valid plan (empty, duplicated ids, bad generation)."""


# --- hybrid (pipeline x data) parallel layouts ------------------------------------------


@dataclass(frozen=True, slots=True)
class Profile:
    """Measured facts about the model the planner balances with."""

    unit_costs: tuple[float, ...]
    """Seconds of forward+backward per micro-batch, per layer unit (measured)."""
    unit_numel: tuple[int, ...]
    """Parameters per layer unit."""

    def __post_init__(self) -> None:
        if len(self.unit_costs) != len(self.unit_numel) or not self.unit_costs:
            raise ValueError("unit_costs and unit_numel must be non-empty and of equal length")
        if any(c < 0 for c in self.unit_costs) or any(n < 0 for n in self.unit_numel):
            raise ValueError("unit costs and sizes must be >= 0")


def measured_profile(unit_numel: Sequence[int], measured: dict[int, float]) -> Profile:
    """Costs from measurements where there are any; other units get their parameter
    count scaled to seconds by the measured units' ratio (a proxy until measured)."""
    proxy = [float(n) for n in unit_numel]
    known = [u for u in measured if 0 <= u < len(proxy)]
    if not known:
        return Profile(unit_costs=tuple(proxy), unit_numel=tuple(unit_numel))
    scale = sum(measured[u] for u in known) / max(1e-12, sum(proxy[u] for u in known))
    costs = [measured[u] if u in measured else proxy[u] * scale for u in range(len(proxy))]
    return Profile(unit_costs=tuple(costs), unit_numel=tuple(unit_numel))


@dataclass(frozen=True, slots=True)
class StageLayout:
    units: tuple[int, int]
    ranks: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class HybridLayout:
    """One generation of a pipeline x data parallel job."""

    generation: int
    workers: tuple[WorkerRef, ...]
    stages: tuple[StageLayout, ...]
    zero: int
    buddy: tuple[int, ...]
    moves: tuple[Move, ...]
    lost: tuple[Lost, ...]
    abort_in_flight: bool
    reason: str
    dropped: tuple[str, ...] = ()
    state_source: str = "init"

    @property
    def world_size(self) -> int:
        return len(self.workers)

    def worker_ids(self) -> list[str]:
        return [w.worker_id for w in self.workers]

    def stage_of(self, rank: int) -> int:
        for s, stage in enumerate(self.stages):
            if rank in stage.ranks:
                return s
        raise ValueError(f"rank {rank} is in no stage")

    def holdings(self, profile: Profile) -> list[Holding]:
        return holdings([(st.units, st.ranks) for st in self.stages], profile.unit_numel, self.zero)


def make_hybrid_plan(
    members: Sequence[WorkerRef],
    profile: Profile,
    previous: HybridLayout | None,
    generation: int,
    *,
    stages: int,
    zero: int,
    reason: str,
    holders: set[str] | None = None,
    snapshots: bool = True,
    max_workers: int = 0,
    micro_batches: int = 0,
) -> HybridLayout:
    """The next pipeline x data parallel layout, moving as little state as possible.

    Survivors keep their stage; a stage left without workers disappears (its state
    comes from buddies, or is reported lost). Joiners first bring the number of
    stages back to `stages` (a new stage after the most loaded one), then go one by
    one to the stage whose extra replica lowers the bottleneck most. Layer units are
    then rebalanced so that cost(stage) / replicas(stage) is within 2% of the best
    possible, preferring the partition that moves the fewest parameter bytes.

    `holders`: survivors whose state is valid (they completed joining the previous
    generation); default all survivors. Others keep their place but are not sources.
    `max_workers`: plan at most this many (0: all); the others wait as spares. A
    spare or joiner planned while a member is lost takes that member's exact place
    (rank, stage, interval), so the layout and the computation stay the same.
    `micro_batches`: a step's micro-batches (0: assume an even split). Replicas run
    whole micro-batches, so a third replica of a stage in a step of 16 saves a
    quarter of its time, not a third; the balance counts that
    (`stages.effective_degrees`).
    """
    if zero not in (0, 1, 2):
        raise PlanError(f"zero={zero} must be 0, 1 or 2")
    if not members:
        raise PlanError("no live workers to plan for")
    ids = [m.worker_id for m in members]
    if len(set(ids)) != len(ids):
        raise PlanError(f"duplicate worker ids in members: {sorted(ids)}")
    units = len(profile.unit_costs)
    by_id = {m.worker_id: m for m in members}
    if previous is None:
        order = sorted(members)[: max_workers or None]
        count = min(stages, len(order), units)
        if count < 1:
            raise PlanError(f"stages={stages} must be at least 1")
        groups = [list(range(*even_split(len(order), count, s))) for s in range(count)]
        holder = None
        same_stages = False
        dropped: tuple[str, ...] = ()
    else:
        if generation <= previous.generation:
            raise PlanError(
                f"generation {generation} is not newer than the previous {previous.generation}"
            )
        old_ids = [w.worker_id for w in previous.workers]
        survivors = [w for w in old_ids if w in by_id]
        kept = set(survivors)
        newcomers = sorted(m for m in members if m.worker_id not in kept)
        if max_workers:
            newcomers = newcomers[: max(0, max_workers - len(survivors))]
        # newcomers first fill the places of lost members, in rank order
        slots: list[str | None] = [w if w in kept else None for w in old_ids]
        replacing = iter(newcomers)
        for i, w in enumerate(slots):
            if w is None:
                slots[i] = next((m.worker_id for m in replacing), None)
        placed = [w for w in slots if w is not None]
        extra = newcomers[len(placed) - len(survivors) :]
        order = [by_id[w] for w in placed] + extra
        new_rank = {w: r for r, w in enumerate(placed)}
        # (ranks, the previous stage it continues or -1 for a new one)
        staged: list[tuple[list[int], int]] = []
        for s, stage in enumerate(previous.stages):
            ranks = [new_rank[w] for r in stage.ranks if (w := slots[r]) is not None]
            if ranks:
                staged.append((ranks, s))
        pending = list(range(len(placed), len(placed) + len(extra)))
        if not staged:
            staged = [([pending.pop(0)] if pending else [], -1)]
        # joiners first restore the pipeline depth the job asked for (a stage lost
        # whole merged into its neighbours): a new stage goes right after the most
        # loaded one and takes the tail of its layers
        while pending and len(staged) < min(stages, units):
            loads = [
                sum(profile.unit_costs[u] for u in range(*previous.stages[old].units)) / len(r)
                if old >= 0
                else 0.0
                for r, old in staged
            ]
            at = loads.index(max(loads)) + 1
            staged.insert(at, ([pending.pop(0)], -1))
        groups = [ranks for ranks, _ in staged]
        same_stages = [old for _, old in staged] == list(range(len(previous.stages)))
        holder = [-1] * units
        for new_s, (ranks, old_s) in enumerate(staged):
            if old_s >= 0 and any(order[r].worker_id in kept for r in ranks):
                for u in range(*previous.stages[old_s].units):
                    holder[u] = new_s
        for joiner, s in zip(
            pending, _stages_for_joiners(profile, groups, len(pending), micro_batches), strict=True
        ):
            groups[s].append(joiner)
        dropped = tuple(w for w in old_ids if w not in by_id)
    degrees = [len(g) for g in groups]
    if any(d == 0 for d in degrees):
        raise PlanError("a stage has no workers after planning")
    if len(groups) > units:
        raise PlanError(f"{len(groups)} stages cannot share {units} layer units")
    if (
        previous is not None
        and same_stages
        and degrees == [len(st.ranks) for st in previous.stages]
    ):
        # nobody's share changed (a lost member replaced in place): keep the layers
        # where they are, so the computation is the same as before
        ranges = [st.units for st in previous.stages]
    else:
        ranges = balance_stages(
            profile.unit_costs,
            effective_degrees(degrees, micro_batches),
            unit_bytes=profile.unit_numel,
            holder=holder,
        )
    layout_stages = tuple(
        StageLayout(units=r, ranks=tuple(sorted(g))) for r, g in zip(ranges, groups, strict=True)
    )
    buddy = tuple(stage_buddies([w.node_id for w in order], [st.ranks for st in layout_stages]))
    if not snapshots:
        buddy = (-1,) * len(order)
    new_holdings = holdings(
        [(st.units, st.ranks) for st in layout_stages], profile.unit_numel, zero
    )
    if previous is None:
        moves: list[Move] = []
        lost: list[Lost] = []
    else:
        old_ids = [w.worker_id for w in previous.workers]
        new_index = {w.worker_id: i for i, w in enumerate(order)}
        new_rank_of_old = {r: new_index[w] for r, w in enumerate(old_ids) if w in new_index}
        old_holdings = previous.holdings(profile)
        valid = set(old_ids) if holders is None else holders
        alive = [
            Holding(new_rank_of_old[h.rank], h.params, h.moments)
            for h in old_holdings
            if h.rank in new_rank_of_old and old_ids[h.rank] in valid
        ]
        buddy_old = dict(enumerate(previous.buddy))
        moves, lost = plan_moves(
            alive, new_holdings, lost_owner_buddies(old_holdings, new_rank_of_old, buddy_old)
        )
    if previous is None:
        source = "init"
    elif lost:
        source = "lost"
    elif any(m.via == "buddy" for m in moves):
        source = "buddy"
    else:
        source = "live_replica"
    return HybridLayout(
        generation=generation,
        workers=tuple(order),
        stages=layout_stages,
        zero=zero,
        buddy=buddy,
        moves=tuple(moves),
        lost=tuple(lost),
        abort_in_flight=bool(dropped),
        reason=reason,
        dropped=dropped,
        state_source=source,
    )


#: joint placement of joiners tries every split of them over the stages while
#: splits x stages x units^2 stays below this (about a second of Python); beyond it,
#: one joiner at a time
_JOINT_PLACEMENT_WORK = 2_000_000


def _splits(n: int, stages: int) -> Iterator[tuple[int, ...]]:
    """Every way to give n joiners to `stages` stages (compositions of n)."""
    if stages == 1:
        yield (n,)
        return
    for first in range(n, -1, -1):
        for rest in _splits(n - first, stages - 1):
            yield (first, *rest)


def _stages_for_joiners(
    profile: Profile, groups: list[list[int]], n: int, micro_batches: int
) -> list[int]:
    """The stage of each of n joiners. Empty stages (left by a stage loss) are filled
    first. The rest are placed together: the split of them over the stages with the
    lowest bottleneck, ties to the most even degrees. One at a time, greedily, the
    first joiner of two can take a stage that leaves the second nothing useful (a
    node of 2 joining PP4xDP2: 3+3 replicas where 2+4 runs the step faster)."""
    degrees = [len(g) for g in groups]
    placed: list[int] = []
    while len(placed) < n and 0 in degrees:
        s = degrees.index(0)
        degrees[s] += 1
        placed.append(s)
    rest = n - len(placed)
    if rest == 0:
        return placed
    units, stages = len(profile.unit_costs), len(degrees)
    count = math.comb(rest + stages - 1, stages - 1)
    if count * stages * units * units > _JOINT_PLACEMENT_WORK:
        for _ in range(rest):
            s = _best_stage_for_joiner(profile, degrees, micro_batches)
            degrees[s] += 1
            placed.append(s)
        return placed

    def score(split: tuple[int, ...]) -> tuple[float, int]:
        trial = [d + k for d, k in zip(degrees, split, strict=True)]
        load = bottleneck(profile.unit_costs, effective_degrees(trial, micro_batches))
        return (round(load, 12), sum(d * d for d in trial))

    best = min(_splits(rest, stages), key=score)
    for s, k in enumerate(best):
        placed += [s] * k
    return placed


def _best_stage_for_joiner(profile: Profile, degrees: list[int], micro_batches: int) -> int:
    """The stage whose extra replica lowers the bottleneck most; ties go to the stage
    with fewer replicas. Every stage has a replica here: `_stages_for_joiners` fills
    empty ones first."""

    def after(s: int) -> tuple[float, int, int]:
        trial = [d + (1 if i == s else 0) for i, d in enumerate(degrees)]
        return (
            bottleneck(profile.unit_costs, effective_degrees(trial, micro_batches)),
            degrees[s],
            s,
        )

    return min(range(len(degrees)), key=after)
