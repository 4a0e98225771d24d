"""Pure resharding: every element a new rank needs comes from exactly one place."""

from __future__ import annotations

from elastiq.controller.reshard import (
    Holding,
    Lost,
    Move,
    holdings,
    lost_owner_buddies,
    moved_bytes,
    plan_moves,
)

UNITS = [10, 20, 20, 10]  # elements per layer unit: 60 in all


def survivors(old: list[Holding], new_rank: dict[int, int]) -> list[Holding]:
    return [Holding(new_rank[h.rank], h.params, h.moments) for h in old if h.rank in new_rank]


def assert_complete(
    new: list[Holding], old_alive: list[Holding], moves: list[Move], lost: list[Lost]
) -> None:
    """Each needed element arrives exactly once or is already held or is reported lost."""
    for what in ("params", "moments"):
        for h in new:
            lo, hi = getattr(h, what)
            got = [0] * (hi - lo)
            mine = next((getattr(o, what) for o in old_alive if o.rank == h.rank), (0, 0))
            for e in range(max(lo, mine[0]), min(hi, mine[1])):
                got[e - lo] += 1
            for m in moves:
                if m.what == what and m.dst_rank == h.rank:
                    for e in range(m.lo, m.hi):
                        got[e - lo] += 1
            for gone in lost:
                if gone.what == what and gone.dst_rank == h.rank:
                    for e in range(gone.lo, gone.hi):
                        got[e - lo] += 1
            assert got == [1] * (hi - lo), (what, h, got)


def test_zero1_dp_loss_re_splits_moments_and_takes_the_lost_interval_from_its_buddy() -> None:
    old = holdings([((0, 4), [0, 1, 2, 3])], UNITS, zero=1)
    assert [h.moments for h in old] == [(0, 15), (15, 30), (30, 45), (45, 60)]
    new_rank = {0: 0, 1: 1, 3: 2}  # rank 2 died; rank 3 becomes 2
    buddy = {0: 1, 1: 2, 2: 3, 3: 0}  # old rank 2's snapshot is on old rank 3
    new = holdings([((0, 4), [0, 1, 2])], UNITS, zero=1)
    alive = survivors(old, new_rank)
    moves, lost = plan_moves(alive, new, lost_owner_buddies(old, new_rank, buddy))
    assert not lost
    assert not [m for m in moves if m.what == "params"], "parameters are replicated in DP"
    assert {(m.src_rank, m.dst_rank, m.lo, m.hi, m.via) for m in moves if m.via == "buddy"} == {
        (2, 1, 30, 40, "buddy"),
        (2, 2, 40, 45, "buddy"),
    }
    assert_complete(new, alive, moves, lost)


def test_pp2_dp2_loss_moves_a_layer_to_the_stronger_stage_from_a_live_holder() -> None:
    old = holdings([((0, 2), [0, 1]), ((2, 4), [2, 3])], UNITS, zero=1)
    new_rank = {0: 0, 2: 1, 3: 2}  # rank 1 (stage 0) lost
    buddy = {0: 2, 1: 3, 2: 0, 3: 1}
    # stage 0 now has one replica, so it keeps only unit 0; stage 1 takes units 1..3
    new = holdings([((0, 1), [0]), ((1, 4), [1, 2])], UNITS, zero=1)
    alive = survivors(old, new_rank)
    moves, lost = plan_moves(alive, new, lost_owner_buddies(old, new_rank, buddy))
    assert not lost
    unit1 = [m for m in moves if m.what == "params" and m.lo == 10]
    assert unit1 and all(m.src_rank == 0 and m.via == "live" for m in unit1)
    assert_complete(new, alive, moves, lost)
    assert moved_bytes(moves) > 0


def test_losing_a_whole_stage_uses_buddies_or_reports_what_is_lost() -> None:
    old = holdings([((0, 2), [0, 1]), ((2, 4), [2, 3])], UNITS, zero=1)
    new_rank = {0: 0, 1: 1}  # all of stage 1 lost
    new = holdings([((0, 4), [0, 1])], UNITS, zero=1)
    alive = survivors(old, new_rank)
    with_buddies = lost_owner_buddies(old, new_rank, {2: 0, 3: 1, 0: 2, 1: 3})
    moves, lost = plan_moves(alive, new, with_buddies)
    assert not lost and any(m.via == "buddy" and m.what == "params" for m in moves)
    assert_complete(new, alive, moves, lost)
    # the buddies were on the lost stage too: the stage's state is gone
    moves, lost = plan_moves(alive, new, lost_owner_buddies(old, new_rank, {2: 3, 3: 2}))
    assert lost and {(g.lo, g.hi) for g in lost if g.what == "params"} >= {(30, 60)}
    assert_complete(new, alive, moves, lost)


def test_an_unchanged_layout_moves_nothing() -> None:
    old = holdings([((0, 2), [0, 1]), ((2, 4), [2, 3])], UNITS, zero=2)
    moves, lost = plan_moves(old, old)
    assert moves == [] and lost == []


def test_a_joiner_gets_params_and_an_interval_from_live_holders() -> None:
    old = holdings([((0, 4), [0, 1])], UNITS, zero=1)
    new = holdings([((0, 4), [0, 1, 2])], UNITS, zero=1)
    moves, lost = plan_moves(old, new)
    assert not lost
    assert sum(m.numel for m in moves if m.what == "params" and m.dst_rank == 2) == 60
    assert_complete(new, old, moves, lost)
