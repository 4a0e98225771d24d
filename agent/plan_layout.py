"""One generation's plan, parsed once into a typed, immutable `PlanLayout`.

Where it sits: the only reader of `pb.Plan` outside the controller's wire.py. The node
agent parses each plan it receives to know which of its workers it names; the worker's
agent link (agent/runtime/agent_link.py) parses it again in the worker process and
derives this rank's `PlanView` (agent/runtime/plan_view.py) from it. Torch-free, like
the node agent.

Parsing validates what the rest relies on (ranks cover 0..world-1 once, stages cover
every rank and tile the units, buddies and moves name real ranks and elements), so a
malformed plan is refused here with a `ValueError` naming what is wrong, before
anything changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from elastiq.partition import stage_ranges
from elastiq.proto import elastiq_pb2 as pb


class StateSource(StrEnum):
    """Where a generation's state comes from (the plan's `state_source`)."""

    INIT = "init"
    LIVE_REPLICA = "live_replica"
    BUDDY = "buddy"
    CHECKPOINT = "checkpoint"
    CHECKFREE = "checkfree"
    LOST = "lost"


class Piece(StrEnum):
    """What a state move carries."""

    PARAMS = "params"
    MOMENTS = "moments"


class Via(StrEnum):
    """Where a state move's source rank takes it from."""

    LIVE = "live"
    BUDDY = "buddy"


@dataclass(frozen=True, slots=True)
class Move:
    """Elements [lo, hi) of `what` that `dst_rank` takes from `src_rank`."""

    what: Piece
    src_rank: int
    dst_rank: int
    lo: int
    hi: int
    via: Via


@dataclass(frozen=True, slots=True)
class Stage:
    """Layer units [units[0], units[1]) replicated on `ranks` (in replica order)."""

    units: tuple[int, int]
    ranks: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CheckFreeCopy:
    """Lost `unit` rebuilt as a copy of `src_unit` that `src_rank` sends."""

    unit: int
    src_unit: int
    src_rank: int


@dataclass(frozen=True, slots=True)
class CheckFreeRebuild:
    """Units [lo, hi) exist nowhere: averaged from units lo-1 (sent by `prev_rank`) and
    hi (`next_rank`), or, under CheckFree+, rebuilt by `copies`."""

    lo: int
    hi: int
    prev_rank: int
    next_rank: int
    copies: tuple[CheckFreeCopy, ...]


@dataclass(frozen=True, slots=True)
class PlanLayout:
    """The whole plan of one generation, typed; the same for every rank."""

    job: str
    generation: int
    rendezvous: str
    abort_in_flight: bool
    workers: tuple[str, ...]
    """Worker id of each rank."""
    nodes: tuple[str, ...]
    """Node id of each rank."""
    stages: tuple[Stage, ...]
    zero: int
    buddy: tuple[int, ...]
    """Rank that keeps each rank's per-step snapshot (-1: none)."""
    moves: tuple[Move, ...]
    state_source: StateSource
    source_generation: int
    """The generation whose layout the moves take state from (0: none)."""
    checkpoint_step: int
    checkfree: CheckFreeRebuild | None
    lr_scaled_units: tuple[int, ...]
    lr_scale: float
    swap_first: int
    swap_last: int
    ranges: dict[int, tuple[tuple[int, int], tuple[int, int]]]
    """{rank: (parameter range, moments range)} in global elements."""
    stage_of: tuple[int, ...]
    """The stage of each rank."""
    unit_numel: tuple[int, ...]
    """Parameters of each layer unit."""

    @property
    def world_size(self) -> int:
        return len(self.workers)

    def rank_of(self, worker_id: str) -> int | None:
        try:
            return self.workers.index(worker_id)
        except ValueError:
            return None

    @classmethod
    def parse(cls, plan: pb.Plan) -> PlanLayout:
        """Validate and type `plan`; ValueError naming the first thing wrong."""
        g = plan.generation
        if g <= 0:
            raise ValueError(f"plan generation {g} must be positive")
        unit_numel = tuple(plan.unit_numel)
        if not unit_numel or any(n <= 0 for n in unit_numel):
            raise ValueError(f"plan {g}: unit sizes {list(unit_numel)} are not all positive")
        world = plan.world_size
        by_rank = sorted(plan.assignments, key=lambda a: a.rank)
        if [a.rank for a in by_rank] != list(range(world)):
            raise ValueError(
                f"plan {g}: ranks {[a.rank for a in by_rank]} do not cover 0..{world - 1}"
            )
        if len({a.worker_id for a in by_rank}) != world:
            raise ValueError(f"plan {g}: a worker id appears twice")
        units = len(unit_numel)
        stages = tuple(Stage((st.unit_lo, st.unit_hi), tuple(st.ranks)) for st in plan.stages)
        if sorted(r for st in stages for r in st.ranks) != list(range(world)):
            raise ValueError(f"plan {g}: its stages do not hold every rank exactly once")
        edges = [0] + [st.units[1] for st in stages]
        if (
            [st.units[0] for st in stages] != edges[:-1]
            or edges[-1] != units
            or any(st.units[0] >= st.units[1] for st in stages)
        ):
            raise ValueError(f"plan {g}: its stages do not tile the model's {units} layer units")
        if len(plan.buddy) != world or any(not -1 <= b < world for b in plan.buddy):
            raise ValueError(f"plan {g}: buddies {list(plan.buddy)} are not one rank per rank")
        if plan.zero not in (0, 1, 2):
            raise ValueError(f"plan {g}: zero={plan.zero} must be 0, 1 or 2")
        try:
            source = StateSource(plan.state_source)
            moves = tuple(
                Move(Piece(m.what), m.src_rank, m.dst_rank, m.lo, m.hi, Via(m.via))
                for m in plan.moves
            )
        except ValueError as exc:
            raise ValueError(f"plan {g}: {exc}") from None
        total = sum(unit_numel)
        for m in moves:
            if not (
                0 <= m.src_rank < world and 0 <= m.dst_rank < world and 0 <= m.lo < m.hi <= total
            ):
                raise ValueError(f"plan {g}: move {m} names a rank or range that does not exist")
        rebuild = None
        if source is StateSource.CHECKFREE:
            rebuild = CheckFreeRebuild(
                plan.checkfree_lo,
                plan.checkfree_hi,
                plan.checkfree_prev_rank,
                plan.checkfree_next_rank,
                tuple(CheckFreeCopy(c.unit, c.src_unit, c.src_rank) for c in plan.checkfree_copies),
            )
            if not 0 <= rebuild.lo < rebuild.hi <= units:
                raise ValueError(
                    f"plan {g}: CheckFree units [{rebuild.lo}, {rebuild.hi}) do not exist"
                )
        stage_of = [0] * world
        for s, st in enumerate(stages):
            for r in st.ranks:
                stage_of[r] = s
        return cls(
            job=plan.job,
            generation=g,
            rendezvous=plan.rendezvous,
            abort_in_flight=plan.abort_in_flight,
            workers=tuple(a.worker_id for a in by_rank),
            nodes=tuple(a.node_id for a in by_rank),
            stages=stages,
            zero=plan.zero,
            buddy=tuple(plan.buddy),
            moves=moves,
            state_source=source,
            source_generation=plan.source_generation,
            checkpoint_step=plan.checkpoint_step,
            checkfree=rebuild,
            lr_scaled_units=tuple(plan.lr_scaled_units),
            lr_scale=plan.lr_scale or 1.0,
            swap_first=plan.swap_first,
            swap_last=plan.swap_last,
            ranges=stage_ranges([(st.units, st.ranks) for st in stages], unit_numel, plan.zero),
            stage_of=tuple(stage_of),
            unit_numel=unit_numel,
        )


def apply_plan_delta(base: pb.Plan, delta: pb.PlanDelta) -> pb.Plan:
    """The whole plan a `pb.PlanDelta` stands for, given the stream's previous plan
    (controller/wire.py `plan_delta` makes it). Raises ValueError, building nothing,
    for a delta of another base or one that copies ranks the base does not have."""
    if delta.base_generation != base.generation:
        raise ValueError(
            f"plan {delta.plan.generation} is a delta from generation "
            f"{delta.base_generation}, but this stream's last plan is {base.generation}"
        )
    by_rank = {a.rank: a for a in base.assignments}
    copied: list[pb.Assignment] = []
    for run in delta.runs:
        if run.count < 1 or run.rank < 0:
            raise ValueError(f"plan {delta.plan.generation}: bad assignment run {run}")
        for i in range(run.count):
            held = by_rank.get(run.base_rank + i)
            if held is None:
                raise ValueError(
                    f"plan {delta.plan.generation} copies rank {run.base_rank + i} of "
                    f"generation {base.generation}, which has no such rank"
                )
            copied.append(
                pb.Assignment(
                    rank=run.rank + i,
                    worker_id=held.worker_id,
                    node_id=held.node_id,
                    slot=held.slot,
                    holder=run.holder,
                )
            )
    plan = pb.Plan()
    plan.CopyFrom(delta.plan)
    every = sorted([*plan.assignments, *copied], key=lambda a: a.rank)
    del plan.assignments[:]
    plan.assignments.extend(every)
    if len(delta.stage_ranks) != len(plan.stages):
        raise ValueError(
            f"plan {plan.generation}: {len(delta.stage_ranks)} rank lists for "
            f"{len(plan.stages)} stages"
        )
    limit = len(every)
    for stage, ranks in zip(plan.stages, delta.stage_ranks, strict=True):
        stage.ranks.extend(expand(ranks, limit))
    plan.buddy.extend(expand(delta.buddy, limit))
    return plan


def expand(runs: pb.Progressions, limit: int) -> list[int]:
    """The integers `runs` stands for (controller/wire.py `progressions`); at most
    `limit` of them (the world size: no rank list is longer), else ValueError."""
    if not len(runs.start) == len(runs.step) == len(runs.count) == len(runs.repeat):
        raise ValueError("progressions with unequal start, step, count and repeat lists")
    sizes = [c * r for c, r in zip(runs.count, runs.repeat, strict=True)]
    if any(c < 1 for c in runs.count) or any(r < 1 for r in runs.repeat) or sum(sizes) > limit:
        raise ValueError(f"progressions of {sum(sizes)} values; at most {limit}")
    out: list[int] = []
    for start, step, count, repeat in zip(
        runs.start, runs.step, runs.count, runs.repeat, strict=True
    ):
        for k in range(count):
            out.extend([start + k * step] * repeat)
    return out
