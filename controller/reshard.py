"""Where every piece of state comes from when the layout changes. A pure function.

State is described in global element coordinates: the whole model's parameters in
canonical unit order (unit 0's elements, then unit 1's, ...), so element e means
the same number under every layout. A stage holding units [a, b) holds parameters
for elements [U[a], U[b]) on every one of its ranks (replicated). Its optimizer
moments are either replicated the same way (ZeRO-0) or split into one contiguous
interval per DP rank (ZeRO-1/2). Moving layers between stages and re-splitting
ZeRO intervals are then one operation: for every range a new rank needs, find who
holds it now.

Sources, best first: the rank itself (nothing moves); a live rank that holds it;
the buddy that keeps a lost owner's snapshot (its ZeRO interval of parameters and
moments, copied every committed step); else the range is reported lost, for the
checkpoint or CheckFree to fill.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from elastiq.partition import stage_ranges


@dataclass(frozen=True, slots=True)
class Holding:
    """What one rank holds, in global element coordinates."""

    rank: int
    params: tuple[int, int]
    moments: tuple[int, int]


@dataclass(frozen=True, slots=True)
class Move:
    what: str  # "params" | "moments"
    src_rank: int
    dst_rank: int
    lo: int
    hi: int
    via: str  # "live" | "buddy"

    @property
    def numel(self) -> int:
        return self.hi - self.lo


@dataclass(frozen=True, slots=True)
class Lost:
    what: str
    dst_rank: int
    lo: int
    hi: int


def holdings(
    stages: Sequence[tuple[tuple[int, int], Sequence[int]]],
    unit_numel: Sequence[int],
    zero: int,
) -> list[Holding]:
    """What each rank of a layout holds. `stages`: ((unit lo, unit hi), ranks) per stage."""
    ranges = stage_ranges(stages, unit_numel, zero)
    return [Holding(rank, params, moments) for rank, (params, moments) in sorted(ranges.items())]


def plan_moves(
    old: Sequence[Holding],
    new: Sequence[Holding],
    buddy_of: dict[int, int] | None = None,
) -> tuple[list[Move], list[Lost]]:
    """Moves that give every rank of `new` what it needs, from the live ranks of `old`.

    Ranks are the *new* generation's ranks: a survivor appears in `old` under its new
    rank; a lost rank does not appear in `old` at all. `buddy_of` maps the new rank of
    a lost owner's buddy by the lost owner's range start (see `lost_owner_buddies`).
    Sources are spread over holders so no rank sends everything.
    """
    moves: list[Move] = []
    lost: list[Lost] = []
    for what in ("params", "moments"):
        index = _RangeIndex([(getattr(h, what), h.rank) for h in old])
        for h in new:
            want = getattr(h, what)
            if want[0] >= want[1]:
                continue
            for lo, hi, src in index.cover(want, h.rank):
                if src == h.rank:
                    continue
                if src >= 0:
                    moves.append(Move(what, src, h.rank, lo, hi, "live"))
                    continue
                for blo, bhi, bsrc in _from_buddies(lo, hi, buddy_of or {}):
                    if bsrc >= 0:
                        moves.append(Move(what, bsrc, h.rank, blo, bhi, "buddy"))
                    elif lost and (lost[-1].what, lost[-1].dst_rank, lost[-1].hi) == (
                        what,
                        h.rank,
                        blo,
                    ):
                        lost[-1] = Lost(what, h.rank, lost[-1].lo, bhi)  # merge adjacent
                    else:
                        lost.append(Lost(what, h.rank, blo, bhi))
    return moves, lost


class _RangeIndex:
    """Held ranges grouped by range. Distinct ranges of one kind never overlap (stages
    hold disjoint units, ZeRO intervals are disjoint), so a lookup is a bisect."""

    def __init__(self, held: list[tuple[tuple[int, int], int]]) -> None:
        groups: dict[tuple[int, int], list[int]] = {}
        for rng, rank in held:
            if rng[0] < rng[1]:
                groups.setdefault(rng, []).append(rank)
        self.ranges = sorted(groups)
        for a, b in itertools.pairwise(self.ranges):
            if b[0] < a[1]:
                raise ValueError(f"held ranges {a} and {b} overlap without being equal")
        self.starts = [r[0] for r in self.ranges]
        self.holders = [sorted(groups[r]) for r in self.ranges]
        # membership by set: `me in` a list of 10,000 replicas, once per rank, made a
        # data-parallel replan at 10,000 workers take 1.3 s (bench/scale.py)
        self.holder_sets = [frozenset(h) for h in self.holders]

    def cover(self, want: tuple[int, int], me: int) -> list[tuple[int, int, int]]:
        """Pieces of `want` with one source each: me if I hold it, else a holder chosen
        by my rank (spreading senders over replicas), else -1 (nobody live holds it)."""
        pieces: list[tuple[int, int, int]] = []
        cursor = want[0]
        i = max(0, bisect.bisect_right(self.starts, want[0]) - 1)
        while cursor < want[1]:
            if i < len(self.ranges) and self.ranges[i][1] <= cursor:
                i += 1
                continue
            if i >= len(self.ranges) or self.ranges[i][0] >= want[1]:
                pieces.append((cursor, want[1], -1))
                break
            lo, hi = self.ranges[i]
            if lo > cursor:
                pieces.append((cursor, lo, -1))
                cursor = lo
            end = min(hi, want[1])
            holders = self.holders[i]
            src = me if me in self.holder_sets[i] else holders[me % len(holders)]
            pieces.append((cursor, end, src))
            cursor = end
            i += 1
        return pieces


def _from_buddies(lo: int, hi: int, buddy_of: dict[int, int]) -> list[tuple[int, int, int]]:
    """Split [lo, hi) by the lost owners' interval starts recorded in buddy_of
    ({interval start: (buddy rank)}, with the interval end encoded by the next start)."""
    if not buddy_of:
        return [(lo, hi, -1)]
    starts = sorted(buddy_of)
    out = []
    cursor = lo
    while cursor < hi:
        i = bisect.bisect_right(starts, cursor) - 1
        if i < 0:
            nxt = starts[0] if starts else hi
            out.append((cursor, min(hi, nxt), -1))
            cursor = min(hi, nxt)
            continue
        end = starts[i + 1] if i + 1 < len(starts) else hi
        end = min(end, hi)
        out.append((cursor, end, buddy_of[starts[i]]))
        cursor = end
    return out


def lost_owner_buddies(
    old_all: Sequence[Holding], alive_new_rank: dict[int, int], buddy_old: dict[int, int]
) -> dict[int, int]:
    """{moments interval start of each lost owner: new rank of its buddy, or -1}.

    old_all: holdings of the previous layout under its *old* ranks; alive_new_rank:
    old rank -> new rank for survivors; buddy_old: old rank -> old rank of its buddy.
    The snapshot a buddy keeps is the owner's moments interval with the parameters of
    the same elements, so it can stand in for both.
    """
    out: dict[int, int] = {}
    for h in old_all:
        if h.rank in alive_new_rank:
            continue
        buddy = buddy_old.get(h.rank, -1)
        out[h.moments[0]] = alive_new_rank.get(buddy, -1)
        # mark where this lost interval ends, unless another interval starts there
        out.setdefault(h.moments[1], -1)
    return out


def moved_bytes(moves: Sequence[Move], element_size: int = 4) -> int:
    return sum(m.numel for m in moves) * element_size
