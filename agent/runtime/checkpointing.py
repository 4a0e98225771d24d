"""Where a worker meets the checkpoint engine: which pieces of its training state it
saves, and which it loads, named in the universal format.

Names are layout-free: `model/<param>`, `optim/exp_avg/<param>`,
`optim/exp_avg_sq/<param>` with the parameter's full shape, so a checkpoint saved
under one (PP, DP, ZeRO) layout loads under any other. Each rank saves its share of
its stage, the same contiguous interval ZeRO gives it (an even split among the
stage's replicas, so replicated state is written once); it loads its whole stage's
parameters and its own moments interval. The engine's copies of a save must be
done before the state next changes: `wait_for_copies` runs before the gradient
reduction that precedes every update, and before a join may roll state back.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from elastiq.agent.runtime.comm import Group
from elastiq.agent.runtime.trainer import TrainState
from elastiq.checkpoint.engine import CheckpointConfig, CheckpointEngine, Piece
from elastiq.checkpoint.restore import LoadReport, Request, load_newest
from elastiq.config import JobConfig
from elastiq.lr import lr_at
from elastiq.partition import even_split

log = logging.getLogger(__name__)

MODEL, EXP_AVG, EXP_AVG_SQ = "model/", "optim/exp_avg/", "optim/exp_avg_sq/"


def _slices(
    state: TrainState, lo: int, hi: int
) -> list[tuple[str, tuple[int, ...], int, int, int]]:
    """(name, shape, element lo, element hi, local flat offset of lo) of every
    parameter overlapping local flat range [lo, hi)."""
    out = []
    for slot in state.flat.slots:
        a, b = max(lo, slot.offset), min(hi, slot.offset + slot.numel)
        if a < b:
            out.append((slot.name, slot.shape, a - slot.offset, b - slot.offset, a))
    return out


def save_share(state: TrainState, degree: int, replica: int) -> tuple[int, int]:
    """The local flat range this rank writes: its replica's even share of the stage."""
    return even_split(state.flat.numel, degree, replica)


def pieces(state: TrainState, lo: int, hi: int) -> list[Piece]:
    """Parameters and both moments of local flat range [lo, hi) (inside the moments)."""
    m_lo, m_hi = state.opt.lo, state.opt.hi
    if not m_lo <= lo <= hi <= m_hi:
        raise ValueError(f"share [{lo}, {hi}) is outside this rank's moments [{m_lo}, {m_hi})")
    out = []
    for name, shape, a, b, at in _slices(state, lo, hi):
        n = b - a
        out.append(
            Piece(name=MODEL + name, shape=shape, lo=a, hi=b, data=state.flat.data[at : at + n])
        )
        for prefix, moment in ((EXP_AVG, state.opt.exp_avg), (EXP_AVG_SQ, state.opt.exp_avg_sq)):
            view = moment[at - m_lo : at - m_lo + n]
            out.append(Piece(name=prefix + name, shape=shape, lo=a, hi=b, data=view))
    return out


def requests(state: TrainState) -> list[Request]:
    """Everything this rank holds: its stage's parameters and its moments interval."""
    out = []
    for name, _, a, b, at in _slices(state, 0, state.flat.numel):
        out.append(Request(MODEL + name, a, b, state.flat.data[at : at + b - a]))
    m_lo = state.opt.lo
    for name, _, a, b, at in _slices(state, state.opt.lo, state.opt.hi):
        n = b - a
        out.append(Request(EXP_AVG + name, a, b, state.opt.exp_avg[at - m_lo : at - m_lo + n]))
        out.append(
            Request(EXP_AVG_SQ + name, a, b, state.opt.exp_avg_sq[at - m_lo : at - m_lo + n])
        )
    return out


def extra_state(cfg: JobConfig, step: int) -> dict[str, Any]:
    """Everything besides tensors that resuming at `step` needs. RNG and data order
    are keyed by (seed, step, sample), so the seed and step are the RNG state."""
    return {
        "step": step,
        "samples_seen": step * cfg.global_batch,
        "seed": cfg.seed,
        "lr": lr_at(step, peak=cfg.lr, warmup=cfg.warmup_steps, total=cfg.steps),
        "schedule": {"peak": cfg.lr, "warmup": cfg.warmup_steps, "total": cfg.steps},
        "job": cfg.job,
        "model": {"dim": cfg.model.dim, "n_layers": cfg.model.n_layers, "vocab": cfg.model.vocab},
        # what rebuilds the model's own config on export (elastiq ckpt convert --format hf)
        "model_entry": cfg.model_entry,
        "model_args": cfg.model_args,
    }


def restore(
    state: TrainState, url: str, local_dir: str = "", at_most: int | None = None
) -> LoadReport:
    """Fill `state` (its stage's parameters, its moments interval) from the newest
    usable committed checkpoint no newer than `at_most`, whatever layout saved it."""
    _, report = load_newest(url, requests(state), local_dir=local_dir, at_most=at_most)
    state.step = report.step
    state.opt.step_count = report.step
    return report


class WorkerCheckpoints:
    """A worker's checkpointing: save every k steps, restore on a plan that says so."""

    def __init__(self, cfg: JobConfig) -> None:
        self.cfg = cfg
        self.engine: CheckpointEngine | None = None
        if cfg.checkpoint_url and cfg.checkpoint_every:
            self.engine = CheckpointEngine(
                CheckpointConfig(
                    url=cfg.checkpoint_url,
                    local_dir=cfg.checkpoint_local_dir,
                    keep=cfg.checkpoint_keep,
                )
            )

    def maybe_save(self, state: TrainState, group: Group, *, degree: int, replica: int) -> bool:
        """Start a save if this step is due; returns at once. While any rank's previous
        checkpoint is still being written, every rank skips this one (decided by one
        all-reduce of a flag on checkpoint steps only: a part missing from one rank
        would hold rank 0's commit until its timeout) and says so in the step report.
        The last step's save waits for a free slot instead: training ends with it."""
        step = state.step
        if self.engine is None or step % self.cfg.checkpoint_every:
            return False
        if step < self.cfg.steps:
            busy = torch.tensor([0.0 if self.engine.has_free_slot() else 1.0])
            group.allreduce_sum_(busy)
            if busy.item():
                self.engine.skip(step)
                return False
        rank, world = group.rank, group.world
        lo, hi = save_share(state, degree, replica)
        extra = extra_state(self.cfg, step) if rank == 0 else {}
        self.engine.save(step, pieces(state, lo, hi), rank=rank, parts=world, extra=extra)
        return True

    def prepare(self, state: TrainState, degree: int, replica: int) -> None:
        """Size the host pool for this layout's share (after every join)."""
        if self.engine is not None:
            self.engine.reserve(pieces(state, *save_share(state, degree, replica)))

    def progress(self) -> tuple[float, int, int]:
        """For the step report: seconds the loop was held by saves so far, the newest
        committed step (0: none), and the checkpoints skipped so far."""
        if self.engine is None:
            return 0.0, 0, 0
        stats = self.engine.stats
        return stats.save_call_s + stats.wait_s, max(stats.committed_step, 0), stats.skipped

    def wait_for_copies(self) -> None:
        if self.engine is not None:
            self.engine.wait_for_copies()

    def restore(self, state: TrainState, step: int) -> LoadReport:
        """Load this rank's whole state of committed `step` (any saved layout)."""
        report = restore(state, self.cfg.checkpoint_url, self.cfg.checkpoint_local_dir, step)
        if report.step != step:
            log.warning(
                "checkpoint of step %d was unusable (%s); restored step %d instead",
                step,
                "; ".join(report.skipped),
                report.step,
            )
        return report

    def finish(self, timeout_s: float) -> None:
        if self.engine is not None:
            self.engine.flush(timeout_s)
            self.engine.close()
