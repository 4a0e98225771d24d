"""Pipeline x data parallel training equals single-process training: real gloo groups
(one thread per rank), 1F1B over micro-batches, unequal DP degrees, ZeRO within stages."""

from __future__ import annotations

import datetime

import pytest
import torch
import torch.distributed as dist

from elastiq.agent.runtime.comm import Group
from elastiq.agent.runtime.data.byte_corpus import ByteCorpus
from elastiq.agent.runtime.data.sample_order import SampleOrder
from elastiq.agent.runtime.pipeline import StageView, run_pipeline_step, stage_routes
from elastiq.agent.runtime.trainer import TrainState
from elastiq.checkpoint.checkfree import SwapGroups, unit_order
from elastiq.partition import even_split
from tests.test_trainer import CFG, train
from tests.threaded import run_ranks

STEPS = 3


def train_pipeline(
    units: list[tuple[int, int]],
    degrees: list[int],
    zero: int,
    orders: list[tuple[int, ...]] | None = None,
) -> torch.Tensor:
    torch.manual_seed(0)
    corpus = torch.randint(0, 256, (20_000,), dtype=torch.uint8)  # as tests/test_trainer.py
    world = sum(degrees)
    stage_ranks: list[tuple[int, ...]] = []
    next_rank = 0
    for d in degrees:
        stage_ranks.append(tuple(range(next_rank, next_rank + d)))
        next_rank += d
    store = dist.HashStore()
    results: dict[int, torch.Tensor] = {}
    timeout = datetime.timedelta(seconds=60)

    def rank_main(rank: int) -> None:
        s = next(i for i, ranks in enumerate(stage_ranks) if rank in ranks)
        replica = stage_ranks[s].index(rank)
        wpg = dist.ProcessGroupGloo(dist.PrefixStore("world/", store), rank, world, timeout)
        spg = dist.ProcessGroupGloo(
            dist.PrefixStore(f"stage{s}/", store), replica, degrees[s], timeout
        )
        wg = Group(wpg, rank, world, 1, 60.0, lambda: False)
        sg = Group(spg, replica, degrees[s], 1, 60.0, lambda: False)
        state = TrainState(CFG, units[s])
        intervals = None
        if zero:
            intervals = [even_split(state.flat.numel, degrees[s], j) for j in range(degrees[s])]
            lo, hi = intervals[replica]
            state.set_moment_range(state.base + lo, state.base + hi)
        order = SampleOrder(ByteCorpus(corpus), CFG.seq_len, CFG.seed)
        routes = stage_routes(units, orders) if orders else ()
        view = StageView(s, replica, tuple(stage_ranks), routes)
        for step in range(1, STEPS + 1):
            run_pipeline_step(state, wg, sg, view, order, step, False, intervals, zero)
        results[rank] = state.flat.data.clone()

    run_ranks(world, rank_main)
    for ranks in stage_ranks:
        assert all(torch.equal(results[ranks[0]], results[r]) for r in ranks), "replicas diverged"
    return torch.cat([results[ranks[0]] for ranks in stage_ranks])


@pytest.mark.parametrize(
    ("units", "degrees", "zero"),
    [
        ([(0, 2), (2, 4)], [1, 1], 0),  # PP2
        ([(0, 2), (2, 4)], [2, 2], 1),  # PP2 x DP2, ZeRO-1
        ([(0, 1), (1, 4)], [2, 1], 2),  # unequal degrees, ZeRO-2
        ([(0, 1), (1, 2), (2, 3), (3, 4)], [1, 2, 1, 2], 1),  # PP4, mixed degrees
    ],
)
def test_pipeline_layouts_train_like_a_single_process(
    units: list[tuple[int, int]], degrees: list[int], zero: int
) -> None:
    single = train(1, STEPS)[0]
    piped = train_pipeline(units, degrees, zero)
    assert piped.shape == single.shape
    diff = (piped - single).abs().max().item()
    assert diff <= 1e-5, f"max abs difference {diff}"


@pytest.mark.parametrize(
    ("units", "degrees", "zero"),
    [
        ([(0, 2), (2, 4)], [1, 1], 0),  # odd micro-batches: 0 | 2 | 1 | 3 across two stages
        ([(0, 2), (2, 4)], [2, 1], 1),
        ([(0, 1), (1, 3), (3, 4)], [1, 2, 1], 1),
    ],
)
def test_checkfree_plus_swapped_routes_train_like_a_single_process_with_the_same_order(
    units: list[tuple[int, int]], degrees: list[int], zero: int
) -> None:
    """Odd micro-batches run block 2 before block 1, which sends them back and forth
    between stages; the result is the same model function as one process running the
    same unit orders, and not the plain one."""
    groups = SwapGroups(blocks=2, first=1, last=1)
    orders = [unit_order(4, mb, groups) for mb in range(CFG.micro_batches)]
    assert orders[1] == (0, 2, 1, 3)
    single = train(1, STEPS, orders)[0]
    piped = train_pipeline(units, degrees, zero, orders)
    diff = (piped - single).abs().max().item()
    assert diff <= 1e-5, f"max abs difference {diff}"
    plain = train(1, STEPS)[0]
    assert (plain - single).abs().max().item() > 1e-4, "the swapped order changed nothing"
