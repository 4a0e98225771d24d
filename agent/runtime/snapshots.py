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

Replay (ZeRO-1): a ward that dies after its update of step s
but before its snapshot of s arrives would cost every survivor a step (they hold
s, its buddy only s-1). But after the allreduce the buddy holds the ward's
interval of the reduced gradient of s too. It keeps a copy, with the step's clip
factor and learning rate, and can then serve step s by replaying the ward's
AdamW update from snapshot s-1: the same operations on the same numbers. Under
pipelines (ZeRO-1) the buddy is on another stage; a replica of the ward's stage
keeps the gradient instead and hands it over at the join (agent/runtime/gradient_handoff.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from elastiq.agent.runtime import tags
from elastiq.agent.runtime.comm import Group, PendingTransfer
from elastiq.agent.runtime.flat import AdamWConfig, FlatAdamW

log = logging.getLogger(__name__)

TAG = tags.SNAPSHOTS


@dataclass(slots=True)
class Snapshot:
    step: int
    lo: int
    hi: int
    params: torch.Tensor
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor


@dataclass(slots=True)
class KeptGradient:
    """A ward's interval [lo, hi) of the reduced, not yet clipped gradient of
    `step`, with what its update used: enough to replay it from snapshot step-1."""

    step: int
    lo: int
    hi: int
    grad: torch.Tensor
    factor: float
    lr: float
    opt: AdamWConfig
    lr_scaled: list[tuple[int, int, float]]
    """Learning-rate scaled ranges, in the coordinates of [lo, hi)."""


@dataclass(slots=True)
class SnapshotKeeper:
    """Snapshots this rank keeps for its wards, and its own snapshot in flight."""

    held: dict[str, list[Snapshot]] = field(default_factory=dict)
    pending: PendingTransfer[tuple[str, Snapshot]] | None = None
    gradients: dict[str, KeptGradient] = field(default_factory=dict)
    _replayed: dict[tuple[str, int], Snapshot] = field(default_factory=dict)

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
        self.pending = PendingTransfer(step, works, incoming)

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

    def keep_gradient(
        self,
        ward_id: str,
        step: int,
        grad: torch.Tensor,
        lo: int,
        factor: float,
        lr: float,
        opt: AdamWConfig,
        lr_scaled: list[tuple[int, int, float]],
    ) -> None:
        """Copy the ward's interval (global [lo, lo+len)) of step `step`'s reduced
        gradient; the buffer of the previous step is reused."""
        old = self.gradients.get(ward_id)
        hi = lo + grad.numel()
        buf = old.grad if old is not None and old.grad.numel() == grad.numel() else None
        buf = buf.copy_(grad) if buf is not None else grad.clone()
        self.gradients[ward_id] = KeptGradient(step, lo, hi, buf, factor, lr, opt, lr_scaled)
        self._replayed.clear()

    def accept_gradient(self, ward_id: str, kept: KeptGradient) -> None:
        """A ward's gradient kept by another rank, handed over for a replay
        (agent/runtime/gradient_handoff.py)."""
        self.gradients[ward_id] = kept
        self._replayed.clear()

    def steps_covering(self, pieces: list[tuple[int, int]]) -> set[int]:
        """Steps for which some held or replayable snapshot covers every piece [lo, hi)."""
        steps: set[int] | None = None
        for lo, hi in pieces:
            have = {s.step for _, s in self._snapshots() if s.lo <= lo and hi <= s.hi}
            steps = have if steps is None else steps & have
        return steps or set()

    def piece(self, what: str, lo: int, hi: int, step: int) -> list[torch.Tensor]:
        for _, s in self._snapshots():
            if s.step == step and s.lo <= lo and hi <= s.hi:
                a, b = lo - s.lo, hi - s.lo
                if what == "params":
                    return [s.params[a:b]]
                return [s.exp_avg[a:b], s.exp_avg_sq[a:b]]
        raise KeyError(f"no snapshot of step {step} holds {what} [{lo}, {hi})")

    def _snapshots(self) -> list[tuple[str, Snapshot]]:
        """Every held snapshot, and the one each kept gradient can replay."""
        out = [(ward, s) for ward, snaps in self.held.items() for s in snaps]
        for ward, kept in self.gradients.items():
            if any(s.step >= kept.step for w, s in out if w == ward):
                continue  # the snapshot of that step arrived: nothing to replay
            replayed = self._replay(ward, kept)
            if replayed is not None:
                out.append((ward, replayed))
        return out

    def _replay(self, ward: str, kept: KeptGradient) -> Snapshot | None:
        """The ward's snapshot of kept.step, recomputed from its snapshot of the step
        before: the update `trainer.apply_update` made, operation for operation."""
        key = (ward, kept.step)
        if key in self._replayed:
            return self._replayed[key]
        base = next(
            (
                s
                for s in self.held.get(ward, [])
                if s.step == kept.step - 1 and (s.lo, s.hi) == (kept.lo, kept.hi)
            ),
            None,
        )
        if base is None:
            return None
        opt = FlatAdamW(0, kept.hi - kept.lo, kept.opt)
        opt.exp_avg.copy_(base.exp_avg)
        opt.exp_avg_sq.copy_(base.exp_avg_sq)
        opt.step_count = kept.step - 1
        opt.lr_scaled = list(kept.lr_scaled)
        params, grad = base.params.clone(), kept.grad.clone()
        if kept.factor != 1.0:
            grad.mul_(kept.factor)
        opt.step(params, grad, kept.lr)
        snap = Snapshot(kept.step, kept.lo, kept.hi, params, opt.exp_avg, opt.exp_avg_sq)
        self._replayed[key] = snap
        log.info("replayed ward %s's update of step %d from its snapshot", ward, kept.step)
        return snap

    def clear(self) -> None:
        self.held.clear()
        self.gradients.clear()
        self._replayed.clear()
        self.pending = None
