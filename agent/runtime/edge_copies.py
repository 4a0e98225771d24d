"""CheckFree+ copies of the embedding and the head, kept by the neighbouring stage.

A lost first stage takes the embedding with it, and the embedding has no
same-shaped neighbour it could be rebuilt from; the head neither. Under CheckFree+
the replicas of stage 1 keep a copy of the embedding's parameters and those of
stage S-2 a copy of the head's (`partition.edge_copy_routes`), refreshed every
committed step. The transfer starts after the update and completes before the
next step's reduction, behind forward/backward, like the buddy snapshots (the
slices sent are not modified before then). A copy becomes usable only once
complete; the previous one is kept until then, so a keeper always holds the
copy of the committed step or of the one before it. Copies carry no optimizer
state: a rebuilt edge starts with fresh moments, like CheckFree's rebuilt blocks.

Where it sits: the worker (agent/runtime/worker.py) owns one `EdgeCopies`, shaped like its
`Buddies`: routed once per join (`adopt`), started after every update, finished
before the next reduction; the CheckFree+ rebuild reads the kept copies (`get`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from elastiq.agent.runtime import tags
from elastiq.agent.runtime.comm import Group, PendingTransfer
from elastiq.agent.runtime.plan_view import PlanView
from elastiq.agent.runtime.trainer import TrainState
from elastiq.partition import edge_copy_routes, element_offsets

log = logging.getLogger(__name__)

TAG = tags.EDGE_COPIES


@dataclass(slots=True)
class EdgeCopies:
    """Copies this rank keeps ({unit: (step, parameters)}), this generation's routes,
    and the transfer in flight. `enabled`: CheckFree+ is on (otherwise nothing moves)."""

    enabled: bool = False
    held: dict[int, tuple[int, torch.Tensor]] = field(default_factory=dict)
    pending: PendingTransfer[tuple[int, torch.Tensor]] | None = None
    _routes: list[tuple[int, int, int]] = field(default_factory=list)
    _unit_numel: list[int] = field(default_factory=list)
    _params: dict[int, torch.Tensor] = field(default_factory=dict)
    _spare: dict[int, torch.Tensor] = field(default_factory=dict)

    def adopt(self, view: PlanView, group: Group, state: TrainState, committed: int) -> None:
        """Route this generation's copies, and give the new keepers the committed
        edges at once (they hold nothing of this generation yet)."""
        sizes = list(state.source.unit_numel)
        routes: list[tuple[int, int, int]] = []
        params: dict[int, torch.Tensor] = {}
        if self.enabled:
            routes = edge_copy_routes([list(st.ranks) for st in view.layout.stages], len(sizes))
            bounds = element_offsets(sizes)
            params = {
                u: state.flat.data[bounds[u] - state.base : bounds[u + 1] - state.base]
                for u in (0, len(sizes) - 1)
                if u in state.unit_ids
            }
        self.route(routes, sizes, params)
        self.start(group, committed)
        self.finish(group)

    def route(
        self,
        routes: list[tuple[int, int, int]],
        unit_numel: list[int],
        unit_params: dict[int, torch.Tensor],
    ) -> None:
        """(unit, sender, keeper) of every copy, and the edge units this rank holds
        (`unit_params`, views into its parameters), fixed until the next join."""
        self._routes, self._unit_numel, self._params = routes, unit_numel, unit_params

    def start(self, group: Group, step: int) -> None:
        """Send the edge units this rank holds to their keepers; receive the copies
        this rank keeps."""
        works: list[Any] = []
        incoming: list[tuple[int, torch.Tensor]] = []
        me = group.rank
        for unit, sender, keeper in self._routes:
            tag = TAG + (1 if unit else 0)
            if sender == me and keeper != me:
                works.append(group.isend(self._params[unit], keeper, tag))
            elif keeper == me:
                buf = self._buffer(unit, self._unit_numel[unit])
                works.append(group.irecv(buf, sender, tag))
                incoming.append((unit, buf))
        self.pending = PendingTransfer(step, works, incoming) if works else None

    def finish(self, group: Group) -> None:
        """Complete the transfer in flight; the copies received become the kept ones."""
        pending, self.pending = self.pending, None
        if pending is None:
            return
        group.wait_p2p(pending.works, f"edge copies of step {pending.step}")
        for unit, buf in pending.incoming:
            old = self.held.get(unit)
            if old is not None and old[1].numel() == buf.numel():
                self._spare[unit] = old[1]
            self.held[unit] = (pending.step, buf)

    def abandon(self) -> None:
        """A failure interrupted the transfer: what it was receiving is incomplete.
        Its buffers are dropped, not reused: a receive on the abandoned group may
        still write into them."""
        self.pending = None

    def get(self, unit: int) -> tuple[int, torch.Tensor]:
        """(step, parameters) of the kept copy of `unit`."""
        if unit not in self.held:
            raise KeyError(f"this rank keeps no copy of layer unit {unit}")
        return self.held[unit]

    def _buffer(self, unit: int, n: int) -> torch.Tensor:
        spare = self._spare.pop(unit, None)
        return spare if spare is not None and spare.numel() == n else torch.empty(n)
