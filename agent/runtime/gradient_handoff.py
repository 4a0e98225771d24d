"""Join-time hand-over of kept gradients: how a pipeline's ZeRO-1 update is replayed.

Where it sits: the join's step agreement (agent/runtime/join.py, `agree`) calls it in a
join, between its two allgathers. It moves tensors only between survivors that hold
the source generation's state, which all know the source plan.

Why: data parallelism replays a lost ward's update of step s at its buddy, which
holds the ward's interval of the reduced gradient anyway (agent/runtime/snapshots.py,
"Replay"). Under pipelines the buddy sits on the next stage, so that a stage lost
whole still has its snapshots, and it has no gradient of its ward's stage. A replica
of the ward's stage, its gradient keeper (`elastiq.partition.gradient_keepers`),
keeps that interval every step instead. When a ward dies after its update of s but
before its snapshot of s reached the buddy, the keeper hands the kept gradient to
the buddy here, and the buddy replays step s from snapshot s-1: no survivor rolls
back. Nothing crosses the wire while training; only a join that needs it pays one
interval per lost ward.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from elastiq.agent.plan_layout import PlanLayout
from elastiq.agent.runtime import tags
from elastiq.agent.runtime.comm import Group
from elastiq.agent.runtime.flat import AdamWConfig
from elastiq.agent.runtime.snapshots import KeptGradient, SnapshotKeeper
from elastiq.partition import gradient_keepers

log = logging.getLogger(__name__)

TAG = tags.GRADIENT_HANDOFF
_FIXED = 6  # step, lo, hi, factor, lr, number of lr-scaled ranges


@dataclass(frozen=True, slots=True)
class Handoff:
    """The keeper of lost ward `ward`'s gradient sends it to the ward's buddy; ranks
    are the new generation's, [lo, hi) the ward's moments in global elements."""

    ward: str
    keeper: int
    buddy: int
    lo: int
    hi: int


def plan_handoffs(
    source: PlanLayout,
    new: PlanLayout,
    holders: Sequence[bool],
    needy: Collection[int],
) -> list[Handoff]:
    """The hand-overs a join needs (pure). `holders[r]`: new rank r holds the source
    generation's state; `needy`: new ranks whose buddy snapshots lag the step the
    survivors reached. A ward is lost when no holder has its worker id; its keeper
    and buddy must both be holders, and distinct (a keeping buddy replays locally)."""
    if source.zero != 1 or not needy:
        return []
    stage_ranks = [list(st.ranks) for st in source.stages]
    keepers = gradient_keepers(list(source.nodes), stage_ranks, list(source.buddy))
    holding = {w: r for r, w in enumerate(new.workers) if holders[r]}
    out = []
    for ward_rank, ward in enumerate(source.workers):
        if ward in holding:
            continue
        keeper_old, buddy_old = keepers[ward_rank], source.buddy[ward_rank]
        if keeper_old < 0 or buddy_old < 0 or keeper_old == buddy_old:
            continue
        keeper = holding.get(source.workers[keeper_old])
        buddy = holding.get(source.workers[buddy_old])
        if keeper is None or buddy is None or buddy not in needy:
            continue
        lo, hi = source.ranges[ward_rank][1]
        out.append(Handoff(ward, keeper, buddy, lo, hi))
    return out


def encode(kept: KeptGradient | None, width: int) -> torch.Tensor:
    """A kept gradient's metadata as float64 (exact for steps, offsets, the clip
    factor and the lr); step -1 when there is none. `width`: the most lr-scaled
    ranges one interval can meet (the model's unit count)."""
    header = torch.zeros(_FIXED + 3 * width, dtype=torch.float64)
    header[0] = -1.0
    if kept is None:
        return header
    if len(kept.lr_scaled) > width:
        raise ValueError(f"{len(kept.lr_scaled)} lr-scaled ranges exceed the header's {width}")
    header[:_FIXED] = torch.tensor(
        [kept.step, kept.lo, kept.hi, kept.factor, kept.lr, len(kept.lr_scaled)],
        dtype=torch.float64,
    )
    for i, (a, b, k) in enumerate(kept.lr_scaled):
        header[_FIXED + 3 * i : _FIXED + 3 * i + 3] = torch.tensor([a, b, k], dtype=torch.float64)
    return header


def decode(header: torch.Tensor, grad: torch.Tensor, opt: AdamWConfig) -> KeptGradient | None:
    values = header.tolist()
    step, lo, hi, factor, lr, count = values[:_FIXED]
    if step < 0:
        return None
    scaled = [
        (int(values[_FIXED + 3 * i]), int(values[_FIXED + 3 * i + 1]), values[_FIXED + 3 * i + 2])
        for i in range(int(count))
    ]
    return KeptGradient(int(step), int(lo), int(hi), grad, factor, lr, opt, scaled)


def exchange(
    handoffs: Sequence[Handoff],
    group: Group,
    snapshots: SnapshotKeeper,
    opt: AdamWConfig,
    width: int,
) -> int:
    """Run this rank's part of `handoffs`: keepers send, buddies receive and keep the
    gradient for a replay. Returns the bytes received."""
    me = group.rank
    works: list[Any] = []
    incoming: list[tuple[Handoff, torch.Tensor, torch.Tensor]] = []
    outgoing: list[torch.Tensor] = []  # alive until the sends complete
    for i, h in enumerate(handoffs):
        tag = TAG + 2 * i
        if h.keeper == me:
            kept = snapshots.gradients.get(h.ward)
            if kept is not None and (kept.lo, kept.hi) != (h.lo, h.hi):
                kept = None  # kept in another layout: useless to the buddy
            grad = kept.grad if kept is not None else torch.zeros(h.hi - h.lo)
            outgoing += [encode(kept, width), grad]
            works.append(group.isend(outgoing[-2], h.buddy, tag))
            works.append(group.isend(grad, h.buddy, tag + 1))
        elif h.buddy == me:
            header = torch.empty(_FIXED + 3 * width, dtype=torch.float64)
            grad = torch.empty(h.hi - h.lo)
            works.append(group.irecv(header, h.keeper, tag))
            works.append(group.irecv(grad, h.keeper, tag + 1))
            incoming.append((h, header, grad))
    if not works:
        return 0
    group.wait_p2p(works, "kept-gradient hand-over")
    received = 0
    for h, header, grad in incoming:
        kept = decode(header, grad, opt)
        received += header.numel() * 8 + grad.numel() * 4
        if kept is None:
            log.info("ward %s's gradient keeper had none to hand over", h.ward)
            continue
        snapshots.accept_gradient(h.ward, kept)
        log.info("received ward %s's kept gradient of step %d for a replay", h.ward, kept.step)
    return received
