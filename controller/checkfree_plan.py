"""Whether a loss can be rebuilt CheckFree-style, and from which ranks. Pure.

Sits between the planner (which reports the pieces of state nobody holds) and the
job controller (which turns the answer into a plan). A CheckFree rebuild is
possible when the lost parameters are exactly whole layer units forming one
contiguous range of transformer blocks, and a valid holder of the block on each
side survives into the new layout. Lost moments inside that range are fine (they
restart from zero); lost state anywhere else is not.

Under CheckFree+ a range that includes the embedding or the head is rebuilt by
copies instead: each lost block from its swapped partner, held by a survivor,
and the edge unit from the copy a survivor of the neighbouring stage keeps
(`partition.edge_copy_routes` in the source layout).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from elastiq.checkpoint.checkfree import CheckFreeError, SwapGroups, edge_sources, sources
from elastiq.controller.planner import HybridLayout
from elastiq.partition import edge_copy_routes, element_offsets


@dataclass(frozen=True, slots=True)
class CheckFreeDirective:
    lo: int
    hi: int
    """Lost layer units [lo, hi)."""
    prev_rank: int
    next_rank: int
    """New ranks that send unit lo-1 and unit hi (averaging; -1 under copies)."""
    copies: tuple[tuple[int, int, int], ...] = ()
    """CheckFree+: (lost unit, source unit, new rank that sends it); a source unit
    equal to the lost one is the kept copy of the embedding or the head."""

    @property
    def sources(self) -> str:
        if self.copies:
            return "copies of units " + ", ".join(str(c[1]) for c in self.copies)
        return f"units {self.lo - 1} and {self.hi}"


def plan_checkfree(
    layout: HybridLayout,
    source: HybridLayout,
    unit_numel: Sequence[int],
    holders: Collection[str] | None,
    groups: SwapGroups | None = None,
) -> CheckFreeDirective:
    """The rebuild for `layout.lost`; CheckFreeError says why there is none.
    `groups`: CheckFree+'s swap groups (None: CheckFree+ is off)."""
    if not layout.lost:
        raise CheckFreeError("nothing is lost")
    bounds = element_offsets(unit_numel)
    touched = {
        u
        for piece in layout.lost
        for u in range(len(unit_numel))
        if piece.lo < bounds[u + 1] and bounds[u] < piece.hi
    }
    lo, hi = min(touched), max(touched) + 1
    if len(touched) != hi - lo:
        raise CheckFreeError(f"the lost state spans non-adjacent layer units {sorted(touched)}")
    at = bounds[lo]
    for a, b in sorted((p.lo, p.hi) for p in layout.lost if p.what == "params"):
        if a > at:
            break
        at = max(at, b)
    if at < bounds[hi]:
        raise CheckFreeError(
            f"only part of layer units [{lo}, {hi}) is lost: CheckFree rebuilds whole "
            "layers, and the rest of them is still held"
        )
    if groups is not None and (lo == 0 or hi == len(unit_numel)):
        rebuild = edge_sources(lo, hi, len(unit_numel), groups)
        copies = [(u, src, _holder(layout, source, src, holders)) for u, src in rebuild.copies]
        keeper = _copy_keeper(layout, source, rebuild.edge, len(unit_numel), holders)
        return CheckFreeDirective(lo, hi, -1, -1, ((rebuild.edge, rebuild.edge, keeper), *copies))
    src = sources(lo, hi, len(unit_numel))
    return CheckFreeDirective(
        lo,
        hi,
        _holder(layout, source, src.prev, holders),
        _holder(layout, source, src.next, holders),
    )


def _holder(
    layout: HybridLayout, source: HybridLayout, unit: int, holders: Collection[str] | None
) -> int:
    """A new rank that validly held `unit` in the source layout."""
    for stage in source.stages:
        if not stage.units[0] <= unit < stage.units[1]:
            continue
        for old in stage.ranks:
            rank = _surviving_rank(layout, source.workers[old].worker_id, holders)
            if rank is not None:
                return rank
    raise CheckFreeError(f"no surviving worker holds layer unit {unit}, a CheckFree source")


def _copy_keeper(
    layout: HybridLayout,
    source: HybridLayout,
    unit: int,
    num_units: int,
    holders: Collection[str] | None,
) -> int:
    """A new rank that kept the copy of edge `unit` in the source layout."""
    stage_ranks = [list(st.ranks) for st in source.stages]
    for kept, _sender, keeper in edge_copy_routes(stage_ranks, num_units):
        rank = _surviving_rank(layout, source.workers[keeper].worker_id, holders)
        if kept == unit and rank is not None:
            return rank
    what = "embedding" if unit == 0 else "head"
    raise CheckFreeError(f"no surviving worker keeps the CheckFree+ copy of the {what}")


def swap_groups_of(layout: HybridLayout, blocks: int) -> SwapGroups:
    """CheckFree+'s swap groups, from the first layout: the blocks of the first and
    of the last stage, each swapped with as many blocks of the stage next to it."""
    if len(layout.stages) < 2:
        raise CheckFreeError(
            f"CheckFree+ needs at least two pipeline stages; the first plan has "
            f"{len(layout.stages)} (too few workers for the stages asked for?)"
        )
    first_units, last_units = layout.stages[0].units, layout.stages[-1].units
    return SwapGroups(
        blocks=blocks,
        first=first_units[1] - first_units[0] - 1,
        last=last_units[1] - last_units[0] - 1,
    )


def _surviving_rank(
    layout: HybridLayout, worker: str, holders: Collection[str] | None
) -> int | None:
    """`worker`'s rank in the new layout if it is there and holds valid state."""
    if holders is not None and worker not in holders:
        return None
    return next((r for r, w in enumerate(layout.workers) if w.worker_id == worker), None)
