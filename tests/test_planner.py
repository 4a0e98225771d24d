"""The planner for data parallelism (one stage): pure, microseconds, no processes."""

from __future__ import annotations

import time

import pytest

from elastiq.controller.planner import HybridLayout, PlanError, Profile, WorkerRef, make_hybrid_plan
from elastiq.partition import even_split, overlap

PROFILE = Profile(unit_costs=(1.0, 2.0, 2.0, 1.0), unit_numel=(40, 30, 30, 20))


def refs(*ids: str) -> list[WorkerRef]:
    return [WorkerRef(node_id=i.split("/")[0], slot=int(i.split("/")[1]), worker_id=i) for i in ids]


def dp(
    members: list[WorkerRef],
    previous: HybridLayout | None,
    gen: int,
    zero: int = 0,
    holders: set[str] | None = None,
) -> HybridLayout:
    return make_hybrid_plan(
        members, PROFILE, previous, gen, stages=1, zero=zero, reason="t", holders=holders
    )


def test_first_generation_starts_everyone_from_init_in_node_slot_order() -> None:
    plan = dp(refs("b/0", "a/1", "a/0"), None, 1)
    assert plan.worker_ids() == ["a/0", "a/1", "b/0"]
    assert plan.state_source == "init" and not plan.moves and not plan.abort_in_flight
    assert [st.units for st in plan.stages] == [(0, 4)]


def test_losing_a_worker_keeps_survivor_order_and_aborts_in_flight() -> None:
    g1 = dp(refs("a/0", "b/0", "c/0", "d/0"), None, 1)
    g2 = dp(refs("d/0", "a/0", "b/0"), g1, 2)
    assert g2.worker_ids() == ["a/0", "b/0", "d/0"]
    assert g2.abort_in_flight and g2.dropped == ("c/0",)
    assert g2.state_source == "live_replica" and not g2.moves, "replicated state moves nothing"


def test_a_joiner_gets_state_from_a_live_holder_at_the_step_boundary() -> None:
    g1 = dp(refs("a/0", "b/0"), None, 1)
    g2 = dp(refs("a/0", "b/0", "e/0"), g1, 2)
    assert g2.worker_ids() == ["a/0", "b/0", "e/0"] and not g2.abort_in_flight
    assert {m.dst_rank for m in g2.moves} == {2}
    assert sum(m.numel for m in g2.moves if m.what == "params") == 120
    assert sum(m.numel for m in g2.moves if m.what == "moments") == 120
    assert all(m.via == "live" and m.src_rank in (0, 1) for m in g2.moves)


def test_zero1_loss_re_splits_intervals_and_sources_the_lost_one_from_its_buddy() -> None:
    g1 = dp(refs("a/0", "b/0", "c/0", "d/0"), None, 1, zero=1)
    lost = g1.worker_ids().index("c/0")
    lost_interval = even_split(120, 4, lost)
    g2 = dp(refs("a/0", "b/0", "d/0"), g1, 2, zero=1)
    buddy_moves = [m for m in g2.moves if m.via == "buddy"]
    assert buddy_moves and not g2.lost and g2.state_source == "buddy"
    assert all(overlap((m.lo, m.hi), lost_interval) == (m.lo, m.hi) for m in buddy_moves)
    assert not [m for m in g2.moves if m.what == "params"]


def test_a_survivor_that_never_finished_joining_is_not_a_source() -> None:
    g1 = dp(refs("a/0", "b/0"), None, 1)
    g2 = dp(refs("a/0", "b/0", "e/0"), g1, 2)
    # e/0 never completed its join; a/0 dies: b/0 is the only valid source
    g3 = dp(refs("b/0", "e/0"), g2, 3, holders={"b/0"})
    assert all(m.src_rank == g3.worker_ids().index("b/0") for m in g3.moves)


def test_losing_every_holder_reports_lost_state() -> None:
    g1 = dp(refs("a/0", "b/0"), None, 1)
    g2 = dp(refs("c/0"), g1, 2)
    assert g2.state_source == "lost" and g2.lost


def test_bad_members_are_rejected_with_a_reason() -> None:
    with pytest.raises(PlanError, match="no live workers"):
        dp([], None, 1)
    with pytest.raises(PlanError, match="duplicate"):
        dp(refs("a/0", "a/0"), None, 1)
    g1 = dp(refs("a/0"), None, 3)
    with pytest.raises(PlanError, match="not newer"):
        dp(refs("a/0"), g1, 3)


def test_planning_1024_data_parallel_workers_is_fast() -> None:
    """Each plan under 100 ms: the best of 3 timings, since a loaded 2-core CI
    machine can stall any single one (a lone 151 ms for both plans was seen)."""
    members = refs(*[f"n{i // 8:04d}/{i % 8}" for i in range(1024)])
    first, replan = [], []
    for _ in range(3):
        start = time.perf_counter()
        g1 = dp(members, None, 1, zero=1)
        first.append(time.perf_counter() - start)
        start = time.perf_counter()
        g2 = dp(members[:500] + members[501:], g1, 2, zero=1)
        replan.append(time.perf_counter() - start)
    assert g2.world_size == 1023 and g2.abort_in_flight and not g2.lost
    assert min(first) < 0.1 and min(replan) < 0.1, f"plan {first}, replan {replan}"
