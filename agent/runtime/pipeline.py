"""One training step of a pipeline stage replica: 1F1B over its micro-batches.

Each rank runs its operations from `schedule.rank_ops` in slot order. A micro-
batch follows its route, a list of hops (every stage once, in order; CheckFree+
makes odd micro-batches go back and forth). A forward of a hop receives its input
activation from the replica of the previous hop's stage that handled that
micro-batch (token ids at the first hop), runs the hop's units and sends the
output on. The last hop computes the loss (per-sample mean, divided by the global
batch). A backward receives the output's gradient (or starts from the loss) and
sends the input's gradient back. Tags are 2*(micro-batch*hops + hop) (+1 for
gradients), so messages between two ranks are never confused; sends do not block
and are completed at the end, which keeps the slot order deadlock-free. Every
receive of the step is posted before the first operation, so its data arrives
while this rank computes (gloo progresses transfers in its own thread).

Then the stage's data-parallel replicas reduce their gradients (ZeRO-0/1
allreduce, ZeRO-2 reduce-scatter) in the stage group. One small allreduce over the
whole world carries the control slots (switch flag, loss sum, samples, gradient
norm squared), so the clip uses the global norm, as in a single process.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from elastiq.agent.runtime.comm import Group
from elastiq.agent.runtime.data.sample_order import SampleOrder
from elastiq.agent.runtime.schedule import Hop, Op, peer_replica, plain_hops, rank_ops, route
from elastiq.agent.runtime.trainer import (
    LOSS_SUM,
    NORM_SQ,
    SAMPLES,
    SWITCH,
    StepResult,
    TrainState,
    apply_update,
    reduce_scatter_grads,
)


@dataclass(frozen=True, slots=True)
class StageView:
    """What one rank needs to know of the pipeline layout."""

    stage: int
    replica: int
    stage_ranks: tuple[tuple[int, ...], ...]
    """Global ranks of each stage, in replica order."""
    routes: tuple[tuple[Hop, ...], ...] = ()
    """Each micro-batch's hops (empty: every stage once, in order)."""

    @property
    def stages(self) -> int:
        return len(self.stage_ranks)

    def degree(self, stage: int) -> int:
        return len(self.stage_ranks[stage])

    def peer(self, stage: int, micro_batch: int, micro_batches: int) -> int:
        """The global rank of `stage` that handles `micro_batch`."""
        return self.stage_ranks[stage][peer_replica(micro_batch, micro_batches, self.degree(stage))]

    def hop_stages(self) -> tuple[tuple[int, ...], ...] | None:
        """The routes as stages per hop (None: the plain route)."""
        if not self.routes:
            return None
        return tuple(tuple(h.stage for h in r) for r in self.routes)


def stage_routes(
    stage_units: list[tuple[int, int]], orders: list[tuple[int, ...]]
) -> tuple[tuple[Hop, ...], ...]:
    """Each micro-batch's route through stages holding `stage_units`, given its unit
    order; empty when every route is the plain one (every stage's units, in order)."""
    routes = tuple(route(order, stage_units) for order in orders)
    plain = route(range(stage_units[0][0], stage_units[-1][1]), stage_units)
    return () if all(r == plain for r in routes) else routes


def run_pipeline_step(
    state: TrainState,
    world: Group,
    stage_group: Group,
    view: StageView,
    order: SampleOrder,
    step: int,
    want_switch: bool,
    intervals: Sequence[tuple[int, int]] | None = None,
    zero: int = 0,
    before_reduce: Callable[[], None] | None = None,
) -> StepResult:
    cfg = state.cfg
    flat = state.flat
    flat.zero_grad()
    total, m, s = cfg.micro_batches, cfg.micro_batch, view.stage
    boundary = state.source.boundary_shape
    if boundary is None:
        raise ValueError(
            "this model's unit boundaries carry different shapes; pipeline stages need one "
            "shape at every boundary (run it with pipeline_stages=1)"
        )
    shape = (m, *boundary)
    base = (step - 1) * cfg.global_batch
    routed = view.hop_stages()
    hop_stages = routed if routed is not None else plain_hops(view.stages, total)
    hops = max(len(r) for r in hop_stages)
    saved: dict[tuple[int, int], tuple[torch.Tensor | None, torch.Tensor]] = {}
    sends: list[tuple[torch.Tensor, Any]] = []
    loss_sum, samples = 0.0, 0
    ops = rank_ops(view.stages, total, s, view.degree(s), view.replica, routed)
    # every receive of the step is posted up front: gloo moves the data in its own
    # thread while this one computes, so a receive is usually complete when needed
    inbox = [_post_receive(world, view, op, hop_stages, hops, total, shape) for op in ops]
    for op, posted in zip(ops, inbox, strict=True):
        mb, h = op.micro_batch, op.hop
        path = hop_stages[mb]
        last = h == len(path) - 1
        units = view.routes[mb][h].units if view.routes else None
        first = base + mb * m
        tag = 2 * (mb * hops + h)
        if op.kind == "F":
            inp: torch.Tensor | None = None
            if posted is None:
                x = order.samples(first, m)[:, :-1]
            else:
                inp = _received(world, posted)
                inp.requires_grad_(True)
                x = inp
            out = state.forward_units(x, step, first, m, units)
            if last:
                targets = order.samples(first, m)[:, 1:]
                per = state.source.loss(out, targets)
                loss_sum += float(per.detach().sum())
                samples += m
                saved[(mb, h)] = (inp, per.sum() / cfg.global_batch)
            else:
                payload = out.detach().contiguous()
                dst = view.peer(path[h + 1], mb, total)
                sends.append((payload, world.isend(payload, dst, tag + 2)))
                saved[(mb, h)] = (inp, out)
        else:
            inp, out = saved.pop((mb, h))
            if posted is None:
                out.backward()
            else:
                out.backward(_received(world, posted))
            if inp is not None and inp.grad is not None:
                g = inp.grad.contiguous()
                sends.append((g, world.isend(g, view.peer(path[h - 1], mb, total), tag + 1)))
    world.wait_p2p([work for _, work in sends], "pipeline sends")
    if saved:
        raise RuntimeError(f"micro-batches {sorted(saved)} ran forward but not backward")
    flat.extra[SWITCH] = 1.0 if want_switch else 0.0
    flat.extra[LOSS_SUM] = loss_sum
    flat.extra[SAMPLES] = samples
    if before_reduce is not None:
        before_reduce()
    mine = intervals[stage_group.rank] if intervals and zero else (0, flat.numel)
    if zero == 2 and intervals and stage_group.world > 1:
        reduce_scatter_grads(state, stage_group, intervals)
        norm_sq = float(flat.grad[mine[0] : mine[1]].pow(2).sum())
        stage_sq = -1.0  # only the stage group's sum would say: not measured
    else:
        if stage_group.world > 1:
            stage_group.allreduce_sum_(flat.grad)
        stage_sq = float(torch.dot(flat.grad, flat.grad))
        # every replica holds the whole stage gradient: count it once per stage
        norm_sq = stage_sq if view.replica == 0 else 0.0
    flat.extra[NORM_SQ] = norm_sq
    world.allreduce_sum_(flat.extra)
    if int(flat.extra[SAMPLES]) != cfg.global_batch:
        raise RuntimeError(
            f"step {step} covered {int(flat.extra[SAMPLES])} samples, expected "
            f"{cfg.global_batch}: micro-batch routing disagrees between ranks"
        )
    norm = math.sqrt(float(flat.extra[NORM_SQ]))
    apply_update(state, stage_group, step, norm, mine, intervals, zero, stage_sq)
    return StepResult(
        step=step,
        loss=float(flat.extra[LOSS_SUM]) / cfg.global_batch,
        grad_norm=norm,
        switch=bool(flat.extra[SWITCH] > 0),
        samples=int(flat.extra[SAMPLES]),
    )


def _post_receive(
    world: Group,
    view: StageView,
    op: Op,
    hop_stages: Sequence[Sequence[int]],
    hops: int,
    total: int,
    shape: tuple[int, ...],
) -> tuple[torch.Tensor, Any] | None:
    """Start the receive `op` needs (None if it needs none): a forward's input
    activation from the previous hop, or a backward's output gradient from the next."""
    mb, h = op.micro_batch, op.hop
    path = hop_stages[mb]
    tag = 2 * (mb * hops + h)
    if op.kind == "F":
        if h == 0:
            return None
        src = view.peer(path[h - 1], mb, total)
    else:
        if h == len(path) - 1:
            return None
        src, tag = view.peer(path[h + 1], mb, total), tag + 3
    buf = torch.empty(shape)
    return buf, world.irecv(buf, src, tag)


def _received(world: Group, posted: tuple[torch.Tensor, Any]) -> torch.Tensor:
    buf, work = posted
    world.wait_p2p([work], "pipeline receive")
    return buf
