"""Pure partition arithmetic shared by the planner and the workers.

No I/O, no torch: even splits (micro-batches, ZeRO intervals), interval overlaps,
micro-batch routing between stages, buddy placement, and each rank's parameter and
moment ranges, which the planner and the workers must compute the same way.
"""

from __future__ import annotations

from collections.abc import Sequence


def even_split(n: int, parts: int, index: int) -> tuple[int, int]:
    """[lo, hi) of part `index` when n items are split into `parts` contiguous parts,
    the first n % parts parts one larger."""
    if parts <= 0 or not 0 <= index < parts or n < 0:
        raise ValueError(f"cannot take part {index} of {n} items in {parts} parts")
    base, extra = divmod(n, parts)
    lo = index * base + min(index, extra)
    return lo, lo + base + (1 if index < extra else 0)


def overlap(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int] | None:
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    return (lo, hi) if lo < hi else None


def micro_batches_of(total: int, degree: int, replica: int) -> range:
    """Micro-batches replica `replica` of a stage with `degree` replicas processes:
    a contiguous block, so each sample passes every stage exactly once."""
    lo, hi = even_split(total, degree, replica)
    return range(lo, hi)


def replica_of(micro_batch: int, total: int, degree: int) -> int:
    """Which replica of a stage with `degree` replicas processes `micro_batch`."""
    if not 0 <= micro_batch < total:
        raise ValueError(f"micro-batch {micro_batch} out of range 0..{total - 1}")
    base, extra = divmod(total, degree)
    big = extra * (base + 1)
    if micro_batch < big:
        return micro_batch // (base + 1)
    return extra + (micro_batch - big) // base


def buddies(nodes: Sequence[str]) -> list[int]:
    """For ranks on `nodes` (node of each rank), the rank that keeps each one's snapshot:
    the next rank (cyclically) that lives on a different node, so a node's loss never
    takes a snapshot with it. -1 when every rank is on one node (no safe buddy)."""
    n = len(nodes)
    out = []
    for r in range(n):
        buddy = -1
        for step in range(1, n):
            cand = (r + step) % n
            if nodes[cand] != nodes[r]:
                buddy = cand
                break
        out.append(buddy)
    return out


def stage_buddies(nodes: Sequence[str], stage_ranks: Sequence[Sequence[int]]) -> list[int]:
    """Buddies for a pipeline layout: rank i of stage s keeps its snapshot on replica
    i of stage s+1 (cyclically), on another node, so that losing a whole stage, or a
    whole node, never takes both an interval and its snapshot. Falls back to any rank
    on another node (one stage), or -1 when there is none."""
    fallback = buddies(nodes)
    out = list(fallback)
    if len(stage_ranks) < 2:
        return out
    for s, ranks in enumerate(stage_ranks):
        nxt = stage_ranks[(s + 1) % len(stage_ranks)]
        for i, r in enumerate(ranks):
            # lazily: the first candidate is almost always on another node, and a list
            # of all of them per rank made PP8 planning at 10,000 workers take 1.2 s
            candidates = (nxt[(i + k) % len(nxt)] for k in range(len(nxt)))
            out[r] = next((c for c in candidates if nodes[c] != nodes[r]), fallback[r])
    return out


def gradient_keepers(
    nodes: Sequence[str], stage_ranks: Sequence[Sequence[int]], buddy: Sequence[int]
) -> list[int]:
    """ZeRO-1: the rank that keeps each rank's interval of its stage's reduced gradient
    every step, so that an update whose snapshot never reached the buddy can be
    replayed (agent/runtime/snapshots.py, "Replay"). The buddy itself when it is a replica of
    the same stage (it holds that gradient already); otherwise the next replica of the
    stage, preferably on another node; -1 for a stage with one replica."""
    out = [-1] * len(nodes)
    for ranks in stage_ranks:
        members = set(ranks)
        for i, r in enumerate(ranks):
            if len(ranks) < 2:
                continue
            if buddy[r] != r and buddy[r] in members:
                out[r] = buddy[r]
                continue
            # lazily, as in stage_buddies: O(1) per rank, not O(replicas)
            others = (ranks[(i + k) % len(ranks)] for k in range(1, len(ranks)))
            first = ranks[(i + 1) % len(ranks)]
            out[r] = next((c for c in others if nodes[c] != nodes[r]), first)
    return out


def element_offsets(unit_numel: Sequence[int]) -> list[int]:
    """U: U[u] is the first global element of unit u; U[-1] the total."""
    offsets = [0]
    for n in unit_numel:
        offsets.append(offsets[-1] + n)
    return offsets


def stage_ranges(
    stages: Sequence[tuple[tuple[int, int], Sequence[int]]],
    unit_numel: Sequence[int],
    zero: int,
) -> dict[int, tuple[tuple[int, int], tuple[int, int]]]:
    """{rank: (parameter range, moments range)} in global element coordinates.

    A stage holding units [a, b) holds parameters [U[a], U[b]) on every replica; its
    moments are the same range (ZeRO-0) or its even split over the replicas."""
    offsets = element_offsets(unit_numel)
    out = {}
    for (a, b), ranks in stages:
        lo, hi = offsets[a], offsets[b]
        for i, rank in enumerate(ranks):
            moments = (lo, hi)
            if zero:
                s, e = even_split(hi - lo, len(ranks), i)
                moments = (lo + s, lo + e)
            out[rank] = ((lo, hi), moments)
    return out


def edge_copy_routes(
    stage_ranks: Sequence[Sequence[int]], num_units: int
) -> list[tuple[int, int, int]]:
    """CheckFree+: (unit, sender, keeper) of every kept copy of the embedding (unit 0,
    kept by every replica of stage 1) and the head (the last unit, kept by every
    replica of stage S-2). Keeper i gets it from replica i mod d of the edge stage.
    None with one stage: no neighbour can keep it."""
    stages = len(stage_ranks)
    if stages < 2:
        return []
    out = []
    for unit, edge, keeper in ((0, 0, 1), (num_units - 1, stages - 1, stages - 2)):
        senders = stage_ranks[edge]
        for i, rank in enumerate(stage_ranks[keeper]):
            out.append((unit, senders[i % len(senders)], rank))
    return out
