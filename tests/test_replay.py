"""A buddy replays its ward's ZeRO-1 update of step s from the snapshot of s-1 and the
reduced gradient it kept: the same numbers as the ward's own update, bit for bit, so
a ward that dies before its snapshot of s arrives costs no step (pure, no processes)."""

from __future__ import annotations

import torch

from elastiq.agent.flat import AdamWConfig, FlatAdamW
from elastiq.agent.snapshots import Snapshot, SnapshotKeeper


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
