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
