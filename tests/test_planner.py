"""The planner is pure: these run in microseconds, no processes."""

from __future__ import annotations

import itertools
import time

import pytest

from elastiq.controller.planner import Layout, PlanError, WorkerRef, make_plan
from elastiq.partition import assign_donors, even_split, overlap


def refs(*ids: str) -> list[WorkerRef]:
    return [WorkerRef(node_id=i.split("/")[0], slot=int(i.split("/")[1]), worker_id=i) for i in ids]


def test_first_generation_starts_everyone_from_init_in_node_slot_order() -> None:
    plan = make_plan(refs("b/0", "a/1", "a/0"), None, 1, "start")
    assert plan.worker_ids() == ["a/0", "a/1", "b/0"]
    assert all(a.holder for a in plan.ranks)
    assert plan.state_source == "init" and not plan.transfers and not plan.abort_in_flight


def test_losing_a_worker_keeps_survivor_order_and_aborts_in_flight() -> None:
    g1 = make_plan(refs("a/0", "b/0", "c/0", "d/0"), None, 1, "start")
    g2 = make_plan(refs("d/0", "a/0", "b/0"), g1, 2, "c/0 exited")
    assert g2.worker_ids() == ["a/0", "b/0", "d/0"]
    assert g2.abort_in_flight and g2.dropped == ("c/0",)
    assert g2.state_source == "live_replica" and not g2.transfers


def test_a_joiner_gets_state_from_a_live_holder_at_the_step_boundary() -> None:
    g1 = make_plan(refs("a/0", "b/0"), None, 1, "start")
    g2 = make_plan(refs("a/0", "b/0", "e/0"), g1, 2, "join")
    assert g2.worker_ids() == ["a/0", "b/0", "e/0"]
    assert not g2.abort_in_flight
    assert [a.holder for a in g2.ranks] == [True, True, False]
    assert g2.transfers == ((0, 2),)


def test_joiners_are_spread_over_donors() -> None:
    assert assign_donors([True, True, False, False, False]) == [(0, 2), (1, 3), (0, 4)]
    assert assign_donors([False, False]) == []


def test_bad_members_are_rejected_with_a_reason() -> None:
    with pytest.raises(PlanError, match="no live workers"):
        make_plan([], None, 1, "x")
    with pytest.raises(PlanError, match="duplicate"):
        make_plan(refs("a/0", "a/0"), None, 1, "x")
    g1 = make_plan(refs("a/0"), None, 3, "x")
    with pytest.raises(PlanError, match="not newer"):
        make_plan(refs("a/0"), g1, 3, "x")


def test_losing_every_holder_says_state_is_lost() -> None:
    g1 = make_plan(refs("a/0", "b/0"), None, 1, "start")
    g2 = make_plan(refs("c/0"), g1, 2, "all lost")
    assert g2.state_source == "lost" and not any(a.holder for a in g2.ranks)


def test_even_split_covers_everything_once() -> None:
    for n in range(0, 20):
        for parts in range(1, 7):
            pieces = [even_split(n, parts, i) for i in range(parts)]
            assert pieces[0][0] == 0 and pieces[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(pieces))
            sizes = [hi - lo for lo, hi in pieces]
            assert max(sizes) - min(sizes) <= 1
    assert overlap((0, 5), (3, 9)) == (3, 5) and overlap((0, 3), (3, 9)) is None


def test_planning_1024_workers_is_fast() -> None:
    members = refs(*[f"n{i // 8:04d}/{i % 8}" for i in range(1024)])
    start = time.perf_counter()
    g1: Layout = make_plan(members, None, 1, "start")
    g2 = make_plan(members[:500] + members[501:], g1, 2, "one lost")
    elapsed = time.perf_counter() - start
    assert g2.world_size == 1023 and g2.abort_in_flight
    assert elapsed < 0.1, f"planning took {elapsed:.3f}s"
