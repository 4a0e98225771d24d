"""A buddy replays its ward's ZeRO-1 update of step s from the snapshot of s-1 and the
reduced gradient it kept (or, under pipelines, was handed at the join by a replica
of the ward's stage): the same numbers as the ward's own update, bit for bit, so a
ward that dies before its snapshot of s arrives costs no step."""

from __future__ import annotations

import datetime

import pytest
import torch
import torch.distributed as dist

from elastiq.agent.plan_layout import PlanLayout
from elastiq.agent.runtime.comm import Group
from elastiq.agent.runtime.flat import AdamWConfig, FlatAdamW
from elastiq.agent.runtime.gradient_handoff import Handoff, decode, encode, exchange, plan_handoffs
from elastiq.agent.runtime.snapshots import KeptGradient, Snapshot, SnapshotKeeper
from elastiq.partition import stage_buddies
from elastiq.proto import elastiq_pb2 as pb
from tests.threaded import run_ranks


def test_a_buddy_replays_its_wards_update_bit_for_bit() -> None:
    cfg = AdamWConfig(weight_decay=0.1)
    n, lo = 1000, 500
    gen = torch.Generator().manual_seed(0)
    params = torch.randn(n, generator=gen)
    m, v = torch.randn(n, generator=gen) * 0.01, torch.rand(n, generator=gen) * 0.01
    grad = torch.randn(n, generator=gen)  # the reduced gradient every rank holds
    factor, lr = 0.37, 3e-3
    # the ward owns [lo, n): at step 6, with a CheckFree lr-scaled range inside it
    ward = FlatAdamW(lo, n, cfg)
    ward.exp_avg.copy_(m[lo:])
    ward.exp_avg_sq.copy_(v[lo:])
    ward.step_count = 6
    ward.lr_scaled = [(700, 800, 1.1)]
    keeper = SnapshotKeeper()
    keeper.held["ward"] = [Snapshot(6, lo, n, params[lo:].clone(), m[lo:].clone(), v[lo:].clone())]
    keeper.keep_gradient("ward", 7, grad[lo:], lo, factor, lr, cfg, [(200, 300, 1.1)])
    # what the ward itself does in trainer.apply_update: clip its interval, step
    p, g = params.clone(), grad.clone()
    g[lo:].mul_(factor)
    ward.step(p, g, lr)
    assert keeper.steps_covering([(lo, n)]) == {6, 7}
    assert torch.equal(keeper.piece("params", lo, n, 7)[0], p[lo:])
    avg, avg_sq = keeper.piece("moments", lo + 10, n, 7)
    assert torch.equal(avg, ward.exp_avg[10:]) and torch.equal(avg_sq, ward.exp_avg_sq[10:])


def test_nothing_is_replayed_without_the_snapshot_before_or_once_the_real_one_arrived() -> None:
    cfg = AdamWConfig()
    keeper = SnapshotKeeper()
    keeper.keep_gradient("ward", 7, torch.ones(4), 0, 1.0, 1e-3, cfg, [])
    assert keeper.steps_covering([(0, 4)]) == set()  # no snapshot of step 6
    real = Snapshot(7, 0, 4, torch.zeros(4), torch.zeros(4), torch.zeros(4))
    keeper.held["ward"] = [Snapshot(6, 0, 4, torch.ones(4), torch.zeros(4), torch.zeros(4)), real]
    assert keeper.steps_covering([(0, 4)]) == {6, 7}
    assert keeper.piece("params", 0, 4, 7)[0] is not None
    assert torch.equal(keeper.piece("params", 0, 4, 7)[0], real.params)  # the real one wins


def _plan(
    generation: int, workers: list[str], stages: list[tuple[int, int, list[int]]], source: int = 0
) -> PlanLayout:
    """A ZeRO-1 plan; one worker per node, buddies as the planner places them."""
    nodes = [f"node-{w}" for w in workers]
    buddy = stage_buddies(nodes, [ranks for _, _, ranks in stages])
    plan = pb.Plan(
        generation=generation,
        world_size=len(workers),
        zero=1,
        source_generation=source,
        assignments=[
            pb.Assignment(worker_id=w, rank=r, node_id=nodes[r]) for r, w in enumerate(workers)
        ],
        stages=[pb.Stage(unit_lo=a, unit_hi=b, ranks=ranks) for a, b, ranks in stages],
        buddy=buddy,
        state_source="live_replica",
        unit_numel=SIZES,
    )
    return PlanLayout.parse(plan)


SIZES = [6, 4, 4, 5]  # embedding, two blocks, head: stage 0 holds 10 elements
PP2_DP2 = _plan(1, ["w0", "w1", "w2", "w3"], [(0, 2, [0, 1]), (2, 4, [2, 3])])


def test_a_pipeline_buddy_gets_its_lost_wards_gradient_from_a_replica_of_its_stage() -> None:
    # w1 (stage 0, replica 1: elements [5, 10)) dies; w0 kept its gradient, w3 its snapshot
    after = _plan(2, ["w0", "w2", "w3"], [(0, 2, [0]), (2, 4, [1, 2])], source=1)
    handoffs = plan_handoffs(PP2_DP2, after, [True, True, True], {2})
    assert handoffs == [Handoff("w1", keeper=0, buddy=2, lo=5, hi=10)]
    # nothing to hand over when the buddy has the step, or when the keeper died too
    assert plan_handoffs(PP2_DP2, after, [True, True, True], set()) == []
    both = _plan(2, ["w2", "w3"], [(0, 2, [0]), (2, 4, [1])], source=1)
    assert plan_handoffs(PP2_DP2, both, [True, True], {1}) == []
    # data parallelism: the buddy is the keeper and replays without a transfer
    dp = _plan(1, ["w0", "w1", "w2"], [(0, 4, [0, 1, 2])])
    assert plan_handoffs(dp, _plan(2, ["w0", "w2"], [(0, 4, [0, 1])], 1), [True] * 2, {1}) == []


def test_a_handed_over_gradient_replays_the_lost_update_bit_for_bit() -> None:
    """Real gloo groups, one thread per rank: the keeper sends the kept gradient with
    its clip factor, lr and lr-scaled ranges; the buddy's replay of step 7 equals the
    ward's own update."""
    cfg = AdamWConfig(weight_decay=0.1)
    lo, hi = 5, 10
    gen = torch.Generator().manual_seed(1)
    params, grad = torch.randn(hi, generator=gen), torch.randn(hi, generator=gen)
    m, v = torch.randn(hi, generator=gen) * 0.01, torch.rand(hi, generator=gen) * 0.01
    factor, lr, scaled = 0.41, 2e-3, [(1, 3, 1.1)]
    ward = FlatAdamW(lo, hi, cfg)  # the ward's own update of step 7
    ward.exp_avg.copy_(m[lo:])
    ward.exp_avg_sq.copy_(v[lo:])
    ward.step_count, ward.lr_scaled = 6, [(lo + 1, lo + 3, 1.1)]
    p, g = params.clone(), grad.clone()
    g[lo:].mul_(factor)
    ward.step(p, g, lr)

    after = _plan(2, ["w0", "w2", "w3"], [(0, 2, [0]), (2, 4, [1, 2])], source=1)
    handoffs = plan_handoffs(PP2_DP2, after, [True, True, True], {2})
    store = dist.HashStore()
    buddy = SnapshotKeeper()
    buddy.held["w1"] = [Snapshot(6, lo, hi, params[lo:].clone(), m[lo:].clone(), v[lo:].clone())]

    def rank_main(rank: int) -> None:
        pg = dist.ProcessGroupGloo(store, rank, 3, datetime.timedelta(seconds=30))
        group = Group(pg, rank, 3, 2, 30.0, lambda: False)
        mine = SnapshotKeeper()
        if rank == 0:  # the keeper, as Buddies.keep_gradients left it after step 7
            mine.keep_gradient("w1", 7, grad[lo:], lo, factor, lr, cfg, scaled)
        exchange(handoffs, group, buddy if rank == 2 else mine, cfg, len(SIZES))

    run_ranks(3, rank_main)
    assert buddy.steps_covering([(lo, hi)]) == {6, 7}
    assert torch.equal(buddy.piece("params", lo, hi, 7)[0], p[lo:])
    avg, avg_sq = buddy.piece("moments", lo, hi, 7)
    assert torch.equal(avg, ward.exp_avg) and torch.equal(avg_sq, ward.exp_avg_sq)


def test_a_kept_gradient_crosses_the_wire_exactly() -> None:
    kept = KeptGradient(7, 5, 10, torch.ones(5), 0.123456789, 3.3e-4, AdamWConfig(), [(0, 2, 1.1)])
    back = decode(encode(kept, 4), kept.grad, AdamWConfig())
    assert back == kept
    assert decode(encode(None, 4), torch.ones(5), AdamWConfig()) is None
    with pytest.raises(ValueError, match="lr-scaled ranges"):
        encode(kept, 0)
