"""The training step does not depend on the layout: real gloo groups, one thread per rank."""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist

from elastiq.agent.comm import Group
from elastiq.agent.data import SampleOrder
from elastiq.agent.trainer import TrainState, run_step
from elastiq.config import JobConfig, ModelConfig
from tests.threaded import run_ranks

CFG = JobConfig(
    steps=3,
    global_batch=12,
    micro_batch=2,
    seq_len=16,
    warmup_steps=1,
    model=ModelConfig(dim=16, n_layers=2, n_heads=2),
)


def train(world: int, steps: int = 3) -> list[torch.Tensor]:
    torch.manual_seed(0)
    corpus = torch.randint(0, 256, (20_000,), dtype=torch.uint8)
    store = dist.HashStore()
    results: list[torch.Tensor | None] = [None] * world

    def rank_main(rank: int) -> None:
        pg = dist.ProcessGroupGloo(
            dist.PrefixStore(f"w{world}/", store), rank, world, datetime.timedelta(seconds=30)
        )
        group = Group(pg, rank, world, 1, 30.0, lambda: False)
        state = TrainState(CFG)
        order = SampleOrder(corpus, CFG.seq_len, CFG.seed)
        for step in range(1, steps + 1):
            run_step(state, group, order, step, want_switch=False)
        results[rank] = state.flat.data.clone()

    run_ranks(world, rank_main)
    return [r for r in results if r is not None]


def test_parameters_agree_across_world_sizes_within_fp32_tolerance() -> None:
    one = train(1)[0]
    for world in (2, 3):
        params = train(world)
        assert all(torch.equal(params[0], p) for p in params), "ranks diverged"
        assert (params[0] - one).abs().max().item() <= 1e-5


def test_the_same_layout_is_bitwise_reproducible() -> None:
    assert torch.equal(train(2)[0], train(2)[0])


def test_rollback_restores_the_previous_step_exactly() -> None:
    state = TrainState(CFG)
    before = state.flat.data.clone()
    state.snapshot()
    state.flat.data.add_(1.0)
    state.opt.exp_avg.add_(1.0)
    state.opt.step_count += 1
    state.step = 1
    state.rollback_to(0)
    assert torch.equal(state.flat.data, before) and state.step == 0
    assert state.opt.exp_avg.abs().sum() == 0 and state.opt.step_count == 0
