"""Pure partition arithmetic shared by the planner and the workers.

No I/O, no torch: even splits of micro-batches (and, later, ZeRO intervals and
layer ranges), interval overlaps, and the donor assignment that both the planner
(to write the plan's transfer list) and the workers (to check it against what the
survivors really hold) compute the same way.
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


def assign_donors(valid: Sequence[bool]) -> list[tuple[int, int]]:
    """(donor, receiver) pairs: every rank without valid state gets it from a valid
    rank, spreading receivers round-robin over the donors. Empty if none is valid
    or none needs it."""
    donors = [r for r, ok in enumerate(valid) if ok]
    receivers = [r for r, ok in enumerate(valid) if not ok]
    if not donors:
        return []
    return [(donors[i % len(donors)], r) for i, r in enumerate(receivers)]


def zero_intervals(numel: int, degree: int) -> list[tuple[int, int]]:
    """The contiguous ZeRO intervals of a stage's flat buffer over its `degree` DP ranks."""
    return [even_split(numel, degree, r) for r in range(degree)]


def interval_transfers(
    old: dict[str, tuple[int, int]], new: dict[str, tuple[int, int]]
) -> list[tuple[str, str, int, int]]:
    """(source owner, destination owner, lo, hi) moves that assemble every new interval
    from the overlapping old ones. Overlaps an owner already holds do not move. An old
    owner missing from `old` (lost) leaves its part to be sourced elsewhere (a buddy):
    those pieces are returned with source "" so the caller can name the source."""
    moves: list[tuple[str, str, int, int]] = []
    for dst, want in sorted(new.items(), key=lambda kv: kv[1]):
        covered = 0
        for src, have in sorted(old.items(), key=lambda kv: kv[1]):
            piece = overlap(want, have)
            if piece is None:
                continue
            covered += piece[1] - piece[0]
            if src != dst:
                moves.append((src, dst, piece[0], piece[1]))
        if covered < want[1] - want[0]:
            for gap in _gaps(want, [h for h in old.values() if overlap(want, h)]):
                moves.append(("", dst, gap[0], gap[1]))
    return moves


def _gaps(want: tuple[int, int], have: list[tuple[int, int]]) -> list[tuple[int, int]]:
    gaps = []
    cursor = want[0]
    for lo, hi in sorted(have):
        if lo > cursor:
            gaps.append((cursor, min(lo, want[1])))
        cursor = max(cursor, hi)
    if cursor < want[1]:
        gaps.append((cursor, want[1]))
    return [g for g in gaps if g[0] < g[1]]


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
            candidates = [nxt[(i + k) % len(nxt)] for k in range(len(nxt))]
            out[r] = next((c for c in candidates if nodes[c] != nodes[r]), fallback[r])
    return out


def stage_ranges(
    stages: Sequence[tuple[tuple[int, int], Sequence[int]]],
    unit_numel: Sequence[int],
    zero: int,
) -> dict[int, tuple[tuple[int, int], tuple[int, int]]]:
    """{rank: (parameter range, moments range)} in global element coordinates.

    A stage holding units [a, b) holds parameters [U[a], U[b]) on every replica; its
    moments are the same range (ZeRO-0) or its even split over the replicas."""
    offsets = [0]
    for n in unit_numel:
        offsets.append(offsets[-1] + n)
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
