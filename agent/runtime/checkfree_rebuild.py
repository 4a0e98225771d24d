"""The worker's side of a CheckFree rebuild: lost layer units set from neighbours.

Called while joining a generation whose plan says `state_source == "checkfree"`:
the units [checkfree_lo, checkfree_hi) exist on no live rank, no buddy and no
fresh checkpoint. Every rank of the generation takes part in the broadcasts (the
plan lists the same sources to all), and every rank that holds a lost unit in the
new layout sets it. The rule itself is pure, in `checkpoint.checkfree`.
"""

from __future__ import annotations

import logging

import torch

from elastiq.agent.plan_layout import CheckFreeRebuild
from elastiq.agent.runtime.comm import Group
from elastiq.agent.runtime.edge_copies import EdgeCopies
from elastiq.agent.runtime.trainer import TrainState
from elastiq.checkpoint import checkfree
from elastiq.partition import element_offsets

log = logging.getLogger(__name__)


def rebuild_lost_units(
    rebuild: CheckFreeRebuild,
    group: Group,
    old: TrainState,
    new: TrainState,
    edge_copies: EdgeCopies,
) -> int:
    """Layer units [checkfree_lo, checkfree_hi) exist nowhere. CheckFree: the
    plan's two source ranks broadcast the bordering blocks (from their pre-join
    state) and their stages' last gradient norms, and the lost units become the
    weighted average. CheckFree+ (`checkfree_copies`): each lost unit is
    broadcast as a copy of its swapped partner, or of the kept embedding or head.
    Every rank holding a lost unit in the new layout sets it, with fresh moments."""
    sizes = list(old.source.unit_numel)
    bounds = element_offsets(sizes)
    if rebuild.copies:
        moved = 0
        for c in rebuild.copies:
            n = sizes[c.unit]
            buf = torch.empty(n)
            if group.rank == c.src_rank:
                if c.src_unit == c.unit:
                    kept_step, kept = edge_copies.get(c.unit)
                    buf.copy_(kept)
                    log.info("CheckFree+: unit %d from its copy of step %d", c.unit, kept_step)
                else:
                    at = bounds[c.src_unit] - old.base
                    buf.copy_(old.flat.data[at : at + n])
            group.broadcast_(buf, c.src_rank)
            _set_rebuilt(new, c.unit, buf, bounds)
            moved += n * 4
        log.warning(
            "CheckFree+: layer units [%d, %d) rebuilt as copies (%s)",
            rebuild.lo,
            rebuild.hi,
            ", ".join(f"{c.unit}<-{c.src_unit}" for c in rebuild.copies),
        )
        return moved
    lo, hi = rebuild.lo, rebuild.hi
    n = sizes[lo - 1]
    received = []
    for unit, src in ((lo - 1, rebuild.prev_rank), (hi, rebuild.next_rank)):
        buf = torch.empty(n + 1)
        if group.rank == src:
            at = bounds[unit] - old.base
            buf[:n].copy_(old.flat.data[at : at + n])
            buf[n] = old.stage_grad_norm
        group.broadcast_(buf, src)
        received.append(buf)
    prev, nxt = received
    a, b = checkfree.weights(float(nxt[n]), float(prev[n]))
    rebuilt = checkfree.average(nxt[:n], prev[:n], a, b)
    for unit in range(lo, hi):
        _set_rebuilt(new, unit, rebuilt, bounds)
    log.warning(
        "CheckFree: layer units [%d, %d) rebuilt from units %d and %d (weights %.4g, %.4g)",
        lo,
        hi,
        lo - 1,
        hi,
        a,
        b,
    )
    return 2 * (n + 1) * 4


def _set_rebuilt(new: TrainState, unit: int, params: torch.Tensor, bounds: list[int]) -> None:
    """Unit `unit` of `new` (if it holds it) becomes `params`, its moments zero."""
    g_lo, g_hi = bounds[unit], bounds[unit + 1]
    if not new.base <= g_lo < new.base + new.flat.numel:
        return
    new.flat.data[g_lo - new.base : g_hi - new.base].copy_(params)
    m_lo, m_hi = new.moment_range
    c, d = max(g_lo, m_lo), min(g_hi, m_hi)
    if c < d:
        new.opt.exp_avg[c - m_lo : d - m_lo].zero_()
        new.opt.exp_avg_sq[c - m_lo : d - m_lo].zero_()
