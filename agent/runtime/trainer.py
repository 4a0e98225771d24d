"""One worker's training state and the data-parallel step over it.

The step is layout-independent by construction: step s consumes global samples
[(s-1)*B, s*B), split into micro-batches of m samples; rank r of a world of W
processes the contiguous block `even_split(B/m, W, r)` of them; each sample's
loss is its mean token loss divided by B (the global batch, not the world), so
the summed gradient over ranks is the same whatever W is. The gradient buffer
carries control slots behind it (switch flag, loss sum, sample count), so
agreeing to change generation at a step boundary costs no extra collective.

Before the optimizer applies step s the state of step s-1 is kept, so a step that
some survivors applied and others did not (the failure hit mid-collective) can be
rolled back: the last committed step is the one every survivor holds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from elastiq.agent.runtime.comm import Group
from elastiq.agent.runtime.data.sample_order import SampleOrder
from elastiq.agent.runtime.flat import AdamWConfig, FlatAdamW, FlatParams
from elastiq.agent.runtime.models.decoder import Block
from elastiq.agent.runtime.models.source import model_source
from elastiq.config import JobConfig
from elastiq.lr import lr_at
from elastiq.partition import micro_batches_of

# control slots appended to the gradient buffer
SWITCH, LOSS_SUM, SAMPLES, NORM_SQ = 0, 1, 2, 3
CONTROL_SLOTS = 4


@dataclass(slots=True)
class StepResult:
    step: int
    loss: float
    grad_norm: float
    switch: bool
    samples: int


class TrainState:
    """Model units, flat parameters, optimizer and a one-step rollback snapshot."""

    def __init__(self, cfg: JobConfig, units: tuple[int, int] | None = None) -> None:
        """`units`: the layer units [a, b) of this rank's pipeline stage (default all)."""
        self.cfg = cfg
        self.source = model_source(cfg)
        total = self.source.num_units
        self.unit_range = units if units is not None else (0, total)
        a, b = self.unit_range
        if not 0 <= a < b <= total:
            raise ValueError(f"unit range {self.unit_range} is not within 0..{total}")
        self.unit_ids = list(range(a, b))
        self._unit_time: dict[int, float] = {}
        self._unit_calls: dict[int, int] = {}
        # the same, per step: the step log's per-unit forward cost (issue 18: the same
        # block, run by two ranks in one window, cost 1.2 ms on one and 1.5 on the other)
        self._step_unit_time: dict[int, float] = {}
        self._step_unit_calls: dict[int, int] = {}
        self.units = nn.ModuleList(self.source.make_unit(u) for u in self.unit_ids)
        self.flat = FlatParams(
            [(str(u), m) for u, m in zip(self.unit_ids, self.units, strict=True)],
            CONTROL_SLOTS,
            rename=lambda unit, local: self.source.param_name(int(unit), local),
        )
        self.opt = FlatAdamW(0, self.flat.numel, AdamWConfig(weight_decay=cfg.weight_decay))
        # global element offset of this stage's flat buffer: U[a]
        sizes = self.source.unit_numel
        self.base = sum(sizes[:a])
        if self.flat.numel != sum(sizes[a:b]):
            raise RuntimeError("the analytic unit sizes disagree with the built model")
        self.step = 0
        # this stage's gradient norm at the last step, after clipping (CheckFree
        # weighs a lost neighbour's rebuild by it); NaN until measured
        self.stage_grad_norm = float("nan")
        # (step, clip factor, lr) of the last update: a buddy replays its ward's
        # update of that step from them (agent/runtime/snapshots.py)
        self.last_update = (0, 1.0, 0.0)
        self._staging = torch.empty(0)
        self._snap_params = torch.empty_like(self.flat.data)
        self._snap_avg = torch.empty_like(self.opt.exp_avg)
        self._snap_avg_sq = torch.empty_like(self.opt.exp_avg_sq)
        self._snap_step = -1

    @property
    def moment_range(self) -> tuple[int, int]:
        """The global elements whose optimizer moments this rank owns."""
        return self.base + self.opt.lo, self.base + self.opt.hi

    def set_moment_range(self, lo: int, hi: int) -> tuple[int, int, torch.Tensor, torch.Tensor]:
        """Own the moments of global [lo, hi) from now on (a ZeRO re-split); returns the
        old global range and moments, which the caller sends to their new owners."""
        old_lo, old_hi, avg, avg_sq = self.opt.resize(lo - self.base, hi - self.base)
        self._snap_avg = torch.empty_like(self.opt.exp_avg)
        self._snap_avg_sq = torch.empty_like(self.opt.exp_avg_sq)
        self._snap_step = -1
        return self.base + old_lo, self.base + old_hi, avg, avg_sq

    def scale_lr_of_units(self, units: list[int], scale: float) -> None:
        """Train these layer units (where this stage holds them) at `scale` x the
        learning rate from now on (CheckFree-rebuilt layers)."""
        sizes = self.source.unit_numel
        ranges, at = [], 0
        for u in self.unit_ids:
            if u in units:
                ranges.append((at, at + sizes[u], scale))
            at += sizes[u]
        self.opt.lr_scaled = ranges

    def staging(self, numel: int) -> torch.Tensor:
        """A reusable scratch buffer for padded collectives."""
        if self._staging.numel() < numel:
            self._staging = torch.empty(numel, dtype=torch.float32)
        return self._staging[:numel]

    def snapshot(self) -> None:
        self._snap_params.copy_(self.flat.data)
        self._snap_avg.copy_(self.opt.exp_avg)
        self._snap_avg_sq.copy_(self.opt.exp_avg_sq)
        self._snap_step = self.step

    def rollback_to(self, step: int) -> None:
        if step == self.step:
            return
        if self._snap_step != step or self.step != step + 1:
            raise RuntimeError(
                f"cannot roll back from step {self.step} to {step}: the snapshot holds "
                f"step {self._snap_step} (only one step can be undone)"
            )
        self._restore_snapshot()

    def adopt_step(self, step: int) -> None:
        """This state was just overwritten with another rank's state of `step`."""
        self.step = step
        self.opt.step_count = step
        self._snap_step = -1

    def undo_partial_update(self) -> None:
        """Undo an update whose all-gather did not complete: this rank's interval
        was stepped but the others' were not, a state that belongs to no step."""
        if self._snap_step != self.step:
            raise RuntimeError(
                f"cannot undo the update after step {self.step}: the snapshot holds "
                f"step {self._snap_step}"
            )
        self._restore_snapshot()

    def _restore_snapshot(self) -> None:
        self.flat.data.copy_(self._snap_params)
        self.opt.exp_avg.copy_(self._snap_avg)
        self.opt.exp_avg_sq.copy_(self._snap_avg_sq)
        self.opt.step_count = self._snap_step
        self.step = self._snap_step
        self._snap_step = -1

    # computation ------------------------------------------------------------------
    def _dropout_masks(
        self, step: int, first_sample: int, count: int, units: Sequence[int]
    ) -> dict[int, list[torch.Tensor]]:
        """Masks keyed by (seed, step, sample, layer): identical under any layout."""
        p = self.cfg.model.dropout
        shape = (self.cfg.seq_len, self.cfg.model.dim)
        masks: dict[int, list[torch.Tensor]] = {}
        for u in units:
            if not isinstance(self.units[u - self.unit_range[0]], Block):
                continue
            pair = []
            for which in range(2):
                rows = []
                for i in range(count):
                    gen = torch.Generator().manual_seed(
                        hash((self.cfg.seed, step, first_sample + i, u, which)) & 0x7FFF_FFFF
                    )
                    rows.append((torch.rand(shape, generator=gen) >= p).float() / (1 - p))
                pair.append(torch.stack(rows))
            masks[u] = pair
        return masks

    def forward_units(
        self,
        h: torch.Tensor,
        step: int,
        first_sample: int,
        count: int,
        units: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """This stage's `units` (default all, in order; CheckFree+ swaps some on odd
        micro-batches) applied to `h` (token ids when the embedding is first)."""
        order = self.unit_ids if units is None else units
        masks = (
            self._dropout_masks(step, first_sample, count, order)
            if self.cfg.model.dropout > 0
            else {}
        )
        a = self.unit_range[0]
        # the unit's cost is this thread's CPU time: the runtime computes on CPU, where
        # wall time also counts the moments the OS gave the core to another process
        # (8 workers on 2 cores: each unit's wall time was a random multiple of its
        # cost, and the layouts followed the noise). On an accelerator neither clock
        # measures kernels; that needs device events.
        clock = time.thread_time
        for u in order:
            unit = self.units[u - a]
            start = clock()
            h = unit(h, masks.get(u)) if isinstance(unit, Block) else unit(h)
            spent = clock() - start
            self._unit_time[u] = self._unit_time.get(u, 0.0) + spent
            self._unit_calls[u] = self._unit_calls.get(u, 0) + 1
            self._step_unit_time[u] = self._step_unit_time.get(u, 0.0) + spent
            self._step_unit_calls[u] = self._step_unit_calls.get(u, 0) + 1
        return h

    def take_step_unit_forward_s(self) -> dict[int, float]:
        """CPU seconds of one forward call (one micro-batch) of each unit this rank ran
        since the last call: comparable across ranks, as it leaves out how many
        micro-batches each ran. Measured, not scaled (take_unit_costs adds backward)."""
        per_call = {u: t / self._step_unit_calls[u] for u, t in self._step_unit_time.items()}
        self._step_unit_time, self._step_unit_calls = {}, {}
        return per_call

    def take_unit_costs(self) -> dict[int, float]:
        """Seconds of forward+backward per micro-batch for each of this stage's units
        since the last call (backward counted as twice the forward, as for matmuls)."""
        costs = {u: 3 * t / self._unit_calls[u] for u, t in self._unit_time.items()}
        self._unit_time, self._unit_calls = {}, {}
        return costs

    def loss_of(
        self,
        tokens: torch.Tensor,
        step: int,
        first_sample: int,
        units: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Per-sample mean token losses of a micro-batch [m, seq_len+1]."""
        x, y = tokens[:, :-1], tokens[:, 1:]
        h = self.forward_units(x, step, first_sample, tokens.shape[0], units)
        return self.source.loss(h, y)


def run_step(
    state: TrainState,
    group: Group,
    order: SampleOrder,
    step: int,
    want_switch: bool,
    intervals: Sequence[tuple[int, int]] | None = None,
    zero: int = 0,
    before_reduce: Callable[[], None] | None = None,
    orders: Sequence[Sequence[int]] | None = None,
) -> StepResult:
    """Forward/backward this rank's micro-batches of `step`, reduce, clip, update.

    `intervals`: every rank's moments interval in the flat buffer's local
    coordinates (ZeRO-1/2). ZeRO-1 reduces whole gradients; ZeRO-2 reduce-scatters them
    so each rank keeps only its interval's. Either way each rank updates its interval
    and the parameters are all-gathered. `before_reduce` runs after backward, before
    the reduction (where the previous step's snapshot transfer is completed).
    `orders`: each micro-batch's unit order (default: in order)."""
    cfg = state.cfg
    flat = state.flat
    flat.zero_grad()
    base = (step - 1) * cfg.global_batch
    for mb in micro_batches_of(cfg.micro_batches, group.world, group.rank):
        first = base + mb * cfg.micro_batch
        units = orders[mb] if orders is not None else None
        losses = state.loss_of(order.samples(first, cfg.micro_batch), step, first, units)
        (losses.sum() / cfg.global_batch).backward()
        flat.extra[LOSS_SUM] += float(losses.detach().sum())
        flat.extra[SAMPLES] += cfg.micro_batch
    flat.extra[SWITCH] = 1.0 if want_switch else 0.0
    if before_reduce is not None:
        before_reduce()
    mine = intervals[group.rank] if intervals and zero else (0, flat.numel)
    if zero == 2 and intervals:
        reduce_scatter_grads(state, group, intervals)
        flat.extra[NORM_SQ] = float(flat.grad[mine[0] : mine[1]].pow(2).sum())
        group.allreduce_sum_(flat.extra)
        norm = math.sqrt(float(flat.extra[NORM_SQ]))
    else:
        group.allreduce_sum_(flat.grad_and_extra)
        norm = float(flat.grad.norm())
    samples = int(flat.extra[SAMPLES])
    if samples != cfg.global_batch:
        raise RuntimeError(
            f"step {step} covered {samples} samples, expected {cfg.global_batch}: "
            "micro-batch routing disagrees between ranks"
        )
    apply_update(state, group, step, norm, mine, intervals, zero)
    return StepResult(
        step=step,
        loss=float(flat.extra[LOSS_SUM]) / cfg.global_batch,
        grad_norm=norm,
        switch=bool(flat.extra[SWITCH] > 0),
        samples=samples,
    )


def apply_update(
    state: TrainState,
    group: Group,
    step: int,
    norm: float,
    mine: tuple[int, int],
    intervals: Sequence[tuple[int, int]] | None,
    zero: int,
    stage_norm_sq: float | None = None,
) -> None:
    """Clip by the global norm, keep the rollback snapshot, update this rank's
    interval, and (ZeRO-1/2) all-gather the parameters within `group`.
    `stage_norm_sq`: this stage's squared gradient norm (None: the stage is the
    whole model), recorded after clipping for CheckFree."""
    cfg, flat = state.cfg, state.flat
    factor = 1.0
    if cfg.grad_clip and norm > cfg.grad_clip and math.isfinite(norm):
        factor = cfg.grad_clip / (norm + 1e-6)
        flat.grad[mine[0] : mine[1]].mul_(factor)
    stage_sq = norm * norm if stage_norm_sq is None else stage_norm_sq
    state.stage_grad_norm = math.sqrt(stage_sq) * factor if stage_sq >= 0 else float("nan")
    state.snapshot()
    lr = lr_at(step, peak=cfg.lr, warmup=cfg.warmup_steps, total=cfg.steps)
    state.last_update = (step, factor, lr)
    state.opt.step(flat.data, flat.grad, lr)
    if zero and intervals and group.world > 1:
        try:
            _allgather_params(state, group, intervals)
        except BaseException:
            # a peer died mid-gather: the next generation must see step - 1, whole
            state.undo_partial_update()
            raise
    state.step = step


def reduce_scatter_grads(
    state: TrainState, group: Group, intervals: Sequence[tuple[int, int]]
) -> None:
    """Each rank ends with the summed gradient of its own interval (ZeRO-2)."""
    pad = max(hi - lo for lo, hi in intervals)
    buf = state.staging(pad * (group.world + 1))
    buf.zero_()
    chunks = [buf[r * pad : (r + 1) * pad] for r in range(group.world)]
    for (lo, hi), chunk in zip(intervals, chunks, strict=True):
        chunk[: hi - lo].copy_(state.flat.grad[lo:hi])
    out = buf[group.world * pad :]
    group.reduce_scatter_sum(out, chunks)
    lo, hi = intervals[group.rank]
    state.flat.grad[lo:hi].copy_(out[: hi - lo])


def _allgather_params(
    state: TrainState, group: Group, intervals: Sequence[tuple[int, int]]
) -> None:
    """Every rank gets every rank's freshly updated interval of the parameters."""
    pad = max(hi - lo for lo, hi in intervals)
    buf = state.staging(pad * (group.world + 1))
    lo, hi = intervals[group.rank]
    mine = buf[group.world * pad :]
    mine[: hi - lo].copy_(state.flat.data[lo:hi])
    outputs = [buf[r * pad : (r + 1) * pad] for r in range(group.world)]
    group.allgather_into(outputs, mine)
    for (a, b), out in zip(intervals, outputs, strict=True):
        state.flat.data[a:b].copy_(out[: b - a])
