"""The 1F1B schedule completes for any DP degrees per stage and any routes, including
CheckFree+'s swapped ones (simulated, no processes)."""

from __future__ import annotations

import itertools
import random

from elastiq.agent.runtime.schedule import plain_hops, rank_ops
from elastiq.partition import replica_of


def simulate(
    degrees: list[int], micro_batches: int, hops: tuple[tuple[int, ...], ...] | None = None
) -> dict[tuple[int, int], int]:
    """Run every rank's op list with non-blocking sends and blocking receives; returns the
    peak number of live activations per (stage, replica). Fails on deadlock."""
    stages = len(degrees)
    routes = hops if hops is not None else plain_hops(stages, micro_batches)
    ops = {
        (s, r): rank_ops(stages, micro_batches, s, d, r, hops)
        for s, d in enumerate(degrees)
        for r in range(d)
    }
    pos = dict.fromkeys(ops, 0)
    done: set[tuple[str, int, int]] = set()
    live = dict.fromkeys(ops, 0)
    peak = dict.fromkeys(ops, 0)
    total = sum(len(v) for v in ops.values())
    while len(done) < total:
        progressed = False
        for key, seq in ops.items():
            if pos[key] >= len(seq):
                continue
            op = seq[pos[key]]
            m, h = op.micro_batch, op.hop
            if op.kind == "F":
                ready = h == 0 or ("F", m, h - 1) in done
            else:
                ready = ("B", m, h + 1) in done if h < len(routes[m]) - 1 else True
            if ready:
                done.add((op.kind, m, h))
                live[key] += 1 if op.kind == "F" else -1
                peak[key] = max(peak[key], live[key])
                pos[key] += 1
                progressed = True
        assert progressed, f"deadlock with degrees {degrees}, routes {routes}"
    for m, route in enumerate(routes):
        for h, s in enumerate(route):
            assert ("F", m, h) in done and ("B", m, h) in done
            owner = replica_of(m, micro_batches, degrees[s])
            assert any(o.micro_batch == m and o.hop == h for o in ops[(s, owner)])
    return peak


def test_uniform_1f1b_keeps_at_most_stages_minus_s_activations() -> None:
    peak = simulate([1, 1, 1, 1], 8)
    assert [peak[(s, 0)] for s in range(4)] == [4, 3, 2, 1]


def test_stage_sequences_are_1f1b() -> None:
    def seq(stage: int) -> list[tuple[str, int]]:
        return [(o.kind, o.micro_batch) for o in rank_ops(2, 3, stage, 1, 0)]

    assert seq(0) == [("F", 0), ("F", 1), ("B", 0), ("F", 2), ("B", 1), ("B", 2)]
    assert seq(1) == [("F", 0), ("B", 0), ("F", 1), ("B", 1), ("F", 2), ("B", 2)]


def test_swapped_routes_that_revisit_stages_never_deadlock() -> None:
    """CheckFree+ routes: odd micro-batches go back and forth between neighbours."""
    pp3 = ((0, 1, 2), (0, 1, 0, 2, 1, 2))  # emb+b1 | b2 b3 | b4 head, swapped b1/b2, b3/b4
    for degrees in ([1, 1, 1], [2, 1, 1], [1, 2, 2], [2, 3, 1]):
        for micro_batches in (3, 4, 8):
            hops = tuple(pp3[m % 2] for m in range(micro_batches))
            simulate(degrees, micro_batches, hops)
    pp2 = ((0, 1), (0, 1, 0, 1))
    peak = simulate([1, 1], 8, tuple(pp2[m % 2] for m in range(8)))
    # 1F1B's bound holds per micro-batch: at most S-s in flight, each alive on both hops
    assert peak[(0, 0)] <= 2 * 2 and peak[(1, 0)] <= 2 * 1
    rng = random.Random(3)
    for _ in range(30):
        stages = rng.randint(2, 5)
        degrees = [rng.randint(1, 3) for _ in range(stages)]
        micro_batches = rng.randint(max(degrees), 10)
        walks: list[tuple[int, ...]] = []
        for _m in range(micro_batches):
            route = [0]
            while route[-1] != stages - 1:  # a random walk that ends at the last stage
                nxt = route[-1] + rng.choice([-1, 1, 1]) if route[-1] else 1
                route.append(max(0, min(stages - 1, nxt)))
            walks.append(tuple(route))
        simulate(degrees, micro_batches, tuple(walks))


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
