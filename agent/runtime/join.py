"""Joining a generation: the protocol a worker runs each time a plan names it.

Where it sits: the worker (agent/runtime/worker.py) calls `join_generation(view,
holding, parts)` with the parsed plan (agent/runtime/plan_view.py) and what it holds;
it gets back the new state, the communicators and the committed step. Steps:

1. rendezvous: a fresh gloo group for the generation under the prefix
   job/g<generation>/ of the rendezvous store the plan names (and one per stage when
   the model is pipelined);
2. agree on the last committed step: the lowest step among ranks that hold valid
   state, no later than the newest snapshot a buddy can serve; a rank one step ahead
   rolls back, except under plain data parallelism, where the laggards take the
   state of the rank that finished the step (nobody loses it). Under ZeRO-1, buddies
   that lag get their lost ward's kept gradient first (agent/runtime/gradient_handoff.py);
3. move state: the plan's moves (interval overlaps of the old and new partitions,
   from live ranks or buddy snapshots), a checkpoint restore, or a CheckFree rebuild;
4. adopt: the buddies and edge copies are routed for the new generation.

A failure anywhere leaves `holding.valid` False: a half re-split state never serves as
a source again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from elastiq import logs
from elastiq.agent.plan_layout import StateSource, Via
from elastiq.agent.runtime.buddies import Buddies
from elastiq.agent.runtime.checkfree_rebuild import rebuild_lost_units
from elastiq.agent.runtime.checkpointing import WorkerCheckpoints
from elastiq.agent.runtime.comm import Group, RendezvousClient
from elastiq.agent.runtime.edge_copies import EdgeCopies
from elastiq.agent.runtime.migrate import apply_moves
from elastiq.agent.runtime.plan_view import PlanView
from elastiq.agent.runtime.trainer import TrainState
from elastiq.config import JobConfig

log = logging.getLogger(__name__)


class StateLost(Exception):
    """No rank of the generation holds the state the plan needs (and no other source
    was given): the job cannot go on."""


@dataclass(slots=True)
class Holding:
    """What a worker brings into a join, and takes out of it."""

    state: TrainState
    valid: bool = False
    """The state is the job's (initialised at generation 1, received, or restored)."""
    view: PlanView | None = None
    """The generation whose layout `state` matches: the last join this worker completed."""

    def reached(self) -> int:
        """The step this worker has applied: what a rollback or a restore undoes."""
        return self.state.step if self.valid else 0


@dataclass(frozen=True, slots=True)
class JoinTimings:
    join_start: float
    """Wall clock when the join began."""
    comm_rebuild_s: float
    migrate_s: float
    reached_step: int


@dataclass(frozen=True, slots=True)
class Joined:
    group: Group
    """The whole generation."""
    stage_group: Group
    """This rank's stage replicas (the whole group without pipelining)."""
    committed: int
    rolled_back: bool
    moved_bytes: int
    timings: JoinTimings


@dataclass(frozen=True, slots=True)
class JoinParts:
    """The worker's long-lived pieces a join uses."""

    cfg: JobConfig
    rendezvous: RendezvousClient
    buddies: Buddies
    edge_copies: EdgeCopies
    checkpoints: WorkerCheckpoints
    superseded: Callable[[int], bool]
    """True when a newer plan drops a member of the given generation."""


def join_generation(view: PlanView, holding: Holding, parts: JoinParts) -> Joined:
    """Enter `view`'s generation; `holding` is updated in place (state, valid, view)."""
    t0 = time.time()
    reached = holding.reached()
    layout = view.layout
    if layout.state_source is StateSource.INIT and not holding.valid and holding.state.step == 0:
        holding.valid = True
    cfg = parts.cfg
    store = parts.rendezvous.store(layout.rendezvous, cfg.rendezvous_timeout_s)

    def build(prefix: str, rank: int, world: int) -> Group:
        return Group.build(
            store,
            prefix,
            rank,
            world,
            layout.generation,
            cfg.collective_timeout_s,
            cfg.rendezvous_timeout_s,
            lambda: parts.superseded(layout.generation),
        )

    group = build(f"{layout.job}/g{layout.generation}/", view.rank, view.world_size)
    stage_group = group
    if len(layout.stages) > 1:
        prefix = f"{layout.job}/g{layout.generation}/stage{view.stage}/"
        stage_group = build(prefix, view.replica, view.degree)
    t_comm = time.time()
    # a checkpoint copy in flight must not see a rollback or a re-split
    parts.checkpoints.wait_for_copies()
    steps = _JoinSteps(view, holding, parts, group)
    try:
        if layout.state_source is StateSource.CHECKPOINT:
            committed, moved = steps.restore_checkpoint()
            rolled_back = False
        else:
            committed, rolled_back = steps.agree()
            moved = steps.move_state(committed)
    except BaseException:
        holding.valid = False
        raise
    parts.checkpoints.prepare(holding.state, view.degree, view.replica)
    logs.context.step = holding.state.step
    t_end = time.time()
    log.info(
        "joined generation %d as rank %d/%d at committed step %d%s; comm %.3fs, migrate %.3fs "
        "(%d bytes)",
        layout.generation,
        view.rank,
        view.world_size,
        committed,
        " (rolled back one step)" if rolled_back else "",
        t_comm - t0,
        t_end - t_comm,
        moved,
    )
    return Joined(
        group=group,
        stage_group=stage_group,
        committed=committed,
        rolled_back=rolled_back,
        moved_bytes=moved,
        timings=JoinTimings(t0, t_comm - t0, t_end - t_comm, reached),
    )


class _JoinSteps:
    """The steps of one join, sharing its view, holding and group."""

    def __init__(self, view: PlanView, holding: Holding, parts: JoinParts, group: Group) -> None:
        self.view = view
        self.layout = view.layout
        self.holding = holding
        self.parts = parts
        self.group = group
        self.me = view.rank

    def agree(self) -> tuple[int, bool]:
        """Agree on the last committed step and roll back to it if one step ahead.

        Each rank reports its applied step, whether its state is valid, and, if the
        plan has it serve pieces from buddy snapshots, the snapshot steps it holds for
        them. The committed step is the lowest valid step, and no later than the
        newest snapshot a buddy can serve. A buddy one step behind (its ward died
        before its snapshot arrived) first gets the ward's kept gradient to replay
        that step from (ZeRO-1), so that nobody rolls back."""
        layout, holding, group = self.layout, self.holding, self.group
        state, buddies = holding.state, self.parts.buddies
        pieces = [
            (m.lo, m.hi) for m in layout.moves if m.src_rank == self.me and m.via is Via.BUDDY
        ]
        avail = buddies.newest_steps_covering(pieces)
        # a worker whose last join was interrupted before it changed anything still
        # holds the source layout's state; anything else is not a valid source
        held_generation = holding.view.generation if holding.view is not None else 0
        holds_source = holding.valid and (
            layout.source_generation == 0 or held_generation == layout.source_generation
        )
        whole = int(
            holds_source
            and state.unit_range == (0, state.source.num_units)
            and (state.opt.lo, state.opt.hi) == (0, state.flat.numel)
        )
        info = torch.tensor(
            [
                state.step if holds_source else -1,
                int(holds_source),
                int(bool(pieces)),
                *avail,
                whole,
            ],
            dtype=torch.int64,
        )
        table = [[int(x) for x in t] for t in group.allgather(info)]
        if not any(t[1] for t in table):
            raise StateLost(
                f"generation {layout.generation}: no member holds the job's state "
                f"(every holder of the previous generation is gone)"
            )
        committed = min(t[0] for t in table if t[1])
        needy = {r for r, t in enumerate(table) if t[2] and max(t[3], t[4]) < committed}
        if needy and layout.zero == 1:
            self._hand_over_gradients(table, needy, pieces, holds_source)
        for t in table:
            if t[2]:
                committed = min(committed, max(t[3], t[4]))
        for rank, t in enumerate(table):
            if t[2] and committed not in (t[3], t[4]):
                raise StateLost(
                    f"generation {layout.generation}: rank {rank} holds snapshots of steps "
                    f"{t[3:5]} but the committed step is {committed}"
                )
        for m in layout.moves:
            if m.via is Via.LIVE and not table[m.src_rank][1]:
                raise StateLost(
                    f"generation {layout.generation}: the plan takes {m.what} [{m.lo}, {m.hi}) "
                    f"from rank {m.src_rank}, which holds no valid state"
                )
        if not holds_source:
            holding.valid = False  # it will receive everything it needs
        ahead = max(t[0] for t in table if t[1])
        replicated = layout.zero == 0 and len(layout.stages) == 1
        if ahead > committed and replicated and all(t[5] for t in table if t[1]):
            return self._roll_forward(table, ahead, bool(whole)), False
        rolled_back = holding.valid and state.step > committed
        if holding.valid:
            state.rollback_to(committed)
        return committed, rolled_back

    def _roll_forward(self, table: list[list[int]], ahead: int, whole: bool) -> int:
        """Plain data parallelism and a rank finished the step the others did not (the
        lost peer had already sent its part of the reduction): everyone holds the whole
        state, so the laggards take it from that rank instead of the others rolling
        back (no step is lost)."""
        state = self.holding.state
        src = next(r for r, t in enumerate(table) if t[1] and t[0] == ahead)
        total = sum(state.source.unit_numel)
        mine = self.holding.valid and whole
        for k in range(3):
            if mine:
                tensor = (state.flat.data, state.opt.exp_avg, state.opt.exp_avg_sq)[k]
            else:  # a newcomer: the plan's moves fill it afterwards
                tensor = torch.empty(total)
            self.group.broadcast_(tensor, src)
        if mine:
            state.adopt_step(ahead)
        return ahead

    def _hand_over_gradients(
        self,
        table: list[list[int]],
        needy: set[int],
        pieces: list[tuple[int, int]],
        holds_source: bool,
    ) -> None:
        """ZeRO-1: the buddies in `needy` lag the step the survivors reached; they get
        kept gradients to replay from (agent/runtime/buddies.py), then every rank
        learns the buddies' steps again."""
        held = self.holding.view
        source = held.layout if holds_source and held is not None else None
        if source is not None and source.generation != self.layout.source_generation:
            source = None
        holders = [bool(t[1]) for t in table]
        buddies = self.parts.buddies
        buddies.hand_over(source, self.layout, self.group, holders, needy, self.holding.state)
        steps = self.group.allgather(torch.tensor(buddies.newest_steps_covering(pieces)))
        for t, mine in zip(table, steps, strict=True):
            t[3], t[4] = int(mine[0]), int(mine[1])

    def move_state(self, committed: int) -> int:
        """Take this rank's place in the new layout: its stage's units (a new state if
        they changed), its ZeRO interval, and the plan's moves; returns bytes received."""
        old = self.holding.state
        old_base = old.base
        old_m_lo, _ = old.moment_range
        # the old moments, kept: a re-split in place replaces them (keeping the overlap)
        old_avg, old_avg_sq = old.opt.exp_avg, old.opt.exp_avg_sq
        new = self._state_for_view()
        if new is not old:
            _copy_overlap(old.flat.data, old_base, new.flat.data, new.base)
            _copy_overlap(old_avg, old_m_lo, new.opt.exp_avg, new.moment_range[0])
            _copy_overlap(old_avg_sq, old_m_lo, new.opt.exp_avg_sq, new.moment_range[0])
            new.step, new.opt.step_count = old.step, old.opt.step_count
        buddies = self.parts.buddies

        def source(what: str, a: int, b: int, via: str) -> list[torch.Tensor]:
            if via == Via.BUDDY:
                return buddies.piece(what, a, b, committed)
            if what == "params":
                return [old.flat.data[a - old_base : b - old_base]]
            return [old_avg[a - old_m_lo : b - old_m_lo], old_avg_sq[a - old_m_lo : b - old_m_lo]]

        def target(what: str, a: int, b: int) -> list[torch.Tensor]:
            if what == "params":
                return [new.flat.data[a - new.base : b - new.base]]
            m_lo = new.moment_range[0]
            return [new.opt.exp_avg[a - m_lo : b - m_lo], new.opt.exp_avg_sq[a - m_lo : b - m_lo]]

        moved = apply_moves(self.group, self.layout.moves, self.me, source, target)
        if self.layout.checkfree is not None:
            moved += rebuild_lost_units(
                self.layout.checkfree, self.group, old, new, self.parts.edge_copies
            )
        self.holding.state = new
        if not self.holding.valid:
            new.step = committed
            new.opt.step_count = committed
        self._adopt(committed)
        return moved

    def _state_for_view(self) -> TrainState:
        """A state shaped for this rank: its stage's units (the current state when they
        did not change) owning its ZeRO interval's moments. What the new shape does not
        cover yet is filled by the caller."""
        current = self.holding.state
        units = self.view.units
        new = current if units == current.unit_range else TrainState(self.parts.cfg, units)
        lo, hi = self.view.interval or (0, new.flat.numel)
        new.set_moment_range(new.base + lo, new.base + hi)
        return new

    def restore_checkpoint(self) -> tuple[int, int]:
        """Every rank loads its share of the plan's checkpoint, in this plan's layout
        (a stage lost whole, or a resumed job); returns (step, bytes read)."""
        layout = self.layout
        if not self.parts.cfg.checkpoint_url:
            raise StateLost(f"plan {layout.generation} restores a checkpoint; none is configured")
        new = self._state_for_view()
        step, nbytes = layout.checkpoint_step, 0
        while True:
            try:
                report = self.parts.checkpoints.restore(new, step)
            except (OSError, ValueError) as exc:
                raise StateLost(
                    f"generation {layout.generation}: checkpoint restore: {exc}"
                ) from exc
            nbytes += report.bytes_read
            steps = {int(t[0]) for t in self.group.allgather(torch.tensor([report.step]))}
            if len(steps) == 1:
                break
            # some rank could not verify the newest checkpoint: everyone takes the older
            step = min(steps)
        self.holding.state = new
        self._adopt(report.step)
        log.info(
            "restored checkpoint step %d (%d bytes; skipped %s)",
            report.step,
            nbytes,
            report.skipped,
        )
        return report.step, nbytes

    def _adopt(self, committed: int) -> None:
        """The state now matches the plan's layout at `committed`: serve from it."""
        holding, layout = self.holding, self.layout
        holding.view = self.view
        holding.valid = True
        holding.state.scale_lr_of_units(list(layout.lr_scaled_units), layout.lr_scale)
        self.parts.buddies.adopt(self.view, self.group, holding.state, committed)
        self.parts.edge_copies.adopt(self.view, self.group, holding.state, committed)


def _copy_overlap(src: torch.Tensor, src_lo: int, dst: torch.Tensor, dst_lo: int) -> None:
    """Copy the global elements both flat tensors hold (each starts at its global lo)."""
    a = max(src_lo, dst_lo)
    b = min(src_lo + src.numel(), dst_lo + dst.numel())
    if a < b:
        dst[a - dst_lo : b - dst_lo].copy_(src[a - src_lo : b - src_lo])
