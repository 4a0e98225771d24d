"""This rank's part in the buddy scheme, one generation at a time.

Where it sits: the worker (agent/runtime/worker.py) owns one `Buddies`. It plans the
generation's routes once at each join (`adopt`), sends this rank's snapshot and
receives its wards' after every update (`start`, completed by `finish` before the
next reduction), keeps the gradients a replay needs (`keep_gradients`), and serves
the join's agreement and moves (`newest_steps_covering`, `hand_over`, `piece`). The
tensors and the replay live in agent/runtime/snapshots.py; the join-time hand-over of kept
gradients in agent/runtime/gradient_handoff.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from elastiq.agent.plan_layout import PlanLayout
from elastiq.agent.runtime.comm import Group
from elastiq.agent.runtime.gradient_handoff import exchange, plan_handoffs
from elastiq.agent.runtime.plan_view import PlanView
from elastiq.agent.runtime.snapshots import SnapshotKeeper
from elastiq.agent.runtime.trainer import TrainState
from elastiq.partition import gradient_keepers


def snapshots_needed(layout: PlanLayout) -> bool:
    """Buddies are needed when some rank holds state no other live rank has: ZeRO
    intervals, or stages (a stage can be lost whole)."""
    needed = bool(layout.zero) or len(layout.stages) > 1
    return needed and any(b >= 0 for b in layout.buddy)


class Buddies:
    """Snapshots sent and kept, and gradients kept for replays, under one plan."""

    def __init__(self, unit_numel: Sequence[int]) -> None:
        self.keeper = SnapshotKeeper()
        self._unit_numel = list(unit_numel)
        self._on = False
        self._buddy = -1
        self._wards: list[tuple[str, int, tuple[int, int]]] = []
        # (worker id, replica) of the ranks whose reduced-gradient interval I keep
        self._gradient_wards: list[tuple[str, int]] = []

    def adopt(self, view: PlanView, group: Group, state: TrainState, committed: int) -> None:
        """Route this generation's snapshots and kept gradients, and give the new
        buddies the committed state at once (they hold nothing of it yet)."""
        self.keeper.clear()
        layout, me = view.layout, view.rank
        self._on = snapshots_needed(layout)
        self._buddy = view.buddy if self._on else -1
        ids = layout.workers
        self._wards = [(ids[r], r, layout.ranges[r][1]) for r in view.wards] if self._on else []
        self._gradient_wards = []
        if self._on and layout.zero == 1:
            keepers = gradient_keepers(
                list(layout.nodes), [list(st.ranks) for st in layout.stages], list(layout.buddy)
            )
            self._gradient_wards = [
                (ids[r], i)
                for st in layout.stages
                for i, r in enumerate(st.ranks)
                if keepers[r] == me and r != me
            ]
        self.start(group, committed, state)
        self.finish(group)

    def start(self, group: Group, step: int, state: TrainState) -> None:
        """Send my interval of `step` to my buddy; receive my wards' (runs behind the
        next forward/backward; the slices sent are not modified before `finish`)."""
        if not self._on:
            return
        m_lo, m_hi = state.moment_range
        tensors = (
            state.flat.data[m_lo - state.base : m_hi - state.base],
            state.opt.exp_avg,
            state.opt.exp_avg_sq,
        )
        self.keeper.start(group, step, self._buddy, (m_lo, m_hi), tensors, self._wards)

    def keep_gradients(
        self, step: int, state: TrainState, intervals: Sequence[tuple[int, int]] | None
    ) -> None:
        """ZeRO-1: keep `step`'s reduced gradient of each rank I am the gradient
        keeper of, so that its update can be replayed if it dies before its
        snapshot of `step` arrives (agent/runtime/snapshots.py, "Replay")."""
        done, factor, lr = state.last_update
        if not self._gradient_wards or not intervals or done != step:
            return
        for ward, replica in self._gradient_wards:
            lo, hi = intervals[replica]
            self.keeper.keep_gradient(
                ward,
                step,
                state.flat.grad[lo:hi],
                state.base + lo,
                factor,
                lr,
                state.opt.cfg,
                state.opt.scaled_within(lo, hi),
            )

    def finish(self, group: Group) -> None:
        self.keeper.finish(group)

    def abandon(self) -> None:
        self.keeper.abandon()

    def newest_steps_covering(self, pieces: list[tuple[int, int]]) -> list[int]:
        """The two newest steps whose snapshots cover every piece (-1 pads)."""
        avail = sorted(self.keeper.steps_covering(pieces))[-2:] if pieces else []
        return [-1] * (2 - len(avail)) + avail

    def piece(self, what: str, lo: int, hi: int, step: int) -> list[torch.Tensor]:
        return self.keeper.piece(what, lo, hi, step)

    def hand_over(
        self,
        source: PlanLayout | None,
        layout: PlanLayout,
        group: Group,
        holders: list[bool],
        needy: set[int],
        state: TrainState,
    ) -> int:
        """Join, ZeRO-1: some buddy lags the step the survivors reached (its ward died
        before its snapshot arrived). Hand it the ward's kept gradient to replay from
        (agent/runtime/gradient_handoff.py). `source`: the source generation's plan, None if
        this rank does not hold it (then it takes no part). Returns bytes received."""
        if source is None:
            return 0
        handoffs = plan_handoffs(source, layout, holders, needy)
        return exchange(handoffs, group, self.keeper, state.opt.cfg, len(self._unit_numel))
