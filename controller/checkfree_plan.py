"""Whether a loss can be rebuilt CheckFree-style, and from which ranks. Pure.

Sits between the planner (which reports the pieces of state nobody holds) and the
job controller (which turns the answer into a plan). A CheckFree rebuild is
possible when the lost parameters are exactly whole layer units forming one
contiguous range of transformer blocks, and a valid holder of the block on each
side survives into the new layout. Lost moments inside that range are fine (they
restart from zero); lost state anywhere else is not.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from elastiq.checkpoint.checkfree import CheckFreeError, sources
from elastiq.controller.planner import HybridLayout
from elastiq.partition import element_offsets


@dataclass(frozen=True, slots=True)
class CheckFreeDirective:
    lo: int
    hi: int
    """Lost layer units [lo, hi)."""
    prev_rank: int
    next_rank: int
    """New ranks that send unit lo-1 and unit hi."""


def plan_checkfree(
    layout: HybridLayout,
    source: HybridLayout,
    unit_numel: Sequence[int],
    holders: Collection[str] | None,
) -> CheckFreeDirective:
    """The rebuild for `layout.lost`; CheckFreeError says why there is none."""
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
    new_rank = {w.worker_id: r for r, w in enumerate(layout.workers)}
    for stage in source.stages:
        if not stage.units[0] <= unit < stage.units[1]:
            continue
        for old in stage.ranks:
            worker = source.workers[old].worker_id
            if worker in new_rank and (holders is None or worker in holders):
                return new_rank[worker]
    raise CheckFreeError(f"no surviving worker holds layer unit {unit}, a CheckFree source")
