"""The pipeline schedule: 1F1B over micro-batches whose routes may revisit stages.

Pure, torch-free. A micro-batch's route is its list of hops, each a maximal run
of consecutive layer units on one stage. Without CheckFree+ every route is
stage 0, 1, ..., S-1. With CheckFree+ odd micro-batches run some blocks in
swapped order (`checkpoint.checkfree.unit_order`), so their routes go back and
forth between neighbouring stages (`routes`).

With d_s replicas at stage s, replica i runs only its contiguous block of
micro-batches (`partition.micro_batches_of`), so replicas of neighbouring stages
do not pair up one to one. Deadlock freedom comes from one global order: the
logical one-replica pipeline is simulated with unit-time operations, every
(kind, micro-batch, hop) gets the time slot it starts in (a topological order of
the dependencies), and every rank executes its own operations in slot order.
Sends never block (they are waited on at the end of the step), so the
earliest-slot operation still pending always has its inputs: no rank can wait
forever.

The simulation is 1F1B: each stage starts a ready backward first, else continues
a micro-batch it already holds, else starts a new one while fewer than S-s are
in flight on it (at most S-s activations alive at stage s). Backwards on a stage
run in micro-batch order, so gradients accumulate in the same order whatever the
degrees.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from elastiq.partition import micro_batches_of, replica_of

Key = tuple[str, int, int]  # (kind, micro-batch, hop)


@dataclass(frozen=True, slots=True, order=True)
class Op:
    slot: int
    kind: str  # "F" forward, "B" backward
    micro_batch: int
    hop: int = 0


@dataclass(frozen=True, slots=True)
class Hop:
    """One stop of a micro-batch's route: `units` (in forward order) on `stage`."""

    stage: int
    units: tuple[int, ...]


def route(order: Sequence[int], stage_units: Sequence[tuple[int, int]]) -> tuple[Hop, ...]:
    """Split a forward order of layer units into hops over stages holding unit
    ranges `stage_units` ([lo, hi) per stage)."""
    stage_of = {u: s for s, (lo, hi) in enumerate(stage_units) for u in range(lo, hi)}
    hops: list[Hop] = []
    for u in order:
        if u not in stage_of:
            raise ValueError(f"layer unit {u} is on no stage of {list(stage_units)}")
        s = stage_of[u]
        if hops and hops[-1].stage == s:
            hops[-1] = Hop(s, (*hops[-1].units, u))
        else:
            hops.append(Hop(s, (u,)))
    return tuple(hops)


def plain_hops(stages: int, micro_batches: int) -> tuple[tuple[int, ...], ...]:
    """Hop stages of every micro-batch when no route revisits a stage."""
    return (tuple(range(stages)),) * micro_batches


def timetable(stages: int, hop_stages: tuple[tuple[int, ...], ...]) -> dict[Key, int]:
    """{(kind, micro-batch, hop): start slot} of the logical one-replica pipeline."""
    for m, hs in enumerate(hop_stages):
        if not hs or any(not 0 <= s < stages for s in hs):
            raise ValueError(f"micro-batch {m} has route {hs} over {stages} stages")
    done_at: dict[Key, int] = {}
    # per stage: micro-batches started and not finished, and backward hops left on it
    in_flight: list[set[int]] = [set() for _ in range(stages)]
    backs_left = [[hs.count(s) for s in range(stages)] for hs in hop_stages]
    pending = {("F", m, h) for m, hs in enumerate(hop_stages) for h in range(len(hs))}
    pending |= {("B", m, h) for m, hs in enumerate(hop_stages) for h in range(len(hs))}

    def ready(key: Key, slot: int) -> bool:
        kind, m, h = key
        if kind == "F":
            dep: Key | None = ("F", m, h - 1) if h > 0 else None
        elif h == len(hop_stages[m]) - 1:
            dep = ("F", m, h)
        else:
            dep = ("B", m, h + 1)
        return dep is None or done_at.get(dep, slot + 1) <= slot

    slot = 0
    while pending:
        by_stage: list[list[Key]] = [[] for _ in range(stages)]
        for key in pending:
            if ready(key, slot):
                by_stage[hop_stages[key[1]][key[2]]].append(key)
        started: list[tuple[int, Key]] = []
        for s, keys in enumerate(by_stage):
            pick = _pick(keys, in_flight[s], stages - s)
            if pick is not None:
                started.append((s, pick))
        if not started and not any(by_stage):
            raise RuntimeError("pipeline timetable: nothing is ready (bug)")
        if not started:
            # every ready forward waits for room: let the oldest micro-batch in
            s = min(range(stages), key=lambda s: min((k[1] for k in by_stage[s]), default=1 << 30))
            started.append((s, min(by_stage[s], key=lambda k: (k[1], k[2]))))
        for s, key in started:
            kind, m, _ = key
            done_at[key] = slot + 1
            pending.discard(key)
            if kind == "F":
                in_flight[s].add(m)
            else:
                backs_left[m][s] -= 1
                if backs_left[m][s] == 0:
                    in_flight[s].discard(m)
        slot += 1
    return {key: end - 1 for key, end in done_at.items()}


def _pick(keys: list[Key], in_flight: set[int], cap: int) -> Key | None:
    """1F1B choice among a stage's ready operations."""
    backs = [k for k in keys if k[0] == "B"]
    if backs:
        return min(backs, key=lambda k: (k[1], -k[2]))
    held = [k for k in keys if k[1] in in_flight]
    if held:
        return min(held, key=lambda k: (k[1], k[2]))
    if keys and len(in_flight) < cap:
        return min(keys, key=lambda k: (k[1], k[2]))
    return None


@functools.lru_cache(maxsize=64)
def rank_ops(
    stages: int,
    micro_batches: int,
    stage: int,
    degree: int,
    replica: int,
    hop_stages: tuple[tuple[int, ...], ...] | None = None,
) -> list[Op]:
    """What replica `replica` of `stage` (of `degree` replicas) runs, in order.
    `hop_stages`: each micro-batch's route as the stage of each hop (default: every
    stage once, in order). Cached: a pure function of the layout, asked every step."""
    hops = hop_stages if hop_stages is not None else plain_hops(stages, micro_batches)
    if len(hops) != micro_batches:
        raise ValueError(f"{len(hops)} routes for {micro_batches} micro-batches")
    mine = micro_batches_of(micro_batches, degree, replica)
    table = timetable(stages, hops)
    return sorted(
        Op(table[(kind, m, h)], kind, m, h)
        for m in mine
        for h, s in enumerate(hops[m])
        if s == stage
        for kind in ("F", "B")
    )


def peer_replica(micro_batch: int, micro_batches: int, degree: int) -> int:
    """The replica of a neighbouring stage (with `degree` replicas) that handles a micro-batch."""
    return replica_of(micro_batch, micro_batches, degree)
