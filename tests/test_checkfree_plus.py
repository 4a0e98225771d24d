"""CheckFree+: the swapped unit order of odd micro-batches, the routes it makes
through the pipeline, who keeps the copies of the embedding and the head, and how
a lost first or last stage is rebuilt from its swapped partner (pure, microseconds)."""

from __future__ import annotations

import datetime

import pytest
import torch
import torch.distributed as dist

from elastiq.agent.runtime.comm import Group
from elastiq.agent.runtime.edge_copies import EdgeCopies
from elastiq.agent.runtime.schedule import Hop, route
from elastiq.checkpoint.checkfree import CheckFreeError, SwapGroups, edge_sources, unit_order
from elastiq.config import JobConfig, ModelConfig
from elastiq.controller.checkfree_plan import plan_checkfree
from elastiq.controller.planner import WorkerRef, make_hybrid_plan, measured_profile
from elastiq.partition import edge_copy_routes
from tests.threaded import run_ranks

# 4 blocks: units 0 (embedding), 1..4 (blocks), 5 (head)
PP3 = SwapGroups(blocks=4, first=1, last=1)


def test_odd_micro_batches_run_the_swapped_pairs_in_reverse_order() -> None:
    assert unit_order(6, 0, PP3) == (0, 1, 2, 3, 4, 5)
    assert unit_order(6, 1, PP3) == (0, 2, 1, 4, 3, 5)
    assert unit_order(6, 3, None) == (0, 1, 2, 3, 4, 5)
    # two stages of two blocks: one pair, swapped once
    assert unit_order(6, 1, SwapGroups(blocks=4, first=2, last=2)) == (0, 3, 4, 1, 2, 5)
    eight = SwapGroups(blocks=8, first=2, last=2)
    assert unit_order(10, 5, eight) == (0, 3, 4, 1, 2, 7, 8, 5, 6, 9)


def test_overlapping_swap_pairs_are_refused_with_a_way_out() -> None:
    with pytest.raises(CheckFreeError, match="overlap"):
        SwapGroups(blocks=6, first=2, last=2)
    with pytest.raises(CheckFreeError, match="model has 4"):
        unit_order(6, 1, SwapGroups(blocks=6, first=1, last=1))


def test_a_swapped_route_goes_back_and_forth_between_neighbours() -> None:
    stages = [(0, 2), (2, 4), (4, 6)]
    hops = route(unit_order(6, 1, PP3), stages)
    assert [(h.stage, h.units) for h in hops] == [
        (0, (0,)),
        (1, (2,)),
        (0, (1,)),
        (2, (4,)),
        (1, (3,)),
        (2, (5,)),
    ]
    assert route(unit_order(6, 0, PP3), stages) == (Hop(0, (0, 1)), Hop(1, (2, 3)), Hop(2, (4, 5)))
    # one stage: a single hop in the swapped order
    assert route(unit_order(6, 1, PP3), [(0, 6)]) == (Hop(0, (0, 2, 1, 4, 3, 5)),)


def test_the_next_stage_keeps_the_embedding_and_the_one_before_last_the_head() -> None:
    assert edge_copy_routes([[0, 1], [2], [3, 4]], 6) == [
        (0, 0, 2),
        (5, 3, 2),
    ]
    assert edge_copy_routes([[0], [1, 2]], 6) == [(0, 0, 1), (0, 0, 2), (5, 1, 0)]
    assert edge_copy_routes([[0, 1]], 6) == []


def test_a_lost_edge_is_rebuilt_from_its_swapped_partner_and_the_kept_copy() -> None:
    first = edge_sources(0, 2, 6, PP3)
    assert (first.edge, first.copies) == (0, ((1, 2),))
    last = edge_sources(4, 6, 6, PP3)
    assert (last.edge, last.copies) == (5, ((4, 3),))
    pair = SwapGroups(blocks=4, first=2, last=2)
    assert edge_sources(0, 3, 6, pair).copies == ((1, 3), (2, 4))
    assert edge_sources(3, 6, 6, pair).copies == ((3, 1), (4, 2))
    with pytest.raises(CheckFreeError, match="partners are lost too"):
        edge_sources(0, 3, 6, PP3)
    with pytest.raises(CheckFreeError, match="every layer unit"):
        edge_sources(0, 6, 6, PP3)


CFG = JobConfig(steps=10, pipeline_stages=3, model=ModelConfig(dim=16, n_layers=4, n_heads=2))


@pytest.mark.parametrize("victim", [0, 2])
def test_a_lost_edge_stage_is_planned_from_surviving_partners_and_keepers(victim: int) -> None:
    workers = [WorkerRef(f"n{i}", 0, f"n{i}.w0") for i in range(3)]
    profile = measured_profile(CFG.unit_numel(), {})
    kw = {"stages": 3, "zero": 1, "snapshots": False}
    first = make_hybrid_plan(workers, profile, None, 1, reason="start", **kw)  # type: ignore[arg-type]
    assert [st.units for st in first.stages] == [(0, 2), (2, 4), (4, 6)]
    left = [w for w in workers if w.worker_id != first.workers[victim].worker_id]
    second = make_hybrid_plan(left, profile, first, 2, reason="loss", **kw)  # type: ignore[arg-type]
    holders = {w.worker_id for w in left}
    with pytest.raises(CheckFreeError, match="CheckFree\\+"):
        plan_checkfree(second, first, CFG.unit_numel(), holders)
    directive = plan_checkfree(second, first, CFG.unit_numel(), holders, PP3)
    ids = second.worker_ids()
    middle = first.workers[1].worker_id  # the only stage next to either edge
    edge, block = (0, 1) if victim == 0 else (5, 4)
    partner = 2 if victim == 0 else 3
    assert [(u, s, ids[r]) for u, s, r in directive.copies] == [
        (edge, edge, middle),
        (block, partner, middle),
    ]
    # without that survivor (it joined no generation) neither partner nor copy is left
    with pytest.raises(CheckFreeError, match="no surviving worker"):
        plan_checkfree(second, first, CFG.unit_numel(), holders - {middle}, PP3)


def test_keepers_hold_complete_copies_of_the_embedding_and_the_head() -> None:
    """PP2 on real gloo groups (one thread per rank): after two steps' transfers the
    keeper of each edge unit holds the sender's parameters of the newest step."""
    sizes = [6, 4, 4, 5]  # embedding, two blocks, head
    routes = edge_copy_routes([[0], [1]], len(sizes))
    store = dist.HashStore()
    held: dict[int, tuple[int, torch.Tensor]] = {}
    sent: dict[int, torch.Tensor] = {}

    def rank_main(rank: int) -> None:
        pg = dist.ProcessGroupGloo(store, rank, 2, datetime.timedelta(seconds=30))
        group = Group(pg, rank, 2, 1, 30.0, lambda: False)
        copies = EdgeCopies()
        unit = 0 if rank == 0 else 3
        for step in (1, 2):
            params = torch.full((sizes[unit],), float(10 * step + unit))
            copies.route(routes, sizes, {unit: params})
            copies.start(group, step)
            copies.finish(group)
            sent[unit] = params
        held.update(copies.held)

    run_ranks(2, rank_main)
    assert sorted(held) == [0, 3]
    for unit, (step, params) in held.items():
        assert step == 2 and torch.equal(params, sent[unit])
