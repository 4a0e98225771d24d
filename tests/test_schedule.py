"""The 1F1B schedule completes for any DP degrees per stage (simulated, no processes)."""

from __future__ import annotations

import itertools
import random

from elastiq.agent.schedule import rank_ops, stage_sequence
from elastiq.partition import replica_of


def simulate(degrees: list[int], micro_batches: int) -> dict[tuple[int, int], int]:
    """Run every rank's op list with non-blocking sends and blocking receives; returns the
    peak number of live activations per (stage, replica). Fails on deadlock."""
    stages = len(degrees)
    ops = {
        (s, r): rank_ops(stages, micro_batches, s, d, r)
        for s, d in enumerate(degrees)
        for r in range(d)
    }
    pos = dict.fromkeys(ops, 0)
    done: set[tuple[int, str, int]] = set()
    live = dict.fromkeys(ops, 0)
    peak = dict.fromkeys(ops, 0)
    total = sum(len(v) for v in ops.values())
    while len(done) < total:
        progressed = False
        for key, seq in ops.items():
            if pos[key] >= len(seq):
                continue
            s, _ = key
            op = seq[pos[key]]
            if op.kind == "F":
                ready = s == 0 or (s - 1, "F", op.micro_batch) in done
            else:
                ready = (s + 1, "B", op.micro_batch) in done if s < stages - 1 else True
            if ready:
                done.add((s, op.kind, op.micro_batch))
                live[key] += 1 if op.kind == "F" else -1
                peak[key] = max(peak[key], live[key])
                pos[key] += 1
                progressed = True
        assert progressed, f"deadlock with degrees {degrees}, {micro_batches} micro-batches"
    for s in range(stages):
        for m in range(micro_batches):
            assert (s, "F", m) in done and (s, "B", m) in done
            owner = replica_of(m, micro_batches, degrees[s])
            assert any(o.micro_batch == m for o in ops[(s, owner)])
    return peak


def test_uniform_1f1b_keeps_at_most_stages_minus_s_activations() -> None:
    peak = simulate([1, 1, 1, 1], 8)
    assert [peak[(s, 0)] for s in range(4)] == [4, 3, 2, 1]


def test_stage_sequences_are_1f1b() -> None:
    assert stage_sequence(2, 3, 0) == [("F", 0), ("F", 1), ("B", 0), ("F", 2), ("B", 1), ("B", 2)]
    assert stage_sequence(2, 3, 1) == [("F", 0), ("B", 0), ("F", 1), ("B", 1), ("F", 2), ("B", 2)]


def test_unequal_degrees_never_deadlock() -> None:
    for combo in itertools.product([1, 2, 3], repeat=3):
        for micro_batches in (1, 2, 5, 8):
            if max(combo) <= micro_batches:
                simulate(list(combo), micro_batches)
    rng = random.Random(7)
    for _ in range(30):
        stages = rng.randint(1, 6)
        degrees = [rng.randint(1, 4) for _ in range(stages)]
        simulate(degrees, rng.randint(max(degrees), 16))
