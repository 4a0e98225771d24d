"""The 1F1B pipeline schedule, for stages whose data-parallel degrees differ.

Pure, torch-free. With one replica per stage, 1F1B runs on stage s: warm-up
forwards of the first min(S-s-1, M) micro-batches, then alternating one forward
and one backward, then the remaining backwards. That keeps at most S-s
activations alive per stage.

With d_s replicas at stage s, replica i runs only its contiguous block of
micro-batches (`partition.micro_batches_of`), so replicas of neighbouring stages
do not pair up one to one. Deadlock freedom comes from one global order: the
logical one-replica pipeline is simulated with unit-time operations, every
(stage, op, micro-batch) gets the time slot it starts in (a topological order of
the dependencies), and every rank executes its own operations in slot order.
Sends never block (they are waited on at the end of the step), so the
earliest-slot operation still pending always has its inputs: no rank can wait
forever.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from elastiq.partition import micro_batches_of, replica_of


@dataclass(frozen=True, slots=True, order=True)
class Op:
    slot: int
    kind: str  # "F" forward, "B" backward
    micro_batch: int


def stage_sequence(stages: int, micro_batches: int, stage: int) -> list[tuple[str, int]]:
    """The 1F1B order of (kind, micro-batch) for one logical stage."""
    if not 0 <= stage < stages or micro_batches < 1:
        raise ValueError(f"stage {stage} of {stages} with {micro_batches} micro-batches")
    warmup = min(stages - stage - 1, micro_batches)
    seq: list[tuple[str, int]] = [("F", m) for m in range(warmup)]
    for i in range(micro_batches - warmup):
        seq += [("F", warmup + i), ("B", i)]
    seq += [("B", m) for m in range(micro_batches - warmup, micro_batches)]
    return seq


def timetable(stages: int, micro_batches: int) -> dict[tuple[int, str, int], int]:
    """{(stage, kind, micro-batch): start slot} of the logical pipeline, unit op times."""
    seqs = [stage_sequence(stages, micro_batches, s) for s in range(stages)]
    done_at: dict[tuple[int, str, int], int] = {}
    cursor = [0] * stages
    slot = 0
    remaining = sum(len(s) for s in seqs)
    while remaining:
        started = []
        for s in range(stages):
            if cursor[s] >= len(seqs[s]):
                continue
            kind, m = seqs[s][cursor[s]]
            if kind == "F":
                dep = (s - 1, "F", m) if s > 0 else None
            else:
                dep = (s + 1, "B", m) if s < stages - 1 else (s, "F", m)
            if dep is None or done_at.get(dep, slot + 1) <= slot:
                started.append((s, kind, m))
        if not started and slot > 4 * (remaining + stages):
            raise RuntimeError("1F1B timetable made no progress (bug)")
        for s, kind, m in started:
            done_at[(s, kind, m)] = slot + 1
            cursor[s] += 1
            remaining -= 1
        slot += 1
    return {key: end - 1 for key, end in done_at.items()}


@functools.lru_cache(maxsize=64)
def rank_ops(stages: int, micro_batches: int, stage: int, degree: int, replica: int) -> list[Op]:
    """What replica `replica` of `stage` (of `degree` replicas) runs, in order.
    Cached: a pure function of the layout, asked for every step."""
    mine = set(micro_batches_of(micro_batches, degree, replica))
    table = timetable(stages, micro_batches)
    return sorted(
        Op(table[(stage, kind, m)], kind, m)
        for kind, m in stage_sequence(stages, micro_batches, stage)
        if m in mine
    )


def peer_replica(micro_batch: int, micro_batches: int, degree: int) -> int:
    """The replica of a neighbouring stage (with `degree` replicas) that handles a micro-batch."""
    return replica_of(micro_batch, micro_batches, degree)
