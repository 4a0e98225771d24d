"""Where state that no live worker or buddy holds comes from. Pure.

Where it sits: after the planner lays out a generation, the job controller asks
`needs_a_source` whether anything is missing (a layout whose state source is "lost",
or a job resuming from a checkpoint). If so, it lists the checkpoints (I/O) and asks
`decide` which source to use, best first:

1. the newest committed checkpoint, if it is no more than `checkpoint_max_staleness`
   steps behind the highest step any worker reached (every rank loads its share, in
   the new layout: no moves, nothing else lost);
2. CheckFree (when the job enables it): lost blocks rebuilt from their neighbours, or
   under CheckFree+ from the copies survivors keep (controller/checkfree_plan.py);
3. nothing: the job fails, with a message that names what was lost and why neither
   source could serve.

`decide` returns what to do and what to tell the user; the controller carries it out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from elastiq.checkpoint.checkfree import CheckFreeError, SwapGroups
from elastiq.config import JobConfig
from elastiq.controller.checkfree_plan import CheckFreeDirective, plan_checkfree
from elastiq.controller.planner import HybridLayout


@dataclass(frozen=True, slots=True)
class Note:
    """An event for the job's log: kind and message."""

    kind: str
    message: str


@dataclass(frozen=True, slots=True)
class UseLayout:
    """Go on with `layout`: as planned, restored from a checkpoint, or rebuilt."""

    layout: HybridLayout
    checkpoint_step: int = 0
    """State source "checkpoint": the committed step every rank loads."""
    checkfree: CheckFreeDirective | None = None
    notes: tuple[Note, ...] = ()


@dataclass(frozen=True, slots=True)
class StateIsLost:
    """Nothing holds the state: fail the job with `message`."""

    message: str
    notes: tuple[Note, ...] = ()


Decision = UseLayout | StateIsLost


def needs_a_source(layout: HybridLayout, job: JobConfig) -> bool:
    return layout.state_source == "lost" or (layout.state_source == "init" and job.resume)


def decide(
    layout: HybridLayout,
    source: HybridLayout | None,
    holders: Collection[str] | None,
    *,
    job: JobConfig,
    unit_numel: Sequence[int],
    newest_checkpoint: int | None,
    reached_step: int,
    swap: SwapGroups | None,
) -> Decision:
    """`unit_numel`: the model's layer unit sizes, as the workers reported them;
    `newest_checkpoint`: the newest committed step under the job's checkpoint URL
    (None: none, or none configured); `reached_step`: the highest step any worker
    reported, which a restore rolls back from."""
    resuming = layout.state_source == "init" and job.resume
    if not needs_a_source(layout, job):
        return UseLayout(layout)
    generation = layout.generation
    if resuming and newest_checkpoint is None:
        return StateIsLost(
            f"--resume: no committed checkpoint under {job.checkpoint_url!r}; "
            "start without --resume, or point checkpoint_url at a job's checkpoints"
        )
    found = newest_checkpoint
    notes: list[Note] = []
    bound = job.checkpoint_max_staleness
    if not resuming and found is not None and bound and reached_step - found > bound:
        notes.append(
            Note(
                "checkpoint_stale",
                f"checkpoint of step {found} is {reached_step - found} steps behind "
                f"(bound {bound})",
            )
        )
        found = None
    if found is not None:
        restored = dataclasses.replace(layout, state_source="checkpoint", moves=(), lost=())
        return UseLayout(restored, checkpoint_step=found, notes=tuple(notes))
    pieces = sorted({(g.what, g.lo, g.hi) for g in layout.lost})
    shown = ", ".join(f"{what} [{lo}, {hi})" for what, lo, hi in pieces[:6])
    why = ""
    if job.checkfree and source is not None:
        try:
            directive = plan_checkfree(layout, source, unit_numel, holders, swap)
        except CheckFreeError as exc:
            why = f"; CheckFree cannot rebuild it: {exc}"
        else:
            notes.append(
                Note(
                    "checkfree",
                    f"generation {generation}: layer units [{directive.lo}, {directive.hi}) "
                    f"exist nowhere; rebuilt from {directive.sources} "
                    f"({'CheckFree+' if directive.copies else 'CheckFree'}: the model is now "
                    "an approximation)",
                )
            )
            rebuilt = dataclasses.replace(layout, state_source="checkfree", lost=())
            return UseLayout(rebuilt, checkfree=directive, notes=tuple(notes))
    where = (
        f"no committed checkpoint (fresh enough) under {job.checkpoint_url!r}"
        if job.checkpoint_url
        else "no checkpoint is configured"
    )
    return StateIsLost(
        f"generation {generation}: no live worker or buddy snapshot holds {shown}"
        f"{' ...' if len(pieces) > 6 else ''} of the model's state (lost with "
        f"{', '.join(layout.dropped) or 'the previous generation'}); {where}{why}, "
        "so the state is lost",
        tuple(notes),
    )


def lr_scaled_after(directive: CheckFreeDirective, units: int) -> set[int]:
    """Units a CheckFree rebuild leaves training at a scaled learning rate: the rebuilt
    blocks. A copied edge unit (embedding or head) is its own last weights, not scaled."""
    edges = {0, units - 1} if directive.copies else set()
    return set(range(directive.lo, directive.hi)) - edges
