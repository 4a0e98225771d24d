"""Per-step in-memory snapshots kept by a buddy on another node (ZeRO-1/2).

After every committed step a rank sends its interval (parameters and both Adam
moments, in global element coordinates) to its buddy. The send is started after
the optimizer update and completed just before the next step's reduction, so it
runs behind the next forward/backward. The buddy keeps the last two complete
snapshots of each ward, which covers every way a ward can die: survivors can be
one step ahead of the newest complete snapshot and roll back one step (see
docs/design.md, "Snapshot steps").

No tensor is copied on the sending side: the slices sent are not modified until
the next update, which comes after the transfer completes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from elastiq.agent.comm import Group

log = logging.getLogger(__name__)

TAG = 1 << 24


@dataclass(slots=True)
class Snapshot:
    step: int
    lo: int
    hi: int
    params: torch.Tensor
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor


@dataclass(slots=True)
class _Pending:
    step: int
    works: list[Any]
    incoming: list[tuple[str, Snapshot]]


@dataclass(slots=True)
class SnapshotKeeper:
    """Snapshots this rank keeps for its wards, and its own snapshot in flight."""

    held: dict[str, list[Snapshot]] = field(default_factory=dict)
    pending: _Pending | None = None

    def start(
        self,
        group: Group,
        step: int,
        buddy: int,
        mine: tuple[int, int],
        tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        wards: list[tuple[str, int, tuple[int, int]]],
    ) -> None:
        """Send my interval of `step` to `buddy`; receive each ward's (id, rank, range)."""
        works: list[Any] = []
        if buddy >= 0 and buddy != group.rank:
            for k, tensor in enumerate(tensors):
                works.append(group.isend(tensor, buddy, TAG + k))
        incoming = []
        for ward_id, rank, (lo, hi) in wards:
            snap = self._slot(ward_id, step, lo, hi)
            for k, tensor in enumerate((snap.params, snap.exp_avg, snap.exp_avg_sq)):
                works.append(group.irecv(tensor, rank, TAG + k))
            incoming.append((ward_id, snap))
        self.pending = _Pending(step, works, incoming)

    def finish(self, group: Group) -> None:
        """Complete the transfer in flight; its snapshots become usable."""
        pending, self.pending = self.pending, None
        if pending is None:
            return
        group.wait_p2p(pending.works, f"snapshot of step {pending.step}")
        for ward_id, snap in pending.incoming:
            kept = [s for s in self.held.get(ward_id, []) if s.step != snap.step]
            self.held[ward_id] = sorted([*kept, snap], key=lambda s: s.step)[-2:]

    def abandon(self) -> None:
        """A failure interrupted the transfer: what it was receiving is not complete."""
        self.pending = None

    def _slot(self, ward_id: str, step: int, lo: int, hi: int) -> Snapshot:
        """Reuse the older of the two buffers when it has the right size."""
        kept = self.held.get(ward_id, [])
        if len(kept) == 2 and kept[0].hi - kept[0].lo == hi - lo:
            old = kept.pop(0)
            return Snapshot(step, lo, hi, old.params, old.exp_avg, old.exp_avg_sq)
        n = hi - lo
        return Snapshot(step, lo, hi, torch.empty(n), torch.empty(n), torch.empty(n))

    def steps_covering(self, pieces: list[tuple[int, int]]) -> set[int]:
        """Steps for which some held snapshot covers every piece [lo, hi)."""
        steps: set[int] | None = None
        for lo, hi in pieces:
            have = {
                s.step for snaps in self.held.values() for s in snaps if s.lo <= lo and hi <= s.hi
            }
            steps = have if steps is None else steps & have
        return steps or set()

    def piece(self, what: str, lo: int, hi: int, step: int) -> list[torch.Tensor]:
        for snaps in self.held.values():
            for s in snaps:
                if s.step == step and s.lo <= lo and hi <= s.hi:
                    a, b = lo - s.lo, hi - s.lo
                    if what == "params":
                        return [s.params[a:b]]
                    return [s.exp_avg[a:b], s.exp_avg_sq[a:b]]
        raise KeyError(f"no snapshot of step {step} holds {what} [{lo}, {hi})")

    def clear(self) -> None:
        self.held.clear()
        self.pending = None
