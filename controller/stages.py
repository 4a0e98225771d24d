"""Which layer units each pipeline stage holds: balance first, then move little.

A pure function of (per-unit cost, DP degree per stage, current boundaries, per-unit
bytes). The time of one step is set by the slowest stage, and a stage with d
replicas processes M/d of the M micro-batches, so a stage's load is
cost(its units) / d. `balance_stages` finds the smallest achievable maximum load
(the bottleneck), then, among all contiguous partitions whose maximum load is
within `tolerance` of it, the one that moves the fewest bytes away from the current
boundaries. Both passes are dynamic programs over (stage, boundary): O(S * L^2).
"""

from __future__ import annotations

from collections.abc import Sequence


class StageBalanceError(ValueError):
    """The units cannot be split into the requested stages."""


def effective_degrees(degrees: Sequence[int], micro_batches: int) -> list[float]:
    """What `degrees[s]` replicas are worth when a step's `micro_batches` are split
    among them in whole micro-batches: the busiest runs ceil(M / d), so d replicas
    do the work of M / ceil(M / d) (16 over 3: 2.67, not 3). 0: an even split."""
    if micro_batches < 0:
        raise StageBalanceError(f"micro_batches={micro_batches} must be >= 0")
    if not micro_batches:
        return [float(d) for d in degrees]
    return [micro_batches / -(-micro_batches // d) if d >= 1 else float(d) for d in degrees]


def _loads(prefix: list[float], lo: int, hi: int, degree: float) -> float:
    return (prefix[hi] - prefix[lo]) / degree


def bottleneck(costs: Sequence[float], degrees: Sequence[float]) -> float:
    """The smallest achievable max over stages of cost(stage) / degree(stage)."""
    n, s = len(costs), len(degrees)
    _check(n, s, costs, degrees)
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    # best[k][j]: first k stages cover units [0, j)
    best = [[inf] * (n + 1) for _ in range(s + 1)]
    best[0][0] = 0.0
    for k in range(1, s + 1):
        d = degrees[k - 1]
        for j in range(k, n - (s - k) + 1):
            best[k][j] = min(max(best[k - 1][i], _loads(prefix, i, j, d)) for i in range(k - 1, j))
    return best[s][n]


def balance_stages(
    costs: Sequence[float],
    degrees: Sequence[float],
    current: Sequence[tuple[int, int]] | None = None,
    unit_bytes: Sequence[int] | None = None,
    tolerance: float = 0.02,
    holder: Sequence[int] | None = None,
) -> list[tuple[int, int]]:
    """[lo, hi) unit ranges per stage: max load within `tolerance` of the optimum,
    and among those the fewest bytes moved from `current` (ties: keep boundaries).
    `holder` (the new stage index now holding each unit, -1 for none) replaces
    `current` when the number of stages changes."""
    n, s = len(costs), len(degrees)
    _check(n, s, costs, degrees)
    limit = bottleneck(costs, degrees) * (1 + tolerance) + 1e-12
    sizes = list(unit_bytes) if unit_bytes is not None else [1] * n
    if len(sizes) != n:
        raise StageBalanceError(f"unit_bytes has {len(sizes)} entries for {n} units")
    if holder is None and current is not None:
        holder = _holders(current, n, s)
    if holder is not None and len(holder) != n:
        raise StageBalanceError(f"holder has {len(holder)} entries for {n} units")
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    # cost[k][j]: fewest bytes moved when the first k stages cover [0, j) within limit
    cost = [[inf] * (n + 1) for _ in range(s + 1)]
    choice = [[-1] * (n + 1) for _ in range(s + 1)]
    size_prefix = [0]
    for b in sizes:
        size_prefix.append(size_prefix[-1] + b)
    cost[0][0] = 0.0
    for k in range(1, s + 1):
        d = degrees[k - 1]
        # bytes of units [0, u) that stage k-1 already holds: moved(i, j) in O(1)
        kept = [0]
        for u in range(n):
            kept.append(kept[-1] + (sizes[u] if holder is not None and holder[u] == k - 1 else 0))
        for j in range(k, n - (s - k) + 1):
            for i in range(k - 1, j):
                if cost[k - 1][i] == inf or _loads(prefix, i, j, d) > limit:
                    continue
                moved = (
                    (size_prefix[j] - size_prefix[i]) - (kept[j] - kept[i])
                    if holder is not None
                    else 0
                )
                total = cost[k - 1][i] + moved
                if total < cost[k][j]:
                    cost[k][j], choice[k][j] = total, i
    if cost[s][n] == inf:
        raise StageBalanceError("no partition meets the bottleneck (numerical issue)")
    ranges: list[tuple[int, int]] = []
    j = n
    for k in range(s, 0, -1):
        i = choice[k][j]
        ranges.append((i, j))
        j = i
    return ranges[::-1]


def moved_units(
    old: Sequence[tuple[int, int]], new: Sequence[tuple[int, int]]
) -> list[tuple[int, int, int]]:
    """(unit, old stage, new stage) for every unit whose stage changes."""
    n = max(hi for _, hi in new)
    before = _holders(old, n, len(old))
    after = _holders(new, n, len(new))
    return [(u, before[u], after[u]) for u in range(n) if before[u] != after[u]]


def _holders(ranges: Sequence[tuple[int, int]], n: int, s: int) -> list[int]:
    holder = [-1] * n
    for stage, (lo, hi) in enumerate(ranges):
        for u in range(lo, min(hi, n)):
            holder[u] = stage
    return holder


def _check(n: int, s: int, costs: Sequence[float], degrees: Sequence[float]) -> None:
    if s < 1 or n < s:
        raise StageBalanceError(
            f"cannot split {n} units into {s} stages (need 1 <= stages <= units)"
        )
    if any(d < 1 for d in degrees):
        raise StageBalanceError(f"every stage needs at least one replica: degrees {list(degrees)}")
    if any(c < 0 for c in costs):
        raise StageBalanceError("unit costs must be >= 0")


def predicted_step_s(
    costs: Sequence[float],
    ranges: Sequence[tuple[int, int]],
    degrees: Sequence[int],
    micro_batches: int,
) -> float:
    """The step time the cost model predicts for a layout: `costs` are seconds of
    forward+backward per micro-batch per unit, stage s holds units `ranges[s]` on
    `degrees[s]` replicas, and a step has `micro_batches` micro-batches.

    A replica of stage s runs ceil(M / d_s) micro-batches (the schedule splits them
    in contiguous blocks, so 16 over 3 replicas is 6, 5, 5: a third replica saves
    a quarter, not a third). The slowest replica sets the pace, and the pipeline's
    fill and drain add one micro-batch of every other stage: the 1F1B estimate
    (m + S - 1) t when the stages are equal. Communication is not in it, so on a
    machine where it is not hidden the measured step is longer."""
    if len(ranges) != len(degrees) or not ranges:
        raise StageBalanceError(f"{len(ranges)} stage ranges for {len(degrees)} degrees")
    if micro_batches < 1:
        raise StageBalanceError(f"micro_batches={micro_batches} must be >= 1")
    _check(len(costs), len(ranges), costs, degrees)
    per_mb = [sum(costs[lo:hi]) for lo, hi in ranges]
    busy = [t * -(-micro_batches // d) for t, d in zip(per_mb, degrees, strict=True)]
    slowest = max(range(len(busy)), key=busy.__getitem__)
    return busy[slowest] + sum(t for s, t in enumerate(per_mb) if s != slowest)
